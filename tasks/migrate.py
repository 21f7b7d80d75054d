"""Database migrations of the current release (Alembic in a one-off API container)."""

from invoke import Collection, task

from .commands import compose as commands
from .engines import open_host
from .host import WAIT_HELP


@task(name="migrate", default=True,
      help={"wait": WAIT_HELP})
def migrate_(c, wait=False):
    """Apply pending migrations (`alembic upgrade head`) with the current release's image."""
    host = open_host(c)
    with host.locked("migrate", wait=wait), host.audited("migrate", release=host.current_id):
        host.on_current(commands.migrate, what="migrate")


ns = Collection("migrate")
ns.add_task(migrate_)
