#!/usr/bin/env bash
# tasktracker-backup APP_DIR PROJECT KEEP [--db-only]   (installed by `fab backup`; do not edit)
set -uo pipefail
APP_DIR=$1 PROJECT=$2 KEEP=$3 MODE=${4:-full}
umask 077
cd "$APP_DIR" && APP_DIR=$(pwd) || exit 1
# A recover that has not finished (APP_DIR/.recovering): the database may be incomplete, and a
# full set of it would go off-site as the newest one. The pre-deploy dump stays local: recover's
# own deploy may take it.
if [ "$MODE" != "--db-only" ] && [ -e .recovering ]; then
  echo "BACKUP REFUSED: a recover has not finished on this host (off-site set" \
    "$(head -n 1 .recovering)); finish it with \`fab -H HOST recover --from-offsite\`." >&2
  exit 1
fi
root="$APP_DIR/backups"
name=$(date -u +%Y%m%dT%H%M%SZ)
[ "$MODE" = "--db-only" ] && name="$name-predeploy"
tmp="$root/.$name.partial"
started=$(date +%s)
step=start
release=$(basename "$(readlink current 2>/dev/null)" 2>/dev/null || true)
# The commit that release was deployed from (its RELEASE.json): what `recover` checks out against.
commit=$(sed -n 's/.*"commit": "\([^"]*\)".*/\1/p' current/RELEASE.json 2>/dev/null | head -n 1)
container() {  # Compose's container of the service, or on a swarm the stack's task on this node
  { docker ps -q --filter "label=com.docker.compose.project=$PROJECT" --filter "label=com.docker.compose.service=$1" \
      --filter label=com.docker.compose.oneoff=False
    docker ps -q --filter "label=com.docker.stack.namespace=$PROJECT" --filter "label=com.docker.swarm.service.name=${PROJECT}_$1"; } | head -n 1
}
log() { printf '%s\n' "$1" >> "$root/backup.log"; }
nats_paused=""
watchdog=""
fail() {
  trap - HUP INT TERM
  echo "BACKUP FAILED at step '$step': $*" >&2
  [ -n "$nats_paused" ] && docker unpause "$nats_paused" >/dev/null 2>&1
  [ -n "$watchdog" ] && kill "$watchdog" 2>/dev/null
  [ -n "${coproc_pid:-}" ] && kill "$coproc_pid" 2>/dev/null
  [ -n "${scratch:-}" ] && docker exec "$pg" sh -c "dropdb -U \"\$POSTGRES_USER\" --if-exists $scratch" >/dev/null 2>&1
  rm -rf "$tmp"
  log "{\"time\": \"$(date -u +%FT%TZ)\", \"set\": \"$name\", \"result\": \"failed\", \"step\": \"$step\"}" 2>/dev/null
  exit 1
}
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }
progress() { step=$1; echo "[backup] $1"; }

trap 'fail "interrupted"' HUP INT TERM
mkdir -p "$root" || { echo "BACKUP FAILED: cannot create $root" >&2; exit 1; }
exec 9>>"$root/.lock"
if ! flock -n 9; then
  echo "[backup] another backup is running on this host; waiting for it (up to 30 min)"
  flock -w 1800 9 || { echo "BACKUP FAILED: another backup still holds $root/.lock after 30 min" >&2; exit 1; }
fi
# Holding the lock: partial sets left behind are from runs that died, and a paused NATS is theirs.
rm -rf "$root"/.*.partial
mkdir "$tmp" || fail "cannot create $tmp"
pg=$(container postgres); nats=$(container nats)
if [ -n "$nats" ] && [ "$(docker inspect -f '{{.State.Paused}}' "$nats" 2>/dev/null)" = true ]; then
  docker unpause "$nats" >/dev/null && echo "[backup] nats was left paused by an earlier run; unpaused"
fi
# A managed database (DATABASE_HOST): no postgres here; its client container (db-client) reaches it
# over TLS, so the dump, the scratch restore and the counts all run against the managed server.
managed=""
if [ -z "$pg" ]; then pg=$(container db-client); [ -n "$pg" ] && managed=1; fi
[ -n "$pg" ] || fail "no running postgres container in compose project $PROJECT"
[ -n "$managed" ] && echo "[backup] managed database: a logical dump over the network (TLS)"

progress "database dump (streamed) and row counts in one snapshot"
t0=$(now); pause_s=0.00
# shellcheck disable=SC2016  # expanded in the container, by its own shell
psql_in_pg='psql -X -q -At -v ON_ERROR_STOP=1 -U "$POSTGRES_USER" -d "$POSTGRES_DB"'
coproc PSQL { docker exec -i "$pg" sh -c "$psql_in_pg"; }
coproc_pid=$PSQL_PID
printf '%s\n' "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY;" "SELECT pg_export_snapshot();" >&"${PSQL[1]}"
read -r -t 30 snapshot <&"${PSQL[0]}" || fail "could not open a snapshot"
cat >&"${PSQL[1]}" <<'SQL'
SELECT format('SELECT %L || ''='' || count(*) FROM %I.%I', table_name, table_schema, table_name)
  FROM information_schema.tables WHERE table_schema = 'public' AND table_type = 'BASE TABLE' ORDER BY table_name \gexec
SELECT 'END-OF-COUNTS';
SQL
: > "$tmp/rowcounts.txt"
while read -r -t 300 line <&"${PSQL[0]}"; do
  [ "$line" = "END-OF-COUNTS" ] && break
  printf '%s\n' "$line" >> "$tmp/rowcounts.txt"
done
[ "$line" = "END-OF-COUNTS" ] || fail "row counts did not finish"
docker exec "$pg" sh -c "pg_dump -U \"\$POSTGRES_USER\" -d \"\$POSTGRES_DB\" -Fc -Z 6 --snapshot=$snapshot" > "$tmp/database.dump" \
  || fail "pg_dump failed (disk full?)"
psql_in=${PSQL[1]}
printf '%s\n' "COMMIT;" >&"$psql_in"; exec {psql_in}>&-; wait "$coproc_pid" 2>/dev/null; coproc_pid=""
database_s=$(since "$t0"); t0=$(now)

if [ "$MODE" != "--db-only" ]; then
  if [ -n "$nats" ]; then
    progress "nats data (server paused while copied)"
    image=$(docker inspect -f '{{.Config.Image}}' "$nats")
    volume=$(docker inspect -f '{{range .Mounts}}{{if eq .Destination "/data"}}{{.Name}}{{end}}{{end}}' "$nats")
    # The watchdog outlives this script only if it dies: then it unpauses NATS (it holds the
    # lock's descriptor too, so no other backup starts before it has).
    # shellcheck disable=SC2016  # the watchdog's own arguments
    setsid sh -c 'while kill -0 "$1" 2>/dev/null; do sleep 0.5; done; docker unpause "$2" >/dev/null 2>&1' \
      watchdog "$$" "$nats" </dev/null >/dev/null 2>&1 &
    watchdog=$!
    # Paused only while the store is copied; compressed once NATS runs again.
    paused_at=$(now)
    docker pause "$nats" >/dev/null && nats_paused=$nats
    docker run --rm --entrypoint tar -v "$volume:/data:ro" "$image" -C /data -cf - . > "$tmp/nats.tar" || fail "copying the nats volume failed (disk full?)"
    docker unpause "$nats" >/dev/null; nats_paused=""
    pause_s=$(since "$paused_at")
    kill "$watchdog" 2>/dev/null; watchdog=""
    gzip -1 "$tmp/nats.tar" || fail "compressing the nats copy failed (disk full?)"
  fi
  progress "app files"
  files=()
  for f in env shared/.env shared/nginx shared/letsencrypt; do [ -e "$f" ] && files+=("$f"); done
  tar -czf "$tmp/app-files.tar.gz" "${files[@]}" || fail "archiving app files failed (disk full?)"
fi

other_s=$(since "$t0")
progress "verification: restore into a scratch database and compare row counts"
t0=$(now)
scratch="verify_$(date +%s)_$$"
docker exec "$pg" sh -c "createdb -U \"\$POSTGRES_USER\" $scratch" || fail "cannot create scratch database"
docker exec -i "$pg" sh -c "pg_restore -U \"\$POSTGRES_USER\" -d $scratch --no-owner --no-privileges --exit-on-error" < "$tmp/database.dump" \
  || fail "the dump does not restore"
docker exec -i "$pg" sh -c "psql -X -At -U \"\$POSTGRES_USER\" -d $scratch" > "$tmp/restored-counts.txt" <<'SQL' || fail "counting restored rows"
SELECT format('SELECT %L || ''='' || count(*) FROM %I.%I', table_name, table_schema, table_name)
  FROM information_schema.tables WHERE table_schema = 'public' AND table_type = 'BASE TABLE' ORDER BY table_name \gexec
SQL
docker exec "$pg" sh -c "dropdb -U \"\$POSTGRES_USER\" $scratch" >/dev/null; scratch=""
if ! cmp -s "$tmp/rowcounts.txt" "$tmp/restored-counts.txt"; then
  diff "$tmp/rowcounts.txt" "$tmp/restored-counts.txt" >&2
  fail "VERIFICATION FAILED: restored row counts differ from the dump's"
fi
rm -f "$tmp/restored-counts.txt"
vseconds=$(since "$t0")
tables=$(grep -c . "$tmp/rowcounts.txt" || true)
rows=$(awk -F= '{s+=$2} END {print s+0}' "$tmp/rowcounts.txt")

progress "checksums and manifest"
(cd "$tmp" && sha256sum -- * > SHA256SUMS) || fail "writing checksums failed"
sizes=$(cd "$tmp" && for f in *; do printf '"%s": %s, ' "$f" "$(stat -c %s "$f")"; done)
printf '{"set": "%s", "release": "%s", "commit": "%s", "created_at": "%s", "mode": "%s", "duration_s": %s, "seconds": {"database": %s, "nats_and_files": %s, "nats_paused": %s}, "verification": {"result": "ok", "tables": %s, "rows": %s, "seconds": %s}, "sizes": {%s}}\n' \
  "$name" "$release" "$commit" "$(date -u +%FT%TZ)" "${MODE#--}" "$(( $(date +%s) - started ))" "$database_s" "$other_s" "$pause_s" "$tables" "$rows" "$vseconds" "${sizes%, }" \
  > "$tmp/manifest.json" || fail "writing the manifest failed (disk full?)"
chmod 600 "$tmp"/* && chmod 700 "$tmp"
mv "$tmp" "$root/$name" || fail "renaming the finished set failed"

progress "retention: keep the newest $KEEP full sets, the newest $KEEP pre-deploy sets and every kept set"
for kind in '^[0-9]{8}T[0-9]{6}Z$' '^[0-9]{8}T[0-9]{6}Z-predeploy$'; do
  # A kept set (backups/.kept/SET: the one a recovery came from) stays until `backup.offsite.unkeep`.
  find "$root" -mindepth 1 -maxdepth 1 -printf '%f\n' | grep -E "$kind" | sort | while read -r s; do
    [ -e "$root/.kept/$s" ] || printf '%s\n' "$s"; done | head -n "-$KEEP" | while read -r old; do
    [ "$old" = "$name" ] || { rm -rf "${root:?}/$old" && echo "[backup] removed old set $old"; }
  done
done
log "$(cat "$root/$name/manifest.json" | tr -d '\n' | sed 's/^{/{"time": "'"$(date -u +%FT%TZ)"'", "result": "ok", /')"
if [ -n "$managed" ]; then
  [ "$MODE" != "--db-only" ] && echo "[backup] point-in-time recovery is the managed database's provider's: no WAL archive here"
else
  [ "$MODE" != "--db-only" ] && { @PITR_BACKUP@
}
fi
if [ "$MODE" != "--db-only" ] && [ -f "$APP_DIR/shared/offsite.conf" ]; then
  step="off-site copy"
  trap - HUP INT TERM  # the set is complete: from here a failure keeps it
  # It logs its result; it runs under this script's lock, and for an hour at most.
  if ! TASKTRACKER_BACKUP_LOCKED=1 timeout 3600 "$APP_DIR/bin/tasktracker-offsite" "$APP_DIR" "$PROJECT" push "$name"; then
    echo "BACKUP OFFSITE FAILED: set $name is complete, verified and kept on this host, but its off-site copy failed (see above)" >&2
    exit 3
  fi
fi
echo "BACKUP OK $name"
cat "$root/$name/manifest.json"
