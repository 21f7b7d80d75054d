#!/usr/bin/env bash
# tasktracker-offsite APP_DIR PROJECT ACTION [ARG]   (installed by `fab backup`; do not edit)
set -uo pipefail
usage="init|push SET|list|check [SUBSET]|fetch SET|latest|describe SET|latest|keep SET...|unkeep SET|all|drill"
[ $# -ge 3 ] || { echo "usage: tasktracker-offsite APP_DIR PROJECT $usage" >&2; exit 2; }
APP_DIR=$1 PROJECT=$2 ACTION=$3 ARG=${4:-}
umask 077
cd "$APP_DIR" && APP_DIR=$(pwd) || exit 1
conf="$APP_DIR/shared/offsite.conf"
[ -s "$conf" ] || { echo "OFFSITE: not configured on this host ($conf is missing); run backup.offsite.init" >&2; exit 2; }
command -v restic >/dev/null || { echo "OFFSITE: restic is not installed (apt-get install restic; provision installs it)" >&2; exit 2; }
set -a
# shellcheck source=/dev/null  # offsite.conf, written by `backup.offsite.init`
. "$conf"
set +a
export RESTIC_CACHE_DIR="$APP_DIR/shared/restic-cache"
opts=()
[ -n "${SFTP_COMMAND:-}" ] && opts+=(-o "sftp.command=$SFTP_COMMAND")
# An append-only account (backup.offsite.account --append-only): its forced command serves the
# repository (`rclone serve restic --stdio --append-only`), whatever these arguments ask.
[ -n "${RCLONE_COMMAND:-}" ] && opts+=(-o "rclone.program=$RCLONE_COMMAND" -o "rclone.args=serve restic --stdio --append-only")
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
    [ -n "${APPEND_ONLY:-}" ] || r forget --quiet --host "$PROJECT" --tag "set=$ARG" >/dev/null 2>&1  # no partial snapshot is left to fetch
    logged offsite-failed
    echo "OFFSITE PUSH FAILED for $ARG (the set is kept on this host)" >&2; exit 1
  fi
  logged offsite-ok
  if [ -n "${APPEND_ONLY:-}" ]; then
    # This host can add sets and delete none: retention runs on the server (backup.offsite.prune).
    echo "[backup] off-site retention runs on the off-site server (append-only: this host deletes nothing there)"
    echo "OFFSITE OK $ARG"; exit 0
  fi
  echo "[backup] off-site retention: $KEEP_DAILY daily, $KEEP_WEEKLY weekly, $KEEP_MONTHLY monthly, and every kept set"
  if ! r forget --quiet --host "$PROJECT" --tag tasktracker --group-by host --keep-daily "$KEEP_DAILY" --keep-weekly "$KEEP_WEEKLY" \
      --keep-monthly "$KEEP_MONTHLY" --keep-tag keep --prune >/dev/null; then
    logged offsite-retention-failed  # the copy is there; the next push applies retention again
    echo "[backup] WARNING: off-site retention failed (the copy of $ARG is there; the next push tries again)"
  fi
  echo "OFFSITE OK $ARG"
  ;;
list)
  r snapshots --json --host "$PROJECT" --tag tasktracker
  ;;
describe)
  # The newest set's name, and the manifest of SET (or of the newest), read without restoring it.
  snapshots=$(r snapshots --json --host "$PROJECT" --tag tasktracker) || exit 1
  newest=$(printf '%s' "$snapshots" | tr ',' '\n' | sed -n 's/.*"set=\([0-9TZ]*\)".*/\1/p' | sort -r | head -n 1)
  [ -n "$newest" ] || { echo "OFFSITE: the repository has no set of $PROJECT" >&2; exit 2; }
  name=$ARG; [ "$ARG" = latest ] && name=$newest
  [[ "$name" =~ ^[0-9]{8}T[0-9]{6}Z$ ]] || { echo "OFFSITE: $name is not a set name" >&2; exit 2; }
  manifest=$(r dump --quiet --host "$PROJECT" --tag "set=$name" latest /manifest.json) \
    || { echo "OFFSITE: the repository has no set $name of $PROJECT" >&2; exit 2; }
  echo "OFFSITE NEWEST $newest"
  echo "OFFSITE SET $name"
  printf '%s\n' "$manifest" | tr -d '\n'; echo
  ;;
keep|unkeep)
  # keep: retention never removes these sets (restic's tag `keep`; backups/.kept/SET here) until
  # `unkeep` hands them back to it (`unkeep all`: every kept set).
  shift 3
  [ $# -ge 1 ] || { echo "OFFSITE: $ACTION needs a set name" >&2; exit 2; }
  mkdir -p "$root/.kept"
  for name in "$@"; do
    if [ "$ACTION" = unkeep ] && [ "$name" = all ]; then
      [ -z "${APPEND_ONLY:-}" ] || { echo "OFFSITE: the repository is append-only: only the off-site server can hand kept sets back (backup.offsite.prune --unkeep)" >&2; exit 2; }
      r tag --quiet --host "$PROJECT" --tag keep --remove keep >/dev/null || exit 1
      rm -f "$root/.kept/"*; echo "OFFSITE UNKEPT all"; continue
    fi
    [[ "$name" =~ ^[0-9]{8}T[0-9]{6}Z$ ]] || { echo "OFFSITE: $name is not a set name" >&2; exit 2; }
    if [ "$ACTION" = keep ] && [ -n "${APPEND_ONLY:-}" ]; then
      # `restic tag` rewrites a snapshot, which an append-only server refuses (after ~50 s of
      # retries): a small request snapshot instead, which the server's prune turns into the tag.
      r backup --quiet --stdin --stdin-filename keep-request --host "$PROJECT" --tag tasktracker-keep --tag "keep=$name" <<<"keep $name" >/dev/null || exit 1
      [ ! -d "$root/$name" ] || printf 'kept %s\n' "$(date -u +%FT%TZ)" > "$root/.kept/$name"
      echo "OFFSITE KEPT $name"
    elif [ "$ACTION" = keep ]; then
      r tag --quiet --host "$PROJECT" --tag "set=$name" --add keep >/dev/null || exit 1
      [ ! -d "$root/$name" ] || printf 'kept %s\n' "$(date -u +%FT%TZ)" > "$root/.kept/$name"
      echo "OFFSITE KEPT $name"
    else
      [ -z "${APPEND_ONLY:-}" ] || { echo "OFFSITE: the repository is append-only: only the off-site server can hand kept sets back (backup.offsite.prune --unkeep)" >&2; exit 2; }
      r tag --quiet --host "$PROJECT" --tag "set=$name" --remove keep >/dev/null || exit 1
      rm -f "$root/.kept/$name"; echo "OFFSITE UNKEPT $name"
    fi
  done
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
  [ -n "$set_name" ] || { echo "OFFSITE: no set came back whole (tried: $(printf '%s' "$candidates" | tr '\n' ' ')); run backup.offsite.check" >&2; exit 1; }
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
  docker exec -i "$pg" sh -c "pg_restore -U \"\$POSTGRES_USER\" -d $scratch --no-owner --no-privileges --exit-on-error" < "$got/database.dump" \
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
*) echo "usage: tasktracker-offsite APP_DIR PROJECT $usage" >&2; exit 2 ;;
esac
