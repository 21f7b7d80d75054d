"""Releases you can trust (issue 4), on the sandbox: rollback, automatic rollback, lock, audit."""

import json
import os
import signal
import subprocess
import time
import urllib.request

import pytest

from tests.support import BIN, ROOT, LoadProbe, copy_project, head_revision, wait_for

pytestmark = pytest.mark.e2e
APP = "trusted"


def version(sandbox) -> str:
    with urllib.request.urlopen(sandbox.app_url(APP, "/api/version"), timeout=10) as res:
        return json.loads(res.read())["release"]


def current(sandbox) -> str:
    return os.readlink(sandbox.home / APP / "current").split("/")[-1]


def audit_entries(sandbox) -> list[dict]:
    path = sandbox.home / APP / "audit.log"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture(scope="module")
def release_a(sandbox, deployed):
    env = sandbox.app_env(APP)
    sandbox.fab("deploy", "--skip-build", env_file=env)
    return current(sandbox)


@pytest.fixture(scope="module")
def broken_copy(tmp_path_factory):
    """A working copy whose API reports unhealthy: a release that must never take traffic."""
    copy = copy_project(tmp_path_factory.mktemp("broken") / "project")
    main = copy / "backend" / "app" / "main.py"
    main.write_text(main.read_text().replace(
        'healthy = all(c["ok"] for c in checks.values())', 'healthy = False  # broken release'))
    return copy


def test_deploy_b_rollback_to_a_and_forward_again(sandbox, release_a):
    assert version(sandbox) == release_a
    time.sleep(1)
    env_b = sandbox.app_env(APP, "b", API_WORKERS=2)
    with LoadProbe([sandbox.app_url(APP, "/"), sandbox.app_url(APP, "/api/health")]) as load:
        sandbox.fab("deploy", "--skip-build", env_file=env_b)
        release_b = current(sandbox)
        assert release_b != release_a and version(sandbox) == release_b

        out = sandbox.fab("rollback", env_file=env_b)
        assert f"Release {release_a} is current again" in out.stdout
        assert current(sandbox) == release_a and version(sandbox) == release_a
        listing = sandbox.fab("releases", env_file=env_b).stdout
        assert f"* {release_a}" in listing and f"  {release_b}" in listing

        sandbox.fab("rollback", "--to", release_b, env_file=env_b)
        assert current(sandbox) == release_b and version(sandbox) == release_b
    assert len(load.results) > 50
    assert load.failures() == [], load.failures()[:5]
    actions = [(e["action"], e["result"]) for e in audit_entries(sandbox)]
    assert ("rollback", "ok") in actions and ("deploy", "ok") in actions


def test_unhealthy_release_is_rolled_back_automatically_while_the_old_one_serves(sandbox, release_a, broken_copy):
    serving = current(sandbox)
    env = sandbox.app_env(APP, "broken", API_WORKERS=1)
    with LoadProbe([sandbox.app_url(APP, "/"), sandbox.app_url(APP, "/api/health")]) as load:
        out = sandbox.fab_in(broken_copy, "deploy", env_file=env, check=False)
    assert out.returncode != 0
    assert "did not become healthy" in out.stderr, out.stderr[-3000:]
    assert '"status":"degraded"' in out.stderr or "503" in out.stderr  # the failing check's output
    assert current(sandbox) == serving and version(sandbox) == serving
    assert load.failures() == [], load.failures()[:5]
    failed = [e for e in audit_entries(sandbox) if e["action"] == "deploy" and e["result"] == "failed"]
    assert failed and "did not become healthy" in failed[-1]["detail"]
    listing = sandbox.fab("releases", env_file=env).stdout
    assert any(" failed " in line for line in listing.splitlines())


def test_second_deploy_is_refused_while_one_runs_and_wait_queues(sandbox, release_a):
    env = sandbox.app_env(APP, "c", API_WORKERS=3)
    first = subprocess.Popen([str(BIN / "fab"), "-H", "sandbox", "deploy", "--skip-build"], cwd=ROOT,
                             env={**sandbox.env, "TASKTRACKER_ENV_FILE": str(env)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: (sandbox.home / APP / ".deploy.lock" / "keeper.pid").exists(), 60, interval=0.05, what="the first deploy's lock")
        second = sandbox.fab("deploy", "--skip-build", env_file=env, check=False)
        assert second.returncode == 4
        assert "is busy: deploy by root@" in second.stderr and "--wait" in second.stderr
        status = sandbox.fab("lock.status", env_file=env).stdout
        assert "locked (alive)" in status
        queued = sandbox.fab("deploy", "--skip-build", "--wait", env_file=env)
        assert "Waiting for the lock" in queued.stdout
    finally:
        first.wait(300)
    assert first.returncode == 0
    assert any(e["action"] == "lock" and e["result"] == "refused" for e in audit_entries(sandbox))


def test_killed_deploy_leaves_a_stale_lock_that_force_clears(sandbox, release_a):
    env = sandbox.app_env(APP, "d", API_WORKERS=1, KEEP_RELEASES=4)
    proc = subprocess.Popen([str(BIN / "fab"), "-H", "sandbox", "deploy", "--skip-build"], cwd=ROOT,
                            env={**sandbox.env, "TASKTRACKER_ENV_FILE": str(env)}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    wait_for(lambda: (sandbox.home / APP / ".deploy.lock" / "keeper.pid").exists(), 60, interval=0.05, what="lock")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    wait_for(lambda: "stale" in sandbox.fab("lock.status", env_file=env).stdout, 30, what="stale lock")
    refused = sandbox.fab("deploy", "--skip-build", env_file=env, check=False)
    assert refused.returncode == 4 and "stale lock" in refused.stderr and "lock.release --force" in refused.stderr
    not_forced = sandbox.fab("lock.release", env_file=env, check=False)
    assert not_forced.returncode == 4
    sandbox.fab("lock.release", "--force", env_file=env)
    assert "not locked" in sandbox.fab("lock.status", env_file=env).stdout
    sandbox.fab("deploy", "--skip-build", env_file=env)
    assert version(sandbox) == current(sandbox)


def test_rollback_refuses_a_release_older_than_the_schema(sandbox, release_a, tmp_path):
    env = sandbox.app_env(APP, "e", API_WORKERS=2, KEEP_RELEASES=6)
    sandbox.fab("deploy", "--skip-build", env_file=env)
    before = current(sandbox)
    time.sleep(1)
    copy = copy_project(tmp_path / "project")
    (copy / "backend" / "alembic" / "versions" / "9999_task_priority.py").write_text(
        '"""add tasks.priority (expand: nullable, old code ignores it)"""\n'
        "import sqlalchemy as sa\nfrom alembic import op\n\n"
        f'revision = "9999"\ndown_revision = "{head_revision()}"\nbranch_labels = None\ndepends_on = None\n\n\n'
        "def upgrade() -> None:\n    op.add_column(\"tasks\", sa.Column(\"priority\", sa.Integer, nullable=True))\n\n\n"
        "def downgrade() -> None:\n    op.drop_column(\"tasks\", \"priority\")\n")
    sandbox.fab_in(copy, "deploy", env_file=env)
    newer = current(sandbox)
    refused = sandbox.fab("rollback", "--to", before, env_file=env, check=False)
    assert refused.returncode == 5
    assert "predates the database schema" in refused.stderr and "9999" in refused.stderr and "--force" in refused.stderr
    assert current(sandbox) == newer
    sandbox.fab("rollback", "--to", before, "--force", env_file=env)
    assert current(sandbox) == before and version(sandbox) == before


def test_audit_log_has_every_action_and_no_secret(sandbox, release_a):
    entries = audit_entries(sandbox)
    assert {"deploy", "rollback", "lock"} <= {e["action"] for e in entries}
    for e in entries:
        assert {"time", "user", "machine", "commit", "action", "result", "duration_s"} <= set(e)
    text = (sandbox.home / APP / "audit.log").read_text()
    values = [line.split("=", 1)[1] for line in (sandbox.dir / ".env").read_text().splitlines()
              if "=" in line and not line.startswith("#") and line.split("=", 1)[0] in
              ("POSTGRES_PASSWORD", "TELEGRAM_BOT_TOKEN", "OPENAI_API_KEY")]
    assert values and not any(v in text for v in values)
    shown = sandbox.fab("audit", "--lines", "50", env_file=sandbox.app_env(APP)).stdout
    assert "rollback" in shown and "deploy" in shown
