# The WAL archive's state, as key=value lines (commands/pitr.py `info` fills each @NAME@; status,
# doctor and backup.list parse it with pitr.parse_info):
#   now=EPOCH                      the host's clock
#   pitr=no-postgres|unavailable   (and nothing more) no postgres container / no pgBackRest in it
#   archiver=LAST_ARCHIVED FAILED_COUNT LAST_FAILED READY OLDEST_READY PG_WAL_BYTES
#   archiver_error=TEXT            instead, when the query failed: Postgres's own words
#   wal_disk=TOTAL_BYTES AVAILABLE_BYTES   the filesystem of the data directory
#   info=JSON                      pgBackRest's `info --output=json`, on one line
# The query travels as an argument ("$1" inside the container), never inside quotes.
# shellcheck shell=bash disable=SC2016  # the single-quoted commands expand in the container
query=@QUERY@
pg=$(@POSTGRES@)
echo "now=$(date -u +%s)"
if [ -z "$pg" ]; then echo "pitr=no-postgres"; exit 0; fi
if ! docker exec "$pg" sh -c 'command -v pgbackrest' >/dev/null 2>&1; then
  echo "pitr=unavailable"; exit 0
fi
psql_in_pg='psql -X -At -F " " -v ON_ERROR_STOP=1 -U "$POSTGRES_USER" -d "$POSTGRES_DB" -c "$1"'
if out=$(docker exec "$pg" sh -c "$psql_in_pg" psql "$query" 2>&1) && [ -n "$out" ]; then
  echo "archiver=$(printf '%s\n' "$out" | tail -n 1)"
else
  echo "archiver_error=$(printf '%s' "${out:-psql printed nothing}" | tr '\n' ' ' | cut -c1-300)"
fi
df=$(docker exec "$pg" sh -c 'df -Pk "${PGDATA:-/var/lib/postgresql/data}"' 2>/dev/null | tail -n 1)
echo "wal_disk=$(printf '%s\n' "$df" |
  awk 'NF >= 4 && $2 ~ /^[0-9]+$/ {printf "%.0f %.0f", $2 * 1024, $4 * 1024}')"
echo "info=$(docker exec -u postgres "$pg" pgbackrest info --output=json 2>/dev/null | tr -d '\n')"
