"""Compose on the current release: up, down, ps, restart, logs (the ones that change the host
take its lock)."""

from invoke import Collection, Exit, task

from .commands import compose as commands
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
for t in (up, down, ps, restart, logs):
    ns.add_task(t)
