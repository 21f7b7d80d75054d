"""Compose on the current release: up, down, ps, restart, logs."""

from invoke import Collection, task

from .commands import compose as commands
from .stack import run_on_current


@task
def up(c):
    """Start (or update) the stack of the current release."""
    run_on_current(c, commands.up, what="start the stack")


@task(help={"volumes": "Also delete the named volumes: THE DATABASE AND NATS DATA ARE LOST."})
def down(c, volumes=False):
    """Stop and remove the stack's containers (data volumes are kept unless --volumes)."""
    run_on_current(c, lambda v, p: commands.down(v, p, volumes=volumes), what="stop the stack")


@task
def ps(c):
    """Show the stack's containers and their health."""
    run_on_current(c, commands.ps, what="list containers")


@task(iterable=["service"], help={"service": "Service to restart (repeatable); all when omitted."})
def restart(c, service=None):
    """Restart services of the current release."""
    run_on_current(c, lambda v, p: commands.restart(v, p, list(service or [])), what="restart")


@task(help={
    "service": "Only this service's logs (api, worker, nginx, postgres, nats).",
    "since": "Only logs since this time or duration (e.g. 10m, 2026-01-01T00:00:00).",
    "follow": "Keep streaming new log lines until interrupted.",
    "tail": "Number of recent lines per container (default 200).",
})
def logs(c, service=None, since=None, follow=False, tail=200):
    """Show the stack's logs."""
    run_on_current(c, lambda v, p: commands.logs(v, p, service=service, since=since, follow=follow, tail=int(tail)),
                   pty=follow, what="show logs")


ns = Collection("compose")
for t in (up, down, ps, restart, logs):
    ns.add_task(t)
