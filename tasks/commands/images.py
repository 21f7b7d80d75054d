"""Images a release needs, and shipping them over SSH when the host cannot pull
(`docker save | gzip | ssh HOST 'gunzip | docker load'`)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from . import q, sh
from .build import tree_hash
from .db import image_major, postgres_image as compose_postgres_image

# Services whose image is not pulled in production (built per release, or development only).
NOT_PULLED = {"api", "worker", "dashboard"}
HASH_SKIP = {"__pycache__", ".pytest_cache"}


def stack_images(root: Path) -> list[str]:
    """The upstream images the production stack runs (from compose.yml, as written there; a
    service with `build:` is built per release instead)."""
    services = yaml.safe_load((root / "compose.yml").read_text()).get("services", {})
    return sorted({s["image"] for name, s in services.items()
                   if name not in NOT_PULLED and "build" not in s and "image" in s
                   and "$" not in s["image"]})


def backend_image(root: Path, project: str) -> str:
    """Backend images are tagged by the content of backend/: an unchanged backend is not rebuilt."""
    return f"{project}-backend:{tree_hash(root / 'backend', HASH_SKIP)[:12]}"


def postgres_image(root: Path, project: str) -> str:
    """The Postgres image a release pins when compose.yml builds it (postgres/: pgvector plus
    pgBackRest), tagged by its major and postgres/'s content; "" when compose.yml names an image
    to pull instead."""
    service = yaml.safe_load((root / "compose.yml").read_text())["services"]["postgres"]
    if "build" not in service:
        return ""
    major = image_major(compose_postgres_image(root)) or "x"
    return f"{project}-postgres:pg{major}-{tree_hash(root / 'postgres', HASH_SKIP)[:12]}"


def built_images(root: Path, backend: str, postgres: str) -> list[tuple[str, Path]]:
    """(image, build directory) of what a release builds rather than pulls."""
    return [(backend, root / "backend"), *([(postgres, root / "postgres")] if postgres else [])]


def build_base_images(dockerfile: Path) -> list[str]:
    """The FROM images of a Dockerfile (what building it on the host needs)."""
    stages = set()
    images = []
    for line in dockerfile.read_text().splitlines():
        match = re.match(r"\s*FROM\s+(?:--\S+\s+)*(\S+)(?:\s+AS\s+(\S+))?", line, re.I)
        if match:
            if match.group(1) not in stages:
                images.append(match.group(1))
            if match.group(2):
                stages.add(match.group(2))
    return images


def present(images: list[str]) -> str:
    """Prints `have=IMAGE` for each image the host has (one round trip)."""
    return "; ".join([*(f"docker image inspect {q(i)} >/dev/null 2>&1 && echo {q('have=' + i)}"
                        for i in images), "true"])


def parse_present(output: str) -> set[str]:
    return {line[5:].strip() for line in output.splitlines() if line.startswith("have=")}


def save(images: list[str], path: str | None = None) -> list[str]:
    """Local: one `docker save` for images that share layers (into `path`, or to stdout)."""
    return ["docker", "save", *(["-o", path] if path else []), *images]


# Image stores whose `docker load` skips a layer it has (by its chain) without reading the file:
# Docker's own graph drivers. The containerd image store (driver `overlayfs`, Docker 29's default)
# wants every blob: it gets the whole save.
SKIPPING_DRIVERS = {"overlay2", "fuse-overlayfs", "btrfs", "zfs", "vfs", "devicemapper", "aufs"}


def layer_inventory() -> str:
    """Remote: the storage driver (`driver=NAME`), `zstd=yes` when the host can unpack zstd, then
    each image's layers (diff ids, JSON), one image a line: what the host can skip of a save."""
    return ("echo driver=$(docker info --format '{{.Driver}}'); "
            "command -v zstd >/dev/null && echo zstd=yes; "
            "docker image ls -q --no-trunc | sort -u | "
            "xargs -r docker image inspect --format '{{json .RootFS.Layers}}'")


def parse_layer_inventory(output: str) -> set[tuple[str, ...]]:
    """The layer chains (each image's layers and every prefix of them) the host has; none when its
    image store does not skip layers on load."""
    chains: set[tuple[str, ...]] = set()
    lines = output.splitlines()
    if not lines or lines[0].removeprefix("driver=").strip() not in SKIPPING_DRIVERS:
        return chains
    for line in lines[1:]:
        if line.startswith("["):
            layers = tuple(json.loads(line))
            chains.update(layers[:n] for n in range(1, len(layers) + 1))
    return chains


def layers_to_skip(manifest: list[dict], configs: dict[str, dict],
                   chains: set[tuple[str, ...]]) -> set[str]:
    """The layer files of a `docker save` (its manifest.json; each image's config by path) that a
    host with these chains does not need: `docker load` reads only layers whose chain is missing.
    A file shared by several images is skipped only when every one of them has it."""
    needed, skippable = set(), set()
    for image in manifest:
        diff_ids = configs[image["Config"]]["rootfs"]["diff_ids"]
        for n, path in enumerate(image["Layers"], start=1):
            (skippable if tuple(diff_ids[:n]) in chains else needed).add(path)
    return skippable - needed


# How a save is compressed on its way: zstd where both ends have it (provision installs it; one
# core packs about 300 MB/s at level 1, gzip -1 about 60, at the same size), else gzip.
COMPRESS = {"zstd": ["zstd", "-1", "-T0", "-q", "-c"], "gzip": ["gzip", "-1"]}
UNPACK = {"zstd": "zstd -dcq", "gzip": "gunzip -c"}


def codec(inventories: list[str], zstd_here: bool) -> str:
    """The compression a save travels in to hosts with these `layer_inventory` outputs."""
    everywhere = all("zstd=yes" in inventory.splitlines() for inventory in inventories)
    return "zstd" if zstd_here and inventories and everywhere else "gzip"


def load(packed: str = "gzip") -> str:
    """Remote: what arrives on stdin (`packed`: zstd or gzip) is loaded into the host's Docker."""
    return f"{UNPACK[packed]} | docker load"


def in_registry(image: str, registry: str) -> str:
    """The image's name in a registry (`REGISTRY/<project>-backend:<hash>`); unchanged without
    one."""
    return f"{registry}/{image}" if registry else image


def push(image: str) -> list[str]:
    return ["docker", "push", "-q", image]


def local_build(image: str, context: Path) -> list[str]:
    return ["docker", "build", "-q", "-t", image, str(context)]


def ssh_load(ssh_argv: list[str], destination: str, packed: str = "gzip") -> list[str]:
    return [*ssh_argv, destination, sh(["sh", "-c", load(packed)])]


def backend_build_place(setting: str, local_docker: bool) -> str:
    """Where the backend image is built: `local` spares the VPS's CPUs when this machine has
    Docker."""
    if setting == "auto":
        return "local" if local_docker else "host"
    return setting


def image_plan(needed: list[str], on_host: set[str], here: set[str],
               mode: str) -> tuple[list[str], list[str]]:
    """(images to ship, images the host lacks that this machine cannot send)."""
    missing = [i for i in needed if i not in on_host]
    if mode == "never":
        return [], []
    return [i for i in missing if i in here], [i for i in missing if i not in here]


def images_needed(root: Path, place: str, backend: str, postgres: str) -> list[str]:
    """The images a release needs on the host (with the base images of what it builds, when it is
    built there)."""
    built = built_images(root, backend, postgres)
    needed = stack_images(root) + [image for image, _ in built]
    if place == "host":
        needed += [base for _, context in built
                   for base in build_base_images(context / "Dockerfile") if base not in needed]
    return needed
