"""Docker Compose command lines for the stack on a host (Compose v2 plugin or v1 binary)."""

from __future__ import annotations

from collections.abc import Callable

from . import sh
from .context import MANAGED_CLIENT, HostContext


def up(ctx: HostContext) -> list[str]:
    return ctx.compose("up", "-d", "--remove-orphans")


def down(ctx: HostContext, volumes: bool = False) -> list[str]:
    return ctx.compose("down", "--remove-orphans", *(["--volumes"] if volumes else []))


def ps(ctx: HostContext) -> list[str]:
    return ctx.compose("ps")


def restart(ctx: HostContext, services: list[str]) -> list[str]:
    return ctx.compose("restart", *services)


def start(ctx: HostContext, services: list[str]) -> list[str]:
    return ctx.compose("start", *services)


def logs(ctx: HostContext, service: str | None = None, since: str | None = None,
         follow: bool = False, tail: int | None = 200) -> list[str]:
    argv = ctx.compose("logs", "--no-color")
    if since:
        argv += ["--since", since]
    if tail is not None:
        argv += ["--tail", str(tail)]
    if follow:
        argv.append("--follow")
    if service:
        argv.append(service)
    return argv


def build_backend(ctx: HostContext) -> list[str]:
    return ctx.compose("build", "api")


def build_postgres(ctx: HostContext) -> list[str]:
    return ctx.compose("build", "postgres")


MIGRATE_FILE = "compose.migrate.yml"  # the one-off migration container connects as POSTGRES_USER


def migrate(ctx: HostContext) -> str:
    """Shell, run in a release's directory: Alembic in a one-off API container, as the schema's
    owner (POSTGRES_USER: MIGRATE_FILE added last), not as the app role the release's API runs as.
    A release from before the app role has no MIGRATE_FILE: its API already connects as
    POSTGRES_USER. `--no-deps`: Postgres runs already (a deploy starts it first; `fab migrate`
    migrates the live stack), and Compose v2's `run` would recreate a dependency whose definition
    changed (commands/definitions.py)."""
    run = ("run", "--rm", "--no-deps", "-T", "api", "alembic", "upgrade", "head")
    return (f"if [ -f {MIGRATE_FILE} ]; then {sh(ctx.compose('-f', MIGRATE_FILE, *run))}; "
            f"else {sh(ctx.compose(*run))}; fi")


def either(ctx: HostContext, argv_for: Callable[[HostContext], list[str]]) -> str:
    """Run with Compose v2 when the host has it, else v1: one round trip, no separate detection."""
    return ("if docker compose version >/dev/null 2>&1; then "
            f"{sh(argv_for(ctx.with_variant('v2')))}; "
            f"else {sh(argv_for(ctx.with_variant('v1')))}; fi")


# The processes and threads each service may have at once (docs/security.md, "Containers"): a fork
# bomb or a thread leak stops there, not at the host's limit. Postgres: a process per connection
# (max_connections 100) plus its own, pg_dump's and pgBackRest's. Compose v2 (and a swarm) take it
# only as `deploy.resources.limits.pids` (v2 refuses `pids_limit` beside a `deploy.resources.limits`
# without pids), Compose v1.29 only as `pids_limit` (its schema has no `pids`): so release.yml
# carries it, in the form of the Compose the release is deployed with (RELEASE.json's `compose`).
PIDS_LIMITS = {"postgres": 512, "nats": 256, "api": 256, "worker": 256, "nginx": 256}


def release_override(backend_image: str, release_id: str, postgres_image: str = "",
                     variant: str = "v2", managed_db: bool = False) -> str:
    """release.yml: pins this release's backend image and tells the API which release it is;
    `postgres_image`: the Postgres image the host's data now needs (written by `db.upgrade` into the
    releases from before the upgrade, whose compose.yml names the old major); each service's pids
    limit as `variant` (Compose "v1" or "v2") reads it; `managed_db`: the client container stands
    for postgres (commands/managed.py)."""
    lines = ["# Written by the deploy task for this release; do not edit.", "services:"]
    for service, pids in PIDS_LIMITS.items():
        lines.append(f"  {MANAGED_CLIENT if managed_db and service == 'postgres' else service}:")
        if service in ("api", "worker"):
            lines += [f"    image: {backend_image}", "    environment:",
                      f"      RELEASE_ID: {release_id}"]
        if service == "postgres" and postgres_image:
            lines.append(f"    image: {postgres_image}")
        lines += ([f"    pids_limit: {pids}"] if variant == "v1" else
                  ["    deploy:", "      resources:", "        limits:", f"          pids: {pids}"])
    return "\n".join(lines) + "\n"
