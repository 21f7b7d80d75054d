
# in: sample lines (key=value ...); -v now=EPOCH -v window=SECONDS
# out: key=value lines: samples, figures, verdict (stay|upgrade|scale-out|unknown), reasons;
#      archive (ok|failing|stalled|unreadable|pg_wal-high|unknown) and archive_reasons, from the
#      newest sample: tasks/status.archive_findings's rule (commands/status.py fills the bounds)
function val(k,   i, kv) { for (i = 1; i <= NF; i++) { split($i, kv, "="); if (kv[1] == k) return kv[2] }; return "" }
BEGIN { SUSTAINED = 0.75; MEM_FRACTION = 5 / 8; CPU = 80; P95 = 500; DB = 0.8; MSG_UP = 500; MSG_OUT = 1000; CLIENTS = 200; MIN = 10 }
BEGIN { STALL = __ARCHIVE_STALL_S__ + 0; WAL_FRACTION = __WAL_MAX_DISK_FRACTION__ + 0; a_t = ""
        NEVER = "never since the last restart"
        UNREADABLE = "the archiver's state could not be read" }
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
  if (t >= a_t && (val("arch_ok") != "" || val("arch_error") != "")) {
    a_t = t; a_err = val("arch_error") + 0; a_ok = val("arch_ok") + 0
    a_fails = val("arch_failures") + 0; a_fail_t = val("arch_fail_t") + 0
    a_ready = val("arch_ready") + 0; a_ready_t = val("arch_ready_t") + 0
    a_wal = val("wal_bytes") + 0; a_disk = val("wal_disk") + 0
  }
}
function ago(s) { return s < 3600 ? sprintf("%.0f min", s / 60) : sprintf("%.1f h", s / 3600) }
function archive_verdict(   why) {
  if (a_t == "") { printf "archive=unknown\n"; return }
  if (a_err) {
    printf "archive=unreadable\narchive_reasons=%s (see doctor)\n", UNREADABLE
    return
  }
  if (a_fail_t > a_ok) {
    why = sprintf("the last attempt failed %s ago, the last success %s (%d failures counted)",
                  ago(a_t - a_fail_t), a_ok ? ago(a_t - a_ok) " ago" : NEVER, a_fails)
    printf "archive=failing\narchive_reasons=%s\n", why; return
  }
  if (a_ready > 0 && a_t - a_ready_t > STALL) {
    printf "archive=stalled\narchive_reasons=%d finished WAL segments wait to be archived, %s\n",
      a_ready, "the oldest for " ago(a_t - a_ready_t); return
  }
  if (a_disk > 0 && a_wal > WAL_FRACTION * a_disk) {
    printf "archive=pg_wal-high\narchive_reasons=pg_wal holds %.0f%% of its disk (over %.0f%%)\n",
      100 * a_wal / a_disk, 100 * WAL_FRACTION; return
  }
  printf "archive=ok\n"
}
END {
  printf "samples=%d\n", n
  archive_verdict()
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
