"""Backups that are proven restorable (issue 5), on the sandbox."""

import asyncio
import json
import os
import shlex
import stat
import subprocess
import urllib.request

import pytest

from tests.support import copy_project, head_revision, service_address

pytestmark = pytest.mark.e2e
APP = "bk"


def http_json(url, data=None):
    req = urllib.request.Request(url, data=json.dumps(data).encode() if data is not None else None,
                                 headers={"Content-Type": "application/json"} if data is not None else {})
    with urllib.request.urlopen(req, timeout=10) as res:
        return res.status, json.loads(res.read())


def psql(sandbox, sql):
    project = f"{sandbox.project}-{APP}"
    return subprocess.run(["docker", "compose", "-p", project, "exec", "-T", "postgres", "psql", "-U", "postgres", "-d",
                           "tasktracker", "-Atc", sql], capture_output=True, text=True, check=True).stdout.strip()


def sets(sandbox):
    root = sandbox.home / APP / "backups"
    return sorted(p.name for p in root.iterdir() if p.is_dir() and p.name[:1].isdigit()) if root.exists() else []


@pytest.fixture(scope="module")
def app(sandbox, deployed):
    env = sandbox.app_env(APP)
    sandbox.fab("deploy", "--skip-build", env_file=env)
    return env


def nats_login(env) -> dict:
    values = dict(line.split("=", 1) for line in env.read_text().splitlines() if "=" in line and not line.startswith("#"))
    return {"user": values.get("NATS_USER", "tasktracker"), "password": values["NATS_PASSWORD"]}


def nats_address(sandbox, env):
    return service_address(f"{sandbox.project}-{APP}", "nats")  # no port is published in production


async def jetstream(address, action, login):
    import nats

    nc = await nats.connect(f"nats://{address}:4222", allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=5,
                            **login)
    try:
        js = nc.jetstream()
        if action == "publish":
            await js.add_stream(name="BACKUPCHECK", subjects=["backupcheck.>"])
            await js.publish("backupcheck.waiting", b"message waiting in the stream")
        elif action == "delete":
            await js.delete_stream("BACKUPCHECK")
        else:
            msg = await js.get_msg("BACKUPCHECK", 1)
            return msg.data
    finally:
        await nc.close()


def test_backup_delete_restore_brings_tasks_and_stream_messages_back(sandbox, app):
    ids = [http_json(sandbox.app_url(APP, "/api/tasks"), {"title": f"backed up task {i}"})[1]["id"] for i in range(3)]
    asyncio.run(jetstream(nats_address(sandbox, app), "publish", nats_login(app)))
    out = sandbox.fab("backup", env_file=app)
    assert "is complete and verified" in out.stdout
    name = sets(sandbox)[-1]
    folder = sandbox.home / APP / "backups" / name
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["verification"]["result"] == "ok" and manifest["verification"]["rows"] >= 3
    assert {"database.dump", "nats.tar.gz", "app-files.tar.gz", "rowcounts.txt", "SHA256SUMS", "manifest.json"} <= set(os.listdir(folder))
    for f in folder.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=folder, check=True)
    listing = sandbox.fab("backup.list", env_file=app).stdout
    assert name in listing and "verified" in listing

    psql(sandbox, "DELETE FROM tasks")
    asyncio.run(jetstream(nats_address(sandbox, app), "delete", nats_login(app)))
    assert http_json(sandbox.app_url(APP, "/api/tasks"))[1] == []

    out = sandbox.fab("backup.restore", "--latest", "--yes", env_file=app)
    assert "health checks pass" in out.stdout
    restored = {t["id"] for t in http_json(sandbox.app_url(APP, "/api/tasks"))[1]}
    assert set(ids) <= restored
    assert asyncio.run(jetstream(nats_address(sandbox, app), "get", nats_login(app))) == b"message waiting in the stream"
    status, health = http_json(sandbox.app_url(APP, "/api/health"))
    assert status == 200 and health["checks"]["nats"]["ok"]


def test_pull_copies_a_set_and_checks_it(sandbox, app, tmp_path):
    sandbox.fab("backup", env_file=app)
    out = sandbox.fab("backup.pull", "--to", str(tmp_path), env_file=app)
    name = sets(sandbox)[-1]
    assert f"Backup {name} copied" in out.stdout and "sha256 ok" in out.stdout
    assert (tmp_path / name / "database.dump").read_bytes() == (sandbox.home / APP / "backups" / name / "database.dump").read_bytes()


def test_retention_keeps_exactly_the_configured_number(sandbox, app):
    env = sandbox.app_env(APP, "keep2", BACKUP_KEEP=2)
    for _ in range(3):
        sandbox.fab("backup", env_file=env)
    assert len(sets(sandbox)) == 2


def test_backup_on_a_full_filesystem_fails_cleanly_and_keeps_earlier_sets(sandbox, app):
    root = sandbox.home / APP / "backups"
    saved = root.with_name("backups.saved")
    root.rename(saved)
    root.mkdir()
    uid, gid = saved.stat().st_uid, saved.stat().st_gid
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size=1m,uid={uid},gid={gid},mode=0700", "tmpfs", str(root)], check=True)
    try:
        sandbox.fab("backup", env_file=app)
        earlier = sets(sandbox)
        assert len(earlier) == 1
        before = {p: p.stat().st_size for p in (root / earlier[0]).iterdir()}
        free = os.statvfs(root)
        filler = root / "filler"
        subprocess.run(["fallocate", "-l", str(max(free.f_bavail * free.f_frsize - 4096, 0)), str(filler)], check=True)
        out = sandbox.fab("backup", env_file=app, check=False)
        assert out.returncode != 0
        assert "FAILED" in out.stderr and "No partial set was left" in out.stderr
        assert sets(sandbox) == earlier
        assert {p: p.stat().st_size for p in (root / earlier[0]).iterdir()} == before
        assert not [p for p in os.listdir(root) if p.endswith(".partial")]
    finally:
        subprocess.run(["umount", str(root)], check=False)
        root.rmdir()
        saved.rename(root)


def test_failed_migration_during_deploy_keeps_data_and_the_old_release(sandbox, app, tmp_path):
    serving = os.readlink(sandbox.home / APP / "current").split("/")[-1]
    rows = psql(sandbox, "SELECT count(*) FROM tasks")
    copy = copy_project(tmp_path / "project")
    head = head_revision()
    (copy / "backend" / "alembic" / "versions" / "9999_broken.py").write_text(
        '"""a migration that fails halfway"""\nimport sqlalchemy as sa\nfrom alembic import op\n\n'
        f'revision = "9999"\ndown_revision = "{head}"\nbranch_labels = None\ndepends_on = None\n\n\n'
        "def upgrade() -> None:\n    op.add_column(\"tasks\", sa.Column(\"broken\", sa.Integer))\n"
        "    op.execute(\"UPDATE tasks SET broken = 1 / 0\")\n\n\ndef downgrade() -> None:\n    pass\n")
    out = sandbox.fab_in(copy, "deploy", env_file=sandbox.app_env(APP), check=False)
    assert out.returncode != 0
    assert "back up database before migrating" in out.stdout
    assert "Postgres rolled the migration back" in out.stderr and f"release {serving} keeps serving" in out.stderr
    assert any(name.endswith("-predeploy") for name in sets(sandbox))
    assert psql(sandbox, "SELECT count(*) FROM tasks") == rows
    assert psql(sandbox, "SELECT version_num FROM alembic_version") == head
    assert http_json(sandbox.app_url(APP, "/api/version"))[1]["release"] == serving
    assert http_json(sandbox.app_url(APP, "/api/health"))[0] == 200


def test_scheduled_backup_is_installed_and_runs_when_triggered(sandbox, app):
    out = sandbox.fab("backup.schedule", "--at", "02:00", env_file=app)
    assert "Daily backup installed" in out.stdout
    crontab = subprocess.run(["crontab", "-l", "-u", sandbox.user], capture_output=True, text=True, check=True).stdout
    line = [entry for entry in crontab.splitlines() if "tasktracker-backup" in entry and f"{sandbox.project}-{APP}" in entry][0]
    assert line.startswith("0 2 * * * ")
    before = sets(sandbox)
    command = line[len("0 2 * * * "):].split(" # ")[0]
    subprocess.run(["su", "-s", "/bin/sh", sandbox.user, "-c", f"cd && {command}"], check=True, timeout=300)
    assert len(sets(sandbox)) == len(before) + 1 or sets(sandbox)[-1] not in before
    assert "BACKUP OK" in (sandbox.home / APP / "backups" / "cron.log").read_text()
    assert "latest runs:" in sandbox.fab("backup.list", env_file=app).stdout
    assert shlex.split(command)[0].endswith("/bin/tasktracker-backup")
