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
    started = time.monotonic()
    try:
        run_on_current(c, commands.migrate, what="migrate")
    except BaseException as exc:
        _record(c, "failed", time.monotonic() - started, str(getattr(exc, "message", exc)))
        raise
    _record(c, "ok", time.monotonic() - started)


def _record(c, result, duration, detail=""):
    settings = Settings.from_context(c)
    record(remote.connect(c), settings.app_dir, "migrate", result, duration=duration, detail=detail)


ns = Collection("migrate")
ns.add_task(migrate_)
