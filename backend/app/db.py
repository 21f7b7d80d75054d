"""Database engine and the tasks table."""

from functools import lru_cache

from sqlalchemy import (
    Column, DateTime, Integer, MetaData, String, Table, Text, create_engine, func, select, text,
)
from sqlalchemy.engine import Engine

from .config import AppConfig

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
    for key in ("created_at", "processed_at"):
        if data.get(key) is not None:
            data[key] = data[key].isoformat()
    return data


def insert_task(title: str, body: str) -> dict:
    with get_engine().begin() as conn:
        row = conn.execute(tasks.insert().values(title=title, body=body).returning(*tasks.c)).one()
    return row_to_dict(row)


def list_tasks(limit: int = 100) -> list[dict]:
    with get_engine().connect() as conn:
        rows = conn.execute(select(tasks).order_by(tasks.c.id.desc()).limit(limit)).all()
    return [row_to_dict(r) for r in rows]


def ping() -> None:
    with get_engine().connect() as conn:
        conn.execute(text("SELECT 1"))
