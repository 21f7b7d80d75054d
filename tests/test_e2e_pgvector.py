"""PostgreSQL with pgvector (issue 14), on the sandbox: the deployed stack runs the extension for
real (embeddings, an HNSW index, the similarity endpoint; backups and restores keep them), and a
host whose data is PostgreSQL 15 is refused by the deploy, changing nothing, until `db.upgrade`
moves it to 17, failing closed when a step fails."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.support import ROOT, copy_project

pytestmark = pytest.mark.e2e
APP = "pgup"  # the upgrade's own app on the sandbox (own APP_DIR, Compose project, ports)
OLD_IMAGE = "postgres:15"
NEW_IMAGE = "tasktracker-postgres:pg17"  # compose.yml's (built from postgres/: pgvector plus pgBackRest)
IMAGE_LINE = "image: ${POSTGRES_IMAGE:-tasktracker-postgres:pg17}\n    build: ./postgres"


def http_json(url: str, data=None):
    req = urllib.request.Request(url, data=json.dumps(data).encode() if data is not None else None,
                                 headers={"Content-Type": "application/json"} if data is not None else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as res:
            return res.status, json.loads(res.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


def docker(*argv: str, check=True) -> str:
    out = subprocess.run(["docker", *argv], capture_output=True, text=True)
    if check and out.returncode:
        raise AssertionError(f"docker {' '.join(argv)}: {out.stderr}")
    return out.stdout.strip()


def postgres_container(project: str) -> str:
    return docker("ps", "-q", "--filter", f"label=com.docker.compose.project={project}",
                  "--filter", "label=com.docker.compose.service=postgres", "--filter", "label=com.docker.compose.oneoff=False")


def psql(project: str, sql: str) -> str:
    return docker("exec", postgres_container(project), "psql", "-X", "-U", "postgres", "-d", "tasktracker", "-Atc", sql)


def data_major(volume: str, image: str = OLD_IMAGE) -> str:
    """PG_VERSION of a volume, read in a throwaway container (read-only, no network)."""
    return docker("run", "--rm", "--network", "none", "--entrypoint", "cat", "-v", f"{volume}:/d:ro", image, "/d/PG_VERSION")


def listing(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir()) if path.exists() else []


# --- the deployed stack runs pgvector ---------------------------------------------------------------


def test_the_deployed_stack_searches_by_similarity_through_the_hnsw_index(sandbox, deployed):
    project = sandbox.project
    assert psql(project, "SHOW server_version_num").startswith("17")
    assert psql(project, "SELECT extname FROM pg_extension WHERE extname = 'vector'") == "vector"
    tag = secrets.token_hex(3)  # these rows among whatever other tests wrote
    titles = [f"Rotate the database password {tag}", f"Renew the TLS certificate {tag}", f"Water the office plants {tag}"]
    ids = [http_json(sandbox.url("/api/tasks"), {"title": t})[1]["id"] for t in titles]
    status, found = http_json(sandbox.url(f"/api/tasks/similar?q=renew+TLS+certificates+{tag}&limit=3"))
    assert status == 200 and found[0]["id"] == ids[1], found
    assert [t["distance"] for t in found] == sorted(t["distance"] for t in found)
    plan = psql(project, "SET enable_seqscan = off; EXPLAIN SELECT id FROM tasks ORDER BY embedding <=> "
                         f"(SELECT embedding FROM tasks WHERE id = {ids[1]}) LIMIT 3")
    assert "Index Scan using tasks_embedding_hnsw on tasks" in plan, plan

    # A verified backup holds the embeddings and the index; a restore brings them back.
    where = f"id IN ({', '.join(map(str, ids))})"
    before = psql(project, f"SELECT id, embedding FROM tasks WHERE {where} ORDER BY id")
    assert before.count("[") == 3
    out = sandbox.fab("backup")
    assert "is complete and verified" in out.stdout
    psql(project, f"DELETE FROM tasks WHERE {where}")
    assert ids[1] not in {t["id"] for t in http_json(sandbox.url(f"/api/tasks/similar?q=renew+TLS+certificates+{tag}"))[1]}
    out = sandbox.fab("backup.restore", "--latest", "--yes")
    assert "health checks pass" in out.stdout
    assert psql(project, f"SELECT id, embedding FROM tasks WHERE {where} ORDER BY id") == before
    assert http_json(sandbox.url(f"/api/tasks/similar?q=renew+TLS+certificates+{tag}&limit=1"))[1][0]["id"] == ids[1]
    assert "hnsw" in psql(project, "SELECT indexdef FROM pg_indexes WHERE indexname = 'tasks_embedding_hnsw'")


# --- PostgreSQL 15 -> 17 --------------------------------------------------------------------------


def release_before_pgvector(dest: Path) -> Path:
    """This checkout as the release before pgvector was: compose.yml on postgres:15, and the
    backend without migrations 0002 (embeddings) and 0003 (job recovery, which follows it) nor
    their columns (an old app on an old Postgres; its sweeper logs that it cannot run)."""
    copy = copy_project(dest)
    shutil.copytree(ROOT / "frontend" / "dist", copy / "frontend" / "dist", dirs_exist_ok=True)
    compose = copy / "compose.yml"
    assert IMAGE_LINE in compose.read_text()
    compose.write_text(compose.read_text().replace(IMAGE_LINE, f"image: {OLD_IMAGE}"))
    for migration in ("0002_task_embeddings.py", "0003_job_recovery.py"):
        (copy / "backend" / "alembic" / "versions" / migration).unlink()
    db = copy / "backend" / "app" / "db.py"
    text = db.read_text()
    for line in ('    Column("embedding", Vector(DIM)),\n', ', embedding=embed(f"{title} {body}")',
                 '    Column("queued_at", DateTime(timezone=True)),\n',
                 '    Column("requeues", Integer, nullable=False, server_default="0"),\n',
                 ',\n                                                 queued_at=func.now()'):
        assert line in text, line
        text = text.replace(line, "")
    db.write_text(text)
    return copy


def with_postgres_image(dest: Path, image: str) -> Path:
    """This checkout with compose.yml naming another Postgres image."""
    copy = copy_project(dest)
    shutil.copytree(ROOT / "frontend" / "dist", copy / "frontend" / "dist", dirs_exist_ok=True)
    compose = copy / "compose.yml"
    assert IMAGE_LINE in compose.read_text()
    compose.write_text(compose.read_text().replace(IMAGE_LINE, f"image: {image}"))
    return copy


@pytest.fixture(scope="module")
def upgrade_app(sandbox, deployed):
    """The app's settings; at the end its containers, volumes (the kept ones by db.upgrade's label),
    networks and images are removed by its Compose project name."""
    env = sandbox.app_env(APP)
    project = f"{sandbox.project}-{APP}"
    broken = f"{project}-broken/postgres:pg17"
    yield env, project, broken
    label = f"label=com.docker.compose.project={project}"
    containers = docker("ps", "-aq", "--filter", label, check=False).split()
    if containers:
        docker("rm", "-f", *containers, check=False)
    volumes = docker("volume", "ls", "-q", "--filter", label, check=False).split()
    volumes += docker("volume", "ls", "-q", "--filter", f"label=org.tasktracker.kept-postgres-data={project}", check=False).split()
    if volumes:
        docker("volume", "rm", "-f", *sorted(set(volumes)), check=False)
    networks = docker("network", "ls", "-q", "--filter", label, check=False).split()
    if networks:
        docker("network", "rm", *networks, check=False)
    images = docker("images", "--format", "{{.Repository}}:{{.Tag}}", f"{project}-backend", check=False).split()
    images += docker("images", "--format", "{{.Repository}}:{{.Tag}}", f"{project}-postgres", check=False).split()
    docker("rmi", "-f", broken, *images, check=False)


def test_postgres_15_data_is_refused_then_upgraded_to_17_with_every_row(sandbox, upgrade_app, tmp_path):
    env, project, broken = upgrade_app
    volume = f"{project}_postgres_data"
    app_dir = sandbox.home / APP

    # The release from before pgvector, on PostgreSQL 15, with rows.
    old = release_before_pgvector(tmp_path / "old")
    sandbox.fab_in(old, "deploy", "--skip-build", env_file=env)
    assert psql(project, "SHOW server_version_num").startswith("15")
    ids = [http_json(sandbox.app_url(APP, "/api/tasks"), {"title": f"written on PostgreSQL 15, number {i}"})[1]["id"]
           for i in range(5)]
    serving = os.readlink(app_dir / "current").split("/")[-1]
    rows = psql(project, "SELECT count(*) FROM tasks")

    # This checkout runs PostgreSQL 17: refused before anything changes, naming the way out.
    releases, pg = listing(app_dir / "releases"), postgres_container(project)
    audit = (app_dir / "audit.log").read_text()
    refused = sandbox.fab("deploy", "--skip-build", env_file=env, check=False)
    assert refused.returncode == 5, refused.stdout + refused.stderr
    message = " ".join(refused.stderr.split())
    assert f"The database on sandbox is PostgreSQL 15 (volume {volume}), but this release runs PostgreSQL 17 ({NEW_IMAGE})" in message
    assert "`fab -H sandbox db.upgrade`" in message and "Nothing was changed on the server." in message
    assert listing(app_dir / "releases") == releases and postgres_container(project) == pg
    assert (app_dir / "audit.log").read_text() == audit  # refused before the lock and the audit line
    assert http_json(sandbox.app_url(APP, "/api/version"))[1]["release"] == serving
    assert {t["id"] for t in http_json(sandbox.app_url(APP, "/api/tasks"))[1]} >= set(ids)

    # An upgrade that fails half-way (the "new" image initialises a PostgreSQL 15 cluster, after the
    # old volume was emptied) puts PostgreSQL 15 back with every row, its release.yml untouched.
    release_yml = (app_dir / "releases" / serving / "release.yml").read_text()
    docker("tag", OLD_IMAGE, broken)
    failing = sandbox.fab_in(with_postgres_image(tmp_path / "broken", broken), "db.upgrade", "--yes", env_file=env, check=False)
    assert failing.returncode == 1, failing.stdout + failing.stderr
    assert "[db.upgrade] FAILED at 'new PostgreSQL 17 cluster'" in failing.stderr
    assert "the old data was copied back" in failing.stdout and "PostgreSQL 15 was put back" in failing.stderr
    assert psql(project, "SHOW server_version_num").startswith("15") and data_major(volume) == "15"
    assert psql(project, "SELECT count(*) FROM tasks") == rows
    assert (app_dir / "releases" / serving / "release.yml").read_text() == release_yml
    assert not list((app_dir / "releases").glob("*/release.yml.pre-upgrade"))
    assert http_json(sandbox.app_url(APP, "/api/health"))[0] == 200
    assert sandbox.fab("deploy", "--skip-build", env_file=env, check=False).returncode == 5

    # The upgrade: verified backup, PostgreSQL 17 cluster, restore, counts compared; the old release serves again.
    out = sandbox.fab("db.upgrade", "--yes", env_file=env)
    assert "row counts equal to the dump's" in out.stdout and "The database on sandbox is PostgreSQL 17 now" in out.stdout
    keep = re.search(r"kept in volume (\S+) until you remove it", out.stdout).group(1)
    assert keep.startswith(f"{volume}_pg15_")
    assert data_major(keep) == "15" and data_major(volume) == "17"
    assert psql(project, "SHOW server_version_num").startswith("17")
    assert psql(project, "SELECT count(*) FROM tasks") == rows
    assert http_json(sandbox.app_url(APP, "/api/version"))[1]["release"] == serving
    assert f"image: {project}-postgres:pg17-" in (app_dir / "releases" / serving / "release.yml").read_text()
    audit_lines = [json.loads(line) for line in (app_dir / "audit.log").read_text().splitlines()]
    assert [e["result"] for e in audit_lines if e["action"] == "db.upgrade"] == ["failed", "ok"]

    # Now the deploy goes through: migration 0002 adds the embeddings of the old rows.
    sandbox.fab("deploy", "--skip-build", env_file=env)
    assert os.readlink(app_dir / "current").split("/")[-1] != serving
    listed = {t["id"] for t in http_json(sandbox.app_url(APP, "/api/tasks"))[1]}
    assert set(ids) <= listed
    assert psql(project, "SELECT count(*) FROM tasks WHERE embedding IS NULL") == "0"
    found = http_json(sandbox.app_url(APP, "/api/tasks/similar?q=written+on+PostgreSQL+15&limit=5"))[1]
    assert {t["id"] for t in found} == set(ids)
    # Kept until the operator removes it: Compose does not count it as the project's (down --volumes keeps it).
    assert keep in docker("volume", "ls", "-q", "--filter", f"label=org.tasktracker.kept-postgres-data={project}").split()
    assert keep not in docker("volume", "ls", "-q", "--filter", f"label=com.docker.compose.project={project}").split()
