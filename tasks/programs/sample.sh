#!/usr/bin/env bash
# tasktracker-sample APP_DIR PROJECT   (cron, every minute; installed by `fab deploy`; do not edit)
# One line of key=value fields per minute in APP_DIR/shared/metrics/samples-<UTC day>.log.
set -uo pipefail
APP_DIR=$1 PROJECT=$2
umask 077
dir="$APP_DIR/shared/metrics"
mkdir -p "$dir" || exit 1
exec 9>"$dir/.lock"
flock -n 9 || exit 0
now=$(date +%s)
container() {  # Compose's container of the service, or on a swarm the stack's task on this node
  { docker ps -q --filter "label=com.docker.compose.project=$PROJECT" --filter "label=com.docker.compose.service=$1" \
      --filter label=com.docker.compose.oneoff=False
    docker ps -q --filter "label=com.docker.stack.namespace=$PROJECT" --filter "label=com.docker.swarm.service.name=${PROJECT}_$1"; } | head -n 1
}
line="t=$now ncpu=$(nproc)"
line="$line $(awk '/^MemTotal:/ {t=$2} /^MemAvailable:/ {a=$2} END {printf "mem_total=%d mem_avail=%d", t, a}' /proc/meminfo)"
line="$line load1=$(cut -d' ' -f1 /proc/loadavg)"
read -r _ u n s i w x y z _ < /proc/stat
busy=$((u + n + s + x + y + z)); total=$((busy + i + w))
if [ -f "$dir/.cpu" ] && read -r pb pt < "$dir/.cpu" && [ $((total - pt)) -gt 0 ]; then
  line="$line cpu=$(awk -v b=$((busy - pb)) -v t=$((total - pt)) 'BEGIN {printf "%.1f", 100 * b / t}')"
fi
echo "$busy $total" > "$dir/.cpu"
# Each service's memory (MiB), limit (MiB) and CPU (%), summed over its containers.
ids=$(docker ps -q --filter "label=com.docker.compose.project=$PROJECT" --filter label=com.docker.compose.oneoff=False;
     docker ps -q --filter "label=com.docker.stack.namespace=$PROJECT")
if [ -n "$ids" ]; then
  # `with`: a label the container lacks prints nothing (a bare `index` prints "<no value>")
  # shellcheck disable=SC2086  # $ids: container ids, one word each
  names=$(docker inspect -f '{{.Id}} {{with index .Config.Labels "com.docker.compose.service"}}{{.}}{{end}}{{with index .Config.Labels "com.docker.swarm.service.name"}}{{.}}{{end}}' $ids \
    | cut -c1-12,65- | sed "s/ ${PROJECT}_/ /")
  # shellcheck disable=SC2086  # $ids, as above
  line="$line $(docker stats --no-stream --format '{{.ID}} {{.MemUsage}} {{.CPUPerc}}' $ids | NAMES="$names" awk '
    function mib(s,   n) { n = s + 0; if (s ~ /GiB/) n *= 1024; else if (s ~ /KiB/) n /= 1024; else if (s ~ /MiB/) n += 0; else n /= 1048576; return n }
    BEGIN { k = split(ENVIRON["NAMES"], a, "\n"); for (j = 1; j <= k; j++) { split(a[j], p, " "); svc[p[1]] = p[2] } }
    { s = svc[substr($1, 1, 12)]; if (s == "") next; mem[s] += mib($2); lim[s] = mib($4); sub(/%/, "", $5); cpu[s] += $5 }
    END { for (s in mem) printf "svc.%s=%.1f/%.0f/%.1f ", s, mem[s], lim[s], cpu[s] }')"
fi
# API requests in the minute since the last run: count, p95 (ms), 5xx, distinct clients (nginx's log).
since=$(cat "$dir/.since" 2>/dev/null || echo $((now - 60)))
echo "$now" > "$dir/.since"
ngx=$(container nginx)
if [ -n "$ngx" ]; then
  docker logs --since "$since" --until "$now" "$ngx" > "$dir/.access" 2>/dev/null
  line="$line $(awk '{ split($0, part, "\""); split(part[3], st, " "); ip[$1] = 1 }
    part[2] ~ /^[A-Z]+ \/api\// && / rt=[0-9.]+/ { n++; if (st[1] >= 500) e++ }
    END { c = 0; for (a in ip) c++; printf "req=%d e5xx=%d clients=%d", n, e, c }' "$dir/.access")"
  line="$line$(awk '{ split($0, part, "\"") } part[2] ~ /^[A-Z]+ \/api\// && match($0, / rt=[0-9.]+/) { print substr($0, RSTART + 4, RLENGTH - 4) * 1000 }' \
    "$dir/.access" | sort -n | awk '{ v[NR] = $1 } END { if (NR) printf " p95=%d", v[int(0.95 * NR + 0.999)] }')"
  rm -f "$dir/.access"
fi
pg=$(container postgres)
if [ -n "$pg" ]; then
  db=$(docker exec "$pg" sh -c 'psql -U "$POSTGRES_USER" -d "$POSTGRES_DB" -Atc "select count(*) filter (where backend_type = '\''client backend'\''), current_setting('\''max_connections'\'') from pg_stat_activity"' 2>/dev/null | tr '|' ' ')
  [ -n "$db" ] && line="$line $(echo "$db" | awk '{printf "db_conn=%d db_max=%d", $1, $2}')"
  # The WAL archive (commands/pitr.ARCHIVER_QUERY, given to psql as an argument): a query that
  # fails is recorded as such (arch_error=1), never as zeros.
  # shellcheck disable=SC2016  # expanded in the container
  psql_in_pg='psql -X -At -F " " -v ON_ERROR_STOP=1 -U "$POSTGRES_USER" -d "$POSTGRES_DB" -c "$1"'
  if arch=$(docker exec "$pg" sh -c "$psql_in_pg" psql __ARCHIVER_QUERY__ 2>/dev/null | tail -n 1) \
      && [ "$(echo "$arch" | wc -w)" = 7 ]; then
    line="$line $(echo "$arch" | awk '{printf "arch_ok=%s arch_failures=%s", $1, $2
      printf " arch_fail_t=%s arch_ready=%s arch_ready_t=%s wal_bytes=%s", $3, $4, $5, $6}')"
  else
    line="$line arch_error=1"
  fi
  # shellcheck disable=SC2016  # expanded in the container
  disk=$(docker exec "$pg" sh -c 'df -Pk "${PGDATA:-/var/lib/postgresql/data}"' 2>/dev/null |
    awk 'END { if ($2 ~ /^[0-9]+$/) printf "%.0f", $2 * 1024 }')
  [ -n "$disk" ] && line="$line wal_disk=$disk"
fi
nats=$(container nats)
if [ -n "$nats" ]; then
  jsz=$(docker exec "$nats" wget -qO- 'http://127.0.0.1:8222/jsz?streams=true' 2>/dev/null | tr -d ' \n')
  [ -n "$jsz" ] && line="$line $(printf '%s' "$jsz" | awk '{
      s = m = 0; if (match($0, /"storage":[0-9]+/)) s = substr($0, RSTART + 10, RLENGTH - 10)
      if (match($0, /"max_storage":[0-9]+/)) m = substr($0, RSTART + 14, RLENGTH - 14)
      q = 0; t = $0; while (match(t, /"last_seq":[0-9]+/)) { q += substr(t, RSTART + 11, RLENGTH - 11); t = substr(t, RSTART + RLENGTH) }
      printf "js_storage=%.0f js_max=%.0f js_seq=%.0f", s, m, q }')"
fi
echo "$line" >> "$dir/samples-$(date -u +%Y%m%d).log"
find "$dir" -maxdepth 1 -name 'samples-*.log' -mtime +__KEEP_DAYS__ -delete
# Alert when the verdict over the last hour changes (once, not every minute).
recent=$(find "$dir" -maxdepth 1 -name 'samples-*.log' | sort | tail -n 2)
# shellcheck disable=SC2086  # $recent: file names of our own making (samples-YYYYMMDD.log)
verdict=$(cat $recent | awk -v now="$now" -v window=3600 '__TRIGGERS__')
state=$(printf '%s\n' "$verdict" | sed -n 's/^verdict=//p')
if [ "$state" != unknown ] && [ "$state" != "$(cat "$dir/.verdict" 2>/dev/null || echo stay)" ]; then
  echo "$state" > "$dir/.verdict"
  notify="$APP_DIR/bin/tasktracker-notify"
  [ -x "$notify" ] && "$notify" "scaling triggers over the last hour: $state ($(printf '%s\n' "$verdict" | sed -n 's/^reasons=//p'))"
fi
# Alert when the WAL archive's verdict changes: failing, stalled, unreadable, pg_wal too big, ok.
archive=$(printf '%s\n' "$verdict" | sed -n 's/^archive=//p')
before=$(cat "$dir/.archive" 2>/dev/null || echo ok)
if [ -n "$archive" ] && [ "$archive" != unknown ] && [ "$archive" != "$before" ]; then
  echo "$archive" > "$dir/.archive"
  notify="$APP_DIR/bin/tasktracker-notify"
  why=$(printf '%s\n' "$verdict" | sed -n 's/^archive_reasons=//p')
  case "$archive" in
    ok) text="WAL archive: ok again (every finished segment is archived)" ;;
    failing) text="WAL ARCHIVING IS FAILING: $why; run doctor" ;;
    stalled) text="WAL ARCHIVING IS STALLED: $why; run doctor" ;;
    unreadable) text="THE WAL ARCHIVE'S STATE CANNOT BE READ: $why" ;;
    *) text="PG_WAL IS FILLING THE DISK: $why; run doctor" ;;
  esac
  [ -x "$notify" ] && "$notify" "$text"
fi
exit 0
