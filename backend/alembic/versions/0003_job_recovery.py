"""Jobs recovered from the row: when each task was last queued and how often

Expand only (README, "Migrations: expand, then contract"): two columns that releases from before
it leave at their defaults, and a partial index, built CONCURRENTLY, over the tasks still waiting
for their job, which the worker's sweeper reads (app/worker.py, `requeue_stale`).

Revision ID: 0003
Revises: 0002
"""
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

INDEX = "tasks_pending"


def upgrade() -> None:
    op.execute("ALTER TABLE tasks ADD COLUMN IF NOT EXISTS queued_at timestamptz")
    op.execute("ALTER TABLE tasks ADD COLUMN IF NOT EXISTS requeues integer NOT NULL DEFAULT 0")
    bind = op.get_bind()
    with op.get_context().autocommit_block():
        valid = bind.exec_driver_sql(f"SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass('{INDEX}')").scalar()
        if valid is False:  # left invalid by an interrupted CONCURRENTLY build
            op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {INDEX}")
        op.execute(f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {INDEX} ON tasks (id) WHERE status = 'pending'")


def downgrade() -> None:
    op.execute(f"DROP INDEX IF EXISTS {INDEX}")
    op.execute("ALTER TABLE tasks DROP COLUMN IF EXISTS requeues")
    op.execute("ALTER TABLE tasks DROP COLUMN IF EXISTS queued_at")
