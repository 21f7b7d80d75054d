"""Commands that lay out releases on the host:

    APP_DIR/releases/<UTC time>-<git sha>/   compose files, nginx, backend, frontend/dist, release.yml
    APP_DIR/shared/.env                      the stack's settings, mode 0600
    APP_DIR/current -> releases/<id>         switched atomically once the release is healthy
"""

from __future__ import annotations

import json
import shlex

from . import sh

NO_RELEASE_EXIT = 3


def q(value: str) -> str:
    return shlex.quote(value)


def preflight(app_dir: str) -> str:
    """One round trip that reports what the deploy needs to know about the host."""
    return "; ".join([
        "echo \"user=$(id -un)\"",
        "echo \"home=$HOME\"",
        "if command -v docker >/dev/null 2>&1; then "
        "echo \"docker=$(docker version --format '{{.Server.Version}}' 2>&1 | tr '\\n' ' ')\"; "
        "else echo 'docker=missing'; fi",
        "if docker compose version >/dev/null 2>&1; then echo \"compose_v2=$(docker compose version --short 2>/dev/null)\"; fi",
        "if command -v docker-compose >/dev/null 2>&1; then echo \"compose_v1=$(docker-compose version --short 2>/dev/null)\"; fi",
        "echo \"rsync=$(command -v rsync || true)\"",
        f"echo \"current=$(readlink {q(app_dir)}/current 2>/dev/null || true)\"",
        f"echo \"current_meta=$(cat {q(app_dir)}/current/RELEASE.json 2>/dev/null | tr -d '\\n' || true)\"",
    ])


def parse_preflight(output: str) -> dict[str, str]:
    facts: dict[str, str] = {}
    for line in output.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            facts[key.strip()] = value.strip()
    return facts


def env_upload_path(app_dir: str) -> str:
    return f"{app_dir}/shared/.env.upload"


def prepare(app_dir: str, release_id: str, release_yml: str) -> str:
    """Create the release directory, and an empty 0600 file the new .env is then written into
    (over SFTP), so the settings are never readable by anyone else, not even for a moment."""
    release = f"{app_dir}/releases/{release_id}"
    return " && ".join([
        sh(["mkdir", "-p", release, f"{app_dir}/shared"]),
        sh(["install", "-m", "600", "/dev/null", env_upload_path(app_dir)]),
        sh(["ln", "-sfn", "../../shared/.env", f"{release}/.env"]),
        f"printf %s {q(release_yml)} > {q(release)}/release.yml",
    ])


def install_env(app_dir: str) -> list[str]:
    return ["mv", "-f", env_upload_path(app_dir), f"{app_dir}/shared/.env"]


def in_release(app_dir: str, release_id: str, command: str) -> str:
    return f"cd {q(app_dir)}/releases/{q(release_id)} && {command}"


def in_current(app_dir: str, command: str) -> str:
    """Run in the resolved current release, or exit 3 when the host has none yet."""
    current = f"{app_dir}/current"
    return (f"if [ ! -e {q(current)} ]; then echo 'no release deployed yet' >&2; exit {NO_RELEASE_EXIT}; fi; "
            f"cd \"$(readlink -f {q(current)})\" && {command}")


def image_present_or_build(image: str, build_command: str) -> str:
    return f"if docker image inspect {q(image)} >/dev/null 2>&1; then echo 'image {image} already built'; else {build_command}; fi"


PROBE_PATH = "tasks/probe.py"


def probe(image: str, base_url: str, assets: list[str], timeout: int = 90) -> str:
    """Run the release's stdlib health probe in a throwaway container on the host network."""
    mount = f"$PWD/{PROBE_PATH}:/probe.py:ro"
    return (f"docker run --rm --network host -v \"{mount}\" --entrypoint python {q(image)} /probe.py "
            + sh([base_url, str(timeout), *assets]))


def write_meta(app_dir: str, release_id: str, meta: dict) -> str:
    release_dir = f"{app_dir}/releases/{release_id}"
    return f"printf '%s\\n' {q(json.dumps(meta, sort_keys=True))} > {q(release_dir)}/RELEASE.json"


def finalize(app_dir: str, release_id: str, meta: dict, keep: int, image_repo: str) -> str:
    """Record the release, prune old releases (never the current one) and their images."""
    return "; ".join([write_meta(app_dir, release_id, meta), prune(app_dir, keep), prune_images(app_dir, image_repo)])


def prune_images(app_dir: str, image_repo: str) -> str:
    """Remove this project's backend images that no kept release names (images in use stay)."""
    releases = f"{q(app_dir)}/releases"
    return (f"keep=$(cat {releases}/*/RELEASE.json 2>/dev/null | grep -o '\"backend_image\": \"[^\"]*\"' | cut -d'\"' -f4 | sort -u); "
            f"for img in $(docker images --format '{{{{.Repository}}}}:{{{{.Tag}}}}' {q(image_repo)}); do "
            f"printf '%s\\n' \"$keep\" | grep -qxF \"$img\" || {{ docker rmi \"$img\" >/dev/null 2>&1 && echo \"removed image $img\"; }}; done; true")


def list_releases(app_dir: str) -> str:
    """Each kept release as `name<TAB>RELEASE.json`, then `current=<name>`."""
    releases = f"{q(app_dir)}/releases"
    return (f"for r in $(ls -1 {releases} 2>/dev/null | sort); do printf '%s\\t%s\\n' \"$r\" "
            f"\"$(cat {releases}/$r/RELEASE.json 2>/dev/null | tr -d '\\n')\"; done; "
            f"echo \"current=$(basename \"$(readlink {q(app_dir)}/current 2>/dev/null)\")\"")


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


def schema_revisions(app_dir: str, release_id: str, project: str) -> str:
    """The database's Alembic revision, and every revision the release's code knows."""
    versions = f"{q(app_dir)}/releases/{q(release_id)}/backend/alembic/versions"
    psql = ("docker exec $(docker ps -q --filter label=com.docker.compose.project=" + q(project)
            + " --filter label=com.docker.compose.service=postgres | head -n 1) sh -c "
            + q('psql -U "$POSTGRES_USER" -d "$POSTGRES_DB" -Atc "SELECT version_num FROM alembic_version" 2>/dev/null'))
    return (f"echo \"db=$({psql} | tr '\\n' ' ')\"; "
            f"echo \"known=$(grep -h '^revision = ' {versions}/*.py 2>/dev/null | cut -d'\"' -f2 | tr '\\n' ' ')\"; "
            f"echo \"parents=$(grep -h '^down_revision = ' {versions}/*.py 2>/dev/null | cut -d'\"' -f2 | tr '\\n' ' ')\"")


def migrations_pending(facts: dict[str, str]) -> bool:
    """Whether the release's newest migration is ahead of the database (parsed schema_revisions)."""
    db = facts.get("db", "").strip()
    heads = set(facts.get("known", "").split()) - set(facts.get("parents", "").split())
    return bool(db) and db not in heads


def prune(app_dir: str, keep: int) -> str:
    releases = f"{app_dir}/releases"
    return (f"current=$(basename \"$(readlink {q(app_dir)}/current)\"); "
            f"for old in $(ls -1 {q(releases)} | sort | head -n -{int(keep)}); do "
            f"[ \"$old\" = \"$current\" ] || {{ rm -rf {q(releases)}/\"$old\" && echo \"pruned $old\"; }}; done")
