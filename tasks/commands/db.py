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

import re
from pathlib import Path

import yaml

from . import q, sh
from .backup import script_path
from .context import HostContext
from .release import POSTGRES_DATA
from .programs import program

# The row counts of every table in `public`, as the backup script counts them (rowcounts.txt).
ROW_COUNTS_SQL = """SELECT format('SELECT %L || ''='' || count(*) FROM %I.%I', table_name, table_schema, table_name)
  FROM information_schema.tables WHERE table_schema = 'public' AND table_type = 'BASE TABLE' ORDER BY table_name \\gexec
"""
FREE_MARGIN_KB = 256 * 1024  # beyond the copy of the old data and the new cluster
KEPT_LABEL = "org.tasktracker.kept-postgres-data"  # =<project>, on the volume that keeps the old data

# The guard's verdicts.
MATCH, FRESH, UNKNOWN, UNCHECKED, OLDER, NEWER = "match", "fresh", "unknown", "unchecked", "older", "newer"


def postgres_image(root: Path) -> str:
    """The Postgres image a checkout's compose.yml names (`${POSTGRES_IMAGE:-default}`: the default)."""
    image = yaml.safe_load((root / "compose.yml").read_text())["services"]["postgres"]["image"]
    match = re.fullmatch(r"\$\{\w+:-([^}]+)\}", image)
    return match.group(1) if match else image


def image_major(image: str) -> str | None:
    """The PostgreSQL major version an image's tag names (`postgres:15`, `postgres:17.2-bookworm`,
    `pgvector/pgvector:pg17`, `pgvector/pgvector:0.8.0-pg17-trixie`), as PG_VERSION spells it;
    None when the tag does not say (`latest`, a digest, no tag)."""
    name = image.split("@", 1)[0]
    tag = name.rsplit(":", 1)[1] if ":" in name.rsplit("/", 1)[-1] else ""
    match = re.search(r"(?:^|-)pg(\d+)(?:$|[.-])", tag) or re.match(r"(\d+)(?:\.(\d+))?(?:$|[.-])", tag)
    if not match:
        return None
    major = match.group(1)
    if int(major) < 10 and match.re.groups == 2 and match.group(2):  # 9.6: before 10 the major had two parts
        return f"{major}.{match.group(2)}"
    return major


def _version(major: str) -> tuple[int, ...]:
    return tuple(int(part) for part in major.split("."))


def guard(data: str, image: str) -> tuple[str, str | None]:
    """(verdict, the image's major) for the data's major (`pg_data`) and the image a release runs."""
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


def refusal(verdict: str, data: str, image: str, wanted: str | None, host: str, volume: str, upgrade: str) -> str:
    """The deploy's refusal, in one paragraph naming both versions and the way out."""
    if verdict == OLDER:
        return (f"The database on {host} is PostgreSQL {data} (volume {volume}), but this release runs PostgreSQL {wanted} "
                f"({image}), and PostgreSQL {wanted} does not start on a data directory of another major version. Upgrade "
                f"the data first with `{upgrade}`: it stops the API, takes a verified backup, restores the dump into a new "
                f"PostgreSQL {wanted} cluster and compares the row counts, keeps the old data in a volume of its own until "
                f"you remove it, and puts everything back if any step fails. Then deploy again. Nothing was changed on "
                f"the server.")
    return (f"The database on {host} is PostgreSQL {data} (volume {volume}), newer than the PostgreSQL {wanted} this release "
            f"runs ({image}); a data directory cannot be moved to an older major version by starting it. Deploy a release "
            f"whose compose.yml names PostgreSQL {data} (or later). Nothing was changed on the server.")


def keep_volume(ctx: HostContext, major: str, stamp: str) -> str:
    """The volume that keeps the old data after an upgrade (e.g. tt_postgres_data_pg15_20260101T000000Z)."""
    return f"{ctx.postgres_volume}_pg{major}_{stamp}"


def upgrade_facts(ctx: HostContext) -> str:
    """Before `db.upgrade` changes anything: the running postgres container's image, the size of
    its data and the free space of the filesystem Docker keeps volumes on (kB)."""
    measure = f"du -sk {POSTGRES_DATA} | cut -f1; df -Pk {POSTGRES_DATA} | awk 'NR == 2 {{print $4}}'"
    return (f"pg=$({ctx.container('postgres')}); if [ -z \"$pg\" ]; then echo running=no; else echo running=yes; "
            f"echo \"image=$(docker inspect -f '{{{{.Config.Image}}}}' \"$pg\")\"; "
            f"docker exec \"$pg\" sh -c {q(measure)} | paste -sd' ' | awk '{{print \"data_kb=\" $1; print \"free_kb=\" $2}}'; fi")


def space_problem(data_kb: int, free_kb: int) -> str | None:
    """The upgrade needs room for a copy of the old data and the new cluster (about as big)."""
    need = 2 * data_kb + FREE_MARGIN_KB
    if free_kb >= need:
        return None
    return (f"the data is {data_kb / 1024:.0f} MiB and the upgrade needs about {need / 1024:.0f} MiB free next to it (a copy "
            f"of the old data and the new cluster), but only {free_kb / 1024:.0f} MiB are free")


UPGRADE_SCRIPT = program("db-upgrade.sh")


def upgrade(ctx: HostContext, *, old_major: str, new_image: str, keep: str, backup_keep: int, pins: dict[str, str],
            probe: str) -> str:
    """The upgrade script (see the module's docstring). `pins`: each kept release's id and its
    release.yml naming `new_image`; `probe`: the current release's health probe (run in it)."""
    new_major = image_major(new_image) or ""
    pin_files = [f"{ctx.release_dir(rid)}/release.yml" for rid in sorted(pins)]
    pin = "\n".join(f"if [ -f {q(f)} ]; then cp -p {q(f)} {q(f + '.pre-upgrade')} && printf %s {q(pins[rid])} > {q(f)}; fi"
                    for rid, f in zip(sorted(pins), pin_files, strict=True)) or "true"
    # Not Compose's project label: `compose down --volumes` removes every volume that carries it.
    labels = " ".join(f"--label {q(label)}" for label in (
        f"{KEPT_LABEL}={ctx.project}", f"org.tasktracker.kept-from={ctx.postgres_volume}",
        f"org.tasktracker.postgres-major={old_major}"))
    all_postgres = ctx.containers("postgres", running_only=False)
    values = {
        "@VOLUME@": q(ctx.postgres_volume), "@KEEP@": q(keep), "@NEW_IMAGE@": q(new_image), "@NEW_MAJOR@": q(new_major),
        "@OLD_MAJOR@": q(old_major), "@CURRENT@": q(ctx.current_link), "@POSTGRES@": ctx.container("postgres"),
        "@ALL_POSTGRES@": all_postgres, "@API@": ctx.container("api"), "@APIS@": ctx.containers("api"),
        "@WORKERS@": ctx.containers("worker"), "@START_APP@": sh(ctx.compose("start", "api", "worker")),
        "@POSTGRES_UP@": sh(ctx.compose("up", "-d", "--no-deps", "postgres")),
        "@BACKUP@": sh([script_path(ctx), ctx.app_dir, ctx.project, str(backup_keep)]), "@BACKUPS@": q(ctx.backups_dir),
        "@DATA@": POSTGRES_DATA, "@KEEP_LABELS@": labels, "@PIN@": pin, "@PIN_FILES@": " ".join(q(f) for f in pin_files),
        "@ROW_COUNTS_SQL@": ROW_COUNTS_SQL.rstrip("\n"), "@PROBE@": probe,
    }
    script = UPGRADE_SCRIPT
    for key, value in values.items():
        script = script.replace(key, value)
    return script


def parse_upgrade(output: str) -> dict[str, str]:
    """`UPGRADE OK set=... keep=... tables=... rows=...` (the script's last line) as a dict; {} if absent."""
    for line in reversed(output.splitlines()):
        if line.startswith("UPGRADE OK "):
            return dict(part.split("=", 1) for part in line.split()[2:] if "=" in part)
    return {}
