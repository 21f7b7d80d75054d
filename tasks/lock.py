"""The host's lock (taken by `Host.locked` in tasks/host.py): `lock.status`, `lock.release
--force`."""

from __future__ import annotations

from invoke import Collection, Exit, task

from .commands import lock as commands
from .engines import open_host
from .exits import ExitCode


@task
def status(c):
    """Show who holds the host's lock, if anyone, and whether the holder is still alive."""
    host = open_host(c)
    state, holder, liveness = commands.parse_report(host.conn.run(commands.status(host.ctx),
                                                                  hide=True).stdout)
    if state == "FREE":
        print(f"{host.name}: not locked.")
    else:
        print(f"{host.name}: locked ({liveness.lower()}): {commands.describe(holder, liveness)}")


@task(help={"force": "Remove the lock even though an operation may hold it (for stale locks)."})
def release(c, force=False):
    """Remove the host's lock (only with --force: make sure its holder is gone)."""
    host = open_host(c)
    state, holder, liveness = commands.parse_report(host.conn.run(commands.status(host.ctx),
                                                                  hide=True).stdout)
    if state == "FREE":
        print(f"{host.name}: not locked; nothing to release.")
        return
    text = commands.describe(holder, liveness)
    if not force:
        raise Exit(f"{host.name} is locked ({liveness.lower()}): {text}. Releasing it while its "
                   "operation runs "
                   f"would let two operations collide; if you are sure, run again with --force.",
                   code=ExitCode.LOCKED)
    host.conn.run(commands.force_release(host.ctx), hide=True)
    host.record("lock", "released", detail=f"forced release of: {text}")
    print(f"{host.name}: lock released (was: {text}).")


ns = Collection("lock")
ns.add_task(status)
ns.add_task(release)
