"""Point-in-time recovery with pgBackRest: the WAL archive's set-up, its backups, its window and
`backup.restore --to-time`.

The stack's Postgres image (postgres/Dockerfile) carries pgBackRest; compose.yml gives it its
settings (PGBACKREST_* variables: stanza `main`, the repository in the `pgbackrest_repo` volume,
two full backups kept) and archives every WAL segment with `pgbackrest archive-push`, every few
seconds while there are writes (archive_timeout=WAL_ARCHIVE_TIMEOUT, 3 by default). Everything
here runs pgBackRest inside the postgres container (or, for a restore, in a one-off container of
the same image with the same volumes and settings), so the host needs nothing but Docker.

archive-push runs asynchronously (ARCHIVE_CONF, written by `ensure_stanza` on every deploy): one
background pgBackRest process pushes each finished segment to every repository (the local one
and, when set up, the off-site one) and Postgres is told a segment is archived only once it is in
all of them (pgBackRest raises an error otherwise, so Postgres keeps the segment and retries).
With archive_timeout of a few seconds (WAL_ARCHIVE_TIMEOUT) the off-site copy trails the primary
by that much under writes: the RPO (docs/operations.md, "RPO").
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone

from . import q, rollout
from .context import HostContext
from .programs import program

STANZA = "main"
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
TIME_RE = r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}"
# replaying WAL up to the target: minutes for a day of writes on a small VPS
RECOVERY_WAIT_SECONDS = 600
NO_PGBACKREST_EXIT = 9  # the release's Postgres image has no pgBackRest (an older release)

# Shell: run pgBackRest as postgres in the container "$pg".
BR = 'docker exec -u postgres "$pg" pgbackrest'
# Shell shared by the two restore scripts, where "$pg" is the postgres container: `sql` runs one
# statement in the app's database; the image and its pgBackRest settings (only those: no password)
# for one-off containers; `wait_promoted` waits until Postgres runs and is out of recovery.
SQL_FUNCTION = ('sql() { docker exec "$pg" sh -c \'psql -X -At -U "$POSTGRES_USER" -d '
                '"$POSTGRES_DB" -c "$1"\' psql "$1"; }')
CONTAINER_SETTINGS = """image=$(docker inspect -f '{{.Config.Image}}' "$pg")
envfile=$(mktemp) && chmod 600 "$envfile"
docker inspect -f '{{range .Config.Env}}{{println .}}{{end}}' "$pg" | grep '^PGBACKREST_' > "$envfile\""""
WAIT_PROMOTED = f"""wait_promoted() {{
  for _ in $(seq 1 {RECOVERY_WAIT_SECONDS * 2}); do
    [ "$(docker inspect -f '{{{{.State.Running}}}}' "$pg")" = true ] || return 1
    [ "$(sql 'SELECT pg_is_in_recovery()' 2>/dev/null)" = f ] && return 0
    sleep 0.5
  done
  return 1
}}"""

# In the pgbackrest_repo volume (so a recreated container keeps them): the second repository's
# settings (read through the image's /etc/pgbackrest/conf.d link) and its SSH key and known host.
CONF_DIR = "/var/lib/pgbackrest/conf.d"
# Asynchronous archive-push, in a file pgBackRest reads on every call (so it applies on the next
# segment, without recreating the container), in archive-push's section only: archive-get (a
# restore's replay) stays synchronous and queues nothing. The spool holds only the background
# process's status files (`.ok` per pushed segment; the WAL itself is read from pg_wal), in the
# container's /tmp tmpfs: a restart empties it, and the next archive-push pushes again what has
# no `.ok` (a segment already in a repository with the same checksum counts as pushed). No
# archive-push-queue-max: pgBackRest never drops WAL to bound pg_wal (status/doctor warn instead).
ARCHIVE_CONF = "\n".join([
    "# Written by tasktracker (deploy: tasks/commands/pitr.py ARCHIVE_CONF); do not edit.",
    "[global:archive-push]", "archive-async=y", "spool-path=/tmp/pgbackrest", "process-max=2", ""])


def parse_target(text: str, now: datetime) -> datetime:
    """The UTC moment `--to-time` names ("YYYY-MM-DD HH:MM:SS", UTC); ValueError with the fix."""
    if not re.fullmatch(TIME_RE, text.strip()):
        raise ValueError(f"--to-time {text!r} is not a time in the form \"YYYY-MM-DD HH:MM:SS\" "
                         f"(UTC), for example --to-time \"{now.strftime(TIME_FORMAT)}\".")
    try:
        target = datetime.strptime(text.strip(), TIME_FORMAT).replace(tzinfo=timezone.utc)
    except ValueError:
        raise ValueError(f"--to-time {text!r} is not a real date and time (UTC, \"YYYY-MM-DD "
                         "HH:MM:SS\").") from None
    if target >= now:
        raise ValueError(f"--to-time {text} is not in the past (it is {now.strftime(TIME_FORMAT)} "
                         "UTC on the host): the "
                         f"archive cannot hold what has not happened. Give an earlier time (UTC).")
    return target


# archive_timeout is enforced by the checkpointer, which after a start sleeps up to
# checkpoint_timeout (5 min) before it first looks at it; a reload wakes it. The postgres image's
# health check reloads once after every start (postgres/healthcheck.sh); a deploy also does, for a
# postgres still on a definition from before that check (ensure_stanza).
WAKE_CHECKPOINTER = ('docker exec "$pg" sh -c \'psql -X -Atq -U "$POSTGRES_USER" -d "$POSTGRES_DB" '
                     '-c "SELECT pg_reload_conf()"\' >/dev/null 2>&1 || true')


# Shell: `create_stanza` runs stanza-create ($out: what it said), waiting up to 30 s while the
# archiver's background push holds the stanza's lock (it pushes as soon as Postgres runs, into a
# repository whose stanza may not exist yet: after a restore, or when repo2's settings arrive).
CREATE_STANZA = f"""create_stanza() {{
    for _ in $(seq 1 30); do
      if out=$(timeout 120 {BR} stanza-create 2>&1); then return 0; fi
      case "$out" in *"another pgBackRest process"*) sleep 1 ;; *) return 1 ;; esac
    done
    return 1
  }}"""


def ensure_stanza(ctx: HostContext, container: str = "") -> str:
    """Shell (run after Postgres started): create the stanza, or upgrade it after a new cluster
    (db.upgrade), and take the first full backup when this host's repository (repo1: backups
    off-site do not count, as after `recover`) has none, so that the database can
    be restored to any moment from now on. Idempotent; prints `@@fact pitr=...`. An image
    without pgBackRest (an older release) prints pitr=unavailable. `container`: shell printing the
    postgres container's id (default: the Compose project's; a swarm passes its own filter)."""
    return f"""# the WAL archive: pgBackRest's stanza and first full backup
pg=$({container or ctx.container('postgres')})
if [ -z "$pg" ] || ! docker exec "$pg" sh -c 'command -v pgbackrest' >/dev/null 2>&1; then
  echo "@@fact pitr=unavailable"
else
  for _ in $(seq 1 60); do timeout 10 docker exec "$pg" pg_isready -q -h 127.0.0.1 && break; sleep 0.5; done
  {write_archive_conf()}
  {WAKE_CHECKPOINTER}
  {CREATE_STANZA}
  if ! create_stanza && ! out=$(timeout 120 {BR} stanza-upgrade 2>&1); then
    echo "WARNING: pgBackRest could not set up the WAL archive: $out" >&2; echo "@@fact pitr=failed"
  elif timeout 120 {BR} info --repo=1 --output=json | grep -q '"label"'; then
    echo "@@fact pitr=ok"
  else
    echo "   first pgBackRest full backup (the start of the point-in-time window)"
    if out=$({BR} backup --type=full 2>&1); then echo "@@fact pitr=ok"
    else echo "WARNING: the first pgBackRest backup failed: $out" >&2; echo "@@fact pitr=failed"; fi
  fi
fi"""


def write_archive_conf() -> str:
    """Shell where "$pg" is the postgres container: ARCHIVE_CONF into the volume's conf.d (replaced
    whole, through stdin); a failure is a warning (archive-push stays synchronous, which is safe
    but can lag a slow off-site repository by more than the RPO)."""
    inside = (f"install -d -o postgres -g postgres -m 700 {CONF_DIR} && umask 077 && cat > "
              f"{CONF_DIR}/archive.conf.new && chown postgres:postgres {CONF_DIR}/archive.conf.new"
              f" && mv -f {CONF_DIR}/archive.conf.new {CONF_DIR}/archive.conf")
    return (f"printf '%s' {q(ARCHIVE_CONF)} | docker exec -u root -i \"$pg\" sh -c {q(inside)} "
            "|| echo \"WARNING: could not write pgBackRest's asynchronous archive settings\" >&2")


# For the backup script (commands/backup.py), where "$pg" is the running postgres container: a
# pgBackRest backup (full on Sundays or when there is none, else differential), so the window
# reaches back two full backups (PGBACKREST_REPO1_RETENTION_FULL). Its failure is reported and
# does not fail the set (the dump is verified on its own); `doctor` and `status` show the archive.
BACKUP_SHELL = f"""if docker exec "$pg" sh -c 'command -v pgbackrest' >/dev/null 2>&1; then
  progress "pgBackRest backup (the point-in-time window)"
  type=diff; [ "$(date -u +%u)" = 7 ] && type=full
  {BR} stanza-create >/dev/null 2>&1 || true
  if out=$({BR} backup --type=$type 2>&1); then echo "[backup] pgBackRest $type backup ok"
  else echo "WARNING: the pgBackRest backup failed (point-in-time recovery reaches back only to the last good one): $(printf '%s' "$out" | tail -n 3 | tr '\\n' ' ')" >&2; fi
  if docker exec "$pg" test -f {CONF_DIR}/offsite.conf; then
    if out=$({BR} backup --repo=2 --type=$type 2>&1); then echo "[backup] pgBackRest $type backup off-site ok"
    else echo "WARNING: the off-site pgBackRest backup failed: $(printf '%s' "$out" | tail -n 3 | tr '\\n' ' ')" >&2; fi
  fi
fi"""


# The archiver in one row: its last success, failures counted and last failure (epoch seconds),
# the finished segments waiting to be archived (`.ready`) and the oldest one's time, and the size
# of pg_wal. archive-state.sh hands it to psql as an argument, so no shell quoting touches it.
ARCHIVER_QUERY = ("SELECT coalesce(extract(epoch FROM last_archived_time)::bigint, 0), "
                  "failed_count, coalesce(extract(epoch FROM last_failed_time)::bigint, 0), "
                  "(SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready'), "
                  "(SELECT coalesce(extract(epoch FROM min(modification))::bigint, 0) "
                  "FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready'), "
                  "(SELECT coalesce(sum(size), 0) FROM pg_ls_waldir()), "
                  "(SELECT setting FROM pg_settings WHERE name = 'archive_timeout') "
                  "FROM pg_stat_archiver")
# archive_timeout (seconds) is last; a snapshot recorded before it was asked for lacks it.
ARCHIVER_FIELDS = ("last_archived", "failed_count", "last_failed", "ready", "oldest_ready",
                   "wal_bytes", "archive_timeout")
RPO_GOAL_S = 5  # issue 26: a lost host takes at most this many seconds of writes
ARCHIVE_STATE = program("archive-state.sh")


def info(ctx: HostContext) -> str:
    """Shell: the WAL archive's state (tasks/programs/archive-state.sh): the host's time, the
    archiver's figures (or the error that kept them from being read), pg_wal's disk and
    pgBackRest's `info` as JSON; with a managed database, that the provider has it."""
    if ctx.managed_db:
        return "echo pitr=managed"
    return (ARCHIVE_STATE.rstrip("\n").replace("@QUERY@", q(ARCHIVER_QUERY))
            .replace("@POSTGRES@", ctx.container("postgres")))


def parse_archiver(values: dict[str, str]) -> dict:
    """The archiver's figures (ARCHIVER_FIELDS), or {"archiver_error": why}: a query that failed
    or printed something else is itself a finding, never a row of zeros."""
    if "archiver_error" in values:
        return {"archiver_error": values["archiver_error"].strip()
                or "psql failed and said nothing"}
    words = (values.get("archiver") or "").split()
    if (len(words) not in (len(ARCHIVER_FIELDS) - 1, len(ARCHIVER_FIELDS))
            or not all(w.isdigit() for w in words)):
        text = (values.get("archiver") or "").strip()
        return {"archiver_error": f"unreadable pg_stat_archiver figures: {text[:200]!r}" if text
                else "the archiver's figures are missing"}
    figures = dict(zip(ARCHIVER_FIELDS, map(int, words), strict=False))
    disk = (values.get("wal_disk") or "").split()
    if len(disk) == 2 and all(w.isdigit() for w in disk):
        figures.update(disk_total=int(disk[0]), disk_available=int(disk[1]))
    return figures


def parse_info(output: str) -> dict:
    """{"state": ok|unavailable|no-postgres|no-backup, "now", "oldest" (the earliest moment a
    restore can reach: the oldest backup's end), "backups", and the archiver's figures
    (`parse_archiver`: ARCHIVER_FIELDS, "disk_total", "disk_available", or "archiver_error")}
    from `info`'s output."""
    values = dict(line.split("=", 1) for line in output.splitlines() if "=" in line)
    result: dict = {"now": int(values.get("now", "0") or 0)}
    if values.get("pitr") in ("unavailable", "no-postgres", "managed"):
        return {**result, "state": values["pitr"]}
    result.update(parse_archiver(values))
    try:
        stanzas = json.loads(values.get("info") or "[]")
    except ValueError:
        stanzas = []
    backups = [b for s in stanzas if s.get("name") == STANZA for b in s.get("backup", [])
               if not b.get("error")]
    if not backups:
        return {**result, "state": "no-backup", "backups": 0}
    stops = sorted(int(b["timestamp"]["stop"]) for b in backups)
    return {**result, "state": "ok", "backups": len(backups), "oldest": stops[0],
            "newest": stops[-1]}


def archive_failing(state: dict) -> bool:
    """The archiver's last attempt failed (its last failure is newer than its last success)."""
    return state.get("last_failed", 0) > state.get("last_archived", 0)


def window_line(state: dict) -> str:
    """One line for backup.list: how far back a restore --to-time reaches, and the archive's
    health."""
    def at(seconds: int) -> str:
        return datetime.fromtimestamp(seconds, timezone.utc).strftime(TIME_FORMAT) + " UTC"

    if state["state"] == "managed":
        return ("point in time: the managed database's provider's (restore to a moment in its "
                "console); backups here are logical dumps")
    if state["state"] in ("unavailable", "no-postgres"):
        return ("point in time: not available (" + ("the live Postgres image has no pgBackRest"
                                                    if state["state"] == "unavailable"
                                                     else "postgres is not running") + ")")
    if state["state"] == "no-backup":
        line = ("point in time: no pgBackRest backup yet (the next deploy or `fab backup` takes "
                "the first)")
    else:
        line = (f"point in time: any moment from {at(state['oldest'])} ({state['backups']} "
                "pgBackRest backups)")
    if state.get("last_archived"):
        line += f"; WAL archived up to {at(state['last_archived'])}"
    if state.get("archiver_error"):
        line += f"; THE ARCHIVER'S STATE COULD NOT BE READ ({state['archiver_error'][:120]})"
    elif archive_failing(state):
        line += (f"; ARCHIVING IS FAILING: the last attempt failed at {at(state['last_failed'])} "
                 f"({state['failed_count']} failures counted)")
    return line


def window_problem(state: dict, target: datetime) -> str | None:
    """Why the archive cannot reach `target` (None: it can)."""
    if state["state"] == "unavailable":
        return ("the live release's Postgres image has no pgBackRest (it predates point-in-time "
                "recovery): deploy this "
                "checkout first, then restores can reach any moment after its first pgBackRest "
                "backup")
    if state["state"] == "no-postgres":
        return "no postgres container is running (start the stack: `fab compose.up`)"
    if state["state"] == "no-backup":
        return ("the WAL archive has no pgBackRest backup yet (deploy, or run `fab backup`, to "
                "take the first)")
    oldest = datetime.fromtimestamp(state["oldest"], timezone.utc)
    if target < oldest:
        return (f"{target.strftime(TIME_FORMAT)} is before the oldest pgBackRest backup ended "
                f"({oldest.strftime(TIME_FORMAT)} UTC), so the archive cannot reach it; the window "
                "starts there (`fab backup.list` shows it). For an older state restore a backup "
                "set: --name SET")
    return None


def restore_to_time(ctx: HostContext, target: str, compose_start: str,
                    before_start: str = "") -> str:
    """Restore the database to `target` (UTC, TIME_FORMAT), in one script:

    1. stop api and worker (nothing writes), commit one transaction and have pgBackRest archive
       the current WAL (`check`): every acknowledged write is now in the archive;
    2. stop Postgres; restore in a one-off container of the same image and volumes
       (`--delta --type=time --target-action=promote`); start Postgres; wait until it has
       replayed to the target and is out of recovery;
    3. `before_start` (the app role and its grants as this release needs them: the cluster is
       now as it was at the target), then start nats, api and worker.

    A failure from step 2 on restores the database to the end of its archive on the timeline it
    was on (what it held before, every write included), starts everything again and exits 1."""
    return restore_functions(ctx, compose_start) + restore_stages(ctx, target, before_start)


def restore_functions(ctx: HostContext, compose_start: str) -> str:
    """`restore_to_time`'s start: the Postgres container, its image, settings and timeline, and
    the functions its stages call (`nothing_changed`, `restore_run`, `undo`)."""
    return f"""set -uo pipefail
trap '' PIPE  # a dropped connection must not kill the script between two steps
say() {{ echo "[restore] $*"; }}
start_services() {{ {compose_start}; }}
pg=$({ctx.container('postgres')})
[ -n "$pg" ] || {{ echo "[restore] no running postgres container" >&2; exit 1; }}
docker exec "$pg" sh -c 'command -v pgbackrest' >/dev/null 2>&1 || exit {NO_PGBACKREST_EXIT}
{SQL_FUNCTION}
{CONTAINER_SETTINGS}
tli=$(sql "SELECT timeline_id FROM pg_control_checkpoint()")
if [ -z "$image" ] || [ ! -s "$envfile" ] || ! [[ "$tli" =~ ^[0-9]+$ ]]; then
  echo "[restore] could not read the postgres container's image, pgBackRest settings or timeline; nothing was changed" >&2
  rm -f "$envfile"; exit 1
fi
nothing_changed() {{
  echo "[restore] $1; nothing was changed" >&2
  start_services >/dev/null 2>&1; rm -f "$envfile"; exit 1
}}
touched=""
interrupted() {{ if [ -n "$touched" ]; then undo; else nothing_changed "interrupted"; fi; }}
trap interrupted HUP INT TERM
restore_run() {{
  docker run --rm --user postgres --volumes-from "$pg" --env-file "$envfile" --entrypoint pgbackrest "$image" restore --delta "$@"
}}
{WAIT_PROMOTED}
undo() {{
  echo "[restore] FAILED at '$stage'; putting the database back as it was (the end of its archive, timeline $tli)" >&2
  docker stop -t 60 "$pg" >/dev/null 2>&1
  if restore_run --target-timeline="$tli" >&2 && docker start "$pg" >/dev/null && wait_promoted; then
    echo "[restore] the database is back as it was before the restore" >&2
  else
    echo "[restore] PUTTING THE DATABASE BACK FAILED: the archive still holds it; see docs/operations.md, 'Point-in-time recovery'" >&2
  fi
  start_services >/dev/null 2>&1
  rm -f "$envfile"
  exit 1
}}
"""


def restore_stages(ctx: HostContext, target: str, before_start: str) -> str:
    """`restore_to_time`'s stages, each named in `$stage` for `undo`."""
    return f"""stage="stop api and worker"
for c in $({ctx.containers('api')}) $({ctx.containers('worker')}); do
  docker stop -t 30 "$c" >/dev/null || nothing_changed "could not stop container $c"
done
# Other sessions (a psql someone left open) end too, so no write lands after the archive check.
sql "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND backend_type = 'client backend'" >/dev/null
say "api and worker stopped"
stage="archive the current WAL"
sql "SELECT txid_current()" >/dev/null && {BR} check >/dev/null || nothing_changed "pgBackRest could not archive the current WAL"
say "every write up to now is archived (timeline $tli)"
stage="stop postgres"
touched=1
docker stop -t 60 "$pg" >/dev/null || undo
stage="restore to {target} UTC"
restore_run --type=time --target={q(target + "+00")} --target-action=promote || undo
say "data directory restored from pgBackRest; replaying WAL to {target} UTC"
stage="replay WAL to the target"
docker start "$pg" >/dev/null && wait_promoted || undo
say "the database is at {target} UTC (new timeline $(sql "SELECT timeline_id FROM pg_control_checkpoint()"))"
stage="the app's database role"
{(before_start + " || undo") if before_start else ":"}
stage="start nats, api and worker"
start_services || undo
trap - HUP INT TERM
rm -f "$envfile"
{rollout.wait_healthy(ctx, 'api')}
say "api and worker started"
"""
