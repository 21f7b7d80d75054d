"""Point-in-time recovery with pgBackRest (issue 15), on the sandbox: a restore to a moment before a
bad DELETE brings the deleted rows back, and bad input changes nothing."""

import json
import subprocess
import time
import urllib.request
from datetime import datetime, timezone

import pytest

pytestmark = pytest.mark.e2e
APP = "pt"


def psql(sandbox, sql: str) -> str:
    return subprocess.run(["docker", "compose", "-p", f"{sandbox.project}-{APP}", "exec", "-T", "postgres", "psql", "-U",
                           "postgres", "-d", "tasktracker", "-Atc", sql], capture_output=True, text=True, check=True).stdout.strip()


def post_task(sandbox, title: str) -> int:
    req = urllib.request.Request(sandbox.app_url(APP, "/api/tasks"), data=json.dumps({"title": title}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as res:
        assert res.status in (200, 201)
        return json.loads(res.read())["id"]


def audit_lines(sandbox) -> list[dict]:
    return [json.loads(line) for line in (sandbox.home / APP / "audit.log").read_text().splitlines()]


@pytest.fixture(scope="module")
def app(sandbox, deployed):
    env = sandbox.app_env(APP, "archive", WAL_ARCHIVE_TIMEOUT="30")
    sandbox.fab("deploy", "--skip-build", env_file=env)
    return env


def test_the_deploy_sets_up_the_wal_archive(sandbox, app):
    out = sandbox.fab("backup.list", env_file=app).stdout
    assert "point in time: any moment from" in out and "pgBackRest backups" in out, out
    settings = psql(sandbox, "SELECT current_setting('archive_mode') || ' ' || current_setting('archive_timeout')")
    assert settings == "on 30s"  # WAL_ARCHIVE_TIMEOUT
    # 30 s is beyond the RPO goal (5 s): doctor says so, with the fix.
    doctor = sandbox.fab("doctor", env_file=app, check=False)
    assert doctor.returncode == 1 and ("[WAL archive] Postgres closes a WAL segment for the archive only every 30 s"
                                       in doctor.stdout), doctor.stdout


def test_restore_to_a_time_before_a_bad_delete_brings_the_rows_back(sandbox, app):
    kept = [post_task(sandbox, f"pitr kept {i}") for i in range(25)]
    time.sleep(1.5)
    target = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    time.sleep(1.5)
    deleted = psql(sandbox, "WITH d AS (DELETE FROM tasks WHERE title LIKE 'pitr kept %' RETURNING 1) SELECT count(*) FROM d")
    assert deleted == "25"
    after = post_task(sandbox, "pitr written after the target")
    out = sandbox.fab("backup.restore", "--to-time", target, "--yes", env_file=app)
    assert "every write up to now is archived" in out.stdout and f"the database is at {target} UTC" in out.stdout, out.stdout
    ids = {int(i) for i in psql(sandbox, "SELECT id FROM tasks WHERE title LIKE 'pitr %'").split()}
    assert set(kept) <= ids and after not in ids  # back as it was at the target, before the DELETE
    with urllib.request.urlopen(sandbox.app_url(APP, "/api/health"), timeout=10) as res:
        assert res.status == 200
    assert psql(sandbox, "SELECT pg_is_in_recovery()") == "f"
    last = audit_lines(sandbox)[-1]
    assert last["action"] == "restore" and last["result"] == "ok" and f"database to {target} UTC" in last["detail"], last
    # The archive goes on after the restore (a new timeline): the next write is archived too.
    post_task(sandbox, "pitr after the restore")
    out = sandbox.fab("backup.list", env_file=app).stdout
    assert "point in time: any moment from" in out and "ARCHIVING IS FAILING" not in out, out


@pytest.mark.parametrize("when, says", [
    ("yesterday", "is not a time in the form"),
    ("2020-01-01 00:00:00", "is before the oldest pgBackRest backup ended"),
    ("2999-01-01 00:00:00", "is not in the past"),
])
def test_a_time_the_archive_cannot_reach_is_refused_and_nothing_changes(sandbox, app, when, says):
    before = psql(sandbox, "SELECT count(*) FROM tasks")
    lines = len(audit_lines(sandbox))
    out = sandbox.fab("backup.restore", "--to-time", when, "--yes", env_file=app, check=False)
    assert out.returncode == 2, out
    assert says in out.stderr and "Nothing was changed." in out.stderr, out.stderr
    assert psql(sandbox, "SELECT count(*) FROM tasks") == before and len(audit_lines(sandbox)) == lines
