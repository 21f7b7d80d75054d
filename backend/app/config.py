"""Runtime configuration of the reference API, read from the environment."""

import hashlib
import hmac
import os
import ssl
from dataclasses import dataclass, field
from urllib.parse import quote


def _int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def postgres_url(user: str, password: str, host: str, port: str, db: str) -> str:
    """A SQLAlchemy URL for psycopg. User, password and database name are percent-encoded, so a
    password with `@ / # : % ?` (or anything else) connects; SQLAlchemy decodes them again."""
    def enc(value: str) -> str:
        return quote(value, safe="")

    return f"postgresql+psycopg://{enc(user)}:{enc(password)}@{host}:{port}/{enc(db)}"


@dataclass(frozen=True)
class AppConfig:
    database_url: str = field(repr=False)  # holds the database password
    nats_url: str
    nats_user: str
    nats_password: str = field(repr=False)
    release_id: str
    pool_size: int
    max_overflow: int
    pool_timeout: int
    pool_recycle: int
    job_requeue_after: int = 60
    job_max_requeues: int = 5
    job_ack_wait: int = 60
    job_standin_seconds: float = 0.0
    telegram_bot_token: str = field(default="", repr=False)
    job_stream_max_msgs: int = 1_000_000
    job_stream_max_bytes: int = 256 << 20
    nats_tls_ca: str = ""  # deploy toolkit, on a swarm: the CA that signed NATS's certificate

    @classmethod
    def from_env(cls) -> "AppConfig":
        default_url = postgres_url(
            os.environ.get("POSTGRES_USER", "postgres"),
            os.environ.get("POSTGRES_PASSWORD", ""),
            os.environ.get("POSTGRES_HOST", "postgres"),
            os.environ.get("POSTGRES_PORT", "5432"),
            os.environ.get("POSTGRES_DB", "tasktracker"),
        )
        return cls(
            database_url=os.environ.get("DATABASE_URL") or default_url,
            nats_url=os.environ.get("NATS_URL", "nats://nats:4222"),
            nats_user=os.environ.get("NATS_USER", "tasktracker"),
            nats_password=os.environ.get("NATS_PASSWORD", ""),
            release_id=os.environ.get("RELEASE_ID", "dev"),
            # The plan's VPS pool settings; each can be overridden by environment.
            pool_size=_int("DB_POOL_SIZE", 15),
            max_overflow=_int("DB_MAX_OVERFLOW", 20),
            pool_timeout=_int("DB_POOL_TIMEOUT", 30),
            pool_recycle=_int("DB_POOL_RECYCLE", 3600),
            # Jobs (app/worker.py): a task still pending this long after its job was queued is
            # queued again, at most this often, then marked failed; the job stream's limits.
            job_requeue_after=_int("JOB_REQUEUE_AFTER", 60),
            job_max_requeues=_int("JOB_MAX_REQUEUES", 5),
            job_ack_wait=_int("JOB_ACK_WAIT", 60),  # a job not acknowledged by then is delivered again
            # How long the stand-in job waits, as the real app's LLM call would (benchmarks/jobs.py).
            job_standin_seconds=float(os.environ.get("JOB_STANDIN_SECONDS", 0)),
            telegram_bot_token=os.environ.get("TELEGRAM_BOT_TOKEN", ""),
            job_stream_max_msgs=_int("JOB_STREAM_MAX_MSGS", 1_000_000),
            job_stream_max_bytes=_int("JOB_STREAM_MAX_BYTES", 256 << 20),
            nats_tls_ca=os.environ.get("NATS_TLS_CA", ""),
        )

    def nats_options(self) -> dict:
        """Login for nats.connect() and the TaskIQ broker. Passed as options, not inside NATS_URL,
        so the password needs no URL encoding (nats-py does not decode one in a URL). Empty when
        NATS_PASSWORD is unset: a server without authorization. With NATS_TLS_CA (set by the deploy
        toolkit on a swarm, where NATS is on another host), TLS verified against that CA only."""
        options = {"user": self.nats_user, "password": self.nats_password} if self.nats_password else {}
        if self.nats_tls_ca:
            options["tls"] = ssl.create_default_context(cafile=self.nats_tls_ca)
        return options


EVENTS_SUBJECT = "tasktracker.events"


def webhook_secret(bot_token: str) -> str:
    """The secret token Telegram sends with each update (X-Telegram-Bot-Api-Secret-Token): derived
    from the bot token exactly as the deploy toolkit derives it when it sets the webhook
    (tasks/commands/telegram.py), so nothing new is stored."""
    return hmac.new(bot_token.encode(), b"tasktracker telegram webhook", hashlib.sha256).hexdigest()
