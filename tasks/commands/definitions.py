"""The data and entry services (postgres, nats, nginx) keep running through deploys and
rollbacks: these builders create them when missing (`--no-recreate`), never recreate them, tell
which of them run a definition other than the release's (pending), and apply it on purpose
(`fab compose.recreate`, tasks/compose.py), the one time such a service is unavailable.

Pending: the service's container carries the config hash Compose gave it when it was created
(label `com.docker.compose.config-hash`); `compose config --hash` in a release gives the hash
that release's definition would have. Compose v1's hash covers a service's `build:` directory,
which is each release's own, so on v1 only nats and nginx (no `build:`) are compared."""

from __future__ import annotations

from . import q, sh
from .context import MANAGED_CLIENT, HostContext
from .programs import program

KEPT_SERVICES = ("postgres", "nats", "nginx")
DATA_SERVICES = ("postgres", "nats")
BUILT_SERVICES = ("postgres",)  # a `build:` in compose.yml: v1's hash differs in each release
# How long each is unavailable while it is recreated (stop, start, first healthy check): an
# estimate, not yet measured by a benchmark; what the notice and the task say.
UNAVAILABLE = {"postgres": "about 10 s", "nats": "about 5 s", "nginx": "about 5 s",
               MANAGED_CLIENT: "about 5 s (the managed database itself is not touched)"}
PENDING = "@@pending "
PENDING_PROGRAM = program("pending-definitions.sh")
HEALTHY_TRIES = 240  # half-seconds a recreated service has to report healthy


def up_kept(ctx: HostContext, services: tuple[str, ...]) -> list[str]:
    """Start `services` when they are missing or stopped; a running one is left as it is, even
    when the release defines it differently (pending: `fab compose.recreate` applies it)."""
    return ctx.compose("up", "-d", "--no-deps", "--no-recreate", *services)


def compared(ctx: HostContext) -> tuple[str, ...]:
    """The services whose definitions this host's Compose can compare (see the module)."""
    if ctx.variant == "v1":
        return ctx.services(tuple(s for s in KEPT_SERVICES if s not in BUILT_SERVICES))
    return ctx.services(KEPT_SERVICES)


def pending(ctx: HostContext, release_dir: str) -> str:
    """Shell: `@@pending SERVICE` for each kept service whose running container differs from its
    definition in `release_dir` (a release, or `current`); nothing on a swarm (its stack deploy
    updates a changed service itself: tasks/swarm.py)."""
    if ctx.engine == "swarm":
        return "true"
    config = sh(ctx.compose("config", "--hash", ",".join(compared(ctx))))
    return (f"( cd {q(release_dir)} && {config} 2>/dev/null ) | "
            f"bash -c {q(PENDING_PROGRAM)} pending-definitions {q(ctx.project)}")


def parse_pending(output: str) -> list[str]:
    """The services `pending` printed, in the stack's order."""
    named = {line[len(PENDING):].strip() for line in output.splitlines()
             if line.startswith(PENDING)}
    return [s for s in (*KEPT_SERVICES, MANAGED_CLIENT) if s in named]


def recreate_command(name: str, service: str) -> str:
    return f"fab -H {name} compose.recreate --service {service}"


def notice(name: str, release_id: str, services: list[str], action: str = "deploy") -> list[str]:
    """What a deploy or rollback says, once, when it left services on their previous
    definition."""
    return [f"NOTICE: {s}'s definition in release {release_id} differs from the one it runs; "
            f"the {action} left it running its previous definition ({s} restarts only when "
            f"asked). Apply it with `{recreate_command(name, s)}`: {s} is unavailable for "
            f"{UNAVAILABLE[s]} while it is recreated." for s in services]


def recreate(ctx: HostContext, services: list[str]) -> str:
    """Shell, run in the current release: recreate `services` with its definition (stopped
    gracefully, then started again: each is unavailable meanwhile), then wait until each reports
    healthy; fails naming the one that did not."""
    lines = ["set -e", sh(ctx.compose("up", "-d", "--no-deps", "--force-recreate", *services))]
    for service in services:
        lines += [f"ok=; for _ in $(seq 1 {HEALTHY_TRIES}); do",
                  f"  cid=$({ctx.container(service)})",
                  "  if [ -n \"$cid\" ] && [ \"$(docker inspect -f "
                  "'{{.State.Health.Status}}' \"$cid\")\" = healthy ]; then ok=1; break; fi",
                  "  sleep 0.5", "done",
                  f"[ -n \"$ok\" ] || {{ echo {q(f'{service} did not become healthy')} >&2; "
                  "exit 1; }"]
    return "\n".join(lines) + "\n"
