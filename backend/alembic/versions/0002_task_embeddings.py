"""pgvector: an embedding per task and an HNSW index for similarity search

Expand only (README, "Migrations: expand, then contract"): the extension, a nullable column that
releases from before it simply leave NULL, the embeddings of existing rows, then the index,
built CONCURRENTLY (outside the migration's transaction) so writes go on while it builds.

Revision ID: 0002
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

INDEX = "tasks_embedding_hnsw"
BATCH = 500


def upgrade() -> None:
    from app.embedding import DIM, embed  # here, not at the top: loading the script must not need the app

    # Creating an extension needs a superuser (the stack's POSTGRES_USER is one) unless a DBA
    # created it first; IF NOT EXISTS then makes this a no-op that needs no privilege.
    op.execute("CREATE EXTENSION IF NOT EXISTS vector")
    op.execute(f"ALTER TABLE tasks ADD COLUMN IF NOT EXISTS embedding vector({DIM})")
    bind = op.get_bind()
    while True:
        rows = bind.execute(sa.text("SELECT id, title, body FROM tasks WHERE embedding IS NULL ORDER BY id LIMIT :n"),
                            {"n": BATCH}).all()
        if not rows:
            break
        bind.execute(sa.text("UPDATE tasks SET embedding = CAST(:e AS vector) WHERE id = :id"),
                     [{"id": r.id, "e": "[" + ",".join(repr(x) for x in embed(f"{r.title} {r.body}")) + "]"} for r in rows])
    with op.get_context().autocommit_block():
        # An index left invalid by an interrupted CONCURRENTLY build is dropped and built again.
        if bind.execute(sa.text("SELECT NOT indisvalid FROM pg_index WHERE indexrelid = to_regclass(:i)"), {"i": INDEX}).scalar():
            op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {INDEX}")
        op.execute(f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {INDEX} ON tasks USING hnsw (embedding vector_cosine_ops)")


def downgrade() -> None:
    op.execute(f"DROP INDEX IF EXISTS {INDEX}")
    op.execute("ALTER TABLE tasks DROP COLUMN IF EXISTS embedding")
