"""Database migrations of the current release (Alembic in a one-off API container)."""

from invoke import Collection, task

from .commands import compose as commands
from .stack import run_on_current


@task(name="migrate", default=True)
def migrate_(c):
    """Apply pending migrations (`alembic upgrade head`) with the current release's image."""
    run_on_current(c, commands.migrate, what="migrate")


ns = Collection("migrate")
ns.add_task(migrate_)
