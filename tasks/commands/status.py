"""Day 2 on the host: the metrics sampler, the scaling triggers, and the one-round-trip snapshot
that `status` and `doctor` read.

The sampler, `APP_DIR/bin/tasktracker-sample`, runs from cron every minute (the same script
whether or not anyone is logged in) and appends one line of `key=value` fields per minute to
`APP_DIR/shared/metrics/samples-<UTC day>.log`: host memory, load and CPU, each service's memory
and CPU against its limit, the API's requests, p95 and 5xx in that minute (from nginx's access
log, whose format carries `rt=$request_time`), distinct clients, database connections against
`max_connections`, and JetStream storage and its message sequence. Files older than
METRICS_DAYS are deleted, so the history is bounded; `shared/` outlives releases, so it
survives deploys and rollbacks.

The plan's scaling triggers are one awk program, TRIGGERS_AWK, run on the host: by the sampler
(which alerts through `tasktracker-notify` when the verdict changes) and by `status` over the
last hour and day. Nothing here opens a connection.
"""

from __future__ import annotations

import json
import re

from . import q, sh
from . import pitr
from .backup import cron_marker, install_cron, list_sets
from .context import HostContext
from .lock import status as lock_status
from .tls import status as tls_status

SAMPLER_NAME = "tasktracker-sample"
METRICS_DAYS = 8
HOUR, DAY = 3600, 86400
# Keys of the live release's settings that status/doctor may read (never a secret).
PUBLIC_ENV_KEYS = ("API_WORKERS", "DB_POOL_SIZE", "DB_MAX_OVERFLOW", "HTTP_PORT", "HTTPS_PORT")
SECTION = "@@ "

# The plan's triggers ("Scaling Triggers (When to Upgrade)"), for a window of samples.
# Sustained = at least SUSTAINED of the window's samples (with data) are past the threshold.
TRIGGERS_AWK = r'''
# in: sample lines (key=value ...); -v now=EPOCH -v window=SECONDS
# out: key=value lines: samples, figures, verdict (stay|upgrade|scale-out|unknown), reasons
function val(k,   i, kv) { for (i = 1; i <= NF; i++) { split($i, kv, "="); if (kv[1] == k) return kv[2] }; return "" }
BEGIN { SUSTAINED = 0.75; MEM_FRACTION = 5 / 8; CPU = 80; P95 = 500; DB = 0.8; MSG_UP = 500; MSG_OUT = 1000; CLIENTS = 200; MIN = 10 }
{
  t = val("t") + 0
  if (t < now - window || t > now) next
  n++
  total = val("mem_total") + 0; avail = val("mem_avail") + 0
  if (total > 0) { used = (total - avail) / 1048576; mtot = total / 1048576; if (used > mem_max) mem_max = used
                   if (total - avail > MEM_FRACTION * total) mem_hi++; mem_sum += used; mem_n++ }
  c = val("cpu"); if (c != "") { cpu_n++; cpu_sum += c; if (c + 0 > CPU) cpu_hi++; if (c + 0 > cpu_max) cpu_max = c + 0 }
  p = val("p95"); if (p != "" && val("req") + 0 > 0) { p_n++; if (p + 0 > P95) p_hi++; if (p + 0 > p_max) p_max = p + 0; reqs += val("req") }
  d = val("db_conn"); m = val("db_max")
  if (d != "" && m + 0 > 0) { r = d / m; if (r > db_max) { db_max = r; db_peak = d "/" m } }
  cl = val("clients") + 0; if (cl > clients_max) clients_max = cl
  s = val("js_seq"); if (s != "") { if (first_seq == "") { first_seq = s; first_t = t }; last_seq = s; last_t = t }
  if (val("ncpu") != "") ncpu = val("ncpu")
}
END {
  printf "samples=%d\n", n
  if (mem_n) printf "mem_used_gb_avg=%.2f\nmem_used_gb_max=%.2f\nmem_total_gb=%.2f\n", mem_sum / mem_n, mem_max, mtot
  if (cpu_n) printf "cpu_avg=%.1f\ncpu_max=%.1f\n", cpu_sum / cpu_n, cpu_max
  if (p_n) printf "api_p95_ms_max=%d\napi_requests=%d\n", p_max, reqs
  if (db_peak != "") printf "db_connections_peak=%s\n", db_peak
  printf "clients_max=%d\n", clients_max
  msgs = -1
  if (first_seq != "" && last_t > first_t) { msgs = (last_seq - first_seq) * 86400 / (last_t - first_t); if (msgs < 0) msgs = 0; printf "messages_per_day=%d\n", msgs }
  out = ""; up = ""
  if (clients_max > CLIENTS) out = out sprintf("%d distinct clients in a minute (> %d); ", clients_max, CLIENTS)
  if (msgs > MSG_OUT) out = out sprintf("%d messages/day (> %d); ", msgs, MSG_OUT)
  if (n < MIN) { printf "verdict=unknown\nreasons=only %d samples in this window (the sampler runs every minute)\n", n; exit }
  if (mem_n && mem_hi >= SUSTAINED * mem_n) up = up sprintf("memory %.1f of %.1f GB used on average (> %d%%, sustained); ", mem_sum / mem_n, mtot, MEM_FRACTION * 100)
  if (cpu_n && cpu_hi >= SUSTAINED * cpu_n) up = up sprintf("CPU %.0f%% on average (> %d%%, sustained); ", cpu_sum / cpu_n, CPU)
  if (p_n && p_hi >= SUSTAINED * p_n) up = up sprintf("API p95 up to %d ms (> %d ms, sustained); ", p_max, P95)
  if (db_max >= DB) up = up sprintf("database connections peaked at %s (>= %d%% of max_connections); ", db_peak, DB * 100)
  if (msgs > MSG_UP && msgs <= MSG_OUT) up = up sprintf("%d messages/day (> %d); ", msgs, MSG_UP)
  if (out != "") { printf "verdict=scale-out\nreasons=%s\n", out; exit }
  if (up != "") { printf "verdict=upgrade\nreasons=%s\n", up; exit }
  printf "verdict=stay\nreasons=no trigger fired\n"
}
'''

SAMPLER_SCRIPT = r'''#!/usr/bin/env bash
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
  names=$(docker inspect -f '{{.Id}} {{with index .Config.Labels "com.docker.compose.service"}}{{.}}{{end}}{{with index .Config.Labels "com.docker.swarm.service.name"}}{{.}}{{end}}' $ids \
    | cut -c1-12,65- | sed "s/ ${PROJECT}_/ /")
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
verdict=$(cat $(ls -1 "$dir"/samples-*.log | tail -n 2) | awk -v now="$now" -v window=3600 '__TRIGGERS__')
state=$(printf '%s\n' "$verdict" | sed -n 's/^verdict=//p')
if [ "$state" != unknown ] && [ "$state" != "$(cat "$dir/.verdict" 2>/dev/null || echo stay)" ]; then
  echo "$state" > "$dir/.verdict"
  notify="$APP_DIR/bin/tasktracker-notify"
  [ -x "$notify" ] && "$notify" "scaling triggers over the last hour: $state ($(printf '%s\n' "$verdict" | sed -n 's/^reasons=//p'))"
fi
exit 0
'''


def metrics_dir(ctx: HostContext) -> str:
    return f"{ctx.shared_dir}/metrics"


def sampler_path(ctx: HostContext) -> str:
    return f"{ctx.bin_dir}/{SAMPLER_NAME}"


def sampler_script() -> str:
    awk = TRIGGERS_AWK.replace("'", "'\\''")
    return SAMPLER_SCRIPT.replace("__TRIGGERS__", awk).replace("__KEEP_DAYS__", str(METRICS_DAYS - 1))


def sampler_cron_line(ctx_abs: HostContext) -> str:
    log = q(f"{metrics_dir(ctx_abs)}/sampler.log")
    return (f"* * * * * {sh([sampler_path(ctx_abs), ctx_abs.app_dir, ctx_abs.project])} >> {log} 2>&1 "
            f"{cron_marker('sample', ctx_abs.project)}")


def install_sampler(ctx_abs: HostContext) -> str:
    """Write the sampler (only when it changed) and its every-minute cron line (only when missing),
    in one command; `ctx_abs` has the absolute app dir (cron has no $HOME-relative paths)."""
    path = sampler_path(ctx_abs)
    line = sampler_cron_line(ctx_abs)
    script = sampler_script()
    return (f"mkdir -p {q(ctx_abs.bin_dir)} {q(metrics_dir(ctx_abs))} && "
            f"{{ printf '%s' {q(script)} | cmp -s - {q(path)} || {{ printf '%s' {q(script)} > {q(path + '.new')} && "
            f"chmod 700 {q(path + '.new')} && mv -f {q(path + '.new')} {q(path)}; }}; }} && "
            f"{{ crontab -l 2>/dev/null | grep -qxF -- {q(line)} || {install_cron(line, cron_marker('sample', ctx_abs.project))} >/dev/null; }}")


def triggers(ctx: HostContext, window: int) -> str:
    """Shell: the trigger verdict over the last `window` seconds of samples."""
    return (f"cat $(ls -1 {q(metrics_dir(ctx))}/samples-*.log 2>/dev/null | tail -n 2) /dev/null 2>/dev/null | "
            f"awk -v now=\"$(date +%s)\" -v window={int(window)} {q(TRIGGERS_AWK)}")


def cron_section(ctx: HostContext) -> str:
    """This app's cron jobs and the last line of each job's log. The marker must end the line,
    so `:tasktracker` never matches `tasktracker-staging`'s jobs."""
    return (f"crontab -l 2>/dev/null | awk -v p={q(':' + ctx.project)} "
            "'index($0, \"# tasktracker-\") && substr($0, length($0) - length(p) + 1) == p'; "
            f"for f in {q(ctx.backups_dir + '/cron.log')} {q(ctx.letsencrypt_dir + '/renew.log')} "
            f"{q(metrics_dir(ctx) + '/sampler.log')}; do [ -f \"$f\" ] && echo \"log=$(stat -c %Y \"$f\")|$f|$(tail -n 1 \"$f\" | cut -c1-200)\"; done; true")


# The app's jobs as its rows record them (backend/README.md, "Jobs"): pending, pending for longer
# than JOBS_LATE_SECONDS (the sweeper queues a late job again within JOB_REQUEUE_AFTER), failed
# after their last try, and the age of the oldest pending one.
JOBS_LATE_SECONDS = 300
JOBS_QUERY = ("select count(*) filter (where status = 'pending'), count(*) filter (where status = 'pending' and "
              f"coalesce(queued_at, created_at) < now() - interval '{JOBS_LATE_SECONDS} seconds'), "
              "count(*) filter (where status = 'failed'), "
              "coalesce(extract(epoch from now() - min(created_at) filter (where status = 'pending'))::bigint, 0) from tasks")


def snapshot(ctx: HostContext) -> str:
    """One round trip: everything `status` and `doctor` show, in `@@ name` sections."""
    app, project = q(ctx.app_dir), q(ctx.project)
    if ctx.engine == "swarm":  # the stack's tasks on this node; the service without the `<project>_` prefix
        containers = f"docker ps -q --filter label=com.docker.stack.namespace={project}"  # a swarm keeps ended tasks
        service = f"{{{{slice (index .Config.Labels \"com.docker.swarm.service.name\") {len(ctx.project) + 1}}}}}"
    else:
        containers = (f"docker ps -aq --filter label=com.docker.compose.project={project} "
                      f"--filter label=com.docker.compose.oneoff=False")
        service = "{{index .Config.Labels \"com.docker.compose.service\"}}"
    inspect_format = (service + "|{{.State.Status}}|"
                      "{{if .State.Health}}{{.State.Health.Status}}{{end}}|{{.RestartCount}}|{{.State.OOMKilled}}|"
                      "{{.HostConfig.Memory}}|{{.HostConfig.NanoCpus}}|{{.State.StartedAt}}|{{slice .Id 0 12}}|{{.Name}}")
    env_keys = "|".join(PUBLIC_ENV_KEYS)
    sections = [
        ("clock", "date +%s.%N"),
        ("host", "echo ncpu=$(nproc); awk '/^(MemTotal|MemAvailable|SwapTotal|SwapFree):/ {sub(\":\", \"\", $1); print $1 \"=\" $2}' "
                 "/proc/meminfo; echo load=$(cut -d' ' -f1-3 /proc/loadavg); echo uptime=$(cut -d' ' -f1 /proc/uptime); "
                 "echo docker_root=$(docker info --format '{{.DockerRootDir}}' 2>/dev/null)"),
        ("disk", f"for p in {app} {q(ctx.backups_dir)} \"$(docker info --format '{{{{.DockerRootDir}}}}' 2>/dev/null || echo /)\"; do "
                 f"echo \"$p $(df -Pk \"$p\" 2>/dev/null | tail -n 1)\"; done"),
        ("docker_df", "docker system df --format '{{.Type}}|{{.TotalCount}}|{{.Size}}|{{.Reclaimable}}' 2>/dev/null"),
        ("containers", f"ids=$({containers}); [ -z \"$ids\" ] || docker inspect --format {q(inspect_format)} $ids"),
        ("stats", f"ids=$({containers.replace(' -aq ', ' -q ')}); [ -z \"$ids\" ] || "
                  f"docker stats --no-stream --format '{{{{.ID}}}}|{{{{.MemUsage}}}}|{{{{.CPUPerc}}}}' $ids"),
        ("release", f"echo current=$(basename \"$(readlink {q(ctx.current_link)} 2>/dev/null)\" 2>/dev/null); "
                    f"echo meta=$(tr -d '\\n' < {q(ctx.current_link)}/RELEASE.json 2>/dev/null); "
                    f"grep -E '^({env_keys})=' {q(ctx.current_link)}/.env 2>/dev/null | sed 's/^/env./'"),
        ("lock", lock_status(ctx)),
        ("audit", f"tail -n 200 {q(ctx.audit_log)} 2>/dev/null | grep -E '\"action\": \"(deploy|rollback)\"' | tail -n 5"),
        ("db", f"pg=$({ctx.container('postgres')}); [ -z \"$pg\" ] || docker exec \"$pg\" sh -c "
               + q("psql -U \"$POSTGRES_USER\" -d \"$POSTGRES_DB\" -Atc \"select pg_database_size(current_database()), "
                   "count(*) filter (where backend_type = 'client backend'), current_setting('max_connections') "
                   "from pg_stat_activity\"") + " 2>&1 | tail -n 1"),
        ("jobs", f"pg=$({ctx.container('postgres')}); [ -z \"$pg\" ] || docker exec \"$pg\" sh -c "
                 + q("psql -U \"$POSTGRES_USER\" -d \"$POSTGRES_DB\" -Atc \"" + JOBS_QUERY + "\"") + " 2>&1 | tail -n 1"),
        ("jsz", f"n=$({ctx.container('nats')}); [ -z \"$n\" ] || docker exec \"$n\" "
                f"wget -qO- 'http://127.0.0.1:8222/jsz?streams=true&config=true&consumers=true' 2>/dev/null | tr -d '\\n'"),
        ("backups", list_sets(ctx)),
        ("pitr", pitr.info(ctx)),
        ("certs", tls_status(ctx)),
        ("cron", cron_section(ctx)),
        ("trigger_hour", triggers(ctx, HOUR)),
        ("trigger_day", triggers(ctx, DAY)),
        ("latest_sample", f"cat $(ls -1 {q(metrics_dir(ctx))}/samples-*.log 2>/dev/null | tail -n 1) /dev/null 2>/dev/null | tail -n 1"),
    ]
    # Every section runs at once (the slow ones: `docker stats` samples for about two seconds,
    # `docker system df` sizes images), each into its own file, printed in order after `wait`.
    # `echo` before each marker: a section whose output has no final newline (jsz) cannot
    # swallow the next marker; parse_sections drops the blank lines this leaves.
    started = " ".join(f"{{ {command}; }} > \"$t/{n}\" 2>/dev/null &" for n, (_, command) in enumerate(sections))
    printed = "; ".join(f"echo; echo {q(SECTION + name)}; cat \"$t/{n}\"" for n, (name, _) in enumerate(sections))
    return f"t=$(mktemp -d) || exit 1; {started} wait; {printed}; rm -rf \"$t\""


# --- parsers -------------------------------------------------------------------------------

def parse_sections(output: str) -> dict[str, str]:
    sections: dict[str, list[str]] = {}
    name = ""
    for line in output.splitlines():
        if line.startswith(SECTION):
            name = line[len(SECTION):].strip()
            sections[name] = []
        elif name:
            sections[name].append(line)
    return {k: "\n".join(v).strip("\n") for k, v in sections.items()}


def key_values(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key.strip()] = value.strip()
    return out


def size_bytes(text: str) -> float:
    """`45.3MiB`, `1GiB`, `512kB`, `1.2GB` (docker's units) as bytes."""
    match = re.match(r"\s*([\d.]+)\s*([kKMGT]?i?B)?", text or "")
    if not match:
        return 0.0
    number, unit = float(match.group(1)), (match.group(2) or "B")
    powers = {"B": 0, "k": 1, "K": 1, "M": 2, "G": 3, "T": 4}
    base = 1024 if "i" in unit else 1000
    return number * base ** powers[unit[0]] if unit != "B" else number


def parse_containers(inspect: str, stats: str) -> list[dict]:
    usage = {}
    for line in stats.splitlines():
        parts = line.split("|")
        if len(parts) == 3:
            used, _, limit = parts[1].partition("/")
            usage[parts[0][:12]] = {"mem_bytes": size_bytes(used), "cpu_percent": float(parts[2].strip().rstrip("%") or 0)}
    rows = []
    for line in inspect.splitlines():
        parts = line.split("|")
        if len(parts) < 10:
            continue
        service, state, health, restarts, oom, memory, nano, started, cid, name = parts[:10]
        rows.append({"service": service, "name": name.lstrip("/"), "id": cid, "state": state, "health": health or "-",
                     "restarts": int(restarts or 0), "oom_killed": oom == "true", "mem_limit": int(memory or 0),
                     "cpu_limit": int(nano or 0) / 1e9, "started_at": started, **usage.get(cid, {})})
    return sorted(rows, key=lambda r: (r["service"], r["name"]))


def parse_disk(text: str) -> list[dict]:
    """`PATH` + its `df -Pk` line, per path asked; paths on one filesystem are one row."""
    rows: dict[tuple, dict] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 7 or not parts[2].isdigit():
            continue
        path, device = parts[0], parts[1]
        total, used, avail = int(parts[2]) * 1024, int(parts[3]) * 1024, int(parts[4]) * 1024
        key = (device, total)
        if key in rows:
            rows[key]["paths"].append(path)
            continue
        rows[key] = {"mount": path, "paths": [path], "filesystem": parts[6], "total": total, "used": used, "available": avail,
                     "percent": round(100 * used / (used + avail), 1) if used + avail else 0.0}
    return list(rows.values())


def parse_docker_df(text: str) -> list[dict]:
    rows = []
    for line in text.splitlines():
        parts = line.split("|")
        if len(parts) == 4:
            rows.append({"type": parts[0], "count": parts[1], "size": size_bytes(parts[2]),
                         "reclaimable": size_bytes(parts[3].split("(")[0])})
    return rows


def parse_db(text: str) -> dict:
    parts = text.strip().split("|")
    if len(parts) == 3 and all(p.strip().isdigit() for p in parts):
        return {"size": int(parts[0]), "connections": int(parts[1]), "max_connections": int(parts[2])}
    return {"error": text.strip()[-200:]} if text.strip() else {}


def parse_jobs(text: str) -> dict:
    """JOBS_QUERY's one line; empty when the app's table has no job columns (or no database)."""
    parts = text.strip().split("|")
    if len(parts) == 4 and all(p.strip().isdigit() for p in parts):
        return dict(zip(("pending", "late", "failed", "oldest_seconds"), map(int, parts), strict=True))
    return {}


def parse_jsz(text: str) -> dict:
    try:
        data = json.loads(text) if text.strip() else {}
    except ValueError:
        return {}
    streams = []
    for account in data.get("account_details") or []:
        for stream in account.get("stream_detail") or []:
            config, state = stream.get("config") or {}, stream.get("state") or {}
            consumers = [{"name": c.get("name", "?"), "waiting": c.get("num_pending", 0), "in_flight": c.get("num_ack_pending", 0),
                          "redelivered": c.get("num_redelivered", 0)} for c in stream.get("consumer_detail") or []]
            streams.append({"name": stream.get("name", "?"), "bytes": state.get("bytes", 0), "messages": state.get("messages", 0),
                            "max_bytes": config.get("max_bytes", -1), "max_msgs": config.get("max_msgs", -1),
                            "consumers": consumers})
    config = data.get("config") or {}
    return {"storage": data.get("storage", 0), "max_storage": config.get("max_storage", 0), "memory": data.get("memory", 0),
            "max_memory": config.get("max_memory", 0), "messages": data.get("messages", 0), "streams": streams}


def parse_cron(text: str) -> dict:
    jobs, logs = {}, {}
    for line in text.splitlines():
        if line.startswith("log="):
            mtime, path, last = (line[4:].split("|", 2) + ["", ""])[:3]
            logs[path.rsplit("/", 1)[-1]] = {"mtime": int(mtime or 0), "last": last}
        else:
            match = re.search(r"# tasktracker-([a-z]+):", line)
            if match:
                jobs[match.group(1)] = line
    return {"jobs": jobs, "logs": logs}


def parse_sample(line: str) -> dict:
    """One sampler line as numbers (service fields as {mem_mib, limit_mib, cpu})."""
    out: dict = {"services": {}}
    for field in line.split():
        key, sep, value = field.partition("=")
        if not sep:
            continue
        if key.startswith("svc."):
            mem, limit, cpu = (value.split("/") + ["0", "0", "0"])[:3]
            out["services"][key[4:]] = {"mem_mib": float(mem or 0), "limit_mib": float(limit or 0), "cpu": float(cpu or 0)}
        else:
            try:
                out[key] = float(value)
            except ValueError:
                out[key] = value
    return out


def parse_snapshot(output: str) -> dict:
    """Everything `snapshot` printed, parsed (missing sections parse as empty)."""
    s = parse_sections(output)
    release = key_values(s.get("release", ""))
    try:
        meta = json.loads(release.get("meta") or "{}")
    except ValueError:
        meta = {}
    audit = []
    for line in s.get("audit", "").splitlines():
        try:
            audit.append(json.loads(line))
        except ValueError:
            pass
    return {
        "clock": float(s.get("clock", "0").strip() or 0),
        "host": key_values(s.get("host", "")),
        "disk": parse_disk(s.get("disk", "")),
        "docker_df": parse_docker_df(s.get("docker_df", "")),
        "containers": parse_containers(s.get("containers", ""), s.get("stats", "")),
        "release": {"current": release.get("current", ""), "meta": meta,
                    "env": {k[4:]: v for k, v in release.items() if k.startswith("env.")}},
        "lock": s.get("lock", ""),
        "audit": audit,
        "db": parse_db(s.get("db", "")),
        "jsz": parse_jsz(s.get("jsz", "")),
        "jobs": parse_jobs(s.get("jobs", "")),
        "backups": s.get("backups", "") + "\n",  # parse_sets splits at "--log\n"
        "pitr": pitr.parse_info(s.get("pitr", "")) if s.get("pitr", "").strip() else {"state": "unknown"},
        "certs": s.get("certs", ""),
        "cron": parse_cron(s.get("cron", "")),
        "trigger_hour": key_values(s.get("trigger_hour", "")),
        "trigger_day": key_values(s.get("trigger_day", "")),
        "latest_sample": parse_sample(s.get("latest_sample", "")),
    }
