"""The settings reference's groups, and the keys only the stack reads (`StackKey`): with the
`Settings` fields (tasks/settings.py) the one source of docs/settings.md and .env.example,
which tasks/settings_doc.py renders."""

from __future__ import annotations

from dataclasses import dataclass


# The groups of the settings reference (docs/settings.md) and of .env.example, in their order, each
# with what holds for all of its keys. Every field of `Settings` names one of them.
SETTING_GROUPS: dict[str, str] = {
    "Database": "The PostgreSQL container and the API's connection pool.",
    "NATS JetStream": "The message bus between the API and the worker; nats-server requires a "
                      "login.",
    "Managed services": "A managed PostgreSQL in place of the stack's own "
                        "(docs/managed-services.md): empty DATABASE_HOST keeps the stack's "
                        "postgres.",
    "Telegram": "The stack's Telegram bot, which also sends the alerts (below).",
    "LLM provider": "The LLM the app calls, openai or anthropic: only the chosen provider's API "
                    "key is required.",
    "Public addresses": "Where users reach the app (all three are required).",
    "Runtime and deploy": "Where releases live on the host and how many are kept, and the names "
                          "and ports that let two environments share one host (each needs its own "
                          "APP_DIR, COMPOSE_PROJECT and HTTP_PORT/HTTPS_PORT).",
    "Images and engine": "Where the backend image is built, whether images the host lacks are "
                         "shipped "
                         "from this machine over SSH (hosts that cannot pull: rate limits, no "
                         "registry, "
                         "private networks), and what runs the stack: Compose on one host, or a "
                         "Docker Swarm (docs/several-hosts.md).",
    "Alerts": "A failed nightly backup or certificate renewal, each deploy and rollback "
              "(docs/operations.md, \"Alerts\"). Sent from the host "
              "(APP_DIR/bin/tasktracker-notify), "
              "so no laptop is needed: to Telegram (the stack's bot, TELEGRAM_BOT_TOKEN) and/or a "
              "webhook; both ALERT_TELEGRAM_CHAT_ID and ALERT_WEBHOOK_URL empty: no alerts.",
    "Tracing": "Logfire, when you want traces: with LOGFIRE_TOKEN set, the API and the worker "
               "send a span per request, database query and job, and their logs "
               "(backend/README.md, \"Tracing\"; docs/operations.md, \"Tracing with "
               "Logfire\"); empty: nothing is sent.",
    "Off-site copies": "Every full backup set is also pushed, encrypted, to a restic repository "
                       "you own, off this VPS (docs/operations.md, \"Off-site copies\"; "
                       "tasks/commands/offsite.py); "
                       "OFFSITE_REPOSITORY empty: no off-site copies. These keys reach the host "
                       "only in its "
                       "offsite.conf, never in a release's .env (the stack must not see them).",
}


@dataclass(frozen=True)
class StackKey:
    """A key the stack's containers read from the release's .env that `Settings` does not check:
    it reaches the host as written in the local settings file (`env_values` keeps every key of it),
    else the stack uses `default`. Listed in the settings reference and .env.example."""

    key: str
    default: str
    group: str
    doc: str


STACK_KEYS: tuple[StackKey, ...] = (
    StackKey("DB_POOL_SIZE", "15", "Database",
             "Connections each API worker process and the worker keep in their database pool "
             "(the plan's VPS value)."),
    StackKey("DB_MAX_OVERFLOW", "20", "Database",
             "Connections a pool may open beyond DB_POOL_SIZE; `doctor` checks "
             "(API_WORKERS + 1) x (DB_POOL_SIZE + DB_MAX_OVERFLOW) against Postgres's "
             "max_connections."),
    StackKey("DB_POOL_TIMEOUT", "30", "Database", "Seconds a request waits for a free pooled "
                                                  "connection."),
    StackKey("DB_POOL_RECYCLE", "3600", "Database", "Seconds after which a pooled connection is "
                                                    "replaced."),
    StackKey("JOB_REQUEUE_AFTER", "60", "NATS JetStream",
             "Seconds a task may stay pending after its job was queued before the worker's sweeper "
             "queues it again (backend/README.md, \"Jobs\")."),
    StackKey("JOB_MAX_REQUEUES", "5", "NATS JetStream",
             "How often a late job is queued again before its task is marked failed (a dead letter "
             "`doctor` reports)."),
    StackKey("JOB_ACK_WAIT", "60", "NATS JetStream",
             "Seconds a job may run unacknowledged before NATS delivers it again (a worker killed "
             "mid-job)."),
    StackKey("JOB_STREAM_MAX_MSGS", "1000000", "NATS JetStream",
             "The most jobs the job stream holds; when full, new jobs wait in their rows for the "
             "sweeper."),
    StackKey("JOB_STREAM_MAX_BYTES", "268435456", "NATS JetStream", "The most bytes the job stream "
                                                                    "holds (256 MiB)."),
    StackKey("POSTGRES_HOST_PORT", "5432", "Runtime and deploy",
             "Development only (compose.override.yml): the port Postgres is published on, on this "
             "machine's loopback; production publishes nothing but nginx."),
    StackKey("NATS_HOST_PORT", "4222", "Runtime and deploy",
             "Development only (compose.override.yml): the port NATS is published on, on this "
             "machine's loopback."),
)
