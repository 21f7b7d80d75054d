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

from . import definitions, managed, pitr, q, sh
from .backup import cron_marker, install_cron, list_sets
from .context import HostContext
from .lock import status as lock_status
from .tls import status as tls_status
from .programs import program

SAMPLER_NAME = "tasktracker-sample"
METRICS_DAYS = 8
HOUR, DAY = 3600, 86400
# Keys of the live release's settings that status/doctor may read (never a secret).
PUBLIC_ENV_KEYS = ("API_WORKERS", "DB_POOL_SIZE", "DB_MAX_OVERFLOW", "HTTP_PORT", "HTTPS_PORT")
# The WAL archive (issue 26), for status/doctor (tasks/status.archive_findings) and the sampler's
# alert (triggers.awk): a finished segment waiting longer than this means the archive is stalled
# (archive_timeout, 3 s by default, finishes one every few seconds while WAL is written); and
# pg_wal past this fraction of its disk is WAL piling up.
ARCHIVE_STALL_S = 300
WAL_MAX_DISK_FRACTION = 0.10
SECTION = "@@ "

# The plan's triggers ("Scaling Triggers (When to Upgrade)"), for a window of samples.
# Sustained = at least SUSTAINED of the window's samples (with data) are past the threshold.
TRIGGERS_AWK = (program("triggers.awk").replace("__ARCHIVE_STALL_S__", str(ARCHIVE_STALL_S))
                .replace("__WAL_MAX_DISK_FRACTION__", str(WAL_MAX_DISK_FRACTION)))
SAMPLER_SCRIPT = program("sample.sh")
# Each container's memory and CPU from its cgroup, in `docker stats`'s format, without its wait.
CONTAINER_USAGE = program("container-usage.sh")


def metrics_dir(ctx: HostContext) -> str:
    return f"{ctx.shared_dir}/metrics"


def sampler_path(ctx: HostContext) -> str:
    return f"{ctx.bin_dir}/{SAMPLER_NAME}"


def sampler_script() -> str:
    awk = TRIGGERS_AWK.replace("'", "'\\''")
    return (SAMPLER_SCRIPT.replace("__TRIGGERS__", awk)
            .replace("__KEEP_DAYS__", str(METRICS_DAYS - 1))
            .replace("__ARCHIVER_QUERY__", q(pitr.ARCHIVER_QUERY)))


def sampler_cron_line(ctx_abs: HostContext) -> str:
    log = q(f"{metrics_dir(ctx_abs)}/sampler.log")
    command = sh([sampler_path(ctx_abs), ctx_abs.app_dir, ctx_abs.project])
    return f"* * * * * {command} >> {log} 2>&1 {cron_marker('sample', ctx_abs.project)}"


def install_sampler(ctx_abs: HostContext) -> str:
    """Write the sampler (only when it changed) and its every-minute cron line (only when missing),
    in one command; `ctx_abs` has the absolute app dir (cron has no $HOME-relative paths)."""
    path = sampler_path(ctx_abs)
    line = sampler_cron_line(ctx_abs)
    script = sampler_script()
    return (f"mkdir -p {q(ctx_abs.bin_dir)} {q(metrics_dir(ctx_abs))} && "
            f"{{ printf '%s' {q(script)} | cmp -s - {q(path)} || {{ printf '%s' {q(script)} > "
            f"{q(path + '.new')} && "
            f"chmod 700 {q(path + '.new')} && mv -f {q(path + '.new')} {q(path)}; }}; }} && "
            f"{{ crontab -l 2>/dev/null | grep -qxF -- {q(line)} || "
            f"{install_cron(line, cron_marker('sample', ctx_abs.project))} >/dev/null; }}")


def triggers(ctx: HostContext, window: int) -> str:
    """Shell: the trigger verdict over the last `window` seconds of samples."""
    return (f"cat $(ls -1 {q(metrics_dir(ctx))}/samples-*.log 2>/dev/null | tail -n 2) "
            f"/dev/null 2>/dev/null | awk -v now=\"$(date +%s)\" -v window={int(window)} "
            f"{q(TRIGGERS_AWK)}")


def cron_section(ctx: HostContext) -> str:
    """This app's cron jobs and the last line of each job's log. The marker must end the line,
    so `:tasktracker` never matches `tasktracker-staging`'s jobs."""
    return (f"crontab -l 2>/dev/null | awk -v p={q(':' + ctx.project)} "
            "'index($0, \"# tasktracker-\") && substr($0, length($0) - length(p) + 1) == p'; "
            f"for f in {q(ctx.backups_dir + '/cron.log')} {q(ctx.letsencrypt_dir + '/renew.log')} "
            f"{q(metrics_dir(ctx) + '/sampler.log')}; do [ -f \"$f\" ] && echo \"log=$(stat -c %Y "
            "\"$f\")|$f|$(tail -n 1 \"$f\" | cut -c1-200)\"; done; true")


# The app's jobs as its rows record them (backend/README.md, "Jobs"): pending, pending for longer
# than JOBS_LATE_SECONDS (the sweeper queues a late job again within JOB_REQUEUE_AFTER), failed
# after their last try, and the age of the oldest pending one.
JOBS_LATE_SECONDS = 300
JOBS_QUERY = ("select count(*) filter (where status = 'pending'), "
              "count(*) filter (where status = 'pending' and "
              f"coalesce(queued_at, created_at) < now() - interval '{JOBS_LATE_SECONDS} seconds'), "
              "count(*) filter (where status = 'failed'), "
              "coalesce(extract(epoch from now() - min(created_at) filter (where status = "
              "'pending'))::bigint, 0) from tasks")


def snapshot(ctx: HostContext) -> str:
    """One round trip: everything `status` and `doctor` show, in `@@ name` sections."""
    sections = snapshot_sections(ctx)
    # Every section runs at once (the slow ones: container-usage samples CPU for half a second,
    # `docker system df` sizes images), each into its own file, printed in order after `wait`.
    # `echo` before each marker: a section whose output has no final newline (jsz) cannot
    # swallow the next marker; parse_sections drops the blank lines this leaves.
    started = " ".join(f"{{ {command}; }} > \"$t/{n}\" 2>/dev/null &" for n,
                       (_, command) in enumerate(sections))
    printed = "; ".join(f"echo; echo {q(SECTION + name)}; cat \"$t/{n}\"" for n,
                        (name, _) in enumerate(sections))
    return f"t=$(mktemp -d) || exit 1; {started} wait; {printed}; rm -rf \"$t\""


def container_queries(ctx: HostContext) -> tuple[str, str]:
    """The stack's containers on this host (a command listing their ids) and the `docker
    inspect` format of one line per container."""
    project = q(ctx.project)
    # the stack's tasks on this node; the service without the `<project>_` prefix
    if ctx.engine == "swarm":
        # a swarm keeps ended tasks
        containers = f"docker ps -q --filter label=com.docker.stack.namespace={project}"
        service = ("{{slice (index .Config.Labels \"com.docker.swarm.service.name\") "
                   f"{len(ctx.project) + 1}}}}}")
    else:
        containers = (f"docker ps -aq --filter label=com.docker.compose.project={project} "
                      f"--filter label=com.docker.compose.oneoff=False")
        service = "{{index .Config.Labels \"com.docker.compose.service\"}}"
    inspect_format = (service + "|{{.State.Status}}|"
                      "{{if .State.Health}}{{.State.Health.Status}}{{end}}|"
                      "{{.RestartCount}}|{{.State.OOMKilled}}|"
                      "{{.HostConfig.Memory}}|{{.HostConfig.NanoCpus}}|{{.State.StartedAt}}|"
                      "{{slice .Id 0 12}}|{{.Name}}")
    return containers, inspect_format


def snapshot_sections(ctx: HostContext) -> list[tuple[str, str]]:
    """(name, command) of each section of the snapshot, in the order they are printed."""
    app, current = q(ctx.app_dir), q(ctx.current_link)
    containers, inspect_format = container_queries(ctx)
    running = containers.replace(" -aq ", " -q ").replace(" -q ", " -q --no-trunc ")
    env_keys = "|".join(PUBLIC_ENV_KEYS)
    return [
        ("clock", "date +%s.%N"),
        ("host", "echo ncpu=$(nproc); awk '/^(MemTotal|MemAvailable|SwapTotal|SwapFree):/ "
                 "{sub(\":\", \"\", $1); print $1 \"=\" $2}' "
                 "/proc/meminfo; echo load=$(cut -d' ' -f1-3 /proc/loadavg); echo uptime=$(cut -d' "
                 "' -f1 /proc/uptime); "
                 "echo docker_root=$(docker info --format '{{.DockerRootDir}}' 2>/dev/null)"),
        ("disk", f"for p in {app} {q(ctx.backups_dir)} \"$(docker info --format "
                 "'{{.DockerRootDir}}' 2>/dev/null || echo /)\"; do "
                 f"echo \"$p $(df -Pk \"$p\" 2>/dev/null | tail -n 1)\"; done"),
        ("docker_df", "docker system df --format "
                      "'{{.Type}}|{{.TotalCount}}|{{.Size}}|{{.Reclaimable}}' 2>/dev/null"),
        ("containers", f"ids=$({containers}); [ -z \"$ids\" ] || docker inspect --format "
                       f"{q(inspect_format)} $ids"),
        ("stats", f"ids=$({running}); [ -z \"$ids\" ] || "
                  f"bash -c {q(CONTAINER_USAGE)} container-usage $ids"),
        ("release", f"echo current=$(basename \"$(readlink {current} 2>/dev/null)\" 2>/dev/null); "
                    f"echo meta=$(tr -d '\\n' < {current}/RELEASE.json 2>/dev/null); "
                    f"grep -E '^({env_keys})=' {current}/.env 2>/dev/null | sed 's/^/env./'"),
        ("lock", lock_status(ctx)),
        ("audit", f"tail -n 200 {q(ctx.audit_log)} 2>/dev/null | grep -E '\"action\": "
                  "\"(deploy|rollback)\"' | tail -n 5"),
        ("db", f"pg=$({ctx.container('postgres')}); [ -z \"$pg\" ] || docker exec \"$pg\" sh -c "
               + q("psql -U \"$POSTGRES_USER\" -d \"$POSTGRES_DB\" -Atc \"select "
                   "pg_database_size(current_database()), "
                   "count(*) filter (where backend_type = 'client backend'), "
                   "current_setting('max_connections') "
                   "from pg_stat_activity\"") + " 2>&1 | tail -n 1"),
        ("jobs", f"pg=$({ctx.container('postgres')}); [ -z \"$pg\" ] || docker exec \"$pg\" sh -c "
                 + q("psql -U \"$POSTGRES_USER\" -d \"$POSTGRES_DB\" -Atc \"" + JOBS_QUERY + "\"")
         + " 2>&1 | tail -n 1"),
        ("jsz", f"n=$({ctx.container('nats')}); [ -z \"$n\" ] || docker exec \"$n\" "
                "wget -qO- 'http://127.0.0.1:8222/jsz?streams=true&config=true&consumers=true' "
                "2>/dev/null | tr -d '\\n'"),
        ("backups", list_sets(ctx)),
        ("pitr", pitr.info(ctx)), ("managed_db", managed.reach_check(ctx)),
        ("certs", tls_status(ctx)),
        ("cron", cron_section(ctx)),
        ("trigger_hour", triggers(ctx, HOUR)),
        ("trigger_day", triggers(ctx, DAY)),
        ("latest_sample", f"cat $(ls -1 {q(metrics_dir(ctx))}/samples-*.log 2>/dev/null | tail -n "
                          "1) /dev/null 2>/dev/null | tail -n 1"),
        ("pending", definitions.pending(ctx, ctx.current_link))]


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
            usage[parts[0][:12]] = {"mem_bytes": size_bytes(used),
                                    "cpu_percent": float(parts[2].strip().rstrip("%") or 0)}
    rows = []
    for line in inspect.splitlines():
        parts = line.split("|")
        if len(parts) < 10:
            continue
        service, state, health, restarts, oom, memory, nano, started, cid, name = parts[:10]
        rows.append({"service": service, "name": name.lstrip("/"), "id": cid, "state": state,
                     "health": health or "-",
                     "restarts": int(restarts or 0), "oom_killed": oom == "true",
                     "mem_limit": int(memory or 0),
                     "cpu_limit": int(nano or 0) / 1e9, "started_at": started,
                     **usage.get(cid, {})})
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
        rows[key] = {"mount": path, "paths": [path], "filesystem": parts[6], "total": total,
                     "used": used, "available": avail,
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
        return {"size": int(parts[0]), "connections": int(parts[1]),
                "max_connections": int(parts[2])}
    return {"error": text.strip()[-200:]} if text.strip() else {}


def parse_jobs(text: str) -> dict:
    """JOBS_QUERY's one line; empty when the app's table has no job columns (or no database)."""
    parts = text.strip().split("|")
    if len(parts) == 4 and all(p.strip().isdigit() for p in parts):
        return dict(zip(("pending", "late", "failed", "oldest_seconds"), map(int, parts),
                        strict=True))
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
            consumers = [{"name": c.get("name", "?"), "waiting": c.get("num_pending", 0),
                          "in_flight": c.get("num_ack_pending", 0),
                          "redelivered": c.get("num_redelivered", 0)}
                         for c in stream.get("consumer_detail") or []]
            streams.append({"name": stream.get("name", "?"), "bytes": state.get("bytes", 0),
                            "messages": state.get("messages", 0),
                            "max_bytes": config.get("max_bytes", -1),
                            "max_msgs": config.get("max_msgs", -1),
                            "consumers": consumers})
    config = data.get("config") or {}
    return {"storage": data.get("storage", 0), "max_storage": config.get("max_storage", 0),
            "memory": data.get("memory", 0),
            "max_memory": config.get("max_memory", 0), "messages": data.get("messages", 0),
            "streams": streams}


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
            out["services"][key[4:]] = {"mem_mib": float(mem or 0), "limit_mib": float(limit or 0),
                                        "cpu": float(cpu or 0)}
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
        "pitr": pitr.parse_info(s.get("pitr", "")) if s.get("pitr", "").strip()
        else {"state": "unknown"},
        "certs": s.get("certs", ""), "managed_db": managed.parse_reach(s.get("managed_db", "")),
        "cron": parse_cron(s.get("cron", "")),
        "trigger_hour": key_values(s.get("trigger_hour", "")),
        "trigger_day": key_values(s.get("trigger_day", "")),
        "latest_sample": parse_sample(s.get("latest_sample", "")),
        "pending": definitions.parse_pending(s.get("pending", ""))}
