"""Docker Compose command lines for the stack on a host (Compose v2 plugin or v1 binary)."""

from __future__ import annotations

from . import sh

STACK_FILES = ("compose.yml", "docker-compose.production.yml", "release.yml")
TOOLS = {
    "v2": ["docker", "compose"],
    # v1 applies deploy.resources (the plan's limits) only in compatibility mode.
    "v1": ["docker-compose", "--compatibility"],
}


def base(variant: str, project: str) -> list[str]:
    argv = [*TOOLS[variant], "-p", project]
    for name in STACK_FILES:
        argv += ["-f", name]
    return argv


def up(variant: str, project: str) -> list[str]:
    return [*base(variant, project), "up", "-d", "--remove-orphans"]


def down(variant: str, project: str, volumes: bool = False) -> list[str]:
    return [*base(variant, project), "down", "--remove-orphans", *(["--volumes"] if volumes else [])]


def ps(variant: str, project: str) -> list[str]:
    return [*base(variant, project), "ps"]


def restart(variant: str, project: str, services: list[str]) -> list[str]:
    return [*base(variant, project), "restart", *services]


def logs(variant: str, project: str, service: str | None = None, since: str | None = None,
         follow: bool = False, tail: int | None = 200) -> list[str]:
    argv = [*base(variant, project), "logs", "--no-color"]
    if since:
        argv += ["--since", since]
    if tail is not None:
        argv += ["--tail", str(tail)]
    if follow:
        argv.append("--follow")
    if service:
        argv.append(service)
    return argv


def build_backend(variant: str, project: str) -> list[str]:
    return [*base(variant, project), "build", "api"]


def migrate(variant: str, project: str) -> list[str]:
    """Alembic in a one-off API container (Postgres and NATS are started and awaited first)."""
    return [*base(variant, project), "run", "--rm", "-T", "api", "alembic", "upgrade", "head"]


def either(argv_for: "callable") -> str:
    """Run with Compose v2 when the host has it, else v1: one round trip, no separate detection."""
    return (f"if docker compose version >/dev/null 2>&1; then {sh(argv_for('v2'))}; "
            f"else {sh(argv_for('v1'))}; fi")


def release_override(backend_image: str, release_id: str) -> str:
    """release.yml: pins this release's backend image and tells the API which release it is."""
    lines = ["# Written by the deploy task for this release; do not edit.", "services:"]
    for service in ("api", "worker"):
        lines += [f"  {service}:", f"    image: {backend_image}", "    environment:", f"      RELEASE_ID: {release_id}"]
    return "\n".join(lines) + "\n"
