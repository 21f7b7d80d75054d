"""Point-in-time recovery (commands/pitr.py): the --to-time parser, pgBackRest's recorded `info`,
the window, and the restore script's failure path run against a stand-in `docker`."""

from __future__ import annotations

import json
import os
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import pytest

from tasks.commands import backup, offsite, pitr, pitr_offsite, status
from tasks.commands.context import HostContext

CTX = HostContext(app_dir="/srv/tt", project="tt", variant="v2")
NOW = datetime(2026, 11, 26, 12, 0, 0, tzinfo=timezone.utc)
# `pgbackrest info --output=json` as pgBackRest 2.55.1 printed it in the stack's image (one full backup).
RECORDED_INFO = ('[{"archive":[{"database":{"id":1,"repo-key":1},"id":"17-1","max":"000000010000000000000004","min":'
                 '"000000010000000000000001"}],"backup":[{"archive":{"start":"000000010000000000000002","stop":'
                 '"000000010000000000000003"},"backrest":{"format":5,"version":"2.55.1"},"database":{"id":1,"repo-key":1},'
                 '"error":false,"info":{"delta":31024648,"repository":{"delta":4014277,"size":4014277},"size":31024648},'
                 '"label":"20261126-071929F","lsn":{"start":"0/2000028","stop":"0/3000050"},"prior":null,"reference":null,'
                 '"timestamp":{"start":1795677569,"stop":1795677571},"type":"full"}],"cipher":"none","db":[{"id":1,'
                 '"repo-key":1,"system-id":7712376416637501467,"version":"17"}],"name":"main","repo":[{"cipher":"none",'
                 '"key":1,"status":{"code":0,"message":"ok"}}],"status":{"code":0,"lock":{"backup":{"held":false}},"message":"ok"}}]')
NO_BACKUP_INFO = '[{"archive":[],"backup":[],"name":"main","status":{"code":2,"message":"no valid backups"}}]'


@pytest.mark.parametrize("text, ok_or_says", [
    ("2026-11-26 11:59:59", datetime(2026, 11, 26, 11, 59, 59, tzinfo=timezone.utc)),
    (" 2026-11-26 08:00:00 ", datetime(2026, 11, 26, 8, 0, 0, tzinfo=timezone.utc)),
    ("2026-11-26T08:00:00", "is not a time in the form"),
    ("yesterday", "is not a time in the form"),
    ("2026-02-30 08:00:00", "is not a real date and time"),
    ("2026-11-26 12:00:00", "is not in the past"),
    ("2027-01-01 00:00:00", "is not in the past"),
])
def test_to_time_is_a_past_utc_moment(text, ok_or_says):
    if isinstance(ok_or_says, datetime):
        assert pitr.parse_target(text, NOW) == ok_or_says
    else:
        with pytest.raises(ValueError, match=ok_or_says):
            pitr.parse_target(text, NOW)


def test_recorded_info_gives_the_window():
    out = (f"now=1795680000\narchiver=1795679990 2 1795670000 1 1795679995 50331648\n"
           f"wal_disk=42949672960 21474836480\ninfo={RECORDED_INFO}\n")
    state = pitr.parse_info(out)
    assert state == {"now": 1795680000, "state": "ok", "backups": 1, "oldest": 1795677571,
                     "newest": 1795677571, "last_archived": 1795679990, "failed_count": 2,
                     "last_failed": 1795670000, "ready": 1, "oldest_ready": 1795679995,
                     "wal_bytes": 50331648, "disk_total": 42949672960,
                     "disk_available": 21474836480}
    inside = datetime.fromtimestamp(1795677600, timezone.utc)
    before = datetime.fromtimestamp(1795677500, timezone.utc)
    assert pitr.window_problem(state, inside) is None
    assert "is before the oldest pgBackRest backup ended (2026-11-26 07:19:31 UTC)" in pitr.window_problem(state, before)
    line = pitr.window_line(state)
    assert line.startswith("point in time: any moment from 2026-11-26 07:19:31 UTC (1 pgBackRest backups)")
    assert "WAL archived up to" in line and "FAILING" not in line  # the last failure is older than the last success


@pytest.mark.parametrize("out, state, says", [
    ("now=1\npitr=unavailable\n", "unavailable", "has no pgBackRest"),
    ("now=1\npitr=no-postgres\n", "no-postgres", "no postgres container is running"),
    (f"now=1\narchiver=0 0 0 0 0 16777216\ninfo={NO_BACKUP_INFO}\n", "no-backup",
     "has no pgBackRest backup yet"),
    ("now=1\narchiver=\ninfo=not json\n", "no-backup", "has no pgBackRest backup yet"),
])
def test_an_archive_that_cannot_restore_says_why(out, state, says):
    parsed = pitr.parse_info(out)
    assert parsed["state"] == state
    assert says in pitr.window_problem(parsed, NOW)


@pytest.mark.parametrize("archiver, finding", [
    ("1000 0 0 0 0 50331648 3", None),
    ("1000 0 0 0 0 50331648", None),  # recorded before archive_timeout was read: still parsed
    ("1000 0 0 0 0 50331648 60", "Postgres closes a WAL segment for the archive only every 60 s "
                                 "(archive_timeout): a lost host can take that many seconds of writes (goal 5 s)"),
])
def test_an_archive_timeout_beyond_the_rpo_goal_is_a_finding(archiver, finding):
    """A host still on the old 60 s (its .env, or a postgres kept on its old definition): doctor
    says what it costs and how to apply the default."""
    from tasks.schedule_checks import archive_findings

    state = pitr.parse_info(f"now=2000\narchiver={archiver}\ninfo={RECORDED_INFO}\n")
    assert "archiver_error" not in state
    found = [f for f in archive_findings(state, 2000) if "archive_timeout" in f.summary]
    assert [f.summary for f in found] == ([finding] if finding else [])
    if finding:
        assert "WAL_ARCHIVE_TIMEOUT=3" in found[0].advice and "compose.recreate --service postgres" in found[0].advice


def test_failing_archiving_is_loud():
    failing = "now=2000\narchiver=1000 7 1900 3 1100 50331648\n"
    state = pitr.parse_info(f"{failing}info={RECORDED_INFO}\n")
    assert ("ARCHIVING IS FAILING: the last attempt failed at 1970-01-01 00:31:40 UTC "
            "(7 failures counted)") in pitr.window_line(state)
    no_backup = pitr.parse_info(f"{failing}info={NO_BACKUP_INFO}\n")
    assert "ARCHIVING IS FAILING" in pitr.window_line(no_backup)


@pytest.mark.parametrize("archiver, says", [
    ('archiver_error=ERROR:  column " " does not exist LINE 1: SELECT ...',
     'column " " does not exist'),
    ("archiver_error=", "psql failed and said nothing"),
    ("archiver=", "the archiver's figures are missing"),
    ("archiver=1000 7", "unreadable pg_stat_archiver figures: '1000 7'"),
    ("archiver=0 0 0 x 0 0", "unreadable pg_stat_archiver figures"),
    ("", "the archiver's figures are missing"),
])
def test_an_archiver_that_cannot_be_read_is_said_never_zeros(archiver, says):
    """The bug of issue 26: a query error read as `0 0 0`, so a failing archive looked healthy."""
    state = pitr.parse_info(f"now=2000\n{archiver}\ninfo={RECORDED_INFO}\n")
    assert says in state["archiver_error"]
    assert "failed_count" not in state and "last_archived" not in state
    assert "THE ARCHIVER'S STATE COULD NOT BE READ" in pitr.window_line(state)


@pytest.mark.parametrize("script", [
    pitr.ensure_stanza(CTX), pitr.ensure_stanza(CTX, "docker ps -q --filter label=x | head -n 1"), pitr.info(CTX),
    pitr.restore_to_time(CTX, "2026-11-26 08:00:00", "echo start"), backup.BACKUP_SCRIPT, status.snapshot(CTX),
    pitr_offsite.restore_from_offsite(CTX, "", "echo migrate", "echo start"), pitr_offsite.restore_from_offsite(CTX, "2026-11-26 08:00:00", "", "true"),
    pitr_offsite.install_offsite("sftp://u@10.0.0.1:2222//srv/restic", "/srv/tt/shared/pgbackrest-offsite.conf", CTX.container("postgres")),
])
def test_scripts_are_valid_bash(script):
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0


def test_the_target_is_quoted_and_utc():
    script = pitr.restore_to_time(CTX, "2026-11-26 08:00:00", "echo start")
    assert "restore_run --type=time --target='2026-11-26 08:00:00+00' --target-action=promote" in script
    assert "grep '^PGBACKREST_'" in script  # only pgBackRest's settings reach the one-off container


FAKE_DOCKER = r"""#!/bin/bash
echo "$*" >> "$DOCKER_LOG"
case "$*" in
  "ps -q"*"service=postgres"*) echo pg1 ;;
  "ps -q"*"service=api"*) echo api1 ;;
  "ps -q"*"service=worker"*) echo worker1 ;;
  *"command -v pgbackrest"*) ;;
  "inspect -f {{.Config.Image}}"*) echo tt-postgres:pg17-abc ;;
  "inspect -f {{range .Config.Env}}"*) printf 'POSTGRES_PASSWORD=secret\nPGBACKREST_STANZA=main\n' ;;
  "inspect -f {{.State.Running}}"*) echo true ;;
  "inspect -f {{.State.Health.Status}}"*) echo healthy ;;
  *timeline_id*) echo 3 ;;
  *pg_is_in_recovery*) echo f ;;
  *--type=time*|*"restore --repo=2"*) [ -n "$FAIL_RESTORE" ] && exit 1 ;;
  *"info --repo=2"*) echo '[{"backup":[{"label":"x"}]}]' ;;
  *"info --repo=1"*) [ -n "$REPO1_EMPTY" ] || echo '[{"backup":[{"label":"x"}]}]' ;;
  *"archive.conf.new"*) cat > "$DOCKER_LOG.archive.conf" ;;
  *"info --output=json"*) echo '[{"backup":[{"label":"x"}]}]' ;;
  *) ;;
esac
exit 0
"""


def run_restore(tmp_path: Path, fail: bool) -> tuple[subprocess.CompletedProcess, list[str]]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "docker").write_text(FAKE_DOCKER)
    (bin_dir / "docker").chmod(0o755)
    log = tmp_path / "docker.log"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "DOCKER_LOG": str(log), "FAIL_RESTORE": "1" if fail else "",
           "TMPDIR": str(tmp_path)}
    script = pitr.restore_to_time(CTX, "2026-11-26 08:00:00", f'echo "compose start" >> {log}')
    result = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=60)
    return result, log.read_text().splitlines()


def calls(lines: list[str]) -> list[str]:
    """The calls that change something, in order."""
    out = []
    for line in lines:
        verb = line.split()[0]
        if verb in ("stop", "start") or line == "compose start":
            out.append(line if line == "compose start" else verb)
        elif line.endswith("pgbackrest check"):
            out.append("pgbackrest check")
        elif verb == "run" and "restore --delta" in line:
            out.append("restore --delta " + ("time" if "--type=time" in line else line.split("--target-timeline=")[1]))
    return out


def test_a_restore_that_fails_puts_the_database_back_as_it_was(tmp_path):
    result, lines = run_restore(tmp_path, fail=True)
    assert result.returncode == 1
    assert "FAILED at 'restore to 2026-11-26 08:00:00 UTC'" in result.stderr and "back as it was" in result.stderr
    assert calls(lines) == ["stop", "stop", "pgbackrest check", "stop", "restore --delta time", "stop",
                            "restore --delta 3", "start", "compose start"]
    assert not list(tmp_path.glob("tmp.*"))  # the settings file for the one-off container is gone


def test_a_restore_that_works_stops_writers_first_and_starts_them_last(tmp_path):
    result, lines = run_restore(tmp_path, fail=False)
    assert result.returncode == 0, result.stderr
    assert calls(lines) == ["stop", "stop", "pgbackrest check", "stop", "restore --delta time", "start", "compose start"]
    env_file = [line for line in lines if "--env-file" in line][0].split("--env-file ")[1].split()[0]
    assert not Path(env_file).exists()
    assert "the database is at 2026-11-26 08:00:00 UTC (new timeline 3)" in result.stdout
    assert json.dumps("secret") not in result.stdout + result.stderr


@pytest.mark.parametrize("repo1_empty, backs_up", [(True, True), (False, False)])
def test_the_first_full_backup_is_taken_when_this_hosts_repository_has_none(tmp_path, repo1_empty,
                                                                          backs_up):
    """After `recover` the only backups are the lost host's, off-site (repo2): they do not make
    this host's point-in-time window, so its own first full backup is taken."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "docker").write_text(FAKE_DOCKER)
    (bin_dir / "docker").chmod(0o755)
    log = tmp_path / "docker.log"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "DOCKER_LOG": str(log),
           "REPO1_EMPTY": "1" if repo1_empty else ""}
    result = subprocess.run(["bash", "-c", pitr.ensure_stanza(CTX)], env=env, capture_output=True,
                            text=True, timeout=60)
    assert "@@fact pitr=ok" in result.stdout, result.stdout + result.stderr
    assert ("backup --type=full" in log.read_text()) == backs_up


def test_every_deploy_writes_the_asynchronous_archive_settings_and_wakes_the_checkpointer(tmp_path):
    """ensure_stanza (each deploy) writes conf.d/archive.conf through stdin: archive-async for
    archive-push only (a restore's archive-get stays synchronous and queues nothing in /tmp), its
    spool in the container's tmpfs, and no queue limit (pgBackRest never drops WAL); and reloads
    Postgres before the stanza is checked (archive_timeout then works at once)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "docker").write_text(FAKE_DOCKER)
    (bin_dir / "docker").chmod(0o755)
    log = tmp_path / "docker.log"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "DOCKER_LOG": str(log)}
    result = subprocess.run(["bash", "-c", pitr.ensure_stanza(CTX)], env=env, capture_output=True, text=True, timeout=60)
    assert "@@fact pitr=ok" in result.stdout, result.stdout + result.stderr
    conf = (tmp_path / "docker.log.archive.conf").read_text()
    assert conf == pitr.ARCHIVE_CONF
    sections = conf.split("[global:archive-push]")
    assert len(sections) == 2 and "archive-async=y" in sections[1] and "[" not in sections[1]
    assert "spool-path=/tmp/pgbackrest" in conf and "queue-max" not in conf
    lines = log.read_text().splitlines()
    written = next(i for i, line in enumerate(lines) if "archive.conf.new" in line)
    woken = next(i for i, line in enumerate(lines) if "pg_reload_conf" in line)
    created = next(i for i, line in enumerate(lines) if "stanza-create" in line)
    assert written < woken < created
    assert "mv -f /var/lib/pgbackrest/conf.d/archive.conf.new /var/lib/pgbackrest/conf.d/archive.conf" in lines[written]


@pytest.mark.parametrize("repository, path, known", [
    ("sftp://u@10.0.0.1:2222//srv/restic", "/srv/restic-pgbackrest", "[10.0.0.1]:2222"),
    ("sftp:u@backup.example.com:/srv/tt/", "/srv/tt-pgbackrest", "backup.example.com"),
    ("sftp:u@backup.example.com:relative/dir", "", None),  # pgBackRest needs an absolute path: the WAL stays on the host
    ("s3:https://s3.example.com/bucket/tt", "", None),
    ("/mnt/backup/restic", "", None),
])
def test_where_the_wal_archive_goes_off_site(repository, path, known):
    assert pitr_offsite.offsite_repo_path(repository) == path
    if known:
        assert offsite.known_host_name(repository) == known


def test_the_off_site_conf_holds_the_cipher_pass_and_strict_host_keys():
    conf = pitr_offsite.offsite_conf("sftp://u@10.0.0.1:2222//srv/restic", "pa ss'word")
    assert "repo2-cipher-pass=pa ss'word" in conf and "repo2-sftp-host-key-check-type=strict" in conf
    assert "repo2-path=/srv/restic-pgbackrest" in conf and "repo2-sftp-host-port=2222" in conf
    script = pitr_offsite.install_offsite("sftp://u@10.0.0.1:2222//srv/restic", "/srv/tt/shared/pgbackrest-offsite.conf", "true")
    assert "pa ss" not in script  # the file travels through stdin, never the command line


def test_recover_puts_the_sets_data_back_when_the_off_site_wal_fails(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "docker").write_text(FAKE_DOCKER)
    (bin_dir / "docker").chmod(0o755)
    log = tmp_path / "docker.log"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "DOCKER_LOG": str(log), "FAIL_RESTORE": "1", "TMPDIR": str(tmp_path)}
    script = pitr_offsite.restore_from_offsite(CTX, "", f'echo "migrate" >> {log}', f'echo "compose start" >> {log}')
    result = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stderr
    changes = [line.split(" --entrypoint ")[-1] if line.startswith("run ") else line.split()[0] if line.split()[0] in ("stop", "start")
               else line for line in log.read_text().splitlines()
               if line.startswith(("run ", "stop ", "start ")) or line in ("migrate", "compose start")]
    assert changes[:4] == ["stop", "stop", "stop", changes[3]] and ".before-wal-restore.tmp" in changes[3]  # aside, complete
    assert changes[4].startswith("pgbackrest tt-postgres:pg17-abc restore --repo=2 --delta")
    rest = changes[5:]
    assert rest[0].startswith("rm tt-postgres:pg17-abc -f /var/lib/pgbackrest/conf.d/offsite.conf")  # no archiving into the lost stanza
    assert "find /var/lib/postgresql/data -mindepth 1 -delete && cp -a /var/lib/pgbackrest/.before-wal-restore/." in rest[2]
    assert rest[3:] == ["start", "compose start"] and "migrate" not in rest
    assert "putting the set's database back" in result.stderr and "holds the set's data" in result.stderr


STAND_IN_DOCKER = ('#!/bin/sh\n[ "$1" = ps ] && { echo pg1; exit 0; }\nshift\n'
                   '[ "$1" = -u ] && shift 2\nshift\nexec "$@"\n')


def run_info(pg, tmp_path, **env_overrides) -> str:
    """`info`'s script, run as the host runs it (through `docker exec ... sh -c`), with a stand-in
    `docker` that runs the command on this machine, against `pg`."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    # docker ps -> one container id; docker exec [-u USER] ID CMD... -> CMD... here.
    (bin_dir / "docker").write_text(STAND_IN_DOCKER)
    (bin_dir / "pgbackrest").write_text("#!/bin/sh\necho '[]'\n")
    for program in ("docker", "pgbackrest"):
        (bin_dir / program).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PGHOST": "127.0.0.1",
           "PGPORT": str(pg.port), "PGPASSWORD": pg.password, "POSTGRES_USER": "postgres",
           "POSTGRES_DB": "postgres", "PGDATA": str(pg.dir), **env_overrides}
    return subprocess.run(["bash", "-c", pitr.info(CTX)], env=env, capture_output=True, text=True,
                          check=True).stdout


@pytest.mark.integration
def test_info_reads_the_archivers_failures_from_a_real_postgres(tmp_path):
    """Against a PostgreSQL whose archive_command fails: the failures, the segments waiting and
    pg_wal's size and disk reach `parse_info`, so `doctor` can warn about them; a query that fails
    (here: a database that does not exist) arrives as Postgres's own error, not as zeros."""
    from tests.support import LocalPostgres, wait_for

    pg = LocalPostgres(options="-c wal_level=replica -c archive_mode=on -c archive_command=false "
                               "-c archive_timeout=30").start()
    try:
        pg.psql("CREATE TABLE t AS SELECT 1 AS x; SELECT pg_switch_wal()")
        wait_for(lambda: int(pg.psql("SELECT failed_count FROM pg_stat_archiver")) > 0, 30,
                 what="the archiver's first failure")
        out = run_info(pg, tmp_path)
        broken = run_info(pg, tmp_path, POSTGRES_DB="no_such_db")
    finally:
        pg.stop()
    state = pitr.parse_info(out)
    assert "archiver_error" not in state, out
    assert state["failed_count"] >= 1 and state["last_failed"] > 0, out
    assert state["last_archived"] == 0, out  # `false` never archived a segment
    assert pitr.archive_failing(state)
    assert state["ready"] >= 1 and 0 < state["oldest_ready"] <= state["now"], out  # switched
    assert state["wal_bytes"] >= 16 * 1024 * 1024, out  # at least one segment
    assert state["disk_total"] > state["disk_available"] > 0, out
    assert state["archive_timeout"] == 30, out  # seconds, from pg_settings
    failed = pitr.parse_info(broken)
    assert 'database "no_such_db" does not exist' in failed["archiver_error"], broken
    assert "failed_count" not in failed


LOCKING_DOCKER = r"""#!/bin/bash
case "$*" in
  "ps -q"*) echo pg1 ;;
  *"command -v pgbackrest"*) ;;
  *stanza-create*)
    n=$(cat "$FAKE_DIR/tries" 2>/dev/null || echo 0); echo $((n + 1)) > "$FAKE_DIR/tries"
    if [ "$n" -lt "$BUSY" ]; then
      echo "ERROR: [050]: unable to acquire lock on file '/tmp/pgbackrest/main-archive.lock'"
      echo "       HINT: is another pgBackRest process running?"; exit 50
    fi
    [ -z "$UNREACHABLE" ] || { echo "ERROR: [104]: unable to connect to 10.0.0.1:2222"; exit 104; } ;;
  *"info --repo=2"*) echo '[{"backup":[{"label":"x"}]}]' ;;
  *) cat > /dev/null ;;
esac
"""


@pytest.mark.parametrize("busy, unreachable, ok, tries", [
    (2, "", True, 3),     # the archiver's push held the lock twice: waited for, then created
    (0, "1", False, 1),   # any other failure is said at once
])
def test_offsite_init_waits_for_the_archivers_lock_but_not_for_a_real_failure(tmp_path, busy,
                                                                            unreachable, ok, tries):
    bin_dir, home = tmp_path / "bin", tmp_path / "home"
    bin_dir.mkdir()
    (home / ".ssh").mkdir(parents=True)
    (bin_dir / "docker").write_text(LOCKING_DOCKER)
    (bin_dir / "docker").chmod(0o755)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(home / ".ssh" / "tasktracker-offsite")],
                   check=True)
    public = (home / ".ssh" / "tasktracker-offsite.pub").read_text().split()
    (home / ".ssh" / "known_hosts").write_text(f"[10.0.0.1]:2222 {public[0]} {public[1]}\n")
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "HOME": str(home), "FAKE_DIR": str(tmp_path),
           "BUSY": str(busy), "UNREACHABLE": unreachable}
    script = pitr_offsite.install_offsite("sftp://u@10.0.0.1:2222//srv/restic", str(tmp_path / "offsite.conf"),
                                          CTX.container("postgres"))
    (tmp_path / "offsite.conf").write_text("repo2-type=sftp\n")
    result = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=60,
                            cwd=home)  # the deploy user's home, where the key's path starts
    assert (result.returncode == 0 and "pitr-offsite=ok" in result.stdout) == ok, result.stdout + result.stderr
    assert int((tmp_path / "tries").read_text()) == tries
    if not ok:
        assert "could not reach the off-site repository: ERROR: [104]" in result.stderr
