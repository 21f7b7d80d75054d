# db.upgrade's host program (tasks/commands/db.py fills each @NAME@ with quoted words).
# shellcheck shell=bash disable=SC2016  # in_pg's single-quoted commands expand in the container
set -eEuo pipefail
say() { echo "[db.upgrade] $*"; }
vol=@VOLUME@; keep=@KEEP@; new_image=@NEW_IMAGE@; new_major=@NEW_MAJOR@; old_major=@OLD_MAJOR@
current=$(readlink -f @CURRENT@)
tmp=$(mktemp -d)
main=$BASHPID
stage=start; copied=""; wiped=""; pinned=""; old_image=""; apps=""
postgres() { @POSTGRES@; }
in_pg() { docker exec -i "$(postgres)" sh -c "$1"; }
wait_ready() {  # over TCP: while the image initialises a cluster, a temporary server answers on the socket only
  for _ in $(seq 1 240); do
    pg=$(postgres)
    if [ -n "$pg" ] && docker exec "$pg" sh -c 'pg_isready -q -h 127.0.0.1 -U "$POSTGRES_USER" -d "$POSTGRES_DB"' 2>/dev/null; then return 0; fi
    sleep 0.5
  done
  echo "postgres did not accept connections within 120s" >&2; return 1
}
start_app() {  # the very containers step 1 stopped (Compose's `start` would also wait on nats's health check)
  # shellcheck disable=SC2086  # $apps: container ids, one word each
  if [ -n "$apps" ]; then docker start $apps >/dev/null; else (cd "$current" && @START_APP@); fi
  for _ in $(seq 1 240); do
    api=$(@API@)
    [ -n "$api" ] && [ "$(docker inspect -f '{{.State.Health.Status}}' "$api")" = healthy ] && return 0
    sleep 0.5
  done
  echo "the api did not become healthy within 120s" >&2; return 1
}
put_back() {
  # ERR fires in command substitutions and subshells too (set -E): only the script itself puts back
  [ "$BASHPID" = "$main" ] || exit 1
  trap - ERR
  set +e
  echo "[db.upgrade] FAILED at '$stage'; putting PostgreSQL $old_major back" >&2
  if [ -n "$pinned" ]; then
    # shellcheck disable=SC2043  # @PIN_FILES@ is one or more quoted paths
    for f in @PIN_FILES@; do [ -f "$f.pre-upgrade" ] && mv -f "$f.pre-upgrade" "$f"; done
  fi
  if [ -n "$wiped" ]; then
    for c in $(@ALL_POSTGRES@); do docker rm -f "$c" >/dev/null; done
    if docker run --rm --network none --entrypoint sh -v "$keep:/from:ro" -v "$vol:/to" "$old_image" \
         -c 'find /to -mindepth 1 -delete && cp -a /from/. /to/ && diff -r -q /from /to'; then
      say "the old data was copied back into $vol (verified); $keep still holds it too"
    else
      echo "[db.upgrade] COPYING THE OLD DATA BACK FAILED: it is intact in volume $keep" >&2
    fi
  fi
  if [ -n "$old_image" ]; then (cd "$current" && @POSTGRES_UP@) && wait_ready; fi
  start_app && say "PostgreSQL $old_major, api and worker are running again"
  if [ -n "$copied" ] && [ -z "$wiped" ]; then docker volume rm "$keep" >/dev/null && say "removed $keep (the old volume was never changed)"; fi
  rm -rf "$tmp"
  exit 1
}
trap put_back ERR

stage="stop api and worker"
apps=$(@APIS@; @WORKERS@)
for c in $apps; do docker stop -t 30 "$c" >/dev/null; done
say "api and worker stopped"

stage="verified backup"
@BACKUP@ | tee "$tmp/backup.out" | sed -un -e '/^\[backup\]/p' -e '/^BACKUP OK/p'
set_name=$(sed -n 's/^BACKUP OK //p' "$tmp/backup.out")
[ -n "$set_name" ]
set_dir=@BACKUPS@/$set_name

stage="stop PostgreSQL $old_major"
pg=$(postgres)
old_image=$(docker inspect -f '{{.Config.Image}}' "$pg")
[ "$(docker exec "$pg" cat @DATA@/PG_VERSION)" = "$old_major" ]
docker stop -t 120 "$pg" >/dev/null
say "PostgreSQL $old_major ($old_image) stopped"

stage="keep the old data in $keep"
docker volume create @KEEP_LABELS@ "$keep" >/dev/null
copied=1
docker run --rm --network none --entrypoint sh -v "$vol:/from:ro" -v "$keep:/to" "$old_image" \
  -c 'cp -a /from/. /to/ && diff -r -q /from /to'
say "old data copied to volume $keep and compared"

stage="pin $new_image in the kept releases"
pinned=1
@PIN@
say "kept releases now name $new_image"

stage="new PostgreSQL $new_major cluster"
wiped=1
docker run --rm --network none --entrypoint sh -v "$vol:/d" "$old_image" -c 'find /d -mindepth 1 -delete'
(cd "$current" && @POSTGRES_UP@)
wait_ready
[ "$(docker exec "$(postgres)" cat @DATA@/PG_VERSION)" = "$new_major" ]
say "PostgreSQL $new_major ($new_image) initialised $vol"

stage="restore the dump"
in_pg 'pg_restore -U "$POSTGRES_USER" -d "$POSTGRES_DB" --no-owner --no-privileges --exit-on-error --single-transaction' < "$set_dir/database.dump"
in_pg 'psql -X -q -v ON_ERROR_STOP=1 -U "$POSTGRES_USER" -d "$POSTGRES_DB" -c ANALYZE'
say "dump of $set_name restored"
# The app's role and its grants: a new cluster has no role but POSTGRES_USER, and the dump was
# restored without privileges (commands/db.py, ensure_app_role: nothing for a release without one).
(cd "$HOME" && @APP_ROLE@)

stage="compare row counts"
in_pg 'psql -X -At -v ON_ERROR_STOP=1 -U "$POSTGRES_USER" -d "$POSTGRES_DB"' > "$tmp/counts.txt" <<'SQL'
@ROW_COUNTS_SQL@
SQL
if ! cmp -s "$set_dir/rowcounts.txt" "$tmp/counts.txt"; then
  diff "$set_dir/rowcounts.txt" "$tmp/counts.txt" >&2 || true
  echo "row counts after the restore differ from the dump's" >&2
  false
fi
tables=$(grep -c . "$tmp/counts.txt" || true)
rows=$(awk -F= '{s+=$2} END {print s+0}' "$tmp/counts.txt")
say "row counts equal to the dump's: $tables tables, $rows rows"

stage="start api and worker"
start_app
say "api and worker started and healthy"

stage="health checks"
(cd "$current" && @PROBE@)

trap - ERR
# shellcheck disable=SC2043  # @PIN_FILES@ is one or more quoted paths
for f in @PIN_FILES@; do rm -f "$f.pre-upgrade"; done
rm -rf "$tmp"
echo "UPGRADE OK set=$set_name keep=$keep tables=$tables rows=$rows"
