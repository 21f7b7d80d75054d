"""`status`'s screen (tasks/status.py): the snapshot and its findings as lines of text."""

from __future__ import annotations

from datetime import datetime, timezone

from .commands import backup as backup_commands
from .commands import lock as lock_commands
from .commands import offsite as offsite_commands
from .commands import pitr as pitr_commands
from .commands import tls as tls_commands
from .health_checks import Finding, age_text, human, pool_demand
from .schedule_checks import latest_backup, set_time, wal_text


def verdict_line(trigger: dict, window: str) -> str:
    verdict = trigger.get("verdict", "unknown")
    label = {"stay": "stay", "upgrade": "move to 4 CPU / 16 GB", "scale-out": "scale out",
             "unknown": "not enough history"}[verdict]
    figures = []
    if "mem_used_gb_avg" in trigger:
        figures.append(f"mem {trigger['mem_used_gb_avg']}/{trigger['mem_total_gb']} GB avg")
    if "cpu_avg" in trigger:
        figures.append(f"CPU {trigger['cpu_avg']}% avg, {trigger['cpu_max']}% max")
    if "api_p95_ms_max" in trigger:
        figures.append(f"API p95 max {trigger['api_p95_ms_max']} ms over {trigger['api_requests']} "
                       "requests")
    if "db_connections_peak" in trigger:
        figures.append(f"db connections peak {trigger['db_connections_peak']}")
    if "messages_per_day" in trigger:
        figures.append(f"{trigger['messages_per_day']} messages/day")
    reasons = trigger.get("reasons", "")
    return (f"{window:5} {label}: " + (reasons if verdict not in ("stay",) else "no trigger fired")
            + (f"  [{trigger.get('samples', 0)} samples; " + "; ".join(figures) + "]" if figures
               else ""))


def status_lines(snap: dict, findings: list[Finding], now: float, name: str) -> list[str]:
    """The screen: release, lock, services, host, database, JetStream, jobs, backups, the WAL
    archive, certificates, the scaling triggers and the warnings, in that order."""
    return [f"== {name} at {datetime.fromtimestamp(now, timezone.utc):%Y-%m-%d %H:%M:%S} UTC",
            *release_lines(snap, now), *service_lines(snap), *host_lines(snap),
            *data_lines(snap), *backup_lines(snap, now), *archive_lines(snap, now),
            *tls_lines(snap, now), *trigger_lines(snap, findings)]


def release_lines(snap: dict, now: float) -> list[str]:
    """The live release, the lock and the last three audit lines."""
    lines = []
    rel = snap["release"]
    meta = rel["meta"]
    if rel["current"]:
        deployed = meta.get("deployed_at", "")
        try:
            age = age_text(now - datetime.fromisoformat(deployed.replace("Z",
                                                                         "+00:00")).timestamp())
        except ValueError:
            age = "?"
        lines.append(f"release  {rel['current']}  commit {meta.get('commit', '?')}  {age} ago by "
                     f"{meta.get('deployed_user', '?')}@{meta.get('deployed_machine', '?')}")
    else:
        lines.append("release  none deployed")
    state, holder, liveness = lock_commands.parse_report(snap["lock"])
    lines.append("lock     " + ("free" if state == "FREE"
                                else f"held ({liveness.lower() or 'alive'}): "
                                + lock_commands.describe(holder, liveness)))
    for entry in snap["audit"][-3:]:
        lines.append(f"         {entry.get('time', '?')} {entry.get('action', '?')} "
                     f"{entry.get('result', '?')} "
                     f"{entry.get('release', '')} ({entry.get('user', '?')})")
    return lines


def service_lines(snap: dict) -> list[str]:
    """Each service's state, health, restarts, memory and CPU against its limits."""
    lines = ["services"]
    for c in snap["containers"]:
        mem = c.get("mem_bytes")
        limit = c["mem_limit"]
        mem_text = (f"{human(mem)}/{human(limit)} ({100 * mem / limit:.0f}%)"
                    if mem is not None and limit else
                    f"{human(mem)}" if mem is not None else "-")
        cpu = f"{c['cpu_percent']:.1f}%/{c['cpu_limit']:g} CPU" if "cpu_percent" in c else "-"
        lines.append(f"  {c['service']:9} {c['state']:8} {c['health']:9} restarts {c['restarts']}"
                     f"{' OOM' if c['oom_killed'] else ''}  mem {mem_text}  cpu {cpu}")
    return lines


def host_lines(snap: dict) -> list[str]:
    """The host's CPUs, load and memory, its disks, and what Docker can reclaim."""
    lines = []
    host = snap["host"]
    total_kb, avail_kb = int(host.get("MemTotal", 0) or 0), int(host.get("MemAvailable", 0) or 0)
    lines.append(f"host     {host.get('ncpu', '?')} CPU, load {host.get('load', '?')}; memory "
                 f"{human((total_kb - avail_kb) * 1024)} used, "
                 f"{human(avail_kb * 1024)} available of {human(total_kb * 1024)}")
    for d in snap["disk"]:
        lines.append(f"  disk {', '.join(d['paths'])}: {d['percent']:.0f}% used, "
                     f"{human(d['available'])} free")
    if snap["docker_df"]:
        lines.append("  docker reclaimable: " + ", ".join(f"{r['type']} {human(r['reclaimable'])}"
                                                          for r in snap["docker_df"]))
    return lines


def data_lines(snap: dict) -> list[str]:
    """The database, JetStream and the background jobs."""
    lines = []
    db, reach = snap["db"], snap.get("managed_db") or {}
    if reach:
        lines.append("database managed (DATABASE_HOST): " + (
            f"reached over {reach.get('protocol')} (TLS {reach.get('tls')}), PostgreSQL "
            f"{reach.get('server')}" if reach.get("reach") == "ok" else "NOT reached"))
    if db.get("max_connections"):
        lines.append(f"database {human(db['size'])}; connections "
                     f"{db['connections']}/{db['max_connections']} "
                     f"(pools may open {pool_demand(snap['release']['env'])})")
    js = snap["jsz"]
    if js:
        lines.append(f"jetstream {human(js['storage'])} stored of {human(js['max_storage'])}; "
                     f"{js['messages']} messages in {len(js['streams'])} streams")
    jobs = snap.get("jobs") or {}
    if jobs:
        flow = "; ".join(f"{s['name']}/{c['name']}: {c['waiting']} waiting, {c['in_flight']} in "
                         f"flight, {c['redelivered']} redelivered"
                         for s in js.get("streams", []) for c in s.get("consumers", []))
        lines.append(f"jobs     {jobs['pending']} pending"
                     + (f" (oldest {age_text(jobs['oldest_seconds'])})" if jobs["pending"] else "")
                     + f", {jobs['failed']} failed" + (f"; {flow}" if flow else ""))
    return lines


def backup_lines(snap: dict, now: float) -> list[str]:
    """The latest full backup set and its last off-site copy."""
    lines = []
    sets, backup_log = backup_commands.parse_sets(snap["backups"])
    latest = latest_backup(sets)
    if latest:
        made = set_time(latest["name"])
        verified = latest.get("verification", {}).get("result") == "ok"
        lines.append(f"backup   {latest['name']}: "
                     f"{age_text(now - made.timestamp()) if made else '?'} old, "
                     f"{'verified' if verified else 'NOT verified'}, {human(latest['bytes'])}")
    else:
        lines.append("backup   none")
    push = offsite_commands.last_push(backup_log)
    if push:
        lines.append(f"off-site {push.get('set')}: "
                     f"{'copied' if push.get('result') == 'offsite-ok' else 'copy FAILED'} "
                     f"at {push.get('time')}")
    return lines


def archive_lines(snap: dict, now: float) -> list[str]:
    """The WAL archive's window and pg_wal, when the snapshot read them."""
    lines = []
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
    return lines


def tls_lines(snap: dict, now: float) -> list[str]:
    """Each certificate's days left."""
    certs = tls_commands.parse_status(snap["certs"], datetime.fromtimestamp(now, timezone.utc))
    return [f"tls      {cert['name']}: {cert['days_left']} days left" for cert in certs]


def trigger_lines(snap: dict, findings: list[Finding]) -> list[str]:
    """The plan's scaling triggers over the hour and the day, then the warnings."""
    lines = ["scaling triggers (the plan's)"]
    lines.append("  " + verdict_line(snap["trigger_hour"], "hour"))
    lines.append("  " + verdict_line(snap["trigger_day"], "day"))
    problems = [f for f in findings if not f.ok]
    lines.append("warnings" if problems else "no warnings")
    for f in problems:
        lines.append(f"  ! {f.check}: {f.summary}")
    return lines
