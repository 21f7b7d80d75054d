"""Commands that lay out, inspect and prune releases on the host (layout: commands/context.py).

Each release carries its own settings: APP_DIR/env/<id>.env (mode 0600, in a 0700 directory
nginx never sees), linked as the release's `.env`. A deploy writes only its new release's file,
so a failed deploy leaves the live settings untouched and a rollback runs the old code with the
settings it was proven with.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
import time
from datetime import datetime

from . import q, sh
from .context import HostContext

NO_RELEASE_EXIT = 3
PROBE_PATH = "tasks/probe.py"
# `revision = "x"` or `revision = 'x'` (Alembic's template writes repr()); `None` is no revision.


def new_release_id(now: datetime, commit: str) -> str:
    """The one maker of release ids, for both engines: UTC time, then the commit (letters and
    digits only: `ab12cd3-dirty` -> `ab12cd3dirty`), e.g. `20261125T173005Z-ab12cd3dirty`."""
    return (f"{now.strftime('%Y%m%dT%H%M%SZ')}-"
            f"{re.sub(r'[^0-9a-z]+', '', commit.lower())[:12] or 'nogit'}")


def dist_assets(index_html: str) -> list[str]:
    """The hashed asset paths the dashboard's index.html references (what the probe expects)."""
    return sorted(set(re.findall(r'(?:src|href)="(/assets/[^"]+)"', index_html)))


def preflight(ctx: HostContext) -> str:
    """One round trip that reports what every task needs to know about the host. The Docker
    questions (each a CLI call of tens of milliseconds, the Postgres one an exec) run side by side
    and print in a fixed order."""
    docker_facts = [
        "if command -v docker >/dev/null 2>&1; then "
        "echo \"docker=$(docker version --format '{{.Server.Version}}' 2>&1 | tr '\\n' ' ')\"; "
        "else echo 'docker=missing'; fi",
        "echo \"docker_id=$(docker info --format '{{.ID}}' 2>/dev/null)\"",
        # Swarm mode: `active/true` on a manager, `active/false` on a worker, `inactive/false`
        # outside one.
        "echo \"swarm=$(docker info --format "
        "'{{.Swarm.LocalNodeState}}/{{.Swarm.ControlAvailable}}' 2>/dev/null)\"",
        "v=$(docker compose version --short 2>/dev/null) && echo \"compose_v2=$v\"",
        postgres_data_fact(ctx),
    ]
    other_facts = [
        "echo \"user=$(id -un)\"",
        "echo \"home=$HOME\"",
        # v1's presence only: `docker-compose version` starts a Python program (about half a second)
        "if command -v docker-compose >/dev/null 2>&1; then echo \"compose_v1=$(command -v "
        "docker-compose)\"; fi",
        "echo \"rsync=$(command -v rsync || true)\"",
        # the memory budget (commands/budget.py): MemTotal in kB, empty where there is no
        # /proc/meminfo
        "echo \"mem_total_kb=$(awk '/^MemTotal:/ {print $2}' /proc/meminfo 2>/dev/null)\"",
        f"echo \"current=$(readlink {q(ctx.current_link)} 2>/dev/null || true)\"",
        f"echo \"current_meta=$(cat {q(ctx.current_link)}/RELEASE.json 2>/dev/null | tr -d '\\n' "
        "|| true)\"",
        # a recover that has not finished: the off-site set it brings back (nginx serves 503)
        f"if [ -e {q(ctx.recovering_file)} ]; then s=$(head -n 1 {q(ctx.recovering_file)}); "
        "echo \"recovering=${s:-(unnamed)}\"; fi",
    ]
    started = " ".join(f"{{ {fact}; }} > \"$t/{n}\" 2>/dev/null &" for n,
                       fact in enumerate(docker_facts))
    collected = " ".join(f'"$t/{n}"' for n in range(len(docker_facts)))
    return (f"t=$(mktemp -d) || exit 1; {started} " + "; ".join(other_facts)
            + f"; wait; cat {collected}; rm -rf \"$t\"")


POSTGRES_DATA = "/var/lib/postgresql/data"  # where compose.yml mounts the postgres_data volume


def postgres_data_fact(ctx: HostContext) -> str:
    """`pg_data=`: the PostgreSQL major version of the data in the stack's Postgres volume (`15`,
    `17`), `none` (no such volume), `empty` (not initialised) or `unknown` (no container to read it
    with). Read through the running postgres container, else with the image of a stopped one in a
    throwaway container (read-only mount, no network): the deploy's guard (commands/db.py)."""
    project = q(f"label=com.docker.compose.project={ctx.project}")
    read = f"cat {POSTGRES_DATA}/PG_VERSION 2>/dev/null || echo empty"
    return (f"vol={q(ctx.postgres_volume)}; if docker volume inspect \"$vol\" >/dev/null 2>&1; "
            f"then pg=$({ctx.container('postgres')}); v=''; "
            f"if [ -n \"$pg\" ]; then v=$(docker exec \"$pg\" sh -c {q(read)} 2>/dev/null); "
            f"else img=$(docker ps -a --filter {project} --filter "
            "label=com.docker.compose.service=postgres "
            f"--format '{{{{.Image}}}}' | head -n 1); "
            "if [ -n \"$img\" ]; then v=$(docker run --rm --network none --entrypoint sh -v "
            "\"$vol\":/d:ro \"$img\" "
            f"-c 'cat /d/PG_VERSION 2>/dev/null || echo empty' 2>/dev/null); fi; fi; "
            f"echo \"pg_data=${{v:-unknown}}\"; else echo pg_data=none; fi")


def parse_facts(output: str) -> dict[str, str]:
    """`key=value` lines (preflight, schema_state) as a dict."""
    facts: dict[str, str] = {}
    for line in output.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            facts[key.strip()] = value.strip()
    return facts


def prepare(ctx: HostContext, release_id: str, release_yml: str) -> str:
    """Create the release directory and the shared directories, and an empty 0600 file the
    release's .env is then written into (over SFTP): the settings are never readable by anyone
    else, not even for a moment, and the live release's settings are not touched."""
    release = ctx.release_dir(release_id)
    return " && ".join([
        sh(["mkdir", "-p", release, *ctx.mounted_dirs]),
        sh(["install", "-d", "-m", "700", ctx.env_dir]),
        sh(["install", "-m", "600", "/dev/null", ctx.release_env(release_id)]),
        sh(["ln", "-sfn", f"../../env/{release_id}.env", f"{release}/.env"]),
        f"printf %s {q(release_yml)} > {q(release)}/release.yml",
    ])


RELEASE_TAR = "release.tar"


def files_archive(files: list[tuple[str, int, str]]) -> bytes:
    """A tar of (path relative to APP_DIR, mode, text): what a deploy writes besides the rsync'd
    tree (the release's settings, release.yml, RELEASE.json, the alert program), sent in one
    SFTP upload into the lock's 0700 inbox and unpacked by `unpack_release`."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path, mode, text in files:
            data = text.encode()
            info = tarfile.TarInfo(path)
            info.size, info.mode, info.mtime = len(data), mode, int(time.time())
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def unpack_release(ctx: HostContext, release_id: str) -> str:
    """Lay out the release (its directory, the shared directories, the 0700 env directory) and
    unpack the inbox's tar into APP_DIR with its modes (umask 077 while unpacking: no file is
    readable by others even for a moment), then link the release's .env."""
    release = ctx.release_dir(release_id)
    tar = f"{ctx.inbox}/{RELEASE_TAR}"
    return " && ".join([
        sh(["mkdir", "-p", release, *ctx.mounted_dirs]),
        sh(["install", "-d", "-m", "700", ctx.env_dir]),
        f"( umask 077 && tar -xpf {q(tar)} -C {q(ctx.app_dir)} --no-same-owner )",
        sh(["rm", "-f", tar]),
        sh(["ln", "-sfn", f"../../env/{release_id}.env", f"{release}/.env"]),
    ])


def in_release(ctx: HostContext, release_id: str, command: str) -> str:
    return f"cd {q(ctx.release_dir(release_id))} && {command}"


def in_current(ctx: HostContext, command: str) -> str:
    """Run in the resolved current release, or exit 3 when the host has none yet."""
    return (f"if [ ! -e {q(ctx.current_link)} ]; then echo 'no release deployed yet' >&2; exit "
            f"{NO_RELEASE_EXIT}; fi; cd \"$(readlink -f {q(ctx.current_link)})\" && {command}")


def image_present_or_build(image: str, build_command: str) -> str:
    return (f"if docker image inspect {q(image)} >/dev/null 2>&1; then echo "
            f"{q(f'image {image} already built')}; else {build_command}; fi")


def probe(image: str, base_url: str, assets: list[str], timeout: int = 90) -> str:
    """Run the release's stdlib health probe (from the release directory): with the host's own
    python3 when it has one (a tenth of a second), else in a throwaway container of the release's
    image on the host network (no Python needed on the host; about a second)."""
    args = sh([base_url, str(timeout), *assets])
    mount = f"$PWD/{PROBE_PATH}:/probe.py:ro"
    return (f"if command -v python3 >/dev/null 2>&1; then python3 {PROBE_PATH} {args}; "
            f"else docker run --rm --network host -v \"{mount}\" --entrypoint python {q(image)} "
            f"/probe.py {args}; fi")


def probe_from_entry(ctx: HostContext, image: str, assets: list[str], timeout: int = 90) -> str:
    """The same probe from inside nginx's own network namespace (http://127.0.0.1:80), the one
    client nginx/maintenance.conf lets through while a recovery keeps everyone else out."""
    args = sh(["http://127.0.0.1:80", str(timeout), *assets])
    mount = f"$PWD/{PROBE_PATH}:/probe.py:ro"
    return (f"docker run --rm --network \"container:$({ctx.container('nginx')})\" -v \"{mount}\" "
            f"--entrypoint python {q(image)} /probe.py {args}")


def read_meta(ctx: HostContext, release_id: str) -> str:
    """The release's RELEASE.json, or the line MISSING when it has none."""
    path = q(ctx.release_meta(release_id))
    return f"if [ -f {path} ]; then cat {path}; else echo MISSING; fi"


def write_meta(ctx: HostContext, release_id: str, meta: dict) -> str:
    return (f"printf '%s\\n' {q(json.dumps(meta, sort_keys=True))} > "
            f"{q(ctx.release_meta(release_id))}")


def list_releases(ctx: HostContext) -> str:
    """Each kept release as `name<TAB>RELEASE.json`, then `current=<name>`."""
    releases = q(ctx.releases_dir)
    return (f"for r in $(ls -1 {releases} 2>/dev/null | sort); do printf '%s\\t%s\\n' \"$r\" "
            f"\"$(cat {releases}/$r/RELEASE.json 2>/dev/null | tr -d '\\n')\"; done; "
            f"echo \"current=$(basename \"$(readlink {q(ctx.current_link)} 2>/dev/null)\")\"")


def parse_releases(output: str) -> tuple[list[tuple[str, dict]], str]:
    rows, current = [], ""
    for line in output.splitlines():
        if line.startswith("current="):
            current = line.split("=", 1)[1].strip()
        elif "\t" in line:
            name, _, meta = line.partition("\t")
            try:
                rows.append((name, json.loads(meta) if meta.strip() else {}))
            except ValueError:
                rows.append((name, {}))
    return rows, current


def releases_to_prune(rows: list[tuple[str, dict]], current: str, keep: int,
                      keep_failed: int = 2) -> list[str]:
    """Releases to delete: all but the newest `keep` successful ones (failed releases never count
    toward `keep`), the current one and its recorded predecessor, and the newest `keep_failed`
    failed ones (kept for inspection)."""
    meta = dict(rows)
    names = sorted(meta, reverse=True)
    kept = set([n for n in names if meta[n].get("result") == "ok"][:keep])
    kept |= set([n for n in names if meta[n].get("result") != "ok"][:keep_failed])
    if current:
        kept |= {current, meta.get(current, {}).get("previous", "")}
    return sorted(n for n in names if n not in kept)


def remove_releases(ctx: HostContext, names: list[str]) -> str:
    """Delete these releases and their settings (never called with the current one): the .env, and
    on a swarm the rendered stack files beside it."""
    if not names:
        return "true"
    paths = [p for n in names for p in (ctx.release_dir(n), ctx.release_env(n),
                                        *([f"{ctx.env_dir}/{n}.stack"] if ctx.engine == "swarm"
                                          else []))]
    return sh(["rm", "-rf", "--", *paths]) + "; " + "; ".join(f"echo {q('pruned ' + n)}"
                                                              for n in names)


def prune_images(ctx: HostContext, image_repo: str, key: str = "backend_image") -> str:
    """Remove this project's images of `image_repo` that no kept release names under `key` in its
    RELEASE.json (images in use stay)."""
    releases = q(ctx.releases_dir)
    return (f"keep=$(cat {releases}/*/RELEASE.json 2>/dev/null | grep -o '\"{key}\": \"[^\"]*\"' | "
            "cut -d'\"' -f4 | sort -u); "
            "for img in $(docker images --format '{{.Repository}}:{{.Tag}}' "
            f"{q(image_repo)}); do "
            "printf '%s\\n' \"$keep\" | grep -qxF \"$img\" || { docker rmi \"$img\" >/dev/null "
            "2>&1 && echo \"removed image $img\"; }; done; true")
