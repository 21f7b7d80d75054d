"""Day 2: `fab -H HOST status` (is it healthy, how close to its limits, time to upgrade?) and
`fab -H HOST doctor` (the plan's troubleshooting list, each finding with what to do).

Both read one snapshot of the host in one round trip (commands/status.py), then evaluate it
here with pure functions, so every threshold is testable without a host.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone

from invoke import Collection, Exit, task

from . import botapi
from .commands import backup as backup_commands
from .commands import cluster as cluster_commands
from .commands import lock as lock_commands
from .commands import offsite as offsite_commands
from .commands import pitr as pitr_commands
from .commands import status as status_commands
from .commands import tls as tls_commands
from .exits import ExitCode
from .host import Host
from .engines import open_host
from .swarm import summary_lines

# Thresholds (the and the plan's): a line turns into a warning past these.
BACKUP_MAX_AGE_H = 26
CERT_MIN_DAYS = 14
DISK_MAX_PERCENT = 85
MEMORY_MAX_FRACTION = 0.9
JETSTREAM_MAX_FRACTION = 0.8
DB_CONNECTIONS_MAX_FRACTION = 0.8
CLOCK_MAX_SKEW_S = 2.0
SAMPLER_MAX_AGE_S = 300
JOB_MAX_AGE_H = 26
# Connections the pool arithmetic leaves for everything else (backups, migrations, psql).
DB_RESERVED_CONNECTIONS = 5
# Pool sizes when the live release's settings do not name them (the plan's).
DEFAULT_POOL = {"API_WORKERS": 1, "DB_POOL_SIZE": 15, "DB_MAX_OVERFLOW": 20}


@dataclass(frozen=True)
class Finding:
    """One check's result: `ok`, or a problem and what to do about it."""

    check: str
    ok: bool
    summary: str
    advice: str = ""


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit in ("B", "KB") else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def age_text(seconds: float) -> str:
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def set_time(name: str) -> datetime | None:
    try:
        return datetime.strptime(name[:16], "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
    except ValueError:
        return None


def pool_settings(env: dict[str, str]) -> dict[str, int]:
    out = {}
    for key, default in DEFAULT_POOL.items():
        try:
            out[key] = int(env.get(key) or default)
        except ValueError:
            out[key] = default
    return out


def pool_demand(env: dict[str, str]) -> int:
    """Connections the stack may open: each API worker process and the TaskIQ worker each have
    a pool of DB_POOL_SIZE + DB_MAX_OVERFLOW."""
    p = pool_settings(env)
    return (p["API_WORKERS"] + 1) * (p["DB_POOL_SIZE"] + p["DB_MAX_OVERFLOW"])


def fitting_pool(max_connections: int, api_workers: int) -> int:
    """The largest DB_POOL_SIZE + DB_MAX_OVERFLOW per process that fits max_connections."""
    return max(1, (max_connections - DB_RESERVED_CONNECTIONS) // (api_workers + 1))


def latest_backup(sets: list[dict]) -> dict | None:
    full = [s for s in sets if not s["name"].endswith("-predeploy")]
    return full[-1] if full else None


def evaluate(snap: dict, now: float, sent_at: float | None = None,
             received_at: float | None = None) -> list[Finding]:
    """Every check, in the plan's troubleshooting order, from one snapshot."""
    return [*service_findings(snap), *memory_findings(snap), *database_findings(snap),
            *jetstream_findings(snap), *job_findings(snap), *disk_findings(snap),
            *clock_findings(snap, sent_at, received_at), *schedule_findings(snap, now)]


def service_findings(snap: dict) -> list[Finding]:
    """The release, and services down, unhealthy or restarting."""
    findings: list[Finding] = []
    add = findings.append
    containers = snap["containers"]
    if not snap["release"]["current"]:
        add(Finding("release", False, "no release is deployed", "deploy one: `fab -H HOST deploy`"))
    down = [c for c in containers if c["state"] != "running" or c["health"] == "unhealthy"]
    for c in down:
        add(Finding("services", False, f"{c['service']} is {c['state']}" + (f" ({c['health']})" if c["health"] != "-" else ""),
                    f"see why: `fab -H HOST compose.logs --service {c['service']} --tail 100`; then `compose.restart --service {c['service']}`"))
    for c in containers:
        if c["oom_killed"] or c["restarts"]:
            add(Finding("restarts", False, f"{c['service']} restarted {c['restarts']} times"
                        + (" and was killed for running out of memory (OOM)" if c["oom_killed"] else ""),
                        "a service that restarts loses its work in flight; read its logs "
                        f"(`compose.logs --service {c['service']}`)" + ("; raise its memory limit or lower its load" if c["oom_killed"] else "")))
    return findings


def memory_findings(snap: dict) -> list[Finding]:
    """A service near its memory limit (with the API_WORKERS that fit), the host short of memory."""
    findings: list[Finding] = []
    add = findings.append
    containers, p = snap["containers"], pool_settings(snap["release"]["env"])
    for c in containers:
        limit, used = c["mem_limit"], c.get("mem_bytes", 0)
        if limit and used > MEMORY_MAX_FRACTION * limit:
            advice = f"raise {c['service']}'s memory limit in docker-compose.production.yml, or lower its load"
            if c["service"] == "api":
                per_worker = used / max(1, p["API_WORKERS"])
                fit = max(1, int(MEMORY_MAX_FRACTION * limit // max(per_worker, 1)) - 1)
                advice = (f"the API uses about {human(per_worker)} per worker: with a {human(limit)} limit, API_WORKERS={fit} "
                          f"fits (now {p['API_WORKERS']}); or raise the limit")
            elif c["service"] == "postgres":
                advice = "lower shared_buffers/work_mem or raise postgres's limit (the plan: 2 GB)"
            add(Finding("memory", False, f"{c['service']} uses {human(used)} of its {human(limit)} limit "
                        f"({100 * used / limit:.0f}%, over {MEMORY_MAX_FRACTION:.0%})", advice))
    host = snap["host"]
    total_kb, avail_kb = int(host.get("MemTotal", 0) or 0), int(host.get("MemAvailable", 0) or 0)
    if total_kb and avail_kb < 0.1 * total_kb:
        add(Finding("memory", False, f"the host has {human(avail_kb * 1024)} of {human(total_kb * 1024)} available",
                    "stop what is not needed, or move to a bigger VPS (see the triggers in `status`)"))
    return findings


def database_findings(snap: dict) -> list[Finding]:
    """Connection pools that can exhaust max_connections, connections in use, an unreadable database."""
    findings: list[Finding] = []
    add = findings.append
    env, p = snap["release"]["env"], pool_settings(snap["release"]["env"])
    db = snap["db"]
    if db.get("max_connections"):
        demand, maximum = pool_demand(env), db["max_connections"]
        if demand > maximum - DB_RESERVED_CONNECTIONS:
            add(Finding("connection pool", False,
                        f"the pools may open {demand} connections ((API_WORKERS {p['API_WORKERS']} + 1 worker) x "
                        f"(DB_POOL_SIZE {p['DB_POOL_SIZE']} + DB_MAX_OVERFLOW {p['DB_MAX_OVERFLOW']})) but max_connections is {maximum}",
                        f"set DB_POOL_SIZE + DB_MAX_OVERFLOW to at most {fitting_pool(maximum, p['API_WORKERS'])} per process "
                        f"(e.g. DB_POOL_SIZE={max(1, fitting_pool(maximum, p['API_WORKERS']) * 3 // 7)}), or raise Postgres's max_connections"))
        if db["connections"] >= DB_CONNECTIONS_MAX_FRACTION * maximum:
            add(Finding("connection pool", False, f"{db['connections']} of {maximum} database connections are in use "
                        f"({100 * db['connections'] / maximum:.0f}%)",
                        "find who holds them (`select usename, application_name, state, count(*) from pg_stat_activity group by 1,2,3`); "
                        "lower the pool sizes, or raise max_connections"))
    elif db.get("error"):
        add(Finding("database", False, f"the database could not be queried: {db['error']}", "`compose.logs --service postgres`"))
    return findings


def jetstream_findings(snap: dict) -> list[Finding]:
    """JetStream storage and streams near their limits."""
    findings: list[Finding] = []
    add = findings.append
    js = snap["jsz"]
    if js.get("max_storage") and js["storage"] > JETSTREAM_MAX_FRACTION * js["max_storage"]:
        add(Finding("jetstream", False, f"JetStream stores {human(js['storage'])} of its {human(js['max_storage'])} limit",
                    "purge or limit streams (max_bytes / max_age), or give nats more disk"))
    for stream in js.get("streams", []):
        if stream["max_bytes"] and stream["max_bytes"] > 0 and stream["bytes"] > JETSTREAM_MAX_FRACTION * stream["max_bytes"]:
            add(Finding("jetstream", False, f"stream {stream['name']} holds {human(stream['bytes'])} of its max_bytes "
                        f"{human(stream['max_bytes'])} ({100 * stream['bytes'] / stream['max_bytes']:.0f}%)",
                        "consumers are not keeping up or the stream's limit is too small: check the worker "
                        "(`compose.logs --service worker`), then raise max_bytes or set max_age"))
    return findings


def job_findings(snap: dict) -> list[Finding]:
    """Background jobs that do not drain, and jobs failed after their last try."""
    findings: list[Finding] = []
    add = findings.append
    jobs = snap.get("jobs") or {}
    if jobs.get("late"):
        add(Finding("background jobs", False, f"{jobs['late']} tasks have waited more than {status_commands.JOBS_LATE_SECONDS // 60} minutes "
                    f"for their job (oldest {age_text(jobs['oldest_seconds'])}): the backlog does not drain",
                    "check the worker (`compose.logs --service worker`, `status`: is it healthy?), then "
                    "`compose.restart --service worker`"))
    if jobs.get("failed"):
        add(Finding("background jobs", False, f"{jobs['failed']} tasks failed their job after its last try (JOB_MAX_REQUEUES)",
                    "read why in `compose.logs --service worker`; once fixed, queue them again with "
                    "`UPDATE tasks SET status = 'pending', requeues = 0 WHERE status = 'failed'`"))
    return findings


def disk_findings(snap: dict) -> list[Finding]:
    """A disk past DISK_MAX_PERCENT, with what Docker can reclaim."""
    findings: list[Finding] = []
    add = findings.append
    for d in snap["disk"]:
        if d["percent"] > DISK_MAX_PERCENT:
            reclaim = sum(r["reclaimable"] for r in snap["docker_df"])
            add(Finding("disk", False, f"{', '.join(d['paths'])} is {d['percent']:.0f}% full ({human(d['available'])} free)",
                        f"`docker system prune` can reclaim about {human(reclaim)} (images, build cache); lower BACKUP_KEEP "
                        f"and copy backups off the host (`backup.pull`)"))
    return findings


def clock_findings(snap: dict, sent_at: float | None, received_at: float | None) -> list[Finding]:
    """The host's clock against this machine's (TLS, JWTs and logs need a true clock)."""
    findings: list[Finding] = []
    add = findings.append
    if sent_at is not None and received_at is not None and snap["clock"]:
        skew = snap["clock"] - (sent_at + received_at) / 2
        uncertainty = (received_at - sent_at) / 2
        if abs(skew) - uncertainty > CLOCK_MAX_SKEW_S:
            add(Finding("clock", False, f"the host's clock is {skew:+.1f} s off this machine's",
                        "enable time sync on the host (`timedatectl set-ntp true`; `provision` installs systemd-timesyncd)"))
    return findings


def schedule_findings(snap: dict, now: float) -> list[Finding]:
    """Certificates, backups, the WAL archive and the jobs that must run on their own."""
    findings: list[Finding] = []
    add = findings.append
    certs = tls_commands.parse_status(snap["certs"], datetime.fromtimestamp(now, timezone.utc))
    jobs, logs = snap["cron"]["jobs"], snap["cron"]["logs"]
    for cert in certs:
        if cert["days_left"] < CERT_MIN_DAYS:
            add(Finding("certificate", False, f"certificate {cert['name']} expires in {cert['days_left']} days",
                        "renew now: `fab -H HOST ssl.renew`; then check the renewal job (`ssl.schedule`)"))
    if certs and "ssl" not in jobs:
        add(Finding("jobs", False, "no certificate renewal job is installed", "`fab -H HOST ssl.schedule`"))
    elif certs and "renew.log" in logs and now - logs["renew.log"]["mtime"] > JOB_MAX_AGE_H * 3600:
        add(Finding("jobs", False, f"the certificate renewal job has not run for {age_text(now - logs['renew.log']['mtime'])}",
                    "is cron running (`systemctl status cron`)? Run `fab -H HOST ssl.renew` by hand to see its output"))
    sets, backup_log = backup_commands.parse_sets(snap["backups"])
    latest = latest_backup(sets)
    push = offsite_commands.last_push(backup_log)
    if push and push.get("result") == "offsite-failed":
        add(Finding("backup", False, f"the off-site copy of {push.get('set')} failed ({push.get('time')}); the set is only on the host",
                    "the nightly job's output is in backups/cron.log; fix the cause, then `fab -H HOST backup.offsite.push`"))
    archive = snap.get("pitr") or {}
    findings += archive_findings(archive, now)
    if archive.get("state") == "no-backup":
        add(Finding("WAL archive", False, "the WAL archive has no pgBackRest backup, so no restore to a moment is possible",
                    "`fab -H HOST backup` takes one (a deploy takes the first)"))
    if "backup" not in jobs:
        add(Finding("jobs", False, "no daily backup job is installed", "`fab -H HOST backup.schedule`"))
    if latest is None:
        add(Finding("backup", False, "there is no full backup on the host", "`fab -H HOST backup`"))
    else:
        made = set_time(latest["name"])
        age = now - made.timestamp() if made else 0
        if age > BACKUP_MAX_AGE_H * 3600:
            last = logs.get("cron.log", {}).get("last", "")
            add(Finding("backup", False, f"the latest full backup is {age_text(age)} old",
                        "the daily job did not run or failed" + (f" (its log ends: {last})" if last else "")
                        + "; run `fab -H HOST backup` now and read `backup.list`"))
    if "sample" not in jobs:
        add(Finding("jobs", False, "the metrics sampler is not installed", "deploy once (every deploy installs it)"))
    else:
        sampled = snap["latest_sample"].get("t", 0)
        if not sampled or now - sampled > SAMPLER_MAX_AGE_S:
            add(Finding("jobs", False, ("the metrics sampler has not recorded for " + age_text(now - sampled)) if sampled
                        else "the metrics sampler has not recorded yet (it runs every minute from cron)",
                        "is cron running (`systemctl status cron`)? Its log is shared/metrics/sampler.log"))
    return findings


def utc(seconds: float) -> str:
    return f"{datetime.fromtimestamp(seconds, timezone.utc):%Y-%m-%d %H:%M:%S} UTC"


ARCHIVE_LOGS = "`fab -H HOST compose.logs --service postgres` shows pgBackRest's error"


def archive_findings(archive: dict, now: float) -> list[Finding]:
    """The WAL archive (issue 26): figures that could not be read, an archiver whose last attempt
    failed, finished segments waiting longer than ARCHIVE_STALL_S (a stalled archive_command
    records no failure), and pg_wal past WAL_MAX_DISK_FRACTION of its disk. Ages are measured
    on the host's clock (`now` only when the snapshot has none)."""
    if archive.get("state") not in ("ok", "no-backup"):
        return []
    if archive.get("archiver_error"):
        return [Finding("WAL archive", False,
                        "the archiver's state could not be read, so whether WAL is archived is "
                        f"unknown; Postgres said: {archive['archiver_error']}",
                        "Postgres's words name the cause (the database or its user renamed? a "
                        "Postgres older than 12?); `fab -H HOST compose.logs --service postgres` "
                        "shows more")]
    found = []
    wal = f" ({wal_text(archive)})" if wal_text(archive) else ""
    host_now = archive.get("now") or now
    stall = status_commands.ARCHIVE_STALL_S
    waited = host_now - archive.get("oldest_ready", host_now)
    if pitr_commands.archive_failing(archive):
        last_ok = (utc(archive["last_archived"]) if archive.get("last_archived")
                   else "never since the last restart")
        found.append(Finding(
            "WAL archive", False,
            f"archiving WAL is failing: the last attempt failed at {utc(archive['last_failed'])}, "
            f"the last success was {last_ok} ({archive.get('failed_count', 0)} failures counted); "
            f"point-in-time recovery stops at the last archived segment and pg_wal grows{wal}",
            ARCHIVE_LOGS + " (a full disk? an off-site SFTP server that is down or refuses the "
            "key?); Postgres keeps every segment until it is archived, then archives them in "
            "order"))
    elif archive.get("ready") and waited > stall:
        found.append(Finding(
            "WAL archive", False,
            f"{archive['ready']} finished WAL segments wait to be archived, the oldest for "
            f"{age_text(waited)} (over {stall // 60} min): the archive is stalled{wal}",
            ARCHIVE_LOGS + "; a hanging archive_command (pgBackRest waiting on an unreachable "
            "repository) records no failure while it hangs"))
    total, used = archive.get("disk_total", 0), archive.get("wal_bytes", 0)
    if total and used > status_commands.WAL_MAX_DISK_FRACTION * total:
        found.append(Finding(
            "pg_wal", False,
            f"pg_wal holds {human(used)}, {100 * used / total:.0f}% of its {human(total)} disk "
            f"({human(archive.get('disk_available', 0))} free; over "
            f"{status_commands.WAL_MAX_DISK_FRACTION:.0%})",
            "Postgres keeps WAL it has not archived: fix the archive first (the WAL archive "
            "finding); a replication slot nobody reads keeps WAL too (`select slot_name, active "
            "from pg_replication_slots`)"))
    return found


def wal_text(archive: dict) -> str:
    """`pg_wal 1.2 GB of the 40.0 GB disk, 20.0 GB free`, or '' without the figures."""
    if "wal_bytes" not in archive:
        return ""
    disk = (f" of the {human(archive['disk_total'])} disk, "
            f"{human(archive.get('disk_available', 0))} free" if archive.get("disk_total") else "")
    return f"pg_wal {human(archive['wal_bytes'])}{disk}"


def swarm_findings(state: dict) -> list[Finding]:
    """On a swarm: a node that is down or drained, and services short of their replicas or rolled back
    (this host's containers are only the tasks placed on it)."""
    findings = []
    for n in state["nodes"]:
        if n["state"] != "ready" or n["availability"] != "active":
            findings.append(Finding("swarm", False, f"node {n['alias'] or n['hostname']} is {n['state']}/{n['availability']}",
                                    "a drained node comes back with `fab -H HOST cluster.activate NODE`; a down one: "
                                    "start the VPS (its tasks run elsewhere meanwhile); `cluster.status` shows where"))
    verdict, reasons = cluster_commands.convergence(state["services"], before=state["services"])  # a past rollback is history
    if verdict != "done":
        findings.append(Finding("swarm", False, f"the stack is {verdict}: {'; '.join(reasons)}",
                                "see `fab -H HOST cluster.status` and `docker service ps SERVICE --no-trunc` on the manager; "
                                "a rolled-back update keeps the previous release serving: fix it and deploy again"))
    return findings


def verdict_line(trigger: dict, window: str) -> str:
    verdict = trigger.get("verdict", "unknown")
    label = {"stay": "stay", "upgrade": "move to 4 CPU / 16 GB", "scale-out": "scale out", "unknown": "not enough history"}[verdict]
    figures = []
    if "mem_used_gb_avg" in trigger:
        figures.append(f"mem {trigger['mem_used_gb_avg']}/{trigger['mem_total_gb']} GB avg")
    if "cpu_avg" in trigger:
        figures.append(f"CPU {trigger['cpu_avg']}% avg, {trigger['cpu_max']}% max")
    if "api_p95_ms_max" in trigger:
        figures.append(f"API p95 max {trigger['api_p95_ms_max']} ms over {trigger['api_requests']} requests")
    if "db_connections_peak" in trigger:
        figures.append(f"db connections peak {trigger['db_connections_peak']}")
    if "messages_per_day" in trigger:
        figures.append(f"{trigger['messages_per_day']} messages/day")
    reasons = trigger.get("reasons", "")
    return (f"{window:5} {label}: " + (reasons if verdict not in ("stay",) else "no trigger fired")
            + (f"  [{trigger.get('samples', 0)} samples; " + "; ".join(figures) + "]" if figures else ""))


def status_lines(snap: dict, findings: list[Finding], now: float, name: str) -> list[str]:
    lines = [f"== {name} at {datetime.fromtimestamp(now, timezone.utc):%Y-%m-%d %H:%M:%S} UTC"]
    rel = snap["release"]
    meta = rel["meta"]
    if rel["current"]:
        deployed = meta.get("deployed_at", "")
        try:
            age = age_text(now - datetime.fromisoformat(deployed.replace("Z", "+00:00")).timestamp())
        except ValueError:
            age = "?"
        lines.append(f"release  {rel['current']}  commit {meta.get('commit', '?')}  {age} ago by "
                     f"{meta.get('deployed_user', '?')}@{meta.get('deployed_machine', '?')}")
    else:
        lines.append("release  none deployed")
    state, holder, liveness = lock_commands.parse_report(snap["lock"])
    lines.append("lock     " + ("free" if state == "FREE" else f"held ({liveness.lower() or 'alive'}): "
                                + lock_commands.describe(holder, liveness)))
    for entry in snap["audit"][-3:]:
        lines.append(f"         {entry.get('time', '?')} {entry.get('action', '?')} {entry.get('result', '?')} "
                     f"{entry.get('release', '')} ({entry.get('user', '?')})")
    lines.append("services")
    for c in snap["containers"]:
        mem = c.get("mem_bytes")
        limit = c["mem_limit"]
        mem_text = (f"{human(mem)}/{human(limit)} ({100 * mem / limit:.0f}%)" if mem is not None and limit else
                    f"{human(mem)}" if mem is not None else "-")
        cpu = f"{c['cpu_percent']:.1f}%/{c['cpu_limit']:g} CPU" if "cpu_percent" in c else "-"
        lines.append(f"  {c['service']:9} {c['state']:8} {c['health']:9} restarts {c['restarts']}"
                     f"{' OOM' if c['oom_killed'] else ''}  mem {mem_text}  cpu {cpu}")
    host = snap["host"]
    total_kb, avail_kb = int(host.get("MemTotal", 0) or 0), int(host.get("MemAvailable", 0) or 0)
    lines.append(f"host     {host.get('ncpu', '?')} CPU, load {host.get('load', '?')}; memory {human((total_kb - avail_kb) * 1024)} used, "
                 f"{human(avail_kb * 1024)} available of {human(total_kb * 1024)}")
    for d in snap["disk"]:
        lines.append(f"  disk {', '.join(d['paths'])}: {d['percent']:.0f}% used, {human(d['available'])} free")
    if snap["docker_df"]:
        lines.append("  docker reclaimable: " + ", ".join(f"{r['type']} {human(r['reclaimable'])}" for r in snap["docker_df"]))
    db = snap["db"]
    if db.get("max_connections"):
        lines.append(f"database {human(db['size'])}; connections {db['connections']}/{db['max_connections']} "
                     f"(pools may open {pool_demand(snap['release']['env'])})")
    js = snap["jsz"]
    if js:
        lines.append(f"jetstream {human(js['storage'])} stored of {human(js['max_storage'])}; {js['messages']} messages in "
                     f"{len(js['streams'])} streams")
    jobs = snap.get("jobs") or {}
    if jobs:
        flow = "; ".join(f"{s['name']}/{c['name']}: {c['waiting']} waiting, {c['in_flight']} in flight, {c['redelivered']} redelivered"
                         for s in js.get("streams", []) for c in s.get("consumers", []))
        lines.append(f"jobs     {jobs['pending']} pending" + (f" (oldest {age_text(jobs['oldest_seconds'])})" if jobs["pending"] else "")
                     + f", {jobs['failed']} failed" + (f"; {flow}" if flow else ""))
    sets, backup_log = backup_commands.parse_sets(snap["backups"])
    latest = latest_backup(sets)
    if latest:
        made = set_time(latest["name"])
        verified = latest.get("verification", {}).get("result") == "ok"
        lines.append(f"backup   {latest['name']}: {age_text(now - made.timestamp()) if made else '?'} old, "
                     f"{'verified' if verified else 'NOT verified'}, {human(latest['bytes'])}")
    else:
        lines.append("backup   none")
    push = offsite_commands.last_push(backup_log)
    if push:
        lines.append(f"off-site {push.get('set')}: {'copied' if push.get('result') == 'offsite-ok' else 'copy FAILED'} "
                     f"at {push.get('time')}")
    if (snap.get("pitr") or {}).get("state", "unknown") != "unknown":
        lines.append(pitr_commands.window_line(snap["pitr"]))
        archive = snap["pitr"]
        if "wal_bytes" in archive:
            waiting = archive.get("ready", 0)
            oldest = (archive.get("now") or now) - archive.get("oldest_ready", 0)
            age = (f" (the oldest {age_text(oldest)})" if waiting and archive.get("oldest_ready")
                   else "")
            lines.append(f"wal      {wal_text(archive)}; {waiting} finished segments waiting to be "
                         f"archived{age}")
    for cert in tls_commands.parse_status(snap["certs"], datetime.fromtimestamp(now, timezone.utc)):
        lines.append(f"tls      {cert['name']}: {cert['days_left']} days left")
    lines.append("scaling triggers (the plan's)")
    lines.append("  " + verdict_line(snap["trigger_hour"], "hour"))
    lines.append("  " + verdict_line(snap["trigger_day"], "day"))
    problems = [f for f in findings if not f.ok]
    lines.append("warnings" if problems else "no warnings")
    for f in problems:
        lines.append(f"  ! {f.check}: {f.summary}")
    return lines


def telegram_check(host: Host, snap: dict) -> tuple[str | None, list[Finding]]:
    """The bot's webhook (issue 27): a status line and findings, read from Telegram when the host
    serves HTTPS for DOMAIN (its certificate is in the snapshot); nothing when it is not in use."""
    certified = any(host.settings.domain in c["domains"] for c in tls_commands.parse_status(snap["certs"]))
    reason = botapi.not_ready_reason(host.settings, host.name, certified)
    if reason:
        return (None if host.settings.telegram_webhook == "off" else f"telegram not set: {reason}"), []
    state, problems = botapi.webhook_state(host.settings)
    fix = f"`fab -H {host.name} telegram.webhook` points it here again; `telegram.status` shows Telegram's view"
    return (f"telegram {state.line()}" if state else "telegram unknown"), [Finding("telegram", False, p, fix) for p in problems]


def read_snapshot(host: Host) -> tuple[dict, float, float]:
    sent = time.time()
    out = host.conn.run(status_commands.snapshot(host.ctx), hide=True, warn=True).stdout
    received = time.time()
    return status_commands.parse_snapshot(out), sent, received


def jsonable(snap: dict, findings: list[Finding]) -> dict:
    return {**{k: v for k, v in snap.items() if k not in ("backups", "certs", "lock")},
            "lock": dict(zip(("state", "holder", "liveness"), lock_commands.parse_report(snap["lock"]), strict=True)),
            "backups": backup_commands.parse_sets(snap["backups"])[0],
            "certs": [{**c, "expires": c["expires"].isoformat()} for c in tls_commands.parse_status(snap["certs"])],
            "findings": [asdict(f) for f in findings]}


@task(name="status", default=True, help={"json_": "Print one JSON document (for scripts) instead of the screen."})
def status(c, json_=False):
    """One screen: release, lock, services against their limits, host, database, JetStream,
    backup, certificates, the plan's scaling triggers, and warnings."""
    as_json = json_
    host = open_host(c)
    snap, sent, received = read_snapshot(host)
    now = time.time()
    findings = evaluate(snap, now, sent, received)
    bot_line, bot_findings = telegram_check(host, snap)
    findings += bot_findings
    swarm = host.cluster_state()
    if swarm is not None:
        findings += swarm_findings(swarm)
    if as_json:
        print(json.dumps({**jsonable(snap, findings), **({"swarm": swarm} if swarm is not None else {})}, indent=2, default=str))
        return
    print("\n".join(status_lines(snap, findings, now, host.name)))
    if bot_line:
        print(bot_line)
    if swarm is not None:
        print("\n".join(summary_lines(swarm, host.ctx.project)))


@task(help={"json_": "Print the findings as JSON (for scripts)."})
def doctor(c, json_=False):
    """Run the plan's troubleshooting checks and say what to do for each finding (exit 1 when
    something needs attention)."""
    as_json = json_
    host = open_host(c)
    snap, sent, received = read_snapshot(host)
    findings = evaluate(snap, time.time(), sent, received) + telegram_check(host, snap)[1]
    if (swarm := host.cluster_state()) is not None:
        findings += swarm_findings(swarm)
    if as_json:
        print(json.dumps([asdict(f) for f in findings], indent=2))
    else:
        if not findings:
            print(f"{host.name}: every check passed (services, memory, connection pool, JetStream, disk, clock, "
                  f"certificates, backup and sampler jobs, WAL archive).")
        for f in findings:
            print(f"[{f.check}] {f.summary}\n    -> {f.advice.replace('HOST', host.name)}")
    if findings:
        raise Exit(code=ExitCode.FAILED)


ns = Collection("status")
ns.add_task(status, default=True)
