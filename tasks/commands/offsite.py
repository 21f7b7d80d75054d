"""Off-site copies of backup sets with restic, and the drill that proves them restorable.

The host runs `APP_DIR/bin/tasktracker-offsite`, written from OFFSITE_SCRIPT below, with its
settings in `APP_DIR/shared/offsite.conf` (0600, sent over SFTP: the repository password and S3
keys never reach a command line). The backup script calls `push` after a full set is complete
and verified, so the nightly cron job copies off-site with no laptop involved.

    tasktracker-offsite APP_DIR PROJECT init              create the repository (idempotent)
    tasktracker-offsite APP_DIR PROJECT push SET          copy backups/SET, then apply retention
    tasktracker-offsite APP_DIR PROJECT list              snapshots of this app, as JSON
    tasktracker-offsite APP_DIR PROJECT check [SUBSET]    `restic check --read-data[-subset]`
    tasktracker-offsite APP_DIR PROJECT fetch SET|latest  restore a set into backups/ (checksums verified)
    tasktracker-offsite APP_DIR PROJECT drill             fetch the newest set into a scratch dir, restore
                                                          its dump into a scratch database, compare counts

Snapshots carry the host name PROJECT and the tags `tasktracker` and `set=<name>`; retention
(`forget --prune`) groups by host only, so every set of this app counts toward one
daily/weekly/monthly schedule and another app in the same repository is never touched.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
from urllib.parse import urlparse

from . import notify, q, sh
from .context import HostContext

SCRIPT_NAME = "tasktracker-offsite"
KEY_NAME = "tasktracker-offsite"  # ~/.ssh/<KEY_NAME>: the host's key for an SFTP repository
PUSH_FAILED_EXIT = 3  # the backup script's exit code: the set is made and kept, the off-site copy failed

OFFSITE_SCRIPT = r'''#!/usr/bin/env bash
# tasktracker-offsite APP_DIR PROJECT ACTION [ARG]   (installed by `fab backup`; do not edit)
set -uo pipefail
[ $# -ge 3 ] || { echo "usage: tasktracker-offsite APP_DIR PROJECT init|push SET|list|check [SUBSET]|fetch SET|latest|drill" >&2; exit 2; }
APP_DIR=$1 PROJECT=$2 ACTION=$3 ARG=${4:-}
umask 077
cd "$APP_DIR" && APP_DIR=$(pwd) || exit 1
conf="$APP_DIR/shared/offsite.conf"
[ -s "$conf" ] || { echo "OFFSITE: not configured on this host ($conf is missing); run backup.offsite.init" >&2; exit 2; }
command -v restic >/dev/null || { echo "OFFSITE: restic is not installed (apt-get install restic; provision installs it)" >&2; exit 2; }
set -a; . "$conf"; set +a
export RESTIC_CACHE_DIR="$APP_DIR/shared/restic-cache"
opts=()
[ -n "${SFTP_COMMAND:-}" ] && opts+=(-o "sftp.command=$SFTP_COMMAND")
# restic 0.14 has no --retry-lock: another run holding the repository's lock (a check, a prune,
# another app sharing the repository) is waited for, up to 20 minutes; other errors end at once.
r() {
  local out rc attempt
  for attempt in $(seq 1 40); do
    out=$(restic "${opts[@]}" "$@" 2>&1); rc=$?
    case "$out" in
      *"repository is already locked"*) [ "$attempt" -lt 40 ] && { sleep 30; continue; } ;;
    esac
    [ -n "$out" ] && { [ "$rc" -eq 0 ] && printf '%s\n' "$out" || printf '%s\n' "$out" >&2; }
    return "$rc"
  done
}
root="$APP_DIR/backups"
# Scratch directories of a fetch or drill that was killed (more than a day old).
find "$root" -maxdepth 1 -name '.offsite-*' -mmin +1440 -exec rm -rf {} + 2>/dev/null
case "$ACTION" in
init)
  if r cat config >/dev/null 2>&1; then echo "OFFSITE: repository exists"; else r init >/dev/null && echo "OFFSITE: repository created"; fi
  ;;
push)
  [[ "$ARG" =~ ^[0-9]{8}T[0-9]{6}Z$ ]] && [ -f "$root/$ARG/manifest.json" ] || { echo "OFFSITE: no complete full set $ARG in $root" >&2; exit 2; }
  if [ -z "${TASKTRACKER_BACKUP_LOCKED:-}" ]; then  # not called by the backup script, which holds it
    exec 9>>"$root/.lock"
    flock -w 1800 9 || { echo "OFFSITE: a backup still holds $root/.lock after 30 min" >&2; exit 1; }
  fi
  # Each push leaves a line in backups/backup.log, which `status`, `doctor` and backup.list read.
  logged() { printf '{"time": "%s", "set": "%s", "result": "%s"}\n' "$(date -u +%FT%TZ)" "$ARG" "$1" >> "$root/backup.log"; }
  echo "[backup] off-site copy of $ARG"
  # Dated by the set's name, so retention keeps sets by when they were made, not when copied.
  made="${ARG:0:4}-${ARG:4:2}-${ARG:6:2} ${ARG:9:2}:${ARG:11:2}:${ARG:13:2}"
  if ! (cd "$root/$ARG" && r backup --quiet --time "$made" --host "$PROJECT" --tag tasktracker --tag "set=$ARG" .); then
    r forget --quiet --host "$PROJECT" --tag "set=$ARG" >/dev/null 2>&1  # no partial snapshot is left to fetch
    logged offsite-failed
    echo "OFFSITE PUSH FAILED for $ARG (the set is kept on this host)" >&2; exit 1
  fi
  logged offsite-ok
  echo "[backup] off-site retention: $KEEP_DAILY daily, $KEEP_WEEKLY weekly, $KEEP_MONTHLY monthly"
  if ! r forget --quiet --host "$PROJECT" --tag tasktracker --group-by host --keep-daily "$KEEP_DAILY" --keep-weekly "$KEEP_WEEKLY" \
      --keep-monthly "$KEEP_MONTHLY" --prune >/dev/null; then
    logged offsite-retention-failed  # the copy is there; the next push applies retention again
    echo "[backup] WARNING: off-site retention failed (the copy of $ARG is there; the next push tries again)"
  fi
  echo "OFFSITE OK $ARG"
  ;;
list)
  r snapshots --json --host "$PROJECT" --tag tasktracker
  ;;
check)
  if [ -n "$ARG" ]; then r check --read-data-subset="$ARG"; else r check --read-data; fi
  ;;
fetch|drill)
  # fetch latest: the newest set that comes back whole (a damaged newest set is reported and the
  # next newest tried); fetch SET: that set only; drill: the newest only (a damaged set fails it).
  candidates=$ARG
  if [ "$ACTION" = drill ] || [ "$ARG" = latest ]; then
    snapshots=$(r snapshots --json --host "$PROJECT" --tag tasktracker) || exit 1
    candidates=$(printf '%s' "$snapshots" | tr ',' '\n' | sed -n 's/.*"set=\([0-9TZ]*\)".*/\1/p' | sort -ru)
    [ -n "$candidates" ] || { echo "OFFSITE: the repository has no set of $PROJECT" >&2; exit 2; }
    [ "$ACTION" = drill ] && candidates=$(printf '%s\n' "$candidates" | head -n 1)
  fi
  mkdir -p "$root"
  tmp=$(mktemp -d "$root/.offsite-XXXXXX") || exit 1
  trap 'rm -rf "$tmp"' EXIT
  set_name="" got=""
  for candidate in $candidates; do
    [[ "$candidate" =~ ^[0-9]{8}T[0-9]{6}Z$ ]] || { echo "OFFSITE: $candidate is not a set name" >&2; exit 2; }
    echo "[offsite] restoring $candidate"
    rm -rf "$tmp/restore"
    if ! r restore latest --quiet --host "$PROJECT" --tag "set=$candidate" --target "$tmp/restore"; then
      echo "OFFSITE: restoring $candidate failed" >&2; continue
    fi
    got="$tmp/restore"  # `restic backup .` in the set's directory: its files come back at the top
    [ -f "$got/manifest.json" ] || got=$(dirname "$(find "$tmp/restore" -name manifest.json | head -n 1)")
    if [ ! -f "$got/SHA256SUMS" ] || ! (cd "$got" && sha256sum --quiet -c SHA256SUMS); then
      echo "OFFSITE: $candidate came back damaged (its checksums do not match)" >&2; continue
    fi
    set_name=$candidate
    break
  done
  [ -n "$set_name" ] || { echo "OFFSITE: no set came back whole (tried: $(echo $candidates)); run backup.offsite.check" >&2; exit 1; }
  echo "[offsite] checksums ok"
  if [ "$ACTION" = fetch ]; then
    if [ -d "$root/$set_name" ]; then echo "OFFSITE: $root/$set_name exists already; kept as it is"; else mv "$got" "$root/$set_name"; fi
    echo "OFFSITE FETCHED $set_name"
    exit 0
  fi
  pg=$(docker ps -q --filter "label=com.docker.compose.project=$PROJECT" --filter label=com.docker.compose.service=postgres \
    --filter label=com.docker.compose.oneoff=False | head -n 1)
  [ -n "$pg" ] || { echo "OFFSITE: no running postgres container in $PROJECT to restore the drill into" >&2; exit 1; }
  scratch="drill_$(date +%s)_$$"
  trap 'docker exec "$pg" sh -c "dropdb -U \"\$POSTGRES_USER\" --if-exists $scratch" >/dev/null 2>&1; rm -rf "$tmp"' EXIT
  echo "[offsite] restoring the dump into scratch database $scratch"
  docker exec "$pg" sh -c "createdb -U \"\$POSTGRES_USER\" $scratch" || exit 1
  docker exec -i "$pg" sh -c "pg_restore -U \"\$POSTGRES_USER\" -d $scratch --no-owner --exit-on-error" < "$got/database.dump" \
    || { echo "OFFSITE DRILL FAILED: the dump of $set_name does not restore" >&2; exit 1; }
  docker exec -i "$pg" sh -c "psql -X -At -U \"\$POSTGRES_USER\" -d $scratch" > "$tmp/counts.txt" <<'SQL' || exit 1
SELECT format('SELECT %L || ''='' || count(*) FROM %I.%I', table_name, table_schema, table_name)
  FROM information_schema.tables WHERE table_schema = 'public' AND table_type = 'BASE TABLE' ORDER BY table_name \gexec
SQL
  if ! cmp -s "$got/rowcounts.txt" "$tmp/counts.txt"; then
    diff "$got/rowcounts.txt" "$tmp/counts.txt" >&2
    echo "OFFSITE DRILL FAILED: restored row counts of $set_name differ from the backup's" >&2; exit 1
  fi
  sed 's/^/count /' "$tmp/counts.txt"
  echo "OFFSITE DRILL OK $set_name"
  ;;
*) echo "usage: tasktracker-offsite APP_DIR PROJECT init|push SET|list|check [SUBSET]|fetch SET|drill" >&2; exit 2 ;;
esac
'''

REPOSITORY_SCHEMES = ("sftp:", "s3:", "rest:", "b2:", "azure:", "gs:", "swift:", "rclone:")


def script_path(ctx: HostContext) -> str:
    return f"{ctx.bin_dir}/{SCRIPT_NAME}"


def conf_path(ctx: HostContext) -> str:
    return f"{ctx.app_dir}/shared/offsite.conf"


def key_path() -> str:
    return f".ssh/{KEY_NAME}"  # relative to the deploy user's home, where every command starts


def sftp_target(repository: str) -> tuple[str, str, int] | None:
    """(user, host, port) of an `sftp:` repository, in either of restic's spellings:
    `sftp:user@host:/path` and `sftp://user@host:port//path`; None for other kinds."""
    if repository.startswith("sftp://"):
        url = urlparse(repository)
        return (url.username or "", url.hostname or "", url.port or 22) if url.hostname else None
    match = re.fullmatch(r"sftp:(?:([^@:/]+)@)?([^:/]+):(.+)", repository)
    return (match.group(1) or "", match.group(2), 22) if match else None


def sftp_path(repository: str) -> str:
    """The directory of an `sftp:` repository on the server, as written ('' for other kinds)."""
    if repository.startswith("sftp://"):
        path = urlparse(repository).path
        return path[1:] if path.startswith("//") else path
    match = re.fullmatch(r"sftp:(?:([^@:/]+)@)?([^:/]+):(.+)", repository)
    return match.group(3) if match else ""


def sftp_command(repository: str, home: str) -> str:
    """The ssh command restic runs for an SFTP repository: the host's own key, no prompts, the
    server's key remembered on first use (compare it with the server's fingerprint once)."""
    target = sftp_target(repository)
    if target is None:
        return ""
    user, host, port = target
    return shlex.join(["ssh", "-i", f"{home}/{key_path()}", "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
                       "-o", "StrictHostKeyChecking=accept-new", "-o", "ConnectTimeout=15",
                       "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=4", "-p", str(port),
                       f"{user}@{host}" if user else host, "-s", "sftp"])


def conf_text(*, repository: str, password: str, aws_access_key_id: str, aws_secret_access_key: str,
              keep: tuple[int, int, int], sftp: str) -> str:
    """offsite.conf: shell assignments the script sources (values quoted)."""
    values = {"RESTIC_REPOSITORY": repository, "RESTIC_PASSWORD": password, "AWS_ACCESS_KEY_ID": aws_access_key_id,
              "AWS_SECRET_ACCESS_KEY": aws_secret_access_key, "KEEP_DAILY": keep[0], "KEEP_WEEKLY": keep[1],
              "KEEP_MONTHLY": keep[2], "SFTP_COMMAND": sftp}
    return "".join(f"{k}={q(str(v))}\n" for k, v in values.items() if v != "")


def prepare(ctx: HostContext, with_key: bool) -> str:
    """Make the 0700 program and 0600 conf's `.new` files the host layer writes into (over SFTP;
    `finish` moves them into place, so a half-sent file is never run or sourced); with_key: make
    the host's SFTP key if it has none and print its public key (`@@pubkey`); then the sha256 of
    the program and conf in place (`@@have`): only what differs is sent."""
    program, conf = script_path(ctx), conf_path(ctx)
    parts = [sh(["mkdir", "-p", ctx.bin_dir, f"{ctx.app_dir}/shared", ctx.backups_dir]),
             sh(["install", "-m", "700", "/dev/null", program + ".new"]), sh(["install", "-m", "600", "/dev/null", conf + ".new"])]
    if with_key:
        parts.append(f"mkdir -p -m 700 .ssh && {{ [ -f {q(key_path())} ] || ssh-keygen -q -t ed25519 -N '' "
                     f"-C {q('tasktracker-offsite@' + ctx.project)} -f {q(key_path())} >/dev/null; }} "
                     f"&& echo \"@@pubkey $(cat {q(key_path() + '.pub')})\"")
    parts.append(f"for f in {q(program)} {q(conf)}; do [ ! -f \"$f\" ] || echo \"@@have $(sha256sum < \"$f\" | cut -d' ' -f1) $f\"; done")
    return " && ".join(parts)


def finish(ctx: HostContext, sent: list[str]) -> str:
    """Move the `.new` files that were sent into place; drop the others."""
    moves = [sh(["mv", "-f", path + ".new", path]) for path in sent]
    unused = [path + ".new" for path in (script_path(ctx), conf_path(ctx)) if path not in sent]
    return " && ".join(moves + ([sh(["rm", "-f", *unused])] if unused else []))


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def parse_prepare(output: str) -> tuple[str, dict[str, str]]:
    pubkey, have = "", {}
    for line in output.splitlines():
        if line.startswith("@@pubkey "):
            pubkey = line[len("@@pubkey "):].strip()
        elif line.startswith("@@have "):
            found, _, path = line[len("@@have "):].partition(" ")
            have[path] = found
    return pubkey, have


def run(ctx: HostContext, action: str, *args: str) -> list[str]:
    return [script_path(ctx), ctx.app_dir, ctx.project, action, *args]


def parse_snapshots(text: str) -> list[dict]:
    """`list` output: one row per snapshot, oldest first: set name, time, short id."""
    try:
        data = json.loads(text.strip() or "[]")
    except ValueError:
        return []
    rows = []
    for snap in data if isinstance(data, list) else []:
        names = [t[4:] for t in snap.get("tags") or [] if t.startswith("set=")]
        if names:
            rows.append({"set": names[0], "time": snap.get("time", ""), "id": snap.get("short_id") or snap.get("id", "")[:8]})
    return sorted(rows, key=lambda row: row["set"])


def parse_drill(output: str) -> tuple[str, dict[str, int]]:
    """`drill` output: the set it restored and the row count of each table."""
    name, counts = "", {}
    for line in output.splitlines():
        if line.startswith("count ") and "=" in line:
            table, _, value = line[len("count "):].partition("=")
            counts[table] = int(value) if value.strip().isdigit() else 0
        elif line.startswith("OFFSITE DRILL OK "):
            name = line.split()[-1]
    return name, counts


def locations(host_sets: list[str], offsite_sets: list[str] | None) -> dict[str, str]:
    """Where each set exists: `host`, `off-site` or `both` (`offsite_sets` None: not configured)."""
    if offsite_sets is None:
        return {name: "host" for name in host_sets}
    names = sorted(set(host_sets) | set(offsite_sets))
    return {n: "both" if n in host_sets and n in offsite_sets else "host" if n in host_sets else "off-site" for n in names}


def cron_lines(ctx_abs: HostContext, at: str) -> dict[str, str]:
    """The off-site jobs `backup.schedule` installs next to the daily backup (which pushes each
    set itself): the restore drill monthly (the 1st, an hour after the backup) and a check reading
    a tenth of the data weekly (Sundays, two hours after). Each alerts when it fails."""
    hour, minute = (int(part) for part in at.split(":"))
    log = f"{ctx_abs.backups_dir}/offsite.log"
    jobs = {"drill": (f"{minute} {(hour + 1) % 24} 1 * *", "monthly restore drill", run(ctx_abs, "drill")),
            # 1/10, not 10%: cron reads `%` as a newline
            "check": (f"{minute} {(hour + 2) % 24} * * 0", "weekly off-site check", run(ctx_abs, "check", "1/10"))}
    return {kind: f"{when} {notify.on_failure(ctx_abs, what, sh(argv), log)} # tasktracker-{kind}:{ctx_abs.project}"
            for kind, (when, what, argv) in jobs.items()}


def last_push(log_lines: list[str]) -> dict | None:
    """The newest off-site entry (`offsite-ok` or `offsite-failed`) among backup.log's lines."""
    for line in reversed(log_lines):
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and str(entry.get("result", "")).startswith("offsite-"):
            return entry
    return None


def parse_fetched(output: str) -> str:
    """The set `fetch` brought back ('' when it did not finish)."""
    names = [line.split()[-1] for line in output.splitlines() if line.startswith("OFFSITE FETCHED ")]
    return names[-1] if names else ""


def unpack_certificates(ctx: HostContext, set_name: str) -> str:
    """On a new host: the certificates and TLS settings of a set (shared/letsencrypt,
    shared/nginx) into APP_DIR, before the first deploy starts nginx. Each release's own
    settings (env/) are not restored: the deploy writes the release's from this checkout."""
    archive = q(f"{ctx.backups_dir}/{set_name}/app-files.tar.gz")
    return (f"if [ -f {archive} ]; then members=$(tar -tzf {archive} | grep -E '^shared/(letsencrypt|nginx)(/|$)'); "
            f"[ -z \"$members\" ] || printf '%s\\n' \"$members\" | tar -C {q(ctx.app_dir)} -xzf {archive} --no-same-owner "
            f"--no-recursion -T - && echo \"certificates: $(printf '%s\\n' \"$members\" | grep -c '^shared/letsencrypt/live/[^/]*/cert.pem$')\"; fi")


def recovering_marker(ctx: HostContext) -> str:
    """APP_DIR/.recovering holds the set a `recover` is bringing back, until it is done."""
    return q(f"{ctx.app_dir}/.recovering")


def mark_recovering(ctx: HostContext, set_name: str) -> str:
    return f"mkdir -p {q(ctx.app_dir)} && printf '%s\\n' {q(set_name)} > {recovering_marker(ctx)}"
