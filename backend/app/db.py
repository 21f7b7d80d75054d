"""Database engine and the tasks table (with a pgvector embedding per task)."""

from functools import lru_cache

from sqlalchemy import (
    Column, DateTime, Float, Integer, MetaData, String, Table, Text, cast, create_engine, func, literal, select, text,
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
    for key in ("created_at", "processed_at"):
        if data.get(key) is not None:
            data[key] = data[key].isoformat()
    return data


def insert_task(title: str, body: str) -> dict:
    with get_engine().begin() as conn:
        row = conn.execute(tasks.insert().values(title=title, body=body, embedding=embed(f"{title} {body}"))
                           .returning(*tasks.c)).one()
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


def ping() -> None:
    with get_engine().connect() as conn:
        conn.execute(text("SELECT 1"))
