"""The host's checks for `status` and `doctor` (tasks/status.py): services, memory, connection
pools, JetStream, background jobs, disk, clock and the swarm, each a pure function of the
snapshot (commands/status.py) returning `Finding`s, so every threshold is a table test."""

from __future__ import annotations

from dataclasses import dataclass

from .commands import cluster as cluster_commands
from .commands import definitions
from .commands import status as status_commands

# Thresholds (the and the plan's): a line turns into a warning past these.
DISK_MAX_PERCENT = 85
MEMORY_MAX_FRACTION = 0.9
JETSTREAM_MAX_FRACTION = 0.8
DB_CONNECTIONS_MAX_FRACTION = 0.8
CLOCK_MAX_SKEW_S = 2.0
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


def maintenance_findings(snap: dict) -> list[Finding]:
    """A `recover` that has not finished: every client gets 503 "recovering"."""
    if not snap.get("recovering"):
        return []
    return [Finding("maintenance", False, "a recover has not finished (off-site set "
                    f"{snap['recovering']}): every client gets 503 \"recovering\"",
                    "finish it: `fab -H HOST recover --from-offsite` resumes it (deploy, rollback "
                    "and restore refuse until then)")]


def service_findings(snap: dict) -> list[Finding]:
    """The release; services down, unhealthy or restarting, or running a previous definition."""
    findings: list[Finding] = []
    add = findings.append
    containers = snap["containers"]
    if not snap["release"]["current"]:
        add(Finding("release", False, "no release is deployed", "deploy one: `fab -H HOST deploy`"))
    down = [c for c in containers if c["state"] != "running" or c["health"] == "unhealthy"]
    for c in down:
        add(Finding("services", False, f"{c['service']} is {c['state']}"
                    + (f" ({c['health']})" if c["health"] != "-" else ""),
                    f"see why: `fab -H HOST compose.logs --service {c['service']} --tail 100`; "
                    f"then `compose.restart --service {c['service']}`"))
    for c in containers:
        if c["oom_killed"] or c["restarts"]:
            add(Finding("restarts", False, f"{c['service']} restarted {c['restarts']} times"
                        + (" and was killed for running out of memory (OOM)" if c["oom_killed"]
                           else ""),
                        "a service that restarts loses its work in flight; read its logs "
                        f"(`compose.logs --service {c['service']}`)"
                        + ("; raise its memory limit or lower its load" if c["oom_killed"]
                           else "")))
    for service in snap.get("pending", []):
        add(Finding("definitions", False, f"{service} runs its previous definition: release "
                    f"{snap['release']['current']} defines it differently (a deploy does not "
                    f"restart {service})", f"`{definitions.recreate_command('HOST', service)}` "
                    f"applies it; {service} is unavailable for "
                    f"{definitions.UNAVAILABLE[service]} meanwhile"))
    return findings


def memory_findings(snap: dict) -> list[Finding]:
    """A service near its memory limit (with the API_WORKERS that fit), the host short of memory."""
    findings: list[Finding] = []
    add = findings.append
    containers, p = snap["containers"], pool_settings(snap["release"]["env"])
    for c in containers:
        limit, used = c["mem_limit"], c.get("mem_bytes", 0)
        if limit and used > MEMORY_MAX_FRACTION * limit:
            advice = (f"raise {c['service']}'s memory limit in docker-compose.production.yml, or "
                      "lower its load")
            if c["service"] == "api":
                per_worker = used / max(1, p["API_WORKERS"])
                fit = max(1, int(MEMORY_MAX_FRACTION * limit // max(per_worker, 1)) - 1)
                advice = (f"the API uses about {human(per_worker)} per worker: with a "
                          f"{human(limit)} limit, API_WORKERS={fit} "
                          f"fits (now {p['API_WORKERS']}); or raise the limit")
            elif c["service"] == "postgres":
                advice = "lower shared_buffers/work_mem or raise postgres's limit (the plan: 2 GB)"
            add(Finding("memory", False, f"{c['service']} uses {human(used)} of its {human(limit)} "
                        "limit "
                        f"({100 * used / limit:.0f}%, over {MEMORY_MAX_FRACTION:.0%})", advice))
    host = snap["host"]
    total_kb, avail_kb = int(host.get("MemTotal", 0) or 0), int(host.get("MemAvailable", 0) or 0)
    if total_kb and avail_kb < 0.1 * total_kb:
        add(Finding("memory", False, f"the host has {human(avail_kb * 1024)} of "
                                     f"{human(total_kb * 1024)} available",
                    "stop what is not needed, or move to a bigger VPS (see the triggers in "
                    "`status`)"))
    return findings


def database_findings(snap: dict) -> list[Finding]:
    """Connection pools that can exhaust max_connections, connections in use, an unreadable
    database."""
    findings: list[Finding] = []
    add = findings.append
    env, p = snap["release"]["env"], pool_settings(snap["release"]["env"])
    db = snap["db"]
    if db.get("max_connections"):
        demand, maximum = pool_demand(env), db["max_connections"]
        if demand > maximum - DB_RESERVED_CONNECTIONS:
            fit = fitting_pool(maximum, p["API_WORKERS"])
            add(Finding("connection pool", False,
                        f"the pools may open {demand} connections ((API_WORKERS {p['API_WORKERS']} "
                        f"+ 1 worker) x (DB_POOL_SIZE {p['DB_POOL_SIZE']} + DB_MAX_OVERFLOW "
                        f"{p['DB_MAX_OVERFLOW']})) but max_connections is {maximum}",
                        f"set DB_POOL_SIZE + DB_MAX_OVERFLOW to at most {fit} per process "
                        f"(e.g. DB_POOL_SIZE={max(1, fit * 3 // 7)}), or raise Postgres's "
                        "max_connections"))
        if db["connections"] >= DB_CONNECTIONS_MAX_FRACTION * maximum:
            add(Finding("connection pool", False, f"{db['connections']} of {maximum} database "
                        f"connections are in use ({100 * db['connections'] / maximum:.0f}%)",
                        "find who holds them (`select usename, application_name, state, count(*) "
                        "from pg_stat_activity group by 1,2,3`); "
                        "lower the pool sizes, or raise max_connections"))
    elif db.get("error"):
        add(Finding("database", False, f"the database could not be queried: {db['error']}",
                    "`compose.logs --service postgres`"))
    return findings


def jetstream_findings(snap: dict) -> list[Finding]:
    """JetStream storage and streams near their limits."""
    findings: list[Finding] = []
    add = findings.append
    js = snap["jsz"]
    if js.get("max_storage") and js["storage"] > JETSTREAM_MAX_FRACTION * js["max_storage"]:
        add(Finding("jetstream", False, f"JetStream stores {human(js['storage'])} of its "
                                        f"{human(js['max_storage'])} limit",
                    "purge or limit streams (max_bytes / max_age), or give nats more disk"))
    for stream in js.get("streams", []):
        limit = stream["max_bytes"]
        if limit and limit > 0 and stream["bytes"] > JETSTREAM_MAX_FRACTION * limit:
            add(Finding("jetstream", False, f"stream {stream['name']} holds "
                        f"{human(stream['bytes'])} of its max_bytes {human(stream['max_bytes'])} "
                        f"({100 * stream['bytes'] / stream['max_bytes']:.0f}%)",
                        "consumers are not keeping up or the stream's limit is too small: check "
                        "the worker "
                        "(`compose.logs --service worker`), then raise max_bytes or set max_age"))
    return findings


def job_findings(snap: dict) -> list[Finding]:
    """Background jobs that do not drain, and jobs failed after their last try."""
    findings: list[Finding] = []
    add = findings.append
    jobs = snap.get("jobs") or {}
    if jobs.get("late"):
        add(Finding("background jobs", False, f"{jobs['late']} tasks have waited more than "
                    f"{status_commands.JOBS_LATE_SECONDS // 60} minutes "
                    f"for their job (oldest {age_text(jobs['oldest_seconds'])}): the backlog does "
                    "not drain",
                    "check the worker (`compose.logs --service worker`, `status`: is it healthy?), "
                    "then `compose.restart --service worker`"))
    if jobs.get("failed"):
        add(Finding("background jobs", False, f"{jobs['failed']} tasks failed their job after its "
                                              "last try (JOB_MAX_REQUEUES)",
                    "read why in `compose.logs --service worker`; once fixed, queue them again "
                    "with "
                    "`UPDATE tasks SET status = 'pending', requeues = 0 WHERE status = 'failed'`"))
    return findings


def disk_findings(snap: dict) -> list[Finding]:
    """A disk past DISK_MAX_PERCENT, with what Docker can reclaim."""
    findings: list[Finding] = []
    add = findings.append
    for d in snap["disk"]:
        if d["percent"] > DISK_MAX_PERCENT:
            reclaim = sum(r["reclaimable"] for r in snap["docker_df"])
            add(Finding("disk", False, f"{', '.join(d['paths'])} is {d['percent']:.0f}% full "
                                       f"({human(d['available'])} free)",
                        f"`docker system prune` can reclaim about {human(reclaim)} (images, build "
                        f"cache); lower BACKUP_KEEP and copy backups off the host (`backup.pull`)"))
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
                        "enable time sync on the host (`timedatectl set-ntp true`; `provision` "
                        "installs systemd-timesyncd)"))
    return findings


def swarm_findings(state: dict) -> list[Finding]:
    """On a swarm: a node that is down or drained, and services short of their replicas or rolled
    back (this host's containers are only the tasks placed on it)."""
    findings = []
    for n in state["nodes"]:
        if n["state"] != "ready" or n["availability"] != "active":
            findings.append(Finding("swarm", False, f"node {n['alias'] or n['hostname']} is "
                                                    f"{n['state']}/{n['availability']}",
                                    "a drained node comes back with `fab -H HOST cluster.activate "
                                    "NODE`; a down one: "
                                    "start the VPS (its tasks run elsewhere meanwhile); "
                                    "`cluster.status` shows where"))
    # a past rollback is history
    verdict, reasons = cluster_commands.convergence(state["services"], before=state["services"])
    if verdict != "done":
        findings.append(Finding("swarm", False, f"the stack is {verdict}: {'; '.join(reasons)}",
                                "see `fab -H HOST cluster.status` and `docker service ps SERVICE "
                                "--no-trunc` on the manager; "
                                "a rolled-back update keeps the previous release serving: fix it "
                                "and deploy again"))
    return findings


def managed_findings(snap: dict) -> list[Finding]:
    """A managed database (DATABASE_HOST) the host cannot reach, or reaches without TLS."""
    reach = snap.get("managed_db") or {}
    if not reach:
        return []
    if reach.get("reach") != "ok":
        return [Finding("managed database", False, "the managed database cannot be reached from "
                        f"the host: {reach.get('error') or 'no answer'}",
                        "libpq's words name the cause: DATABASE_HOST/DATABASE_PORT and the "
                        "provider's allowed addresses (this host's), DATABASE_CA_FILE (the "
                        "provider's CA; DATABASE_SSLMODE=verify-full also checks the host name), "
                        "POSTGRES_USER/POSTGRES_PASSWORD; fix .env and deploy again")]
    if reach.get("tls") != "true":
        return [Finding("managed database", False, "the connection to the managed database is "
                        "not encrypted", "the server must offer TLS (the provider's setting)")]
    return []
