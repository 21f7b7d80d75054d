"""Runtime configuration of the reference API, read from the environment."""

import os
from dataclasses import dataclass


def _int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


@dataclass(frozen=True)
class AppConfig:
    database_url: str
    nats_url: str
    release_id: str
    pool_size: int
    max_overflow: int
    pool_timeout: int
    pool_recycle: int

    @classmethod
    def from_env(cls) -> "AppConfig":
        user = os.environ.get("POSTGRES_USER", "postgres")
        password = os.environ.get("POSTGRES_PASSWORD", "")
        host = os.environ.get("POSTGRES_HOST", "postgres")
        port = os.environ.get("POSTGRES_PORT", "5432")
        db = os.environ.get("POSTGRES_DB", "tasktracker")
        default_url = f"postgresql+psycopg://{user}:{password}@{host}:{port}/{db}"
        return cls(
            database_url=os.environ.get("DATABASE_URL", default_url),
            nats_url=os.environ.get("NATS_URL", "nats://nats:4222"),
            release_id=os.environ.get("RELEASE_ID", "dev"),
            # The plan's VPS pool settings; each can be overridden by environment.
            pool_size=_int("DB_POOL_SIZE", 15),
            max_overflow=_int("DB_MAX_OVERFLOW", 20),
            pool_timeout=_int("DB_POOL_TIMEOUT", 30),
            pool_recycle=_int("DB_POOL_RECYCLE", 3600),
        )


EVENTS_SUBJECT = "tasktracker.events"
