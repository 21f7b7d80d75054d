"""Day 2 on the sandbox: `status`, the every-minute sampler, and `doctor`, each doctor check
provoked for real (a lowered memory limit, held connections, a full stream, a full disk, a
missing cron job, an expiring certificate)."""

import asyncio
import json
import subprocess
import time
import urllib.request

import pytest

from tests.support import service_address

pytestmark = pytest.mark.e2e


def settings_of(sandbox) -> dict:
    text = (sandbox.dir / ".env").read_text()
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#"))


def as_user(sandbox, command: str) -> subprocess.CompletedProcess:
    return subprocess.run(["runuser", "-u", sandbox.user, "--", "bash", "-lc", command], capture_output=True, text=True, timeout=120)


def container(sandbox, service: str) -> str:
    return subprocess.run(["docker", "ps", "-q", "--filter", f"label=com.docker.compose.project={sandbox.project}",
                           "--filter", f"label=com.docker.compose.service={service}",
                           "--filter", "label=com.docker.compose.oneoff=False"],
                          capture_output=True, text=True, check=True).stdout.split()[0]


def doctor(sandbox) -> str:
    out = sandbox.fab("doctor", check=False)
    assert out.returncode in (0, 1), out.stderr
    return out.stdout


def crontab(sandbox) -> str:
    return subprocess.run(["crontab", "-l", "-u", sandbox.user], capture_output=True, text=True).stdout


def set_crontab(sandbox, text: str) -> None:
    subprocess.run(["crontab", "-u", sandbox.user, "-"], input=text, text=True, check=True)


def test_status_shows_the_live_stack(sandbox, deployed):
    out = sandbox.fab("status").stdout
    current = (sandbox.home / "tasktracker" / "current").resolve().name
    assert f"release  {current}" in out
    for service in ("postgres", "nats", "api", "worker", "nginx"):
        assert f"  {service} " in out and "running" in out
    assert "mem " in out and "/1.0 GB" in out  # the api's production limit (1G)
    assert "database " in out and "connections" in out
    assert "scaling triggers" in out and "hour" in out
    data = json.loads(sandbox.fab("status", "--json").stdout)
    api = [c for c in data["containers"] if c["service"] == "api"][0]
    assert api["mem_limit"] == 1024 ** 3 and api["mem_bytes"] > 0 and api["state"] == "running"
    assert data["db"]["max_connections"] >= 20 and data["release"]["current"] == current
    secrets = [v for k, v in settings_of(sandbox).items() if "PASSWORD" in k or "KEY" in k or "TOKEN" in k]
    assert not any(s and s in out for s in secrets)


def test_sampler_records_a_minute_and_survives_in_history(sandbox, deployed):
    line = [entry for entry in crontab(sandbox).splitlines() if entry.endswith(f"# tasktracker-sample:{sandbox.project}")]
    assert line and line[0].startswith("* * * * * "), crontab(sandbox)
    command = line[0][len("* * * * * "):].split(" >> ")[0]
    as_user(sandbox, command)  # the CPU baseline
    for _ in range(20):
        urllib.request.urlopen(sandbox.url("/api/tasks"), timeout=10).read()
    time.sleep(1.5)
    result = as_user(sandbox, command)
    assert result.returncode == 0, result.stderr
    metrics = sandbox.home / "tasktracker" / "shared" / "metrics"
    last = sorted(metrics.glob("samples-*.log"))[-1].read_text().splitlines()[-1]
    fields = dict(f.split("=", 1) for f in last.split())
    assert int(fields["req"]) >= 20 and int(fields["p95"]) >= 0 and "cpu" in fields
    assert int(fields["mem_total"]) > int(fields["mem_avail"]) > 0
    api_mem, api_limit, _ = fields["svc.api"].split("/")
    assert float(api_mem) > 1 and float(api_limit) == 1024
    assert int(fields["db_max"]) >= 20 and int(fields["db_conn"]) >= 1
    assert "js_storage" in fields
    out = sandbox.fab("status").stdout
    assert "scaling triggers" in out


def memory_use(name: str) -> tuple[float, float]:
    """(used, limit) in bytes, as `docker stats` shows them."""
    usage = json.loads(subprocess.run(["docker", "stats", "--no-stream", "--format", "{{json .}}", name],
                                      capture_output=True, text=True, check=True).stdout)["MemUsage"]

    def size(text: str) -> float:
        text = text.strip()
        return float(text.rstrip("GiMKB")) * (1024 ** 3 if "GiB" in text else 1024 ** 2 if "MiB" in text else 1024 if "KiB" in text else 1)

    used, limit = usage.split("/")
    return size(used), size(limit)


HOLD_MEMORY = ("import os, time; open('/tmp/tasktracker-test-hold.pid', 'w').write(str(os.getpid())); "
               "held = b'x' * (48 << 20); time.sleep(300)")


def test_doctor_reports_a_service_near_its_memory_limit(sandbox, deployed):
    worker = container(sandbox, "worker")
    # The worker holds 48 MiB it cannot give back (no swap), so its use stays put when the limit
    # drops: the kernel reclaims only cache, which is small next to the held block.
    subprocess.run(["docker", "exec", "-d", worker, "python", "-c", HOLD_MEMORY], check=True)
    try:
        for _ in range(20):
            used, limit = memory_use(worker)
            if used > 48 * 1024 ** 2:
                break
            time.sleep(0.5)
        for _ in range(6):
            used, limit = memory_use(worker)
            if used >= 0.94 * limit:
                break
            limit = max(int(used / 0.96), 16 * 1024 ** 2)
            subprocess.run(["docker", "update", "--memory", str(limit), "--memory-swap", str(limit), worker],
                           check=True, capture_output=True)
            time.sleep(1)
        for _ in range(5):  # the use under a tight limit wavers by a few percent: doctor reads one moment of it
            out = doctor(sandbox)
            if "[memory] worker uses" in out:
                break
        assert "[memory] worker uses" in out and "limit" in out, (out, memory_use(worker))
    finally:
        subprocess.run(["docker", "update", "--memory", "2g", "--memory-swap", "4g", worker], capture_output=True)
        subprocess.run(["docker", "exec", worker, "sh", "-c", "kill $(cat /tmp/tasktracker-test-hold.pid)"],
                       capture_output=True)
    assert "[memory] worker" not in doctor(sandbox)


def test_doctor_reports_connections_near_max(sandbox, deployed):
    import psycopg

    values = settings_of(sandbox)
    address = service_address(sandbox.project, "postgres")  # no port is published in production
    held = []
    try:
        for _ in range(85):
            held.append(psycopg.connect(host=address, port=5432, user=values.get("POSTGRES_USER", "postgres"),
                                        password=values["POSTGRES_PASSWORD"], dbname=values.get("POSTGRES_DB", "tasktracker")))
        out = doctor(sandbox)
        assert "[connection pool]" in out and "database connections are in use" in out, out
    finally:
        for conn in held:
            conn.close()


async def fill_stream(address: str, login: dict, name: str, max_bytes: int, delete: bool = False) -> None:
    import nats

    nc = await nats.connect(f"nats://{address}:4222", allow_reconnect=False, connect_timeout=5, **login)
    try:
        js = nc.jetstream()
        if delete:
            await js.delete_stream(name)
            return
        await js.add_stream(name=name, subjects=[f"{name}.>"], max_bytes=max_bytes)
        for _ in range(200):
            try:
                await js.publish(f"{name}.x", b"x" * 200)
            except Exception:
                break
    finally:
        await nc.close()


def test_doctor_reports_a_stream_near_its_limit(sandbox, deployed):
    values = settings_of(sandbox)
    login = {"user": values.get("NATS_USER", "tasktracker"), "password": values["NATS_PASSWORD"]}
    address = service_address(sandbox.project, "nats")
    asyncio.run(fill_stream(address, login, "DOCTORFULL", 16384))
    try:
        out = doctor(sandbox)
        assert "[jetstream] stream DOCTORFULL holds" in out, out
    finally:
        asyncio.run(fill_stream(address, login, "DOCTORFULL", 0, delete=True))


def test_doctor_reports_a_filling_disk(sandbox, deployed):
    backups = sandbox.home / "tasktracker" / "backups"
    backups.mkdir(exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tasktracker-doctor-test", str(backups)], check=True)
    try:
        subprocess.run(["dd", "if=/dev/zero", f"of={backups}/filler", "bs=1k", "count=3900"], capture_output=True)
        out = doctor(sandbox)
        assert "[disk] tasktracker/backups is 9" in out and "% full" in out, out
    finally:
        subprocess.run(["umount", str(backups)], check=True)
    assert "[disk]" not in doctor(sandbox)


def test_doctor_reports_missing_jobs_and_an_expiring_certificate(sandbox, deployed):
    saved = crontab(sandbox)
    live = sandbox.home / "tasktracker" / "shared" / "letsencrypt" / "live" / "doctor.example.test"
    live.mkdir(parents=True)
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "5",
                    "-subj", "/CN=doctor.example.test", "-keyout", str(live / "privkey.pem"), "-out", str(live / "cert.pem")],
                   check=True, capture_output=True)
    try:
        ours = [f"tasktracker-{job}:{sandbox.project}" for job in ("sample", "backup", "ssl")]  # whatever earlier tests installed
        set_crontab(sandbox, "\n".join(line for line in saved.splitlines() if not any(line.endswith(m) for m in ours)) + "\n")
        out = doctor(sandbox)
        assert "[certificate] certificate doctor.example.test expires in 4 days" in out or "expires in 5 days" in out, out
        assert "[jobs] no certificate renewal job is installed" in out
        assert "[jobs] no daily backup job is installed" in out
        assert "[jobs] the metrics sampler is not installed" in out
    finally:
        set_crontab(sandbox, saved)
        subprocess.run(["rm", "-rf", str(live)], check=True)
    out = doctor(sandbox)
    assert "[certificate]" not in out and "sampler is not installed" not in out


def test_a_half_recovered_host_is_named_by_doctor_and_refused_by_deploy_rollback_and_restore(sandbox, deployed):
    """What a `recover` that failed midway leaves (APP_DIR/.recovering, the entry in maintenance):
    status and doctor say so with the command that finishes it; deploy, rollback, backup (and
    the nightly job's program) and restore refuse, changing nothing (the same release live, no
    audit line, no new release, no new set)."""
    app = sandbox.home / "tasktracker"
    marker = app / ".recovering"
    live = (app / "current").resolve()
    releases = sorted(p.name for p in (app / "releases").iterdir())
    audit = (app / "audit.log").read_text()
    marker.write_text("20261124T020000Z\n")
    subprocess.run(["chown", f"{sandbox.user}:{sandbox.user}", str(marker)], check=True)
    try:
        out = sandbox.fab("doctor", check=False)
        assert out.returncode == 1, out.stdout + out.stderr
        assert ("[maintenance] a recover has not finished (off-site set 20261124T020000Z): every client "
                'gets 503 "recovering"') in out.stdout, out.stdout
        assert "`fab -H sandbox recover --from-offsite` resumes it" in out.stdout
        assert "a recover has not finished" in sandbox.fab("status").stdout
        for argv in (["deploy", "--skip-build"], ["rollback"], ["backup"], ["backup.restore", "--latest", "--yes"]):
            out = sandbox.fab(*argv, check=False)
            said = " ".join(out.stderr.split())
            assert out.returncode == 3, (argv, out.stdout, out.stderr)
            assert ("sandbox is in the middle of a recovery (off-site set 20261124T020000Z" in said
                    and f"`{argv[0]}` would serve or change it" in said and "Nothing was changed." in said), said
        program = app / "bin" / "tasktracker-backup"
        if not program.exists():  # as a deploy after the first, or `fab backup`, installs it
            from tasks.commands import backup as backup_commands

            program.write_text(backup_commands.BACKUP_SCRIPT)
            program.chmod(0o700)
            subprocess.run(["chown", f"{sandbox.user}:{sandbox.user}", str(program)], check=True)
        (app / "backups").mkdir(exist_ok=True)
        sets = sorted(p.name for p in (app / "backups").iterdir())
        cron = subprocess.run(["runuser", "-u", sandbox.user, "--", str(program),
                               str(app), sandbox.project, "7"], capture_output=True, text=True, timeout=120)
        assert cron.returncode == 1 and "BACKUP REFUSED: a recover has not finished" in cron.stderr, cron
        assert sorted(p.name for p in (app / "backups").iterdir()) == sets
        assert (app / "current").resolve() == live
        assert sorted(p.name for p in (app / "releases").iterdir()) == releases
        assert (app / "audit.log").read_text() == audit
    finally:
        marker.unlink()
    assert "[maintenance]" not in doctor(sandbox)


def test_a_process_left_behind_in_the_postgres_container_never_restarts_the_database(sandbox, deployed):
    """Docker's init is PID 1 in the postgres container (compose.yml `init: true`), so a process
    left behind there (pgBackRest's asynchronous archive-push, a timed-out health check's
    pg_isready) that exits with 2 is reaped by it. With the postmaster as PID 1, that exit was
    taken for a crashed backend: every connection dropped and the cluster went through crash
    recovery (a full-suite run failed so, "the database system is in recovery mode")."""
    pg = container(sandbox, "postgres")
    session = subprocess.Popen(["docker", "exec", pg, "sh", "-c",
                                'psql -U "$POSTGRES_USER" -d "$POSTGRES_DB" -Atc "select pg_sleep(4), 42"'],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1)
    subprocess.run(["docker", "exec", pg, "sh", "-c", "(sleep 1; exit 2) & exit 0"], check=True)
    out, err = session.communicate(timeout=30)
    assert session.returncode == 0 and out.strip().endswith("|42"), (out, err)  # the session lived on
    said = subprocess.run(["docker", "logs", "--since", "30s", pg], capture_output=True, text=True)
    assert "terminating any other active server processes" not in said.stdout + said.stderr


def test_a_postgres_restarted_by_docker_alone_archives_every_few_seconds(sandbox, deployed):
    """A start nobody follows up on (Docker's restart policy after a crash or a reboot; here
    `docker restart`) still gets a WAL segment off to the archive every archive_timeout (3 s):
    the postgres health check's first pass after a start reloads the configuration, which wakes
    the checkpointer (postgres/healthcheck.sh). Without it, a started Postgres archived nothing
    for up to checkpoint_timeout (5 min) while writes went on."""
    pg = container(sandbox, "postgres")

    def psql(sql: str) -> str:
        return subprocess.run(["docker", "exec", pg, "sh", "-c",
                               f'psql -X -Atq -U "$POSTGRES_USER" -d "$POSTGRES_DB" -c "{sql}"'],
                              capture_output=True, text=True).stdout.strip()

    subprocess.run(["docker", "restart", pg], check=True, capture_output=True)
    deadline = time.monotonic() + 60
    while subprocess.run(["docker", "inspect", "-f", "{{.State.Health.Status}}", pg],
                         capture_output=True, text=True).stdout.strip() != "healthy":
        assert time.monotonic() < deadline, "postgres did not become healthy after a restart"
        time.sleep(0.5)
    seen = {psql("SELECT last_archived_wal FROM pg_stat_archiver")}
    deadline = time.monotonic() + 25
    while len(seen) < 3 and time.monotonic() < deadline:  # two new segments archived
        psql("SELECT txid_current()")  # a commit record: WAL to close a segment on
        seen.add(psql("SELECT last_archived_wal FROM pg_stat_archiver"))
        time.sleep(0.5)
    assert len(seen) >= 3, f"segments archived in 25 s of writes after a restart: {sorted(seen)}"


def test_the_snapshot_is_one_command_and_parses(sandbox, deployed):
    """The snapshot builder as the deploy user runs it; TASKTRACKER_RECORD=1 saves it as the
    recorded host output the unit tests read (tests/recorded/status/snapshot.txt)."""
    import os
    from pathlib import Path

    from tasks.commands import status as commands
    from tasks.commands.context import HostContext

    command = commands.snapshot(HostContext("tasktracker", sandbox.project))
    result = as_user(sandbox, f"cd {sandbox.home} && {command}")
    snap = commands.parse_snapshot(result.stdout)
    assert {c["service"] for c in snap["containers"]} >= {"postgres", "nats", "api", "worker", "nginx"}
    assert snap["db"]["max_connections"] and snap["jsz"]["max_storage"] > 0 and snap["host"]["MemTotal"]
    if os.environ.get("TASKTRACKER_RECORD"):
        target = Path(os.environ.get("TASKTRACKER_RECORD_DIR", Path(__file__).parent / "recorded" / "status"))
        target.mkdir(parents=True, exist_ok=True)
        (target / "snapshot.txt").write_text(result.stdout)
