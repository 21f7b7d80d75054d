"""One deploy or rollback at a time per host: `lock.status`, `lock.release [--force]`."""

from __future__ import annotations

import time
from contextlib import contextmanager

from invoke import Collection, Exit, task

from . import remote
from .audit import record
from .commands import lock as commands
from .operator import identity, now_iso
from .settings import Settings


@contextmanager
def held(conn, app_dir: str, action: str, wait: bool = False, wait_timeout: float = 1800):
    """Take the host's deploy lock for the block (or fail at once naming the holder)."""
    info = {**identity(), "action": action, "since": now_iso(), "host": conn.original_host}
    started = time.monotonic()
    announced = False
    while True:
        out = conn.run(commands.acquire(app_dir, info), hide=True, in_stream=False).stdout
        state, holder, liveness = commands.parse_report(out)
        if state == "ACQUIRED":
            break
        holder_text = commands.describe(holder, liveness)
        if liveness == "STALE":
            record(conn, app_dir, "lock", "refused", detail=f"stale lock: {holder_text}")
            raise Exit(f"{conn.original_host} is locked by a {holder_text}. Make sure that run is really over, "
                       f"then clear it with `fab -H {conn.original_host} lock.release --force`. Nothing was changed.", code=4)
        if not wait:
            record(conn, app_dir, "lock", "refused", detail=f"held: {holder_text}")
            raise Exit(f"{conn.original_host} is busy: {holder_text}. Wait for it to finish, or queue behind it "
                       f"with `--wait`. Nothing was changed.", code=4)
        if time.monotonic() - started > wait_timeout:
            raise Exit(f"Gave up waiting {wait_timeout:.0f}s for the lock on {conn.original_host}: {holder_text}.", code=4)
        if not announced:
            print(f"Waiting for the lock on {conn.original_host}: {holder_text}", flush=True)
            announced = True
        time.sleep(2)
    keeper = conn.run(commands.keeper(app_dir), hide=True, asynchronous=True, in_stream=False)
    try:
        yield
    finally:
        conn.run(commands.release(app_dir), hide=True, warn=True, in_stream=False)
        try:
            keeper.join()
        except Exception:
            pass


@task
def status(c):
    """Show who holds the host's deploy lock, if anyone, and whether the holder is still alive."""
    settings = Settings.from_context(c)
    conn = remote.connect(c)
    state, holder, liveness = commands.parse_report(conn.run(commands.status(settings.app_dir), hide=True, in_stream=False).stdout)
    if state == "FREE":
        print(f"{conn.original_host}: not locked.")
    else:
        print(f"{conn.original_host}: locked ({liveness.lower()}): {commands.describe(holder, liveness)}")


@task(help={"force": "Remove the lock even though a deploy may hold it (for stale locks)."})
def release(c, force=False):
    """Remove the host's deploy lock (only with --force: make sure its holder is gone)."""
    settings = Settings.from_context(c)
    conn = remote.connect(c)
    state, holder, liveness = commands.parse_report(conn.run(commands.status(settings.app_dir), hide=True, in_stream=False).stdout)
    if state == "FREE":
        print(f"{conn.original_host}: not locked; nothing to release.")
        return
    text = commands.describe(holder, liveness)
    if not force:
        raise Exit(f"{conn.original_host} is locked ({liveness.lower()}): {text}. Releasing it while its deploy runs "
                   f"would let two deploys collide; if you are sure, run again with --force.", code=4)
    conn.run(commands.release(settings.app_dir), hide=True, in_stream=False)
    record(conn, settings.app_dir, "lock", "released", detail=f"forced release of: {text}")
    print(f"{conn.original_host}: lock released (was: {text}).")


ns = Collection("lock")
ns.add_task(status)
ns.add_task(release)
