"""A managed PostgreSQL (DATABASE_HOST set; docs/managed-services.md): the release's compose file
without the stack's own postgres, and the small client container the toolkit reaches it through.

The deploy writes `compose.managed.yml` into each release from that release's compose.yml
(`managed_compose`): the `postgres` service, its volumes and every `depends_on` it is named in are
replaced by `db-client`, an idle container of the same image (psql, pg_dump, pg_restore of the
same major) whose environment points libpq at the managed server (PGHOST, PGSSLMODE, PGSSLROOTCERT,
PGPASSWORD from the release's .env), so every step that runs `psql` in "the postgres container"
(the app role, the schema read, backups, `status`) runs it there, over TLS. Its health check is a
real query (`select 1` as POSTGRES_USER, TLS verified), so the API and the worker, which depend on
it, start only once the managed server answers. The API and the worker get the same libpq
variables beside POSTGRES_HOST/POSTGRES_PORT (backend/app/config.py builds its URL from them;
psycopg reads PGSSLMODE and PGSSLROOTCERT). The server's CA certificate is APP_DIR/shared/db-ca.pem
(public, 0644; each deploy writes it), mounted read-only. Values are Compose references to the release's
.env, so the file depends on compose.yml only. Nothing here opens a connection.
"""

from __future__ import annotations

import yaml

from . import q
from .context import MANAGED_CLIENT as CLIENT
from .context import stack_files

MANAGED_FILE = stack_files(managed_db=True)[0]
CA_FILE = "shared/db-ca.pem"  # under APP_DIR: the same path in every release, so a deploy leaves
CA_PATH = "/etc/tasktracker-db-ca.pem"  # db-client's definition alone (in the containers)
CA_MOUNT = f"${{APP_ROOT:?APP_ROOT must be set in .env}}/{CA_FILE}:{CA_PATH}:ro"
SSL_MODES = ("verify-full", "verify-ca")  # TLS with the server's certificate verified, nothing less
POSTGRES_VOLUMES = ("postgres_data", "pgbackrest_repo")
PITR_SKIPPED = ("point-in-time recovery is the managed database's provider's (DATABASE_HOST is "
                "set): no WAL archive here")
LIBPQ = {"PGHOST": "${DATABASE_HOST:?DATABASE_HOST must be set in .env}",
         "PGPORT": "${DATABASE_PORT:-5432}", "PGSSLMODE": "${DATABASE_SSLMODE:-verify-full}",
         "PGSSLROOTCERT": CA_PATH, "PGCONNECT_TIMEOUT": "10"}


def client_service(image: str, base: dict) -> dict:
    """The db-client service: `base` is compose.yml's postgres (its restart, logging, no new
    privileges are kept), the image the same; an idle process as the image's postgres user, no
    capability, a read-only root, a small memory reservation."""
    kept = {k: base[k] for k in ("restart", "security_opt", "logging") if k in base}
    owner = "${POSTGRES_USER:-postgres}"
    return {**kept, "image": image, "init": True, "user": "postgres",
            "entrypoint": ["sleep", "infinity"], "cap_drop": ["ALL"], "read_only": True,
            "environment": {**LIBPQ, "PGUSER": owner, "PGDATABASE": "${POSTGRES_DB:-tasktracker}",
                            "PGPASSWORD": "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD must be set}",
                            "POSTGRES_USER": owner, "POSTGRES_DB": "${POSTGRES_DB:-tasktracker}"},
            "volumes": [CA_MOUNT, {"type": "tmpfs", "target": "/tmp",
                                   "tmpfs": {"size": 67108864}}],
            "healthcheck": {"test": ["CMD", "psql", "-XAtqc", "select 1"], "interval": "5s",
                            "timeout": "10s", "retries": 12},
            "deploy": {"resources": {"limits": {"memory": "256M", "cpus": "0.5"},
                                     "reservations": {"memory": "16M", "cpus": "0.05"}}}}


def managed_compose(compose_yml: str) -> str:
    """compose.managed.yml from a release's compose.yml (see the module)."""
    doc = yaml.safe_load(compose_yml)
    doc = {k: v for k, v in doc.items() if not str(k).startswith("x-")}  # anchors are resolved
    services = doc["services"]
    postgres = services.pop("postgres")
    image = postgres["image"]
    for spec in services.values():
        needs = spec.get("depends_on")
        if isinstance(needs, dict) and "postgres" in needs:
            spec["depends_on"] = {(CLIENT if k == "postgres" else k): v for k, v in needs.items()}
        elif isinstance(needs, list) and "postgres" in needs:
            spec["depends_on"] = [CLIENT if k == "postgres" else k for k in needs]
        else:
            continue
        env = spec.setdefault("environment", {})
        env.update({"POSTGRES_HOST": LIBPQ["PGHOST"], "POSTGRES_PORT": LIBPQ["PGPORT"],
                    **{k: v for k, v in LIBPQ.items() if k != "PGHOST"}})
        spec["volumes"] = [*(spec.get("volumes") or []), CA_MOUNT]
    services[CLIENT] = client_service(image, postgres)
    doc["volumes"] = {k: v for k, v in (doc.get("volumes") or {}).items()
                      if k not in POSTGRES_VOLUMES}
    head = ("# Written by the deploy from this release's compose.yml for a managed PostgreSQL "
            "(DATABASE_HOST);\n# do not edit (tasks/commands/managed.py).\n")
    return head + yaml.safe_dump(doc, sort_keys=False, width=100)


# --- doctor and status: the managed server reached from the host, over TLS ---------------------

TLS_QUERY = ("SELECT 'tls=' || coalesce(s.ssl::text, 'false'), 'protocol=' || "
             "coalesce(s.version, '-'), 'server=' || current_setting('server_version') "
             "FROM pg_stat_ssl s WHERE s.pid = pg_backend_pid()")


def reach_check(ctx) -> str:
    """Shell (a status snapshot's section): a query through the client container, as the app's
    steps make it (PGSSLMODE: the certificate verified), and what the server says of the TLS of
    that very connection: `reach=ok` with `tls=`, `protocol=`, `server=`, or `reach=failed` with
    libpq's words; nothing without a managed database."""
    if not ctx.managed_db:
        return "true"
    pg = ctx.container("postgres")
    query = q(f"psql -XAt -F '\n' -c {q(TLS_QUERY)} 2>&1")
    return (f"pg=$({pg}); if [ -z \"$pg\" ]; then echo reach=failed; echo 'error=no running "
            f"{CLIENT} container'; elif out=$(timeout 20 docker exec \"$pg\" sh -c {query}); then "
            "echo reach=ok; printf '%s\\n' \"$out\"; else echo reach=failed; "
            "printf 'error=%s\\n' \"$(printf '%s' \"$out\" | tr '\\n' ' ' | cut -c1-300)\"; fi")


def parse_reach(output: str) -> dict:
    values = dict(line.split("=", 1) for line in output.splitlines() if "=" in line)
    return values if values.get("reach") else {}
