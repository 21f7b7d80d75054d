"""PostgreSQL major versions: the deploy's guard and `db.upgrade`.

PostgreSQL does not start on a data directory of another major version, and the stack's data
outlives every image change. So a deploy compares the major version of the data in the Postgres
volume (`pg_data`, read by the preflight: commands/release.py) with the one of the image this
checkout's compose.yml names, and refuses a mismatch before anything changes.

`db.upgrade` moves the data to the image's major by dump and restore, on the host, in one script
(UPGRADE_SCRIPT below), failing closed:

    stop api and worker       no write can be lost after the dump
    full verified backup      the host's backup script: pg_dump with row counts in one snapshot,
                              restored into a scratch database and counted again
    keep the old data         Postgres stopped; its volume copied to <volume>_pg<old>_<time>
                              (verified with diff -r), which stays until the operator removes it
    pin the new image         every kept release's release.yml names the new Postgres image
                              (their own copies kept as release.yml.pre-upgrade until done)
    new cluster               the volume emptied; the new image initialises it (POSTGRES_*)
    restore and compare       pg_restore of the set's dump; row counts equal to the dump's
    start and prove           api and worker started, healthy, and the release's health probe

Any failure puts the old Postgres back: the old release.yml files, the old data copied back from
the kept volume (when the volume had been emptied), the old image started, api and worker again.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from pathlib import Path

import yaml

from . import q, sh
from .backup import script_path
from .context import HostContext
from .release import POSTGRES_DATA
from .programs import filled, program

# The row counts of every table in `public`, as the backup script counts them (rowcounts.txt).
ROW_COUNTS_SQL = """SELECT format('SELECT %L || ''='' || count(*) FROM %I.%I', table_name, table_schema, table_name)
  FROM information_schema.tables WHERE table_schema = 'public' AND table_type = 'BASE TABLE' ORDER BY table_name \\gexec
"""
FREE_MARGIN_KB = 256 * 1024  # beyond the copy of the old data and the new cluster
# =<project>, on the volume that keeps the old data
KEPT_LABEL = "org.tasktracker.kept-postgres-data"

# The guard's verdicts.
MATCH, FRESH, UNKNOWN, UNCHECKED, OLDER, NEWER = ("match", "fresh", "unknown", "unchecked", "older",
                                                  "newer")


def postgres_image(root: Path) -> str:
    """The Postgres image a checkout's compose.yml names (`${POSTGRES_IMAGE:-default}`: the
    default)."""
    image = yaml.safe_load((root / "compose.yml").read_text())["services"]["postgres"]["image"]
    match = re.fullmatch(r"\$\{\w+:-([^}]+)\}", image)
    return match.group(1) if match else image


def image_major(image: str) -> str | None:
    """The PostgreSQL major version an image's tag names (`postgres:15`, `postgres:17.2-bookworm`,
    `pgvector/pgvector:pg17`, `pgvector/pgvector:0.8.0-pg17-trixie`), as PG_VERSION spells it;
    None when the tag does not say (`latest`, a digest, no tag)."""
    name = image.split("@", 1)[0]
    tag = name.rsplit(":", 1)[1] if ":" in name.rsplit("/", 1)[-1] else ""
    match = re.search(r"(?:^|-)pg(\d+)(?:$|[.-])", tag) or re.match(r"(\d+)(?:\.(\d+))?(?:$|[.-])",
                                                                    tag)
    if not match:
        return None
    major = match.group(1)
    # 9.6: before 10 the major had two parts
    if int(major) < 10 and match.re.groups == 2 and match.group(2):
        return f"{major}.{match.group(2)}"
    return major


def _version(major: str) -> tuple[int, ...]:
    return tuple(int(part) for part in major.split("."))


def guard(data: str, image: str) -> tuple[str, str | None]:
    """(verdict, the image's major) for the data's major (`pg_data`) and the image a release
    runs."""
    wanted = image_major(image)
    if data in ("", "none", "empty"):
        return FRESH, wanted
    if not re.fullmatch(r"\d+(\.\d+)?", data):
        return UNKNOWN, wanted
    if wanted is None:
        return UNCHECKED, wanted
    if data == wanted:
        return MATCH, wanted
    return (OLDER if _version(data) < _version(wanted) else NEWER), wanted


def refusal(verdict: str, data: str, image: str, wanted: str | None, host: str, volume: str,
            upgrade: str) -> str:
    """The deploy's refusal, in one paragraph naming both versions and the way out."""
    if verdict == OLDER:
        return (f"The database on {host} is PostgreSQL {data} (volume {volume}), but this release "
                f"runs PostgreSQL {wanted} "
                f"({image}), and PostgreSQL {wanted} does not start on a data directory of another "
                "major version. Upgrade "
                f"the data first with `{upgrade}`: it stops the API, takes a verified backup, "
                "restores the dump into a new "
                f"PostgreSQL {wanted} cluster and compares the row counts, keeps the old data in a "
                "volume of its own until "
                "you remove it, and puts everything back if any step fails. Then deploy again. "
                f"Nothing was changed on the server.")
    return (f"The database on {host} is PostgreSQL {data} (volume {volume}), newer than the "
            f"PostgreSQL {wanted} this release "
            f"runs ({image}); a data directory cannot be moved to an older major version by "
            "starting it. Deploy a release "
            f"whose compose.yml names PostgreSQL {data} (or later). Nothing was changed on the "
            "server.")


def keep_volume(ctx: HostContext, major: str, stamp: str) -> str:
    """The volume that keeps the old data after an upgrade (e.g.
    tt_postgres_data_pg15_20260101T000000Z)."""
    return f"{ctx.postgres_volume}_pg{major}_{stamp}"


def upgrade_facts(ctx: HostContext) -> str:
    """Before `db.upgrade` changes anything: the running postgres container's image, the size of
    its data and the free space of the filesystem Docker keeps volumes on (kB)."""
    measure = (f"du -sk {POSTGRES_DATA} | cut -f1; df -Pk {POSTGRES_DATA} | awk 'NR == 2 {{print "
               "$4}'")
    return (f"pg=$({ctx.container('postgres')}); if [ -z \"$pg\" ]; then echo running=no; else "
            "echo running=yes; "
            f"echo \"image=$(docker inspect -f '{{{{.Config.Image}}}}' \"$pg\")\"; "
            f"docker exec \"$pg\" sh -c {q(measure)} | paste -sd' ' | awk '{{print \"data_kb=\" "
            "$1; print \"free_kb=\" $2}'; fi")


def space_problem(data_kb: int, free_kb: int) -> str | None:
    """The upgrade needs room for a copy of the old data and the new cluster (about as big)."""
    need = 2 * data_kb + FREE_MARGIN_KB
    if free_kb >= need:
        return None
    return (f"the data is {data_kb / 1024:.0f} MiB and the upgrade needs about {need / 1024:.0f} "
            "MiB free next to it (a copy "
            f"of the old data and the new cluster), but only {free_kb / 1024:.0f} MiB are free")


UPGRADE_SCRIPT = program("db-upgrade.sh")


def upgrade(ctx: HostContext, *, old_major: str, new_image: str, keep: str, backup_keep: int,
            pins: dict[str, str],
            probe: str) -> str:
    """The upgrade script (see the module's docstring). `pins`: each kept release's id and its
    release.yml naming `new_image`; `probe`: the current release's health probe (run in it)."""
    new_major = image_major(new_image) or ""
    pin_files = [f"{ctx.release_dir(rid)}/release.yml" for rid in sorted(pins)]
    pin = "\n".join(f"if [ -f {q(f)} ]; then cp -p {q(f)} {q(f + '.pre-upgrade')} && printf %s "
                    f"{q(pins[rid])} > {q(f)}; fi"
                    for rid, f in zip(sorted(pins), pin_files, strict=True)) or "true"
    # Not Compose's project label: `compose down --volumes` removes every volume that carries it.
    labels = " ".join(f"--label {q(label)}" for label in (
        f"{KEPT_LABEL}={ctx.project}", f"org.tasktracker.kept-from={ctx.postgres_volume}",
        f"org.tasktracker.postgres-major={old_major}"))
    all_postgres = ctx.containers("postgres", running_only=False)
    values = {
        "@VOLUME@": q(ctx.postgres_volume), "@KEEP@": q(keep), "@NEW_IMAGE@": q(new_image),
        "@NEW_MAJOR@": q(new_major),
        "@OLD_MAJOR@": q(old_major), "@CURRENT@": q(ctx.current_link),
        "@POSTGRES@": ctx.container("postgres"),
        "@ALL_POSTGRES@": all_postgres, "@API@": ctx.container("api"),
        "@APIS@": ctx.containers("api"),
        "@WORKERS@": ctx.containers("worker"),
        "@START_APP@": sh(ctx.compose("start", "api", "worker")),
        "@POSTGRES_UP@": sh(ctx.compose("up", "-d", "--no-deps", "postgres")),
        "@BACKUP@": sh([script_path(ctx), ctx.app_dir, ctx.project, str(backup_keep)]),
        "@BACKUPS@": q(ctx.backups_dir),
        "@DATA@": POSTGRES_DATA, "@KEEP_LABELS@": labels, "@PIN@": pin,
        "@PIN_FILES@": " ".join(q(f) for f in pin_files),
        "@ROW_COUNTS_SQL@": ROW_COUNTS_SQL.rstrip("\n"), "@PROBE@": probe,
        "@APP_ROLE@": ensure_app_role(ctx),
    }
    return filled(UPGRADE_SCRIPT, values)


def parse_upgrade(output: str) -> dict[str, str]:
    """`UPGRADE OK set=... keep=... tables=... rows=...` (the script's last line) as a dict; {} if
    absent."""
    for line in reversed(output.splitlines()):
        if line.startswith("UPGRADE OK "):
            return dict(part.split("=", 1) for part in line.split()[2:] if "=" in part)
    return {}


# --- the app's own database role ---------------------------------------------------------------
# The API and the worker connect as APP_DB_USER, a role that is no superuser, creates no role or
# database, owns nothing and may only read and write the rows of the tables in `public` (and use
# their sequences). POSTGRES_USER (the image makes it a superuser) owns the schema, runs the
# migrations and the toolkit's admin paths (backup, restore, upgrade, pgBackRest). Its password is
# derived from POSTGRES_PASSWORD (nothing new to keep) and reaches Postgres only as a SCRAM
# verifier, in a 0600 file the deploy writes (APP_DIR/env/app-role.sql): never a command line, and
# never in clear in Postgres's log should the statement fail.
APP_ROLE_LABEL = b"tasktracker app database role"
APP_ROLE_SALT_LABEL = b"tasktracker app database role scram salt"
SCRAM_ITERATIONS = 4096
APP_ROLE_FILE = "app-role.sql"  # in APP_DIR/env (0700), mode 0600
ROLE_NAME_RE = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def app_role_password(owner_password: str) -> str:
    """The app role's password: an HMAC of POSTGRES_PASSWORD with a fixed label (64 hex digits),
    as the Telegram webhook's secret is derived from the bot token."""
    return hmac.new(owner_password.encode(), APP_ROLE_LABEL, hashlib.sha256).hexdigest()


def scram_verifier(password: str, salt: bytes, iterations: int = SCRAM_ITERATIONS) -> str:
    """What Postgres stores for a SCRAM-SHA-256 password (RFC 5802/7677), given to ALTER ROLE so the
    password itself is never sent: `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`.
    The password is ASCII (hex digits), which SASLprep leaves as it is."""
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    b64 = lambda raw: base64.b64encode(raw).decode()  # noqa: E731
    stored_key = hashlib.sha256(client_key).digest()
    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def app_role_verifier(owner_password: str) -> str:
    """The app role's verifier, with a salt derived from POSTGRES_PASSWORD too: the same settings
    give the same file, so a deploy with nothing new sends nothing new."""
    salt = hmac.new(owner_password.encode(), APP_ROLE_SALT_LABEL, hashlib.sha256).digest()[:16]
    return scram_verifier(app_role_password(owner_password), salt)


def ident(name: str) -> str:
    """A quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def literal(value: str) -> str:
    """A quoted SQL string literal (standard_conforming_strings: only `'` is special)."""
    return "'" + value.replace("'", "''") + "'"


def app_role_sql(role: str, verifier: str, owner: str, database: str) -> str:
    """Idempotent SQL, run as the owner (superuser) in the app's database on every deploy and after
    every restore: the role exists with exactly these attributes and this password, may connect and
    use `public`, reads and writes every table there and uses its sequences, and the same for
    tables and sequences the owner creates later (default privileges: the next migration's tables
    need no new grant). The owner keeps the schema; nobody else may create objects in it."""
    r, o = ident(role), ident(owner)
    attributes = ("LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS INHERIT "
                  "CONNECTION LIMIT -1")
    return "\n".join([
        "\\set ON_ERROR_STOP on",
        "BEGIN;",
        f"SELECT format('CREATE ROLE %I', {literal(role)}) WHERE NOT EXISTS "
        f"(SELECT FROM pg_roles WHERE rolname = {literal(role)}) \\gexec",
        f"ALTER ROLE {r} WITH {attributes} PASSWORD {literal(verifier)};",
        f"GRANT CONNECT ON DATABASE {ident(database)} TO {r};",
        "REVOKE CREATE ON SCHEMA public FROM PUBLIC;",
        f"GRANT USAGE ON SCHEMA public TO {r};",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {r};",
        f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {r};",
        f"ALTER DEFAULT PRIVILEGES FOR ROLE {o} IN SCHEMA public "
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {r};",
        f"ALTER DEFAULT PRIVILEGES FOR ROLE {o} IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES "
        f"TO {r};",
        "COMMIT;",
    ]) + "\n"


def app_role_script(role: str, owner: str, owner_password: str, database: str) -> str:
    """`app_role_sql` for these settings, the password given as its verifier."""
    return app_role_sql(role, app_role_verifier(owner_password), owner, database)


def app_role_path(ctx: HostContext) -> str:
    return f"{ctx.env_dir}/{APP_ROLE_FILE}"


def ensure_app_role(ctx: HostContext) -> str:
    """Shell (run from the login directory): the app role as the last deploy wrote it
    (`app_role_path`), applied as the owner inside the Postgres container, once Postgres answers.
    Nothing when the file is absent: the host was deployed before releases had an app role, and
    their API connects as POSTGRES_USER."""
    path = q(app_role_path(ctx))
    psql = q('psql -X -q -v ON_ERROR_STOP=1 -U "$POSTGRES_USER" -d "$POSTGRES_DB" >/dev/null')
    ready = q('pg_isready -q -U "$POSTGRES_USER" -d "$POSTGRES_DB"')
    return (f"if [ -f {path} ]; then pg=$({ctx.container('postgres')}); "
            f"[ -n \"$pg\" ] || {{ echo 'no running postgres container for the app role' >&2; "
            f"false; }}; "
            f"for _ in $(seq 1 60); do docker exec \"$pg\" sh -c {ready} && break; sleep 1; done; "
            f"docker exec -i \"$pg\" sh -c {psql} < {path}; fi")
