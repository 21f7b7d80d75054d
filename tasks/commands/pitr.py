"""Point-in-time recovery with pgBackRest: the WAL archive's set-up, its backups, its window and
`backup.restore --to-time`.

The stack's Postgres image (postgres/Dockerfile) carries pgBackRest; compose.yml gives it its
settings (PGBACKREST_* variables: stanza `main`, the repository in the `pgbackrest_repo` volume,
two full backups kept) and archives every WAL segment with `pgbackrest archive-push`, at least
once a minute (archive_timeout=60). Everything here runs pgBackRest inside the postgres container
(or, for a restore, in a one-off container of the same image with the same volumes and settings),
so the host needs nothing but Docker.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone

from . import q, rollout
from .context import HostContext
from .offsite import key_path, sftp_path, sftp_target
from .programs import program

STANZA = "main"
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
TIME_RE = r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}"
RECOVERY_WAIT_SECONDS = 600  # replaying WAL up to the target: minutes for a day of writes on a small VPS
NO_PGBACKREST_EXIT = 9  # the release's Postgres image has no pgBackRest (an older release)
NO_OFFSITE_ARCHIVE_EXIT = 3  # recover: the off-site WAL archive has no backup yet
PUT_BACK_FAILED_EXIT = 6  # recover: the set's data could not be put back after a failed WAL restore

# Shell: run pgBackRest as postgres in the container "$pg".
BR = 'docker exec -u postgres "$pg" pgbackrest'
# Shell shared by the two restore scripts, where "$pg" is the postgres container: `sql` runs one
# statement in the app's database; the image and its pgBackRest settings (only those: no password)
# for one-off containers; `wait_promoted` waits until Postgres runs and is out of recovery.
SQL_FUNCTION = 'sql() { docker exec "$pg" sh -c \'psql -X -At -U "$POSTGRES_USER" -d "$POSTGRES_DB" -c "$1"\' psql "$1"; }'
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
OFFSITE_DIR = "/var/lib/pgbackrest/offsite"
OFFSITE_SUFFIX = "-pgbackrest"  # the WAL archive's directory beside the restic repository


def parse_target(text: str, now: datetime) -> datetime:
    """The UTC moment `--to-time` names ("YYYY-MM-DD HH:MM:SS", UTC); ValueError with the fix."""
    if not re.fullmatch(TIME_RE, text.strip()):
        raise ValueError(f"--to-time {text!r} is not a time in the form \"YYYY-MM-DD HH:MM:SS\" (UTC), for example "
                         f"--to-time \"{now.strftime(TIME_FORMAT)}\".")
    try:
        target = datetime.strptime(text.strip(), TIME_FORMAT).replace(tzinfo=timezone.utc)
    except ValueError:
        raise ValueError(f"--to-time {text!r} is not a real date and time (UTC, \"YYYY-MM-DD HH:MM:SS\").") from None
    if target >= now:
        raise ValueError(f"--to-time {text} is not in the past (it is {now.strftime(TIME_FORMAT)} UTC on the host): the "
                         f"archive cannot hold what has not happened. Give an earlier time (UTC).")
    return target


def ensure_stanza(ctx: HostContext, container: str = "") -> str:
    """Shell (run after Postgres started): create the stanza, or upgrade it after a new cluster
    (db.upgrade), and take the first full backup when there is none, so that the database can
    be restored to any moment from now on. Idempotent; prints `@@fact pitr=...`. An image
    without pgBackRest (an older release) prints pitr=unavailable. `container`: shell printing the
    postgres container's id (default: the Compose project's; a swarm passes its own filter)."""
    return f"""# the WAL archive: pgBackRest's stanza and first full backup
pg=$({container or ctx.container('postgres')})
if [ -z "$pg" ] || ! docker exec "$pg" sh -c 'command -v pgbackrest' >/dev/null 2>&1; then
  echo "@@fact pitr=unavailable"
else
  for _ in $(seq 1 60); do timeout 10 docker exec "$pg" pg_isready -q -h 127.0.0.1 && break; sleep 0.5; done
  if ! out=$(timeout 120 {BR} stanza-create 2>&1) && ! out=$(timeout 120 {BR} stanza-upgrade 2>&1); then
    echo "WARNING: pgBackRest could not set up the WAL archive: $out" >&2; echo "@@fact pitr=failed"
  elif timeout 120 {BR} info --output=json | grep -q '"label"'; then
    echo "@@fact pitr=ok"
  else
    echo "   first pgBackRest full backup (the start of the point-in-time window)"
    if out=$({BR} backup --type=full 2>&1); then echo "@@fact pitr=ok"
    else echo "WARNING: the first pgBackRest backup failed: $out" >&2; echo "@@fact pitr=failed"; fi
  fi
fi"""


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
                  "(SELECT coalesce(sum(size), 0) FROM pg_ls_waldir()) FROM pg_stat_archiver")
ARCHIVER_FIELDS = ("last_archived", "failed_count", "last_failed", "ready", "oldest_ready",
                   "wal_bytes")
ARCHIVE_STATE = program("archive-state.sh")


def info(ctx: HostContext) -> str:
    """Shell: the WAL archive's state (tasks/programs/archive-state.sh): the host's time, the
    archiver's figures (or the error that kept them from being read), pg_wal's disk and
    pgBackRest's `info` as JSON."""
    return (ARCHIVE_STATE.rstrip("\n").replace("@QUERY@", q(ARCHIVER_QUERY))
            .replace("@POSTGRES@", ctx.container("postgres")))


def parse_archiver(values: dict[str, str]) -> dict:
    """The archiver's figures (ARCHIVER_FIELDS), or {"archiver_error": why}: a query that failed
    or printed something else is itself a finding, never a row of zeros."""
    if "archiver_error" in values:
        return {"archiver_error": values["archiver_error"].strip()
                or "psql failed and said nothing"}
    words = (values.get("archiver") or "").split()
    if len(words) != len(ARCHIVER_FIELDS) or not all(w.isdigit() for w in words):
        text = (values.get("archiver") or "").strip()
        return {"archiver_error": f"unreadable pg_stat_archiver figures: {text[:200]!r}" if text
                else "the archiver's figures are missing"}
    figures = dict(zip(ARCHIVER_FIELDS, map(int, words), strict=True))
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
    if values.get("pitr") in ("unavailable", "no-postgres"):
        return {**result, "state": values["pitr"]}
    result.update(parse_archiver(values))
    try:
        stanzas = json.loads(values.get("info") or "[]")
    except ValueError:
        stanzas = []
    backups = [b for s in stanzas if s.get("name") == STANZA for b in s.get("backup", []) if not b.get("error")]
    if not backups:
        return {**result, "state": "no-backup", "backups": 0}
    stops = sorted(int(b["timestamp"]["stop"]) for b in backups)
    return {**result, "state": "ok", "backups": len(backups), "oldest": stops[0], "newest": stops[-1]}


def archive_failing(state: dict) -> bool:
    """The archiver's last attempt failed (its last failure is newer than its last success)."""
    return state.get("last_failed", 0) > state.get("last_archived", 0)


def window_line(state: dict) -> str:
    """One line for backup.list: how far back a restore --to-time reaches, and the archive's health."""
    def at(seconds: int) -> str:
        return datetime.fromtimestamp(seconds, timezone.utc).strftime(TIME_FORMAT) + " UTC"

    if state["state"] in ("unavailable", "no-postgres"):
        return ("point in time: not available (" + ("the live Postgres image has no pgBackRest" if state["state"] == "unavailable"
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
        return ("the live release's Postgres image has no pgBackRest (it predates point-in-time recovery): deploy this "
                "checkout first, then restores can reach any moment after its first pgBackRest backup")
    if state["state"] == "no-postgres":
        return "no postgres container is running (start the stack: `fab compose.up`)"
    if state["state"] == "no-backup":
        return "the WAL archive has no pgBackRest backup yet (deploy, or run `fab backup`, to take the first)"
    oldest = datetime.fromtimestamp(state["oldest"], timezone.utc)
    if target < oldest:
        return (f"{target.strftime(TIME_FORMAT)} is before the oldest pgBackRest backup ended "
                f"({oldest.strftime(TIME_FORMAT)} UTC), so the archive cannot reach it; the window starts there "
                f"(`fab backup.list` shows it). For an older state restore a backup set: --name SET")
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


# --- the WAL archive off-site: pgBackRest's second repository on the SFTP server ----------------

def offsite_repo_path(repository: str) -> str:
    """Where the second repository lives on the SFTP server: beside restic's directory; '' when
    the off-site repository is not SFTP with an absolute path (the WAL then stays on the host)."""
    path = sftp_path(repository) if sftp_target(repository) else ""
    return path.rstrip("/") + OFFSITE_SUFFIX if path.startswith("/") else ""


def known_host_name(repository: str) -> str:
    """How ssh's known_hosts names the SFTP server (`[host]:port` off port 22)."""
    _, host, port = sftp_target(repository)
    return host if port == 22 else f"[{host}]:{port}"


def offsite_conf(repository: str, password: str) -> str:
    """pgBackRest's settings for repo2 (an ini file, 0600, in the volume; it holds the cipher pass,
    so it travels over SFTP and stdin, never a command line). Encrypted with OFFSITE_PASSWORD."""
    user, host, port = sftp_target(repository)
    return "\n".join([
        "# Written by tasktracker (backup.offsite.init, backup, recover); do not edit.", "[global]",
        "repo2-type=sftp", f"repo2-path={offsite_repo_path(repository)}", f"repo2-sftp-host={host}",
        f"repo2-sftp-host-port={port}", f"repo2-sftp-host-user={user or 'root'}",
        f"repo2-sftp-private-key-file={OFFSITE_DIR}/key", "repo2-sftp-host-key-check-type=strict",
        "repo2-sftp-host-key-hash-type=sha256", f"repo2-sftp-known-host={OFFSITE_DIR}/known_hosts",
        "repo2-cipher-type=aes-256-cbc", f"repo2-cipher-pass={password}", "repo2-retention-full=2", ""])


def install_offsite(repository: str, conf_file: str, container: str, stanza: bool = True) -> str:
    """Shell (on the host, as the deploy user): copy the host's SFTP key, the server's known host
    key (remembered by `backup.offsite.init`) and `conf_file` into the volume (through stdin),
    create the stanza on both repositories and take repo2's first full backup when it has none
    (not `stanza` for `recover`: the cluster running is the new host's empty one, and repo2 holds
    the lost host's). Prints `pitr-offsite=ok|unavailable`; exits 1 with the reason otherwise."""
    def into(path: str, mode: str) -> str:
        inside = f"umask 077 && cat > {path}.new && chown postgres:postgres {path}.new && chmod {mode} {path}.new && mv -f {path}.new {path}"
        return f"docker exec -u root -i \"$pg\" sh -c {q(inside)}"
    return f"""set -o pipefail
pg=$({container})
if [ -z "$pg" ] || ! docker exec "$pg" sh -c 'command -v pgbackrest' >/dev/null 2>&1; then echo "pitr-offsite=unavailable"; exit 0; fi
known=$(ssh-keygen -F {q(known_host_name(repository))} -f ~/.ssh/known_hosts 2>/dev/null | grep -v '^#')
[ -n "$known" ] || {{ echo "the SFTP server's host key is not known yet: run backup.offsite.init first" >&2; exit 1; }}
docker exec -u root "$pg" install -d -o postgres -g postgres -m 700 {CONF_DIR} {OFFSITE_DIR} || exit 1
{into(OFFSITE_DIR + '/key', '600')} < {q(key_path())} || exit 1
printf '%s\n' "$known" | {into(OFFSITE_DIR + '/known_hosts', '600')} || exit 1
{into(CONF_DIR + '/offsite.conf', '600')} < {q(conf_file)} || exit 1
{"" if stanza else 'echo "pitr-offsite=ok"; exit 0'}
out=$({BR} stanza-create 2>&1) || {{ echo "pgBackRest could not reach the off-site repository: $out" >&2; exit 1; }}
if ! {BR} info --repo=2 --output=json 2>/dev/null | grep -q '"label"'; then
  echo "first pgBackRest full backup off-site"
  out=$({BR} backup --repo=2 --type=full 2>&1) || {{ echo "the first off-site pgBackRest backup failed: $out" >&2; exit 1; }}
fi
echo "pitr-offsite=ok"
"""


def restore_from_offsite(ctx: HostContext, target: str, before_start: str, compose_start: str) -> str:
    """For `recover` on a new host, after the newest set was restored: replace the database with
    the lost host's latest archived WAL (or `target`, UTC) from repo2. The set's data directory is
    first copied aside in the volume (complete, or not at all); if anything fails, the migration
    included, that copy is put back (the service then holds the set's data, as without this
    step). This host's own repo1 held only the stanza of the cluster the deploy made, so it is
    emptied for the restored cluster's. `before_start`: the migration, run before api and worker
    start. Exits 0 (restored), NO_OFFSITE_ARCHIVE_EXIT (no backup there: nothing changed),
    1 (could not read it, or put back: the set's data) or PUT_BACK_FAILED_EXIT. On every path but
    0, repo2's settings leave the volume, so this host does not archive into the lost host's
    stanza (`backup.offsite.init` sets it up again)."""
    return offsite_restore_functions(ctx, compose_start) + offsite_restore_stages(ctx, target, before_start)


PG_DATA = "/var/lib/postgresql/data"
DATA_ASIDE = "/var/lib/pgbackrest/.before-wal-restore"  # the set's data, while the WAL is restored


def offsite_restore_functions(ctx: HostContext, compose_start: str) -> str:
    """`restore_from_offsite`'s start: the Postgres container, its image and settings, and the
    functions its stages call (`leave`, `undo`: the set's data put back)."""
    data, aside = PG_DATA, DATA_ASIDE
    return f"""set -uo pipefail
trap '' PIPE  # a dropped connection must not kill the script between two steps
say() {{ echo "[recover] $*"; }}
start_services() {{ {compose_start}; }}
pg=$({ctx.container('postgres')})
[ -n "$pg" ] || {{ echo "[recover] no running postgres container" >&2; exit 1; }}
{SQL_FUNCTION}
{CONTAINER_SETTINGS}
one_off() {{ docker run --rm --volumes-from "$pg" --env-file "$envfile" "$@"; }}
forget_offsite() {{ one_off --user root --entrypoint rm "$image" -f {CONF_DIR}/offsite.conf >/dev/null 2>&1; }}
leave() {{ forget_offsite; rm -f "$envfile"; exit "$1"; }}
if [ -z "$image" ] || [ ! -s "$envfile" ]; then echo "[recover] could not read the postgres container's settings" >&2; leave 1; fi
{WAIT_PROMOTED}
aside_ready=""
undo() {{
  trap - HUP INT TERM
  echo "[recover] the off-site WAL could not be restored (at '$stage'); putting the set's database back" >&2
  forget_offsite
  docker stop -t 60 "$pg" >/dev/null 2>&1
  if [ -n "$aside_ready" ]; then
    one_off --user root --entrypoint sh "$image" -c {q(f'find {data} -mindepth 1 -delete && cp -a {aside}/. {data}/ && rm -rf {aside}')} >&2 \\
      || {{ echo "[recover] PUTTING THE SET'S DATABASE BACK FAILED: its copy is in the pgbackrest_repo volume at {aside}; run recover again" >&2; rm -f "$envfile"; exit {PUT_BACK_FAILED_EXIT}; }}
  fi
  if docker start "$pg" >/dev/null && wait_promoted; then
    {BR} stanza-create >/dev/null 2>&1
    start_services >/dev/null 2>&1
    echo "[recover] the database holds the set's data; run backup.offsite.init to archive this host's WAL off-site" >&2
    rm -f "$envfile"; exit 1
  fi
  echo "[recover] POSTGRES DID NOT START on the set's data: see compose.logs --service postgres; run recover again" >&2
  rm -f "$envfile"; exit {PUT_BACK_FAILED_EXIT}
}}
"""


def offsite_restore_stages(ctx: HostContext, target: str, before_start: str) -> str:
    """`restore_from_offsite`'s stages, each named in `$stage` for `undo`; the last one starts
    this host's own WAL archive again."""
    data, aside = PG_DATA, DATA_ASIDE
    kind = f"--type=time --target={q(target + '+00')} --target-action=promote" if target else ""
    return f"""stage="read the off-site archive"
if ! info=$({BR} info --repo=2 --output=json 2>&1); then
  echo "[recover] could not read the off-site WAL archive: $(printf '%s' "$info" | tail -n 2 | tr '\\n' ' ')" >&2; leave 1
fi
printf '%s' "$info" | grep -q '"label"' || {{ echo "[recover] the off-site WAL archive has no backup yet" >&2; leave {NO_OFFSITE_ARCHIVE_EXIT}; }}
trap undo HUP INT TERM
stage="stop api, worker and postgres"
for c in $({ctx.containers('api')}) $({ctx.containers('worker')}); do docker stop -t 30 "$c" >/dev/null || undo; done
docker stop -t 60 "$pg" >/dev/null || undo
stage="copy the set's data aside"
one_off --user root --entrypoint sh "$image" -c {q(f'rm -rf {aside} {aside}.tmp && cp -a {data} {aside}.tmp && mv {aside}.tmp {aside} && rm -rf /var/lib/pgbackrest/archive /var/lib/pgbackrest/backup')} || undo
aside_ready=1
stage="restore from the off-site archive"
one_off --user postgres --entrypoint pgbackrest "$image" restore --repo=2 --delta {kind} || undo
say "data directory restored from the off-site pgBackRest repository; replaying its WAL{' to ' + target + ' UTC' if target else ''}"
stage="replay the archived WAL"
docker start "$pg" >/dev/null && wait_promoted || undo
say "the database is back to {"%s UTC" % target if target else "the last archived WAL"}"
stage="migrate"
{(before_start + " || undo") if before_start else ":"}
stage="start nats, api and worker"
start_services || undo
trap - HUP INT TERM
one_off --user root --entrypoint rm "$image" -rf {aside}
rm -f "$envfile"
{rollout.wait_healthy(ctx, 'api')}
say "api and worker started"
{BR} stanza-create >/dev/null 2>&1 && {BR} backup --type=full >/dev/null 2>&1 \\
  && say "this host's WAL archive starts again (a full pgBackRest backup, taken while serving)" \\
  || echo "WARNING: this host's first pgBackRest backup failed; run fab backup" >&2
"""
