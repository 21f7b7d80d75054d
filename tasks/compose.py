"""Compose on the current release: up, down, ps, restart, recreate, logs (the ones that change the
host take its lock)."""

import time

from invoke import Collection, Exit, task

from .commands import compose as commands
from .commands import definitions
from .engines import open_host
from .exits import ExitCode
from .host import WAIT_HELP

@task(help={"wait": WAIT_HELP})
def up(c, wait=False):
    """Start (or update) the stack of the current release."""
    host = open_host(c)
    with host.locked("compose.up", wait=wait), host.audited("compose.up", release=host.current_id):
        host.on_current(commands.up, what="start the stack")


@task(help={"volumes": "Also delete the named volumes: THE DATABASE, NATS DATA AND THE "
                       "POINT-IN-TIME ARCHIVE ARE LOST (asks first).",
            "yes": "Do not ask before deleting the volumes (scripts).", "wait": WAIT_HELP})
def down(c, volumes=False, yes=False, wait=False):
    """Stop and remove the stack's containers (data volumes are kept unless --volumes)."""
    host = open_host(c)
    if volumes and not yes:
        answer = input(f"Delete the stack's volumes on {host.name}? The database, the NATS data "
                       "and the point-in-time "
                       "archive (pgBackRest's WAL and backups) are deleted; backup sets in "
                       "APP_DIR/backups and "
                       f"off-site copies are kept. Type the host name ({host.name}) to confirm: ")
        if answer.strip() != host.name:
            raise Exit("Not confirmed; nothing was changed.", code=ExitCode.USAGE)
    with host.locked("compose.down", wait=wait), host.audited("compose.down",
                                                              release=host.current_id) as outcome:
        outcome["detail"] = "with volumes" if volumes else ""
        host.on_current(lambda ctx: commands.down(ctx, volumes=volumes), what="stop the stack")


@task
def ps(c):
    """Show the stack's containers and their health."""
    open_host(c).on_current(commands.ps, what="list containers")


@task(iterable=["service"], help={"service": "Service to restart (repeatable); all when omitted.",
                                  "wait": WAIT_HELP})
def restart(c, service=None, wait=False):
    """Restart services of the current release."""
    host = open_host(c)
    with (host.locked("compose.restart", wait=wait),
          host.audited("compose.restart", release=host.current_id) as outcome):
        outcome["detail"] = " ".join(service or []) or "all services"
        host.on_current(lambda ctx: commands.restart(ctx, list(service or [])), what="restart")


@task(iterable=["service"], help={
    "service": "A service to recreate: postgres, nats or nginx (repeatable); default: each one "
               "whose definition is pending (`status` lists them).",
    "wait": WAIT_HELP})
def recreate(c, service=None, wait=False):
    """Apply the live release's definition of postgres, nats or nginx, which a deploy never does:
    recreate the container and wait until it is healthy (the service is unavailable meanwhile)."""
    unknown = [s for s in service or [] if s not in definitions.KEPT_SERVICES]
    if unknown:
        raise Exit(f"compose.recreate applies postgres, nats or nginx, not {', '.join(unknown)} "
                   "(a deploy replaces the api and worker itself). Nothing was changed.",
                   code=ExitCode.USAGE)
    host = open_host(c)
    host.require_compose_services("compose.recreate")
    with (host.locked("compose.recreate", wait=wait),
          host.audited("compose.recreate", release=host.current_id) as outcome):
        names = list(service or []) or host.pending_definitions(host.ctx.current_link)
        if not names:
            outcome["detail"] = "nothing pending"
            print(f"postgres, nats and nginx already run release {host.current_id}'s definitions "
                  f"on {host.name}; nothing was recreated.")
            return
        outcome["detail"] = " ".join(names)
        print(f"Recreating {', '.join(names)} on {host.name} with release {host.current_id}'s "
              f"definition (unavailable meanwhile: "
              + ", ".join(f"{s} {definitions.UNAVAILABLE[s]}" for s in names) + ")", flush=True)
        started = time.monotonic()
        host.on_current(lambda ctx: definitions.recreate(ctx, names), what="recreate")
        print(f"{', '.join(names)} recreated and healthy in {time.monotonic() - started:.1f}s.")


@task(help={
    "service": "Only this service's logs (api, worker, nginx, postgres, nats).",
    "since": "Only logs since this time or duration (e.g. 10m, 2026-01-01T00:00:00).",
    "follow": "Keep streaming new log lines until interrupted.",
    "tail": "Number of recent lines per container (default 200).",
})
def logs(c, service=None, since=None, follow=False, tail=200):
    """Show the stack's logs."""
    open_host(c).on_current(lambda ctx: commands.logs(ctx, service=service, since=since,
                                                      follow=follow, tail=int(tail)),
                            pty=follow, what="show logs")


ns = Collection("compose")
for t in (up, down, ps, restart, recreate, logs):
    ns.add_task(t)
