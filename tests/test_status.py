"""Day 2 without a host: the trigger program (run with the host's awk on sample tables), the
sampler against a fake `docker`, the snapshot's parsers, and every doctor check as a table."""

import copy
import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from tasks import health_checks, schedule_checks, status, status_screen
from tasks.commands import pitr
from tasks.commands import status as commands
from tasks.commands.context import HostContext

NOW = 1_800_000_000


def sample(minutes_ago: int, **fields) -> str:
    base = {"t": NOW - 60 * minutes_ago, "ncpu": 2, "mem_total": 8_000_000, "mem_avail": 6_000_000, "cpu": 20,
            "req": 60, "p95": 40, "db_conn": 5, "db_max": 100, "clients": 3, "js_seq": 1000}
    base.update(fields)
    return " ".join(f"{k}={v}" for k, v in base.items())


def verdict(lines: list[str], window: int = 3600) -> dict:
    out = subprocess.run(["awk", "-v", f"now={NOW}", "-v", f"window={window}", commands.TRIGGERS_AWK],
                         input="\n".join(lines) + "\n", capture_output=True, text=True, check=True).stdout
    return commands.key_values(out)


def hour(**fields) -> list[str]:
    return [sample(m, **fields) for m in range(59, -1, -1)]


@pytest.mark.parametrize("fields, expected, reason", [
    ({}, "stay", "no trigger fired"),
    ({"mem_avail": 2_000_000}, "upgrade", "memory 5.7 of 7.6 GB"),
    ({"cpu": 85}, "upgrade", "CPU 85%"),
    ({"p95": 650}, "upgrade", "API p95 up to 650 ms"),
    ({"db_conn": 85}, "upgrade", "database connections peaked at 85/100"),
    ({"clients": 250}, "scale-out", "250 distinct clients"),
])
def test_the_plans_triggers(fields, expected, reason):
    result = verdict(hour(**fields))
    assert result["verdict"] == expected and reason in result["reasons"], result


def test_a_short_spike_is_not_sustained():
    lines = hour()
    lines[-5:] = [sample(m, cpu=99, p95=900) for m in range(4, -1, -1)]
    assert verdict(lines)["verdict"] == "stay"


def test_messages_per_day_from_the_jetstream_sequence():
    day = [sample(m, js_seq=10_000 + (1440 - m)) for m in range(1439, -1, -10)]  # 1 message a minute: 1440/day
    result = verdict(day, 86400)
    assert result["verdict"] == "scale-out" and int(result["messages_per_day"]) == pytest.approx(1440, rel=0.02)
    six_hundred = [sample(m, js_seq=int((1440 - m) * 600 / 1440)) for m in range(1439, -1, -10)]
    assert verdict(six_hundred, 86400)["verdict"] == "upgrade"


def test_too_little_history_and_old_samples_are_unknown():
    assert verdict([sample(1), sample(0)])["verdict"] == "unknown"
    old = [sample(m, cpu=99) for m in range(200, 120, -1)]  # all older than the hour
    assert verdict(old)["samples"] == "0"


FAKE_DOCKER = r'''#!/bin/bash
case "$1 $2" in
  "ps -q") case "$*" in *service=nginx*) echo ngx000000001;; *service=postgres*) echo pg0000000001;; *service=nats*) echo nats00000001;;
           *service=*) ;; *) printf 'api000000001\npg0000000001\n';; esac;;
  "inspect -f") printf 'api000000001%s api\npg0000000001%s postgres\n' "$(printf '0%.0s' $(seq 1 52))" "$(printf '0%.0s' $(seq 1 52))";;
  "stats --no-stream") printf 'api000000001 80MiB / 1GiB 1.50%%\npg0000000001 1.5GiB / 2GiB 3.00%%\n';;
  "logs --since")
    for i in $(seq 1 19); do echo "10.0.0.$i - - [x] \"GET /api/tasks HTTP/1.1\" 200 12 \"-\" \"ua\" rt=0.0$i urt=0.0$i"; done
    echo '10.0.0.1 - - [x] "POST /api/tasks HTTP/1.1" 502 12 "-" "ua" rt=0.900 urt=0.900'
    echo '10.0.0.1 - - [x] "GET /assets/a.js HTTP/1.1" 200 12 "-" "ua" rt=5.000 urt=-';;
  "exec pg0000000001") case "$*" in
      *pg_stat_archiver*) [ -n "$ARCHIVER" ] || { echo 'ERROR:  permission denied' >&2; exit 1; }
                          echo "$ARCHIVER";;
      *"df -Pk"*) echo "/dev/vda 41943040 20971520 20971520 50% /var/lib/postgresql/data";;
      *) echo "7 100";; esac;;
  "exec nats00000001") echo '{"config": {"max_storage": 1000}, "storage": 250, "account_details": [{"stream_detail": [{"state": {"last_seq": 41}}, {"state": {"last_seq": 1}}]}]}';;
esac
'''


def test_the_sampler_writes_one_line_a_minute(tmp_path):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "docker").write_text(FAKE_DOCKER)
    (bindir / "docker").chmod(0o755)
    script = tmp_path / "sample"
    script.write_text(commands.sampler_script())
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}",
           "ARCHIVER": "1799999990 4 1799990000 1 1799999995 50331648 3"}
    app = tmp_path / "app"
    for _ in range(2):
        run = subprocess.run(["bash", str(script), str(app), "proj"], env=env, capture_output=True,
                             text=True, timeout=30)
        assert run.returncode == 0, run.stderr
    files = list((app / "shared" / "metrics").glob("samples-*.log"))
    lines = files[0].read_text().splitlines()
    assert len(lines) == 2 and " cpu=" not in lines[0] and " cpu=" in lines[1]  # CPU needs a previous reading
    fields = commands.parse_sample(lines[1])
    # 19 GETs (10-90 ms) and one 900 ms POST: the 19th of 20 is 90 ms; the asset is not the API
    assert fields["req"] == 20 and fields["e5xx"] == 1 and fields["p95"] == 90
    assert fields["clients"] == 19 and fields["db_conn"] == 7 and fields["db_max"] == 100
    assert fields["js_storage"] == 250 and fields["js_max"] == 1000 and fields["js_seq"] == 42
    assert fields["services"]["api"] == {"mem_mib": 80.0, "limit_mib": 1024.0, "cpu": 1.5}
    assert fields["services"]["postgres"]["mem_mib"] == 1536.0
    assert oct((app / "shared" / "metrics").stat().st_mode)[-3:] == "700"
    archiver = ("arch_ok", "arch_failures", "arch_fail_t", "arch_ready", "arch_ready_t",
                "wal_bytes")
    assert [fields[k] for k in archiver] == [1799999990, 4, 1799990000, 1, 1799999995, 50331648]
    assert fields["wal_disk"] == 41943040 * 1024


def test_the_sampler_alerts_once_when_the_wal_archive_fails_and_once_when_it_recovers(tmp_path):
    """Issue 26: the alert program says a failing (or unreadable) archive once, and once again
    when it archives again; a query error is recorded as such, never as zeros."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "docker").write_text(FAKE_DOCKER)
    (bindir / "docker").chmod(0o755)
    app = tmp_path / "app"
    (app / "bin").mkdir(parents=True)
    sent = tmp_path / "sent.txt"
    (app / "bin" / "tasktracker-notify").write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> {sent}\n')
    (app / "bin" / "tasktracker-notify").chmod(0o755)
    script = tmp_path / "sample"
    script.write_text(commands.sampler_script())
    now = int(time.time())

    def sample_with(archiver: str) -> str:
        env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}", "ARCHIVER": archiver}
        run = subprocess.run(["bash", str(script), str(app), "proj"], env=env, capture_output=True,
                             text=True, timeout=30)
        assert run.returncode == 0, run.stderr
        return sent.read_text() if sent.exists() else ""

    healthy = f"{now - 10} 4 {now - 900} 0 0 50331648 3"
    failing = f"{now - 900} 6 {now - 300} 2 {now - 200} 50331648 3"  # in minutes: no drift shows
    assert sample_with(healthy) == ""  # ok from the start: nothing to say
    said = sample_with(failing)
    assert said.splitlines() == ["WAL ARCHIVING IS FAILING: the last attempt failed 5 min ago, "
                                 "the last success 15 min ago (6 failures counted); run doctor"]
    assert sample_with(failing) == said  # once, not every minute
    again = sample_with(healthy).splitlines()[1:]
    assert again == ["WAL archive: ok again (every finished segment is archived)"]
    said = sample_with("")  # the query fails
    assert said.splitlines()[2:] == ["THE WAL ARCHIVE'S STATE CANNOT BE READ: the archiver's "
                                     "state could not be read (see doctor)"], said
    lines = next((app / "shared" / "metrics").glob("samples-*.log")).read_text().splitlines()
    assert " arch_error=1" in lines[-1] and "arch_ok=" not in lines[-1]


def test_sampler_install_is_one_idempotent_command():
    ctx = HostContext("/home/deploy/tasktracker", "tasktracker")
    command = commands.install_sampler(ctx)
    line = commands.sampler_cron_line(ctx)
    assert line.startswith("* * * * * /home/deploy/tasktracker/bin/tasktracker-sample /home/deploy/tasktracker tasktracker")
    assert line.endswith("# tasktracker-sample:tasktracker") and "shared/metrics/sampler.log" in line
    assert "cmp -s" in command and "grep -qxF" in command


@pytest.mark.parametrize("text, expected", [
    ("45.3MiB", 45.3 * 1024 ** 2), ("1GiB", 1024 ** 3), ("512kB", 512_000), ("1.2GB", 1.2e9), ("0B", 0), ("", 0),
])
def test_docker_sizes(text, expected):
    assert commands.size_bytes(text) == pytest.approx(expected)


RECORDED = Path(__file__).parent / "recorded" / "status"


def snapshot() -> dict:
    return commands.parse_snapshot((RECORDED / "snapshot.txt").read_text())


def recorded_now(snap: dict) -> float:
    return snap["clock"]


def checks(snap: dict, **kwargs) -> list[str]:
    return [f"{f.check}: {f.summary}" for f in status.evaluate(snap, kwargs.pop("now", recorded_now(snap)), **kwargs)]


def test_recorded_snapshot_parses():
    snap = snapshot()
    services = {c["service"] for c in snap["containers"]}
    assert {"postgres", "nats", "api", "worker", "nginx"} <= services
    api = [c for c in snap["containers"] if c["service"] == "api"][0]
    assert api["mem_limit"] == 1024 ** 3 and api["mem_bytes"] > 0 and api["state"] == "running"
    assert snap["db"]["max_connections"] == 100 and snap["release"]["current"]
    assert snap["host"]["MemTotal"] and snap["disk"] and "sample" in snap["cron"]["jobs"]


def test_a_healthy_snapshot_has_only_the_expected_findings():
    found = checks(snapshot())
    assert not [f for f in found if f.split(":")[0] in ("memory", "connection pool", "jetstream", "disk", "clock", "services")], found


def test_each_doctor_check_fires():
    base = snapshot()
    snap = copy.deepcopy(base)
    api = [c for c in snap["containers"] if c["service"] == "api"][0]
    api["mem_bytes"] = 0.95 * api["mem_limit"]
    assert any(f.startswith("memory: api uses") for f in checks(snap))
    advice = [f.advice for f in status.evaluate(snap, recorded_now(snap)) if f.check == "memory"][0]
    assert "API_WORKERS=" in advice

    snap = copy.deepcopy(base)
    snap["release"]["env"] = {"API_WORKERS": "4", "DB_POOL_SIZE": "15", "DB_MAX_OVERFLOW": "20"}
    found = [f for f in status.evaluate(snap, recorded_now(snap)) if f.check == "connection pool"]
    assert found and "may open 175 connections" in found[0].summary and "at most 19 per process" in found[0].advice

    snap = copy.deepcopy(base)
    snap["db"]["connections"] = 90
    assert any("90 of 100 database connections" in f for f in checks(snap))

    snap = copy.deepcopy(base)
    snap["jsz"]["streams"] = [{"name": "TASKS", "bytes": 950, "messages": 3, "max_bytes": 1000, "max_msgs": -1}]
    assert any("stream TASKS holds" in f for f in checks(snap))

    snap = copy.deepcopy(base)
    snap["disk"][0]["percent"] = 91.0
    assert any(f.startswith("disk:") and "91% full" in f for f in checks(snap))

    snap = copy.deepcopy(base)
    found = checks(snap, sent_at=snap["clock"] - 30.2, received_at=snap["clock"] - 29.8)
    assert any(f.startswith("clock: the host's clock is +30.0 s off") for f in found)
    assert not any(f.startswith("clock") for f in checks(snap, sent_at=snap["clock"] - 0.5, received_at=snap["clock"] + 0.5))

    snap = copy.deepcopy(base)
    snap["cron"]["jobs"].pop("sample")
    assert "jobs: the metrics sampler is not installed" in checks(snap)
    snap = copy.deepcopy(base)
    assert any("sampler has not recorded" in f for f in checks(snap, now=snap["latest_sample"]["t"] + 3600))

    snap = copy.deepcopy(base)
    snap["containers"][0]["state"] = "exited"
    snap["containers"][1]["oom_killed"] = True
    found = checks(snap)
    assert any(f.startswith("services:") and "exited" in f for f in found)
    assert any("out of memory" in f for f in found)


@pytest.mark.parametrize("text, expected", [
    ("12|3|1|420\n", {"pending": 12, "late": 3, "failed": 1, "oldest_seconds": 420}),
    ("0|0|0|0", {"pending": 0, "late": 0, "failed": 0, "oldest_seconds": 0}),
    ('ERROR:  column "queued_at" does not exist', {}),  # a real app without the job columns
    ("", {}),
])
def test_the_jobs_line_parses(text, expected):
    assert commands.parse_jobs(text) == expected


def test_a_backlog_that_does_not_drain_and_dead_letters_are_findings():
    snap = snapshot()
    snap["jobs"] = {"pending": 40, "late": 7, "failed": 2, "oldest_seconds": 900}
    found = [f for f in status.evaluate(snap, recorded_now(snap)) if f.check == "background jobs"]
    assert [f.summary for f in found] == [
        "7 tasks have waited more than 5 minutes for their job (oldest 15 min): the backlog does not drain",
        "2 tasks failed their job after its last try (JOB_MAX_REQUEUES)"]
    assert "compose.restart --service worker" in found[0].advice
    snap["jobs"] = {"pending": 3, "late": 0, "failed": 0, "oldest_seconds": 2}
    assert not [f for f in status.evaluate(snap, recorded_now(snap)) if f.check == "background jobs"]
    snap["jsz"]["streams"] = [{"name": "TASKTRACKER_JOBS", "bytes": 0, "messages": 3, "max_bytes": -1, "max_msgs": -1,
                               "consumers": [{"name": "tasktracker-worker", "waiting": 2, "in_flight": 1, "redelivered": 4}]}]
    lines = "\n".join(status_screen.status_lines(snap, [], recorded_now(snap), "vps"))
    assert ("jobs     3 pending (oldest 0 min), 0 failed; TASKTRACKER_JOBS/tasktracker-worker: 2 waiting, 1 in flight, "
            "4 redelivered") in lines


def test_the_consumers_of_each_stream_are_read_from_jsz():
    jsz = json.dumps({"account_details": [{"stream_detail": [{
        "name": "TASKTRACKER_JOBS", "config": {"max_bytes": 268435456, "max_msgs": 1000000}, "state": {"bytes": 10, "messages": 1},
        "consumer_detail": [{"name": "tasktracker-worker", "num_pending": 5, "num_ack_pending": 1, "num_redelivered": 2}]}]}]})
    stream = commands.parse_jsz(jsz)["streams"][0]
    assert stream["consumers"] == [{"name": "tasktracker-worker", "waiting": 5, "in_flight": 1, "redelivered": 2}]


def test_backup_age_and_jobs():
    snap = snapshot()
    made = time.strptime("20261125T000000Z", "%Y%m%dT%H%M%SZ")
    snap["backups"] = "20261125T000000Z\t100\t{\"verification\": {\"result\": \"ok\"}}\n--log\n"
    snap["cron"]["jobs"]["backup"] = "0 2 * * * x # tasktracker-backup:p"
    fresh = time.mktime(made) - time.timezone + 3600
    assert not any(f.startswith("backup") for f in checks(snap, now=fresh))
    assert any("latest full backup is 1.1 days old" in f or "latest full backup is 27" in f for f in checks(snap, now=fresh + 26 * 3600))
    snap["cron"]["jobs"].pop("backup")
    assert "jobs: no daily backup job is installed" in checks(snap, now=fresh)


def test_status_screen_names_every_part():
    snap = snapshot()
    lines = "\n".join(status_screen.status_lines(snap, status.evaluate(snap, recorded_now(snap)), recorded_now(snap), "vps"))
    for part in ("release  ", "lock     free", "services", "  api ", "host     ", "database ", "jetstream ", "scaling triggers",
                 "hour ", "day  "):
        assert part in lines, part


@pytest.mark.parametrize("env, demand, fit", [
    ({}, 70, 47), ({"API_WORKERS": "3"}, 140, 23), ({"API_WORKERS": "1", "DB_POOL_SIZE": "5", "DB_MAX_OVERFLOW": "5"}, 20, 47),
])
def test_pool_arithmetic(env, demand, fit):
    assert health_checks.pool_demand(env) == demand
    assert health_checks.fitting_pool(100, health_checks.pool_settings(env)["API_WORKERS"]) == fit


def test_cron_section_reads_this_apps_jobs_only(tmp_path):
    """On a host running `tasktracker` and `tasktracker-staging`, each app's status sees its own jobs."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "crontab").write_text(
        "#!/bin/sh\ncat <<'TAB'\nMAILTO=ops@example.com\n"
        "* * * * * /s/bin/tasktracker-sample # tasktracker-sample:tasktracker-staging\n"
        "15 4 * * * certbot renew # tasktracker-ssl:tasktracker-staging\n"
        "0 2 * * * /p/bin/tasktracker-backup # tasktracker-backup:tasktracker\n"
        "# a note about # tasktracker-ssl:tasktracker jobs\nTAB\n")
    (bindir / "crontab").chmod(0o755)
    env = {"PATH": f"{bindir}:/usr/bin:/bin"}
    run = lambda project: commands.parse_cron(subprocess.run(  # noqa: E731
        ["bash", "-c", commands.cron_section(HostContext(str(tmp_path / project), project))],
        capture_output=True, text=True, env=env, check=True).stdout)
    assert sorted(run("tasktracker")["jobs"]) == ["backup"]
    assert sorted(run("tasktracker-staging")["jobs"]) == ["sample", "ssl"]


def test_a_failed_offsite_copy_is_a_warning_until_a_copy_succeeds():
    snap = snapshot()
    failed = '{"time": "2026-11-25T02:00:09Z", "set": "20261125T020000Z", "result": "offsite-failed"}'
    snap["backups"] = ("20261125T020000Z\t100\t{\"verification\": {\"result\": \"ok\"}}\n--log\n"
                       '{"time": "2026-11-25T02:00:08Z", "set": "20261125T020000Z", "result": "ok"}\n' + failed + "\n")
    now = recorded_now(snap)
    assert any("off-site copy of 20261125T020000Z failed" in f for f in checks(snap, now=now))
    lines = "\n".join(status_screen.status_lines(snap, status.evaluate(snap, now), now, "vps"))
    assert "off-site 20261125T020000Z: copy FAILED at 2026-11-25T02:00:09Z" in lines
    snap["backups"] += failed.replace("offsite-failed", "offsite-ok").replace("02:00:09", "03:10:00") + "\n"
    assert not any("off-site copy" in f for f in checks(snap, now=now))
    assert "off-site 20261125T020000Z: copied at 2026-11-25T03:10:00Z" in "\n".join(
        status_screen.status_lines(snap, status.evaluate(snap, now), now, "vps"))


def test_the_wal_archive_findings():
    base = snapshot()
    assert base["pitr"] == {"state": "unknown"}  # recorded before point-in-time recovery: nothing said
    assert not any(f.startswith(("WAL archive", "pg_wal")) for f in checks(base))
    snap = copy.deepcopy(base)
    snap["pitr"] = {**ARCHIVE, "last_failed": 1995}
    assert any(f.startswith("WAL archive: archiving WAL is failing") for f in checks(snap))
    lines = status_screen.status_lines(snap, [], recorded_now(snap), "vps")
    assert any("ARCHIVING IS FAILING" in line for line in lines)
    snap["pitr"] = {"state": "no-backup", "now": 2000, "last_archived": 0, "failed_count": 0,
                    "last_failed": 0, "backups": 0}
    assert any("no pgBackRest backup" in f for f in checks(snap))


GB = 1024 ** 3
# A healthy archive as pitr.parse_info gives it: the host's clock at 2000, a segment archived at
# 1990, an old failure, one segment waiting for 10 s, 48 MB of pg_wal on a 40 GB disk.
ARCHIVE = {"state": "ok", "now": 2000, "backups": 1, "oldest": 900, "newest": 900,
           "last_archived": 1990, "failed_count": 4, "last_failed": 950, "ready": 1,
           "oldest_ready": 1990, "wal_bytes": 48 * 1024 ** 2, "disk_total": 40 * GB,
           "disk_available": 20 * GB}
FAILED_AT = "the last attempt failed at 1970-01-01 00:33:15 UTC"


@pytest.mark.parametrize("changes, expected", [
    ({}, []),
    ({"state": "unavailable"}, []),
    ({"last_failed": 1995},
     [f"WAL archive: archiving WAL is failing: {FAILED_AT}, the last success was "
      "1970-01-01 00:33:10 UTC (4 failures counted); point-in-time recovery stops at the last "
      "archived segment and pg_wal grows (pg_wal 48.0 MB of the 40.0 GB disk, 20.0 GB free)"]),
    ({"last_failed": 1995, "last_archived": 0},
     [f"WAL archive: archiving WAL is failing: {FAILED_AT}, the last success was never "
      "since the last restart"]),
    ({"state": "no-backup", "last_failed": 1995}, ["WAL archive: archiving WAL is failing"]),
    ({"ready": 7, "oldest_ready": 2000 - 301},
     ["WAL archive: 7 finished WAL segments wait to be archived, the oldest for 5 min "
      "(over 5 min): the archive is stalled"]),
    ({"ready": 7, "oldest_ready": 2000 - 300}, []),  # up to the bound: a slow push, not a stall
    ({"ready": 0, "oldest_ready": 0}, []),
    ({"ready": 7, "oldest_ready": 1000, "last_failed": 1995},
     ["WAL archive: archiving WAL is failing"]),  # one finding, not two
    ({"wal_bytes": 4 * GB + 1},
     ["pg_wal: pg_wal holds 4.0 GB, 10% of its 40.0 GB disk (20.0 GB free; over 10%)"]),
    ({"wal_bytes": 4 * GB}, []),
    ({"wal_bytes": 9 * GB, "disk_total": 0}, []),  # no disk figure: no fraction
    ({"archiver_error": 'ERROR:  column " " does not exist'},
     ["WAL archive: the archiver's state could not be read, so whether WAL is archived is unknown; "
      'Postgres said: ERROR:  column " " does not exist']),
])
def test_archive_thresholds(changes, expected):
    """Issue 26: a failing, stalled or unreadable archive and pg_wal against its disk, each said."""
    archive = {**ARCHIVE, **changes}
    if "archiver_error" in changes:  # parse_info gives the error instead of the figures
        archive = {k: v for k, v in archive.items() if k not in pitr.ARCHIVER_FIELDS}
    found = [f"{f.check}: {f.summary}" for f in schedule_checks.archive_findings(archive, now=0)]
    assert len(found) == len(expected), found
    for got, want in zip(found, expected, strict=True):
        assert got.startswith(want), got


def test_the_status_screen_shows_the_archive_and_pg_wal():
    snap = snapshot()
    snap["pitr"] = {**ARCHIVE, "ready": 3, "oldest_ready": 1880, "last_failed": 1995}
    found = status.evaluate(snap, recorded_now(snap))
    lines = status_screen.status_lines(snap, found, recorded_now(snap), "vps")
    assert ("wal      pg_wal 48.0 MB of the 40.0 GB disk, 20.0 GB free; 3 finished segments "
            "waiting to be archived (the oldest 2 min)") in lines
    assert any(line.startswith("  ! WAL archive: archiving WAL is failing") for line in lines)
    assert [f.check for f in found if f.check in ("WAL archive", "pg_wal")] == ["WAL archive"]


def awk_archive(archive: dict) -> dict:
    """The sampler's rule (triggers.awk) on one sample made of `archive` (parse_info's figures)."""
    t = archive["now"]
    if "archiver_error" in archive:
        fields = {"arch_error": 1}
    else:
        fields = {"arch_ok": archive["last_archived"], "arch_failures": archive["failed_count"],
                  "arch_fail_t": archive["last_failed"], "arch_ready": archive["ready"],
                  "arch_ready_t": archive["oldest_ready"], "wal_bytes": archive["wal_bytes"],
                  "wal_disk": archive["disk_total"]}
    line = sample(0, t=t, **fields)
    out = subprocess.run(["awk", "-v", f"now={t}", "-v", "window=3600", commands.TRIGGERS_AWK],
                         input=line + "\n", capture_output=True, text=True, check=True).stdout
    return commands.key_values(out)


@pytest.mark.parametrize("changes", [
    {}, {"last_failed": 1995}, {"last_failed": 1995, "last_archived": 0},
    {"ready": 7, "oldest_ready": 2000 - 301}, {"ready": 7, "oldest_ready": 2000 - 300},
    {"ready": 7, "oldest_ready": 1000, "last_failed": 1995},
    {"wal_bytes": 4 * GB + 1}, {"wal_bytes": 4 * GB}, {"wal_bytes": 9 * GB, "disk_total": 0},
    {"archiver_error": "ERROR: x"},
])
def test_the_alert_and_doctor_apply_one_rule(changes):
    """The sampler's alert (awk, on the host) and doctor (Python) agree on every row of the table
    above: the same bounds (ARCHIVE_STALL_S, WAL_MAX_DISK_FRACTION), the same verdict."""
    archive = {**ARCHIVE, **changes}
    if "archiver_error" in changes:
        archive = {k: v for k, v in archive.items() if k not in pitr.ARCHIVER_FIELDS}
    found = [f.summary for f in schedule_checks.archive_findings(archive, now=0)]
    expected = ("unreadable" if any("could not be read" in f for f in found) else
                "failing" if any("is failing" in f for f in found) else
                "stalled" if any("is stalled" in f for f in found) else
                "pg_wal-high" if any(f.startswith("pg_wal holds") for f in found) else "ok")
    assert awk_archive(archive)["archive"] == expected, (found, awk_archive(archive))


A = "a" * 64
B = "b" * 64


def container_usage(tmp_path, tree: dict[str, str], ids: list[str]) -> str:
    """commands/status.CONTAINER_USAGE over a stand-in cgroup tree (`tree`: path -> text) and a
    stand-in `docker` that answers `docker stats` (the fallback) with one line per id."""
    root = tmp_path / "cgroup"
    for path, text in tree.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "docker").write_text('#!/bin/sh\nfor id in "$@"; do case "$id" in [0-9a-f]*) '
                                    'echo "stats:$(echo "$id" | cut -c1-12)";; esac; done\n')
    (bin_dir / "docker").chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "CGROUP_ROOT": str(root)}
    return subprocess.run(["bash", "-c", commands.CONTAINER_USAGE, "container-usage", *ids],
                          capture_output=True, text=True, env=env, check=True).stdout


def test_container_usage_reads_memory_and_cpu_from_cgroup_v2_and_v1(tmp_path):
    v2 = {f"system.slice/docker-{A}.scope/memory.current": "104857600\n",
          f"system.slice/docker-{A}.scope/memory.stat": "anon 1\ninactive_file 4194304\n",
          f"system.slice/docker-{A}.scope/cpu.stat": "usage_usec 1000\nuser_usec 1\n"}
    v1 = {f"memory/docker/{B}/memory.usage_in_bytes": "52428800\n",
          f"memory/docker/{B}/memory.stat": "cache 1\ntotal_inactive_file 2097152\n",
          f"cpuacct/docker/{B}/cpuacct.usage": "5000\n"}
    lines = container_usage(tmp_path, {**v2, **v1}, [A, B]).splitlines()
    assert lines == [f"{A[:12]}|100663296B / 0B|0.00%", f"{B[:12]}|50331648B / 0B|0.00%"]
    parsed = commands.parse_containers(f"api|running||0|false|0|0|t|{A[:12]}|/api\n"
                                       f"worker|running||0|false|0|0|t|{B[:12]}|/worker\n",
                                       "\n".join(lines))
    assert [(c["mem_bytes"], c["cpu_percent"]) for c in parsed] == [(96 * 1024 ** 2, 0.0),
                                                                    (48 * 1024 ** 2, 0.0)]


def test_container_usage_asks_docker_stats_when_a_cgroup_is_not_found(tmp_path):
    assert container_usage(tmp_path, {}, [A]) == f"stats:{A[:12]}\n"


def test_a_pending_definition_is_parsed_and_named_with_its_command():
    """The snapshot's `pending` section (commands/definitions.py): each kept service that runs a
    definition other than the live release's is a finding naming the command that applies it."""
    text = (RECORDED / "snapshot.txt").read_text() + "\n@@ pending\n@@pending nginx\n@@pending postgres\n"
    snap = commands.parse_snapshot(text)
    assert snap["pending"] == ["postgres", "nginx"]
    assert commands.parse_snapshot((RECORDED / "snapshot.txt").read_text())["pending"] == []
    found = [f for f in status.evaluate(snap, recorded_now(snap)) if f.check == "definitions"]
    assert [f.summary.split()[0] for f in found] == ["postgres", "nginx"]
    assert "runs its previous definition" in found[0].summary
    assert found[0].advice.startswith("`fab -H HOST compose.recreate --service postgres` applies it")


def test_an_unfinished_recover_is_the_first_finding():
    """The host's `recovering` fact (the set in APP_DIR/.recovering) leads what status and doctor
    say; without it there is no maintenance finding."""
    snap = snapshot()
    assert not [f for f in status.evaluate(snap, recorded_now(snap)) if f.check == "maintenance"]
    snap["recovering"] = "20261124T020000Z"
    first = status.evaluate(snap, recorded_now(snap))[0]
    assert (first.check, first.ok) == ("maintenance", False)
    assert first.summary == ('a recover has not finished (off-site set 20261124T020000Z): every client gets 503 '
                             '"recovering"')
    assert "`fab -H HOST recover --from-offsite` resumes it" in first.advice
