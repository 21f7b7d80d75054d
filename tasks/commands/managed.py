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
psycopg reads PGSSLMODE and PGSSLROOTCERT). The server's CA certificate is the release's
`db-ca.pem` (public, 0644), mounted read-only. Values are Compose references to the release's
.env, so the file depends on compose.yml only. Nothing here opens a connection.
"""

from __future__ import annotations

import yaml

from .context import MANAGED_CLIENT as CLIENT
from .context import stack_files

MANAGED_FILE = stack_files(managed_db=True)[0]
CA_NAME = "db-ca.pem"  # in the release directory
CA_PATH = "/etc/tasktracker-db-ca.pem"  # in the containers
CA_MOUNT = f"./{CA_NAME}:{CA_PATH}:ro"
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
