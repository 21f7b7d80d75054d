# db.move-to-managed's host program (tasks/commands/move.py fills each @NAME@ with quoted words):
# the stack's own database copied into the managed one under a write freeze, row counts compared.
# The deploy that follows switches the app over; until then the local database serves reads.
# shellcheck shell=bash disable=SC2016  # single-quoted commands expand in the containers
set -uo pipefail
say() { echo "[db.move] $*"; }
env_file=@ENV_FILE@; ca=@CA@
pg=$(@POSTGRES@)
frozen=""
in_pg() { docker exec -i "$pg" sh -c "$1"; }
local_sql() { in_pg 'psql -X -q -At -v ON_ERROR_STOP=1 -U "$POSTGRES_USER" -d "$POSTGRES_DB"'; }
# The managed server, through a one-off client of the same image: its login and TLS settings come
# from a 0600 env file (PGHOST, PGSSLMODE, PGSSLROOTCERT, PGPASSWORD...), never a command line.
remote() { docker run --rm -i --user postgres --env-file "$env_file" -v "$ca:/ca.pem:ro" \
  --entrypoint sh "$image" -c "$1"; }
remote_sql() { remote 'psql -X -q -At -v ON_ERROR_STOP=1'; }
COUNTS="SELECT format('SELECT %L || ''='' || count(*) FROM %I.%I', table_name, table_schema, table_name)
  FROM information_schema.tables WHERE table_schema = 'public' AND table_type = 'BASE TABLE'
  ORDER BY table_name \\gexec"
# New sessions read only; the ones open now end (an unfinished write is rolled back: never
# acknowledged), so the app's pool reconnects into the freeze.
freeze() { printf '%s\n' "ALTER DATABASE :\"DBNAME\" SET default_transaction_read_only = $1;" \
  "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid();" \
  | in_pg 'psql -X -q -At -v ON_ERROR_STOP=1 -v DBNAME="$POSTGRES_DB" -U "$POSTGRES_USER" -d "$POSTGRES_DB"' >/dev/null; }
fail() {
  echo "DB MOVE FAILED: $*" >&2
  if [ -n "$frozen" ]; then
    freeze off && echo "[db.move] the local database takes writes again; the managed one may hold a partial copy" >&2
  fi
  exit 1
}
trap 'fail "interrupted"' HUP INT TERM

[ -n "$pg" ] || fail "no running postgres container: this stack has no local database to move (moved already?)"
image=$(docker inspect -f '{{.Config.Image}}' "$pg") || fail "cannot read the postgres container's image"
say "the managed server: reachable over TLS, and empty"
has=$(echo "SELECT to_regclass('public.alembic_version') IS NOT NULL OR to_regclass('public.tasks') IS NOT NULL;" | remote_sql 2>&1) \
  || fail "the managed database cannot be reached: $(printf '%s' "$has" | tr '\n' ' ' | cut -c1-300)"
[ "$has" = f ] || fail "the managed database already holds the app's tables: nothing is overwritten (move into an empty database)"
start=$(date +%s.%N)
say "write freeze: the local database takes no more writes (reads go on)"
frozen=1; freeze on || fail "cannot freeze writes"
say "copy: pg_dump | pg_restore over TLS"
in_pg 'pg_dump -U "$POSTGRES_USER" -d "$POSTGRES_DB" -Fc -Z 1' \
  | remote 'pg_restore --no-owner --no-privileges --exit-on-error -d "$PGDATABASE"' \
  || fail "the copy did not restore into the managed database"
say "verify: row counts of every table, here and there"
here=$(printf '%s\n' "$COUNTS" | local_sql) || fail "counting the local rows"
there=$(printf '%s\n' "$COUNTS" | remote_sql) || fail "counting the managed rows"
[ -n "$here" ] && [ "$here" = "$there" ] || fail "row counts differ: local [$(echo "$here" | tr '\n' ' ')] managed [$(echo "$there" | tr '\n' ' ')]"
rows=$(printf '%s\n' "$here" | awk -F= '{s+=$2} END {print s+0}')
tables=$(printf '%s\n' "$here" | grep -c .)
trap - HUP INT TERM
echo "@@moved tables=$tables rows=$rows seconds=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')"
