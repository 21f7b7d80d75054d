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


def prepare(app_dir: str, release_id: str, release_yml: str) -> str:
    """Create the release directory and write shared/.env (0600) from stdin."""
    release = f"{app_dir}/releases/{release_id}"
    return " && ".join([
        sh(["mkdir", "-p", release, f"{app_dir}/shared"]),
        f"(umask 077 && cat > {q(app_dir)}/shared/.env.tmp)",
        sh(["chmod", "600", f"{app_dir}/shared/.env.tmp"]),
        sh(["mv", "-f", f"{app_dir}/shared/.env.tmp", f"{app_dir}/shared/.env"]),
        sh(["ln", "-sfn", "../../shared/.env", f"{release}/.env"]),
        f"printf %s {q(release_yml)} > {q(release)}/release.yml",
    ])


def in_release(app_dir: str, release_id: str, command: str) -> str:
    return f"cd {q(app_dir)}/releases/{q(release_id)} && {command}"


def in_current(app_dir: str, command: str) -> str:
    """Run in the resolved current release, or exit 3 when the host has none yet."""
    current = f"{app_dir}/current"
    return (f"if [ ! -e {q(current)} ]; then echo 'no release deployed yet' >&2; exit {NO_RELEASE_EXIT}; fi; "
            f"cd \"$(readlink -f {q(current)})\" && {command}")


def image_present_or_build(image: str, build_command: str) -> str:
    return f"if docker image inspect {q(image)} >/dev/null 2>&1; then echo 'image {image} already built'; else {build_command}; fi"


def probe(image: str, base_url: str, assets: list[str], timeout: int = 120) -> list[str]:
    """Run the stdlib health probe (sent on stdin) in a throwaway container on the host network."""
    return ["docker", "run", "--rm", "-i", "--network", "host", "--entrypoint", "python", image,
            "-", base_url, str(timeout), *assets]


def finalize(app_dir: str, release_id: str, meta: dict, keep: int) -> str:
    """Record the release, switch `current` atomically, prune old releases (never the current one)."""
    release_dir = f"{app_dir}/releases/{release_id}"
    return " && ".join([
        f"printf '%s\\n' {q(json.dumps(meta, sort_keys=True))} > {q(release_dir)}/RELEASE.json",
        sh(["ln", "-sfn", f"releases/{release_id}", f"{app_dir}/current.tmp"]),
        sh(["mv", "-T", f"{app_dir}/current.tmp", f"{app_dir}/current"]),
        prune(app_dir, keep),
    ])


def prune(app_dir: str, keep: int) -> str:
    releases = f"{app_dir}/releases"
    return (f"current=$(basename \"$(readlink {q(app_dir)}/current)\"); "
            f"for old in $(ls -1 {q(releases)} | sort | head -n -{int(keep)}); do "
            f"[ \"$old\" = \"$current\" ] || {{ rm -rf {q(releases)}/\"$old\" && echo \"pruned $old\"; }}; done")
