"""Database migrations of the current release (Alembic in a one-off API container)."""

import time

from invoke import Collection, task

from . import remote
from .audit import record
from .commands import compose as commands
from .settings import Settings
from .stack import run_on_current


@task(name="migrate", default=True)
def migrate_(c):
    """Apply pending migrations (`alembic upgrade head`) with the current release's image."""
    settings = Settings.from_context(c)
    conn = remote.connect(c)
    started = time.monotonic()
    try:
        run_on_current(c, commands.migrate, what="migrate", conn=conn, settings=settings)
    except BaseException as exc:
        record(conn, settings.app_dir, "migrate", "failed", duration=time.monotonic() - started,
               detail=str(getattr(exc, "message", exc)))
        raise
    record(conn, settings.app_dir, "migrate", "ok", duration=time.monotonic() - started)


ns = Collection("migrate")
ns.add_task(migrate_)
