"""Before a deploy changes anything, end to end on the sandbox: `fab -H sandbox deploy --dry-run`
prints the plan and leaves the host exactly as it was (the app directory's files with their
modes, mtimes and hashes, the project's containers, images, volumes and networks, the audit log,
the crontab); a stack whose memory reservations do not fit the host is refused, changing nothing."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from tasks.commands import schema as schema_commands
from tests.support import ROOT, copy_project

pytestmark = pytest.mark.e2e

FRESH = "dryrun"  # an app of its own on the sandbox, never deployed: a host with no release
CHECKOUT = schema_commands.pending_revisions(schema_commands.local_revisions(ROOT / "backend" / "alembic" / "versions"), "")
HEAD = CHECKOUT[-1]  # the checkout's migrations, oldest first: a deployed database is at the last
MIGRATION = ('"""add a due date"""\nimport sqlalchemy as sa\nfrom alembic import op\n\n'
             f'revision = "dryrun01"\ndown_revision = "{HEAD}"\nbranch_labels = None\ndepends_on = None\n\n\n'
             'def upgrade() -> None:\n    op.add_column("tasks", sa.Column("due", sa.Date))\n\n\n'
             'def downgrade() -> None:\n    op.drop_column("tasks", "due")\n')


def docker(*argv: str) -> list[str]:
    return sorted(subprocess.run(["docker", *argv], capture_output=True, text=True, check=True).stdout.splitlines())


def snapshot(sandbox, app_dir: str, project: str) -> dict:
    """Everything a deploy could change on the host. The sampler's history (shared/metrics, written
    by cron every minute, not by a deploy) is left out."""
    app = sandbox.host_path(app_dir)
    tree = {}
    for dirpath, dirnames, filenames in os.walk(app):
        dirnames[:] = [d for d in dirnames if Path(dirpath, d).relative_to(app).as_posix() != "shared/metrics"]
        for name in [".", *dirnames, *filenames] if Path(dirpath) == app else [*dirnames, *filenames]:
            path = Path(dirpath, name)
            info = path.lstat()
            entry = (stat.S_IFMT(info.st_mode), stat.S_IMODE(info.st_mode), info.st_uid, info.st_mtime_ns)
            if stat.S_ISLNK(info.st_mode):
                entry += (os.readlink(path),)
            elif stat.S_ISREG(info.st_mode):
                entry += (info.st_size, hashlib.sha256(path.read_bytes()).hexdigest())
            tree[path.relative_to(app).as_posix()] = entry
    label = f"label=com.docker.compose.project={project}"
    return {
        "app dir exists": app.exists(),
        "tree": tree,
        "containers": docker("ps", "-a", "--no-trunc", "--filter", label, "--format", "{{.ID}} {{.Names}} {{.Image}} {{.State}} {{.CreatedAt}}"),
        "backend images": docker("images", "--no-trunc", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}", f"{project}-backend"),
        "volumes": docker("volume", "ls", "-q", "--filter", label),
        "networks": docker("network", "ls", "-q", "--filter", label),
        "audit log": (app / "audit.log").read_text() if (app / "audit.log").exists() else None,
        "crontab": subprocess.run(["crontab", "-l", "-u", sandbox.user], capture_output=True, text=True).stdout,
    }


def section(out: str, title: str) -> list[str]:
    """The indented lines under a heading of the plan (`images:`, `migrations:`)."""
    lines = out.splitlines()
    taken = []
    for line in lines[lines.index(title) + 1:]:
        if not line.startswith("   "):
            break
        taken.append(line.strip())
    return taken


def plan_copy(tmp_path: Path) -> Path:
    """A working copy with a new migration (so a changed backend and release) and the built dist."""
    copy = copy_project(tmp_path / "project")
    (copy / "backend" / "alembic" / "versions" / "dryrun01_add_due.py").write_text(MIGRATION)
    shutil.copytree(ROOT / "frontend" / "dist", copy / "frontend" / "dist", dirs_exist_ok=True)
    return copy


def assert_no_secret(sandbox, out) -> None:
    values = dict(line.split("=", 1) for line in (sandbox.dir / ".env").read_text().splitlines() if "=" in line)
    for key in ("POSTGRES_PASSWORD", "NATS_PASSWORD", "TELEGRAM_BOT_TOKEN", "OPENAI_API_KEY"):
        assert values[key] not in out.stdout + out.stderr


def test_dry_run_on_a_host_without_a_release_changes_nothing(sandbox):
    env = sandbox.app_env(FRESH)
    project = f"{sandbox.project}-{FRESH}"
    before = snapshot(sandbox, FRESH, project)
    out = sandbox.fab("deploy", "--dry-run", env_file=env)
    print(out.stdout)
    assert snapshot(sandbox, FRESH, project) == before
    assert not before["app dir exists"]  # rsync --dry-run did not create the release directory either
    text = out.stdout
    assert re.search(r"^memory budget: ok \(reservations 1\.6 GiB, limits 6\.6 GiB with a second api during the switch; host ",
                     text, re.M)
    assert "  api (new, during the switch)      256 MiB    1.0 GiB" in text  # the table, always shown by a dry run
    release = re.search(rf"^release: (\d{{8}}T\d{{6}}Z-\w+) -> sandbox:{FRESH}/releases/\1 \(Compose v2\), the host's first release$",
                        text, re.M)
    assert release, text
    assert "settings: new (no live release)" in text
    files = re.search(r"^files: (\d+) would be sent, (\d+) bytes$", text, re.M)
    assert files and int(files.group(1)) > 20 and int(files.group(2)) > 10_000
    for sent in ("   compose.yml", "   backend/alembic/versions/0001_create_tasks.py", "   frontend/dist/index.html"):
        assert sent in text.splitlines()
    assert section(text, "migrations:") == [f"no live release, so a fresh database: all {len(CHECKOUT)} would run "
                                            f"({', '.join(CHECKOUT)})"]
    assert "   on the host already: " in text
    rid = release.group(1)
    for command in (f"[host] mkdir -p {FRESH}/releases/{rid} ", f"[sftp] {FRESH}/.deploy.lock/inbox/release.tar <- the release's settings",
                    "[here] cd ", "rsync -a --compress --checksum --whole-file --itemize-changes",
                    "run --rm --no-deps -T api alembic upgrade head",
                    "  replace api, restart worker, switch current, reload nginx, health checks, record"):
        assert command in text, command
    assert "back up database before migrating" not in text  # a fresh database has nothing to lose
    assert re.search(r"^  read-only remote commands: \d+ \(\+1 rsync --dry-run\)$", text, re.M)
    assert "build frontend" not in text and "Release " not in text
    assert_no_secret(sandbox, out)


def test_dry_run_with_a_live_release_lists_the_changed_files_and_pending_migrations(sandbox, deployed, tmp_path):
    copy = plan_copy(tmp_path)
    sandbox.fab("deploy", "--skip-build")  # the live release has this checkout's settings, whatever ran before
    live = os.readlink(sandbox.host_path("tasktracker/current")).split("/")[-1]
    before = snapshot(sandbox, "tasktracker", sandbox.project)
    out = sandbox.fab_in(copy, "deploy", "--dry-run", env_file=sandbox.dir / ".env")
    print(out.stdout)
    assert snapshot(sandbox, "tasktracker", sandbox.project) == before
    text = out.stdout
    assert re.search(rf"^release: \S+ -> sandbox:tasktracker/releases/\S+ \(Compose v2\), replacing {live}$", text, re.M), text
    assert f"settings: unchanged since {live} (values not shown)" in text
    files = re.search(rf"^files: (\d+) would be sent, (\d+) bytes \(the rest hard-linked from {live}\)$", text, re.M)
    assert files and int(files.group(2)) > 0
    assert "   backend/alembic/versions/dryrun01_add_due.py" in text.splitlines()
    assert section(text, "migrations:") == [f"1 pending (dryrun01; the database is at {HEAD}): a database-only backup is "
                                            f"taken first"]
    [backend] = [line for line in section(text, "images:") if line.startswith("backend ")]
    assert "built here (BUILD_BACKEND=auto)" in backend  # this machine has Docker: the image is built here, not now
    for command in ("  back up database before migrating", "--db-only", "  migrate database", "  replace api, restart worker,",
                    "--scale \"api=$((count + 1))\" api"):
        assert command in text, command
    assert_no_secret(sandbox, out)


def test_dry_run_when_nothing_changed(sandbox, deployed):
    sandbox.fab("deploy", "--skip-build")  # the live release is this checkout's, whatever ran before
    live = os.readlink(sandbox.host_path("tasktracker/current")).split("/")[-1]
    before = snapshot(sandbox, "tasktracker", sandbox.project)
    out = sandbox.fab("deploy", "--dry-run", "--skip-build")
    assert snapshot(sandbox, "tasktracker", sandbox.project) == before
    assert (f"Nothing changed since release {live} (same files, same settings): the deploy would only run the health checks "
            f"and change nothing.") in out.stdout


def test_a_stack_that_cannot_fit_is_refused_and_nothing_changes(sandbox, tmp_path):
    """A copy whose Postgres reserves twice the host's memory: refused (exit 5) right after the
    preflight, before the build, the lock and the audit line, with the numbers."""
    mem_kb = int(re.search(r"^MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.M).group(1))
    huge = f"{mem_kb * 2 // 1024 // 1024 + 1}G"
    copy = copy_project(tmp_path / "project")
    compose = copy / "compose.yml"
    compose.write_text(compose.read_text().replace("reservations: {memory: 512M, cpus: \"0.5\"}",
                                                   f"reservations: {{memory: {huge}, cpus: \"0.5\"}}", 1))
    env = sandbox.app_env(FRESH)
    project = f"{sandbox.project}-{FRESH}"
    before = snapshot(sandbox, FRESH, project)
    for args in (("deploy",), ("deploy", "--dry-run")):
        out = sandbox.fab_in(copy, *args, env_file=env, check=False)
        assert out.returncode == 5, out.stdout + out.stderr
        assert snapshot(sandbox, FRESH, project) == before
        assert "-> connect and check host" in out.stdout and "memory budget: refused" in out.stdout
        assert re.search(rf"^  postgres +{int(huge[:-1])}\.0 GiB +2\.0 GiB$", out.stdout, re.M), out.stdout
        assert "build frontend" not in out.stdout and "Dry run" not in out.stdout
        assert "The stack does not fit in the memory of sandbox: the services reserve " in out.stderr
        assert out.stderr.strip().endswith("Nothing was changed on the server.")
