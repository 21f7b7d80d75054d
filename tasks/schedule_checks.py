"""The checks of what must run on its own, for `status` and `doctor` (tasks/status.py):
certificates and their renewal job, backups and their off-site copies, the WAL archive and the
metrics sampler; pure functions of the snapshot returning `Finding`s."""

from __future__ import annotations

from datetime import datetime, timezone

from .commands import backup as backup_commands
from .commands import offsite as offsite_commands
from .commands import pitr as pitr_commands
from .commands import status as status_commands
from .commands import tls as tls_commands
from .health_checks import Finding, age_text, human

BACKUP_MAX_AGE_H = 26
CERT_MIN_DAYS = 14
SAMPLER_MAX_AGE_S = 300
JOB_MAX_AGE_H = 26


def set_time(name: str) -> datetime | None:
    try:
        return datetime.strptime(name[:16], "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
    except ValueError:
        return None


def latest_backup(sets: list[dict]) -> dict | None:
    full = [s for s in sets if not s["name"].endswith("-predeploy")]
    return full[-1] if full else None


def schedule_findings(snap: dict, now: float) -> list[Finding]:
    """Certificates, backups, the WAL archive and the jobs that must run on their own."""
    return [*certificate_findings(snap, now), *backup_findings(snap, now),
            *sampler_findings(snap, now)]


def certificate_findings(snap: dict, now: float) -> list[Finding]:
    """Certificates close to expiry, and their renewal job: missing, or not run lately."""
    findings: list[Finding] = []
    add = findings.append
    certs = tls_commands.parse_status(snap["certs"], datetime.fromtimestamp(now, timezone.utc))
    jobs, logs = snap["cron"]["jobs"], snap["cron"]["logs"]
    for cert in certs:
        if cert["days_left"] < CERT_MIN_DAYS:
            add(Finding("certificate", False, f"certificate {cert['name']} expires in "
                                              f"{cert['days_left']} days",
                        "renew now: `fab -H HOST ssl.renew`; then check the renewal job "
                        "(`ssl.schedule`)"))
    if certs and "ssl" not in jobs:
        add(Finding("jobs", False, "no certificate renewal job is installed",
                    "`fab -H HOST ssl.schedule`"))
    elif certs and "renew.log" in logs and now - logs["renew.log"]["mtime"] > JOB_MAX_AGE_H * 3600:
        add(Finding("jobs", False, "the certificate renewal job has not run for "
                                   f"{age_text(now - logs['renew.log']['mtime'])}",
                    "is cron running (`systemctl status cron`)? Run `fab -H HOST ssl.renew` by "
                    "hand to see its output"))
    return findings


def backup_findings(snap: dict, now: float) -> list[Finding]:
    """A failed off-site copy, the WAL archive, the daily job and the latest full backup's age."""
    findings: list[Finding] = []
    add = findings.append
    jobs, logs = snap["cron"]["jobs"], snap["cron"]["logs"]
    sets, backup_log = backup_commands.parse_sets(snap["backups"])
    latest = latest_backup(sets)
    push = offsite_commands.last_push(backup_log)
    if push and push.get("result") == "offsite-failed":
        add(Finding("backup", False, f"the off-site copy of {push.get('set')} failed "
                                     f"({push.get('time')}); the set is only on the host",
                    "the nightly job's output is in backups/cron.log; fix the cause, then `fab -H "
                    "HOST backup.offsite.push`"))
    archive = snap.get("pitr") or {}
    findings += archive_findings(archive, now)
    if archive.get("state") == "no-backup":
        add(Finding("WAL archive", False, "the WAL archive has no pgBackRest backup, so no restore "
                                          "to a moment is possible",
                    "`fab -H HOST backup` takes one (a deploy takes the first)"))
    if "backup" not in jobs:
        add(Finding("jobs", False, "no daily backup job is installed",
                    "`fab -H HOST backup.schedule`"))
    if latest is None:
        add(Finding("backup", False, "there is no full backup on the host", "`fab -H HOST backup`"))
    else:
        made = set_time(latest["name"])
        age = now - made.timestamp() if made else 0
        if age > BACKUP_MAX_AGE_H * 3600:
            last = logs.get("cron.log", {}).get("last", "")
            add(Finding("backup", False, f"the latest full backup is {age_text(age)} old",
                        "the daily job did not run or failed" + (f" (its log ends: {last})" if last
                                                                 else "")
                        + "; run `fab -H HOST backup` now and read `backup.list`"))
    return findings


def sampler_findings(snap: dict, now: float) -> list[Finding]:
    """The metrics sampler: installed, and recording every minute."""
    findings: list[Finding] = []
    add = findings.append
    jobs = snap["cron"]["jobs"]
    if "sample" not in jobs:
        add(Finding("jobs", False, "the metrics sampler is not installed",
                    "deploy once (every deploy installs it)"))
    else:
        sampled = snap["latest_sample"].get("t", 0)
        if not sampled or now - sampled > SAMPLER_MAX_AGE_S:
            add(Finding("jobs", False, ("the metrics sampler has not recorded for "
                                        + age_text(now - sampled)) if sampled
                        else "the metrics sampler has not recorded yet (it runs every minute from "
                             "cron)",
                        "is cron running (`systemctl status cron`)? Its log is "
                        "shared/metrics/sampler.log"))
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
    timeout = archive.get("archive_timeout", 0)
    if timeout > pitr_commands.RPO_GOAL_S:
        found.append(Finding(
            "WAL archive", False,
            f"Postgres closes a WAL segment for the archive only every {timeout} s "
            f"(archive_timeout): a lost host can take that many seconds of writes (goal "
            f"{pitr_commands.RPO_GOAL_S} s)",
            "set WAL_ARCHIVE_TIMEOUT=3 (the default) in the settings and deploy, then `fab -H "
            "HOST compose.recreate --service postgres` (postgres keeps its old definition "
            "through a deploy)"))
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
