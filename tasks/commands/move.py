"""`db.move-to-managed` (docs/managed-services.md): the stack's own database copied into the managed
PostgreSQL of DATABASE_HOST under a write freeze (tasks/programs/db-move.sh), then switched to by a
deploy. Nothing here opens a connection."""

from __future__ import annotations

from . import q
from .context import HostContext
from .managed import CA_FILE
from .programs import filled, program

MOVE_PROGRAM = program("db-move.sh")
ENV_NAME = "db-move.env"  # in the lock's 0700 inbox, removed with it


def client_env(host: str, port: int, sslmode: str, user: str, password: str, database: str) -> str:
    """The one-off client's `docker run --env-file` (values taken literally: no quotes, one line
    each): libpq's variables for the managed server, the CA at /ca.pem."""
    values = {"PGHOST": host, "PGPORT": str(port), "PGSSLMODE": sslmode,
              "PGSSLROOTCERT": "/ca.pem", "PGUSER": user, "PGPASSWORD": password,
              "PGDATABASE": database, "PGCONNECT_TIMEOUT": "10"}
    if any("\n" in v or "\r" in v for v in values.values()):
        raise ValueError("A database setting holds a line break, which no env file can carry.")
    return "".join(f"{k}={v}\n" for k, v in values.items())


def move_script(ctx: HostContext) -> str:
    """Shell: the copy (`ctx` without the managed database: its postgres is the local one)."""
    local = HostContext(ctx.app_dir, ctx.project, ctx.variant)
    body = filled(MOVE_PROGRAM, {"@ENV_FILE@": q(f"{ctx.inbox}/{ENV_NAME}"),
                                 "@CA@": q(f"{ctx.app_dir}/{CA_FILE}"),
                                 "@POSTGRES@": local.container("postgres")})
    return f"bash -c {q(body)} db-move"


def parse_moved(output: str) -> dict[str, str]:
    """The `@@moved tables= rows= seconds=` line's figures ({} when the copy did not finish)."""
    for line in output.splitlines():
        if line.startswith("@@moved "):
            return dict(p.split("=", 1) for p in line.split()[1:] if "=" in p)
    return {}


def unfreeze(ctx: HostContext) -> str:
    """Shell: the local database takes writes again (the switch did not happen)."""
    local = HostContext(ctx.app_dir, ctx.project, ctx.variant)
    sql = ("ALTER DATABASE :\"DBNAME\" SET default_transaction_read_only = off;\n"
           "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = "
           "current_database() AND pid <> pg_backend_pid();\n")
    psql = ("psql -X -q -At -v ON_ERROR_STOP=1 -v DBNAME=\"$POSTGRES_DB\" -U \"$POSTGRES_USER\" "
            "-d \"$POSTGRES_DB\"")
    return (f"pg=$({local.container('postgres')}); [ -n \"$pg\" ] && printf %s {q(sql)} | "
            f"docker exec -i \"$pg\" sh -c {q(psql)} >/dev/null")


def retire_local(ctx: HostContext) -> str:
    """Shell: after the switch, the local postgres container stopped and removed; its volumes
    (the data as of the freeze) stay, for a move back or a look."""
    local = HostContext(ctx.app_dir, ctx.project, ctx.variant)
    ids = local.containers("postgres", running_only=False)
    return f"ids=$({ids}); [ -z \"$ids\" ] || docker rm -f $ids >/dev/null"
