"""Failure paths that lose nothing (issue 10), on the sandbox, with an app of its own whose
settings are hostile on purpose: a database password with `@ / # : $` and a setting with
quotes, `$` and `#`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tasks.commands.db import app_role_password

from tests.support import LoadProbe, Writers, copy_project, head_revision, wait_for

pytestmark = pytest.mark.e2e
APP = "fp"
HOSTILE_PASSWORD = "p@ss/w#rd:$HOME'x"
HOSTILE_MODEL = 'gpt "quoted" $NOT_A_VAR #not-a-comment \\ end'
# How an operator writes them in the local .env (python-dotenv: `'...'` is literal, `"..."` keeps
# `$HOME` and `'`); the deploy must then carry the values themselves to the containers.
HOSTILE = {"POSTGRES_PASSWORD": f'"{HOSTILE_PASSWORD}"', "OPENAI_DEFAULT_MODEL": f"'{HOSTILE_MODEL}'",
           "KEEP_RELEASES": 2, "DB_WAIT_SECONDS": 5}


def current(sandbox) -> str:
    return os.readlink(sandbox.home / APP / "current").split("/")[-1]


def version(sandbox) -> str:
    with urllib.request.urlopen(sandbox.app_url(APP, "/api/version"), timeout=10) as res:
        return json.loads(res.read())["release"]


def project(sandbox) -> str:
    return f"{sandbox.project}-{APP}"


def container(sandbox, service: str) -> str:
    return subprocess.run(["docker", "ps", "-q", "--filter", f"label=com.docker.compose.project={project(sandbox)}",
                           "--filter", f"label=com.docker.compose.service={service}",
                           "--filter", "label=com.docker.compose.oneoff=False"],
                          capture_output=True, text=True, check=True).stdout.split()[0]


def psql(sandbox, sql: str) -> str:
    return subprocess.run(["docker", "exec", container(sandbox, "postgres"), "psql", "-U", "postgres", "-d", "tasktracker",
                           "-Atc", sql], capture_output=True, text=True, check=True).stdout.strip()


def container_env(sandbox, service: str, key: str) -> str:
    return subprocess.run(["docker", "exec", container(sandbox, service), "printenv", key],
                          capture_output=True, text=True).stdout.rstrip("\n")


def migration_copy(tmp_path: Path, body: str) -> Path:
    copy = copy_project(tmp_path / "project")
    (copy / "backend" / "alembic" / "versions" / "9999_fails.py").write_text(
        '"""a migration that fails"""\nimport sqlalchemy as sa\nfrom alembic import op\n\n'
        f'revision = "9999"\ndown_revision = "{head_revision()}"\nbranch_labels = None\ndepends_on = None\n\n\n'
        f"def upgrade() -> None:\n{body}\n\n\ndef downgrade() -> None:\n    pass\n")
    return copy


@pytest.fixture(scope="module")
def app(sandbox, deployed):
    env = sandbox.app_env(APP, "hostile", **HOSTILE)
    sandbox.fab("deploy", "--skip-build", env_file=env)
    return env


def test_hostile_setting_values_reach_the_containers_unchanged(sandbox, app):
    assert container_env(sandbox, "api", "OPENAI_DEFAULT_MODEL") == HOSTILE_MODEL
    assert container_env(sandbox, "postgres", "POSTGRES_PASSWORD") == HOSTILE_PASSWORD
    # The API connects as the app's role, whose password is derived from the owner's (issue 24).
    assert container_env(sandbox, "api", "POSTGRES_PASSWORD") == app_role_password(HOSTILE_PASSWORD)
    with urllib.request.urlopen(sandbox.app_url(APP, "/api/health"), timeout=10) as res:
        assert json.loads(res.read())["checks"]["database"]["ok"] is True  # the password connects


def test_failed_transactional_migration_loses_no_write_and_fails_no_read(sandbox, app, tmp_path):
    serving = current(sandbox)
    copy = migration_copy(tmp_path, '    op.add_column("tasks", sa.Column("doomed", sa.Integer))\n'
                                    '    op.execute("UPDATE tasks SET doomed = 1 / 0")')
    reads = [sandbox.app_url(APP, "/api/health"), sandbox.app_url(APP, "/api/tasks")]
    with LoadProbe(reads, clients=2) as probe, Writers(sandbox.app_url(APP, "/api/tasks")) as writers:
        time.sleep(1)
        out = sandbox.fab_in(copy, "deploy", env_file=app, check=False)
        time.sleep(1)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "back up database before migrating" in out.stdout
    assert "Postgres rolled the migration back" in out.stderr and "no write was lost" in out.stderr
    assert f"release {serving} keeps serving" in out.stderr
    assert len(writers.acknowledged) > 20
    stored = {int(i) for i in psql(sandbox, "SELECT id FROM tasks").split()}
    missing = sorted(set(writers.acknowledged) - stored)
    assert missing == [], f"{len(missing)} acknowledged writes were lost"
    assert probe.failures() == [] and len(probe.results) > 20
    assert psql(sandbox, "SELECT version_num FROM alembic_version") == head_revision()
    assert current(sandbox) == serving and version(sandbox) == serving


def test_partly_applied_migration_is_not_restored_behind_users_backs(sandbox, app, tmp_path):
    serving = current(sandbox)
    copy = migration_copy(tmp_path, '    with op.get_context().autocommit_block():\n'
                                    '        op.add_column("tasks", sa.Column("half_done", sa.Integer))\n'
                                    '    raise RuntimeError("this migration is not transactional")')
    before = int(psql(sandbox, "SELECT count(*) FROM tasks"))
    out = sandbox.fab_in(copy, "deploy", env_file=app, check=False)
    assert out.returncode == 1
    assert "changed the database before it failed" in out.stderr and "NOT restored automatically" in out.stderr
    assert "backup.restore --name" in out.stderr and "-predeploy" in out.stderr
    assert int(psql(sandbox, "SELECT count(*) FROM tasks")) == before
    assert current(sandbox) == serving and version(sandbox) == serving
    psql(sandbox, "ALTER TABLE tasks DROP COLUMN half_done")  # the operator's repair, so later tests start clean


def test_failed_deploy_keeps_the_live_settings_and_the_old_release_runs_with_its_own(sandbox, app, tmp_path):
    serving = current(sandbox)
    live_env = sandbox.home / APP / "env" / f"{serving}.env"
    live_text = live_env.read_text()
    broken = copy_project(tmp_path / "broken")
    main = broken / "backend" / "app" / "main.py"
    main.write_text(main.read_text().replace('healthy = all(c["ok"] for c in checks.values())', "healthy = False"))
    changed = sandbox.app_env(APP, "changed-model", **{**HOSTILE, "OPENAI_DEFAULT_MODEL": "unproven-model"})
    out = sandbox.fab_in(broken, "deploy", env_file=changed, check=False)
    assert out.returncode == 1 and "put back automatically" in out.stderr
    assert current(sandbox) == serving
    assert live_env.read_text() == live_text and (live_env.stat().st_mode & 0o777) == 0o600
    assert container_env(sandbox, "api", "OPENAI_DEFAULT_MODEL") == HOSTILE_MODEL
    assert container_env(sandbox, "worker", "OPENAI_DEFAULT_MODEL") == HOSTILE_MODEL


def test_rollback_returns_to_what_was_live_before(sandbox, app):
    a = current(sandbox)
    c_env = sandbox.app_env(APP, "c", **{**HOSTILE, "OPENAI_DEFAULT_MODEL": "model-c"})
    sandbox.fab("deploy", "--skip-build", env_file=c_env)
    c = current(sandbox)
    sandbox.fab("rollback", env_file=c_env)
    assert current(sandbox) == a
    assert container_env(sandbox, "api", "OPENAI_DEFAULT_MODEL") == HOSTILE_MODEL  # A's own settings
    d_env = sandbox.app_env(APP, "d", **{**HOSTILE, "OPENAI_DEFAULT_MODEL": "model-d"})
    time.sleep(1)  # release ids have one-second resolution
    sandbox.fab("deploy", "--skip-build", env_file=d_env)
    d = current(sandbox)
    assert d not in (a, c)
    out = sandbox.fab("rollback", env_file=d_env)
    assert current(sandbox) == a, f"rollback from {d} went to {current(sandbox)}, not to {a} (live before {d})\n{out.stdout}"


def test_failed_releases_never_push_out_the_last_good_one(sandbox, app, tmp_path):
    good = current(sandbox)
    copy = migration_copy(tmp_path, '    raise RuntimeError("failing on purpose")')
    for _ in range(3):
        time.sleep(1)
        assert sandbox.fab_in(copy, "deploy", env_file=app, check=False).returncode == 1
    e_env = sandbox.app_env(APP, "e", **{**HOSTILE, "OPENAI_DEFAULT_MODEL": "model-e"})
    sandbox.fab("deploy", "--skip-build", env_file=e_env)
    kept = sorted(p.name for p in (sandbox.home / APP / "releases").iterdir())
    assert good in kept, f"the last good release {good} was pruned: {kept}"
    assert not any((sandbox.home / APP / "env" / f"{name}.env").exists()
                   for name in set(os.listdir(sandbox.home / APP / "env")) - {f"{k}.env" for k in kept})
    sandbox.fab("rollback", env_file=e_env)
    assert current(sandbox) == good


def postmaster_pid(pg):
    """The host PID of the postmaster in container `pg`: the child of the container's init."""
    init = subprocess.run(["docker", "inspect", "-f", "{{.State.Pid}}", pg], check=True,
                          capture_output=True, text=True).stdout.strip()
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            head, tail = stat.read_text().rsplit(")", 1)
        except (OSError, ValueError):
            continue
        if tail.split()[1] == init and head.split("(", 1)[1] == "postgres":
            children.append(stat.parent.name)
    assert len(children) == 1, f"one postmaster under init {init} expected, found {children}"
    return int(children[0])


def frozen_postgres(sandbox):
    """Postgres's container keeps running but its server stops answering: SIGSTOP to the
    postmaster, found from outside as the child of the container's init (postgres runs under
    Docker's init, so the container's PID 1 is not the server)."""
    pg = container(sandbox, "postgres")
    postmaster = postmaster_pid(pg)

    class Frozen:
        def __enter__(self):
            os.kill(postmaster, signal.SIGSTOP)

        def __exit__(self, *exc):
            os.kill(postmaster, signal.SIGCONT)
            wait_for(lambda: psql(sandbox, "SELECT 1") == "1", 30, what="postgres answering again")

    return Frozen()


def test_unreadable_database_revision_fails_closed(sandbox, app, tmp_path):
    serving = current(sandbox)
    copy = migration_copy(tmp_path, '    op.add_column("tasks", sa.Column("never", sa.Integer))')
    with frozen_postgres(sandbox):
        out = sandbox.fab_in(copy, "deploy", env_file=app, check=False)
    assert out.returncode == 1 and "migration revision could not be read" in out.stderr, out.stdout + out.stderr
    assert "Nothing was migrated" in out.stderr and "-> migrate database" not in out.stdout
    assert current(sandbox) == serving
    assert psql(sandbox, "SELECT version_num FROM alembic_version") == head_revision()
    assert "never" not in psql(sandbox, "SELECT string_agg(column_name, ',') FROM information_schema.columns "
                                        "WHERE table_name = 'tasks'")


def test_rollback_refuses_when_the_schema_cannot_be_read(sandbox, app):
    rows = [line.split()[1] if line.startswith("*") else line.split()[0]
            for line in sandbox.fab("releases", env_file=app).stdout.splitlines()[1:]]
    target = [r for r in rows if r != current(sandbox)][0]
    with frozen_postgres(sandbox):
        out = sandbox.fab("rollback", "--to", target, env_file=app, check=False)
    assert out.returncode == 5 and "could not be read" in out.stderr and "Nothing was changed" in out.stderr


def test_missing_release_metadata_gives_a_message_not_a_traceback(sandbox, app):
    rows = [line.split()[1] if line.startswith("*") else line.split()[0]
            for line in sandbox.fab("releases", env_file=app).stdout.splitlines()[1:]]
    live = current(sandbox)
    target = [r for r in rows if r != live][0]
    meta = sandbox.home / APP / "releases" / target / "RELEASE.json"
    saved = meta.read_bytes()
    meta.unlink()
    try:
        out = sandbox.fab("rollback", "--to", target, env_file=app, check=False)
    finally:
        meta.write_bytes(saved)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert f"release {target}" in out.stderr and "has no RELEASE.json" in out.stderr
    assert current(sandbox) == live


def test_two_backups_at_once_one_is_refused_and_neither_breaks_the_other(sandbox, app):
    first = subprocess.Popen(sandbox.fab_argv("backup"), env={**sandbox.env, "TASKTRACKER_ENV_FILE": str(app)},
                             cwd=sandbox.root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: (sandbox.home / APP / ".deploy.lock").exists(), 30, interval=0.05, what="the first backup's lock")
    second = sandbox.fab("backup", env_file=app, check=False)
    out, err = first.communicate(timeout=300)
    assert second.returncode == 4 and "is busy: backup by" in second.stderr
    assert first.returncode == 0, out + err
    name = [line.split()[1] for line in out.splitlines() if line.startswith("Backup ")][0]
    manifest = json.loads((sandbox.home / APP / "backups" / name / "manifest.json").read_text())
    assert manifest["verification"]["result"] == "ok"
    queued = sandbox.fab("backup", "--wait", env_file=app)
    assert "complete and verified" in queued.stdout


def test_a_killed_backup_never_leaves_nats_paused(sandbox, app):
    nats = container(sandbox, "nats")
    first = subprocess.Popen(sandbox.fab_argv("backup"), env={**sandbox.env, "TASKTRACKER_ENV_FILE": str(app)},
                             cwd=sandbox.root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def paused():
        return subprocess.run(["docker", "inspect", "-f", "{{.State.Paused}}", nats], capture_output=True,
                              text=True).stdout.strip() == "true"

    try:
        wait_for(paused, 60, interval=0.02, what="nats paused by the backup")
        subprocess.run(["pkill", "-KILL", "-u", sandbox.user, "-f", "bin/tasktracker-backup"], check=True)
        wait_for(lambda: not paused(), 10, interval=0.1, what="nats unpaused after the backup was killed")
    finally:
        subprocess.run(["docker", "unpause", nats], capture_output=True)
        _, err = first.communicate(timeout=120)
    assert first.returncode == 1 and "Backup on sandbox FAILED" in err
    assert not (sandbox.home / APP / ".deploy.lock").exists()


def test_failed_restore_never_leaves_nats_stopped(sandbox, app):
    sandbox.fab("backup", "--wait", env_file=app)
    backups = sandbox.home / APP / "backups"
    name = sorted(p.name for p in backups.iterdir() if p.name[:1].isdigit() and not p.name.endswith("-predeploy"))[-1]
    broken = backups / name
    (broken / "nats.tar.gz").write_bytes(b"not a tar archive")
    sums = broken / "SHA256SUMS"
    digest = subprocess.run(["sha256sum", "nats.tar.gz"], cwd=broken, capture_output=True, text=True, check=True).stdout
    sums.write_text("".join(digest if line.endswith(" nats.tar.gz") else line + "\n" for line in sums.read_text().splitlines()))
    out = sandbox.fab("backup.restore", "--name", name, "--yes", env_file=app, check=False)
    assert out.returncode == 1, out.stdout + out.stderr
    nats = container(sandbox, "nats")  # raises IndexError when no nats container runs
    assert subprocess.run(["docker", "inspect", "-f", "{{.State.Running}}", nats], capture_output=True, text=True).stdout.strip() == "true"
    wait_for(lambda: json.loads(urllib.request.urlopen(sandbox.app_url(APP, "/api/health"), timeout=5).read())["status"] == "ok",
             60, what="api healthy again after the failed restore")


def test_pull_writes_only_the_files_a_set_holds(sandbox, app, tmp_path):
    backups = sandbox.home / APP / "backups"
    name = sorted(p.name for p in backups.iterdir() if p.name[:1].isdigit())[-1]
    sums = backups / name / "SHA256SUMS"
    saved = sums.read_text()
    sums.write_text(saved + "0" * 64 + "  ../../escaped.txt\n")
    try:
        out = sandbox.fab("backup.pull", "--name", name, "--to", str(tmp_path / "pulled"), env_file=app, check=False)
    finally:
        sums.write_text(saved)
    assert out.returncode == 5 and "not a file a backup set holds" in out.stderr
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path / "pulled").exists()
    bad = sandbox.fab("backup.pull", "--name", "../../etc", "--to", str(tmp_path / "x"), env_file=app, check=False)
    assert bad.returncode == 2 and "is not a verified backup set" in bad.stderr


def test_lock_covers_migrate_compose_ssl_and_restore(sandbox, app):
    """Every task that changes the host refuses while another operation holds the lock (a live
    holder: its keeper process runs)."""
    lock = sandbox.home / APP / ".deploy.lock"
    import pwd

    account = pwd.getpwnam(sandbox.user)  # the keeper runs as the deploy user (kill -0 must reach it)
    holder = subprocess.Popen(["setpriv", f"--reuid={account.pw_uid}", f"--regid={account.pw_gid}", "--clear-groups",
                               "sleep", "300"])
    try:
        lock.mkdir()
        (lock / "info.json").write_text(json.dumps({"user": "someone", "machine": "laptop", "action": "deploy",
                                                    "since": "2026-11-25T00:00:00+00:00", "token": "theirs"}) + "\n")
        (lock / "keeper.pid").write_text(f"{holder.pid}\n")
        subprocess.run(["chown", "-R", f"{sandbox.user}:{sandbox.user}", str(lock)], check=True)
        for args in (["migrate"], ["compose.restart", "--service", "worker"], ["compose.up"], ["compose.down"],
                     ["ssl.renew"], ["backup"], ["backup.restore", "--latest", "--yes"]):
            out = sandbox.fab(*args, env_file=app, check=False)
            assert out.returncode == 4 and "is busy: deploy by someone@laptop" in out.stderr, f"{args}: {out.returncode} {out.stderr}"
        assert lock.exists() and json.loads((lock / "info.json").read_text())["token"] == "theirs"  # nobody removed it
    finally:
        holder.kill()
        holder.wait()
        subprocess.run(["rm", "-rf", str(lock)], check=True)
    assert sandbox.fab("compose.ps", env_file=app).returncode == 0


def test_sandbox_up_refuses_a_user_it_did_not_create(sandbox, tmp_path):
    user = f"tt-foreign-{os.getpid() % 100000}"
    subprocess.run(["useradd", "--create-home", user], check=True)
    try:
        env = {**sandbox.env, "TASKTRACKER_SANDBOX_DIR": str(tmp_path / "other-sandbox")}
        out = subprocess.run([*sandbox.invoke_argv("sandbox.up"), "--user", user, "--port", "2299"], env=env,
                             cwd=sandbox.root, capture_output=True, text=True, timeout=120)
        assert out.returncode == 2 and "was not created by `sandbox.up`" in out.stderr
        assert not Path(f"/home/{user}/.ssh").exists()
    finally:
        subprocess.run(["userdel", "--remove", user], capture_output=True)


def test_operator_input_is_validated_before_connecting(sandbox, app):
    out = sandbox.fab("ssl.issue", "--domain", "bad domain;rm -rf", "--email", "ops@example.com", env_file=app, check=False)
    assert out.returncode == 2 and "is not a domain name" in out.stderr
    bad_port = sandbox.app_env(APP, "bad-port", HTTPS_PORT=70000)
    out = sandbox.fab("deploy", "--skip-build", env_file=bad_port, check=False)
    assert out.returncode == 2 and "HTTPS_PORT must be a TCP port" in out.stderr
    keep_one = sandbox.app_env(APP, "keep-one", KEEP_RELEASES=1)
    out = sandbox.fab("deploy", "--skip-build", env_file=keep_one, check=False)
    assert out.returncode == 2 and "KEEP_RELEASES must be at least 2" in out.stderr


def test_nothing_readable_by_others_and_no_http_error_left(sandbox, app):
    env_dir = sandbox.home / APP / "env"
    assert (env_dir.stat().st_mode & 0o777) == 0o700
    assert all((p.stat().st_mode & 0o077) == 0 for p in env_dir.iterdir())
    try:
        urllib.request.urlopen(sandbox.app_url(APP, "/api/health"), timeout=10)
    except urllib.error.HTTPError as err:  # pragma: no cover - a failure message
        raise AssertionError(f"the app is not healthy after the failure paths: {err}")
