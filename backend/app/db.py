"""Database engine and the tasks table (with a pgvector embedding per task)."""

from functools import lru_cache

from sqlalchemy import (
    Column, DateTime, Float, Integer, MetaData, String, Table, Text, cast, create_engine, func, literal, select, text,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.types import UserDefinedType

from .config import AppConfig
from .embedding import DIM, embed


class Vector(UserDefinedType):
    """pgvector's `vector(n)`: Python lists of floats in, lists of floats out (sent as its text
    form '[x,y,...]' and cast, so no driver extension is needed)."""

    cache_ok = True

    def __init__(self, dim: int):
        self.dim = dim

    def get_col_spec(self, **kw) -> str:
        return f"vector({self.dim})"

    def bind_expression(self, bindvalue):
        return cast(bindvalue, self)

    def bind_processor(self, dialect):
        return lambda value: None if value is None else "[" + ",".join(repr(float(x)) for x in value) + "]"

    def result_processor(self, dialect, coltype):
        return lambda value: None if value is None else [float(x) for x in str(value).strip("[]").split(",") if x]


metadata = MetaData()

tasks = Table(
    "tasks",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("title", String(500), nullable=False),
    Column("body", Text, nullable=False, server_default=""),
    Column("status", String(20), nullable=False, server_default="pending"),
    Column("word_count", Integer),
    Column("summary", Text),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("processed_at", DateTime(timezone=True)),
    # Migration 0002 (pgvector); NULL only for rows written by a release from before it.
    Column("embedding", Vector(DIM)),
    # Migration 0003: when the task's job was last queued (NULL: with the row), and how often the
    # sweeper queued it again (app/worker.py).
    Column("queued_at", DateTime(timezone=True)),
    Column("requeues", Integer, nullable=False, server_default="0"),
)


@lru_cache(maxsize=1)
def get_engine() -> Engine:
    cfg = AppConfig.from_env()
    return create_engine(
        cfg.database_url,
        pool_size=cfg.pool_size,
        max_overflow=cfg.max_overflow,
        pool_timeout=cfg.pool_timeout,
        pool_pre_ping=True,
        pool_recycle=cfg.pool_recycle,
    )


def row_to_dict(row) -> dict:
    data = dict(row._mapping)
    data.pop("embedding", None)  # internal: DIM floats nobody reads
    for key in ("created_at", "processed_at", "queued_at"):
        if data.get(key) is not None:
            data[key] = data[key].isoformat()
    return data


def insert_task(title: str, body: str) -> dict:
    with get_engine().begin() as conn:
        row = conn.execute(tasks.insert().values(title=title, body=body, embedding=embed(f"{title} {body}"),
                                                 queued_at=func.now()).returning(*tasks.c)).one()
    return row_to_dict(row)


def similar_tasks(query: str, limit: int = 5) -> list[dict]:
    """The tasks nearest to `query` by cosine distance, nearest first (the HNSW index serves
    `ORDER BY embedding <=> :q LIMIT n`)."""
    distance = tasks.c.embedding.op("<=>", return_type=Float)(literal(embed(query), Vector(DIM)))
    with get_engine().connect() as conn:
        rows = conn.execute(select(tasks, distance.label("distance")).order_by(distance).limit(limit)).all()
    return [{**row_to_dict(r), "distance": round(r.distance, 6)} for r in rows if r.distance is not None]


def list_tasks(limit: int = 100) -> list[dict]:
    with get_engine().connect() as conn:
        rows = conn.execute(select(tasks).order_by(tasks.c.id.desc()).limit(limit)).all()
    return [row_to_dict(r) for r in rows]


def finish_task(task_id: int, work) -> tuple[str, dict | None]:
    """Run `work(row) -> values` for a pending task and store its result, once: the row is locked
    for the job, so a job delivered twice (NATS redelivers what was not acknowledged; the sweeper
    queues a late one again) finds it done and changes nothing. Returns (outcome, task):
    "done", "repeated" (already finished) or "vanished" (deleted)."""
    with get_engine().begin() as conn:
        row = conn.execute(select(tasks).where(tasks.c.id == task_id).with_for_update()).one_or_none()
        if row is None:
            return "vanished", None
        if row.status != "pending":
            return "repeated", row_to_dict(row)
        done = conn.execute(update(tasks).where(tasks.c.id == task_id)
                            .values(status="done", processed_at=func.now(), **work(row)).returning(*tasks.c)).one()
    return "done", row_to_dict(done)


def claim_stale(after_seconds: int, max_requeues: int, limit: int = 500) -> tuple[list[int], list[int]]:
    """Tasks still pending `after_seconds` after their job was last queued (its message lost with a
    NATS crash, refused while NATS was down or full, or its job failed): the ones to queue again,
    each with its `requeues` counted, and those past `max_requeues`, now marked `failed` (the dead
    letters `status` and `doctor` show). Rows locked by another sweeper are skipped."""
    deadline = func.now() - text(f"interval '{int(after_seconds)} seconds'")
    with get_engine().begin() as conn:
        rows = conn.execute(select(tasks.c.id, tasks.c.requeues)
                            .where(tasks.c.status == "pending", func.coalesce(tasks.c.queued_at, tasks.c.created_at) < deadline)
                            .order_by(tasks.c.id).limit(limit).with_for_update(skip_locked=True)).all()
        again = [r.id for r in rows if r.requeues < max_requeues]
        failed = [r.id for r in rows if r.requeues >= max_requeues]
        if again:
            conn.execute(update(tasks).where(tasks.c.id.in_(again))
                         .values(queued_at=func.now(), requeues=tasks.c.requeues + 1))
        if failed:
            conn.execute(update(tasks).where(tasks.c.id.in_(failed)).values(status="failed"))
    return again, failed


def ping() -> None:
    with get_engine().connect() as conn:
        conn.execute(text("SELECT 1"))
