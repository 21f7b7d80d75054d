"""PostgreSQL major versions (issue 14) without a host: the deploy's guard and `db.upgrade`'s
builders as string tables, the preflight's `pg_data` fact and the upgrade script run with bash
against a stand-in docker on PATH (no daemon is touched): it succeeds, and each failure puts the
old Postgres back exactly once."""

from __future__ import annotations

import io
import subprocess
import tarfile
from pathlib import Path

import pytest

import tasks.guards as guards
from tasks.commands import backup, db, release
from tasks.commands import compose as compose_commands
from tasks.commands.context import HostContext
from tasks.db import build_context
from tasks.exits import ExitCode
from tasks.settings import PROJECT_ROOT

APP = HostContext("app", "tt")
V1 = HostContext("app", "tt", "v1")
ROOT = Path(__file__).resolve().parent.parent
D2 = "docker compose -p tt -f compose.yml -f docker-compose.production.yml -f release.yml"


@pytest.mark.parametrize("image, major", [
    ("postgres:15", "15"), ("postgres:17.2-bookworm", "17"), ("postgres:16-alpine", "16"), ("postgres:9.6", "9.6"),
    ("postgres:9.6.24-alpine", "9.6"), ("pgvector/pgvector:pg17", "17"), ("pgvector/pgvector:pg16-trixie", "16"),
    ("pgvector/pgvector:0.8.0-pg17", "17"), ("pgvector/pgvector:0.8.1-pg15-bookworm", "15"),
    ("registry.example:5000/db/postgres:17", "17"), ("postgres", None), ("postgres:latest", None),
    ("postgres@sha256:abc", None), ("registry.example:5000/postgres", None), ("tt-broken/postgres:pg17", "17"),
])
def test_image_major(image, major):
    assert db.image_major(image) == major


@pytest.mark.parametrize("data, image, verdict", [
    ("15", "postgres:15", db.MATCH), ("15", "pgvector/pgvector:pg17", db.OLDER), ("17", "postgres:15", db.NEWER),
    ("9.6", "postgres:15", db.OLDER), ("16", "postgres:9.6", db.NEWER), ("none", "pgvector/pgvector:pg17", db.FRESH),
    ("empty", "pgvector/pgvector:pg17", db.FRESH), ("", "postgres:15", db.FRESH),
    ("unknown", "pgvector/pgvector:pg17", db.UNKNOWN), ("garbage", "postgres:15", db.UNKNOWN),
    ("15", "postgres:latest", db.UNCHECKED),
])
def test_guard(data, image, verdict):
    assert db.guard(data, image)[0] == verdict


def test_the_refusal_names_both_versions_and_the_way_out():
    text = db.refusal(db.OLDER, "15", "pgvector/pgvector:pg17", "17", "vps", "tt_postgres_data", "fab -H vps db.upgrade")
    assert text.startswith("The database on vps is PostgreSQL 15 (volume tt_postgres_data), but this release runs "
                           "PostgreSQL 17 (pgvector/pgvector:pg17)")
    assert "`fab -H vps db.upgrade`" in text and text.endswith("Nothing was changed on the server.")
    newer = db.refusal(db.NEWER, "17", "postgres:15", "15", "vps", "tt_postgres_data", "")
    assert "newer than the PostgreSQL 15" in newer and "db.upgrade" not in newer


def test_the_checkout_runs_postgres_17_with_pgvector():
    # compose.yml builds postgres/ (pgvector/pgvector:pg17 plus pgBackRest) and names its default tag
    assert db.postgres_image(ROOT) == "tasktracker-postgres:pg17" and db.image_major(db.postgres_image(ROOT)) == "17"
    assert "FROM pgvector/pgvector:pg17" in (ROOT / "postgres" / "Dockerfile").read_text()


TABLE = [
    ("postgres_volume", APP.postgres_volume, "tt_postgres_data"),
    ("keep_volume", db.keep_volume(APP, "15", "20260101T000000Z"), "tt_postgres_data_pg15_20260101T000000Z"),
    ("postgres_data_fact", release.postgres_data_fact(APP),
     "vol=tt_postgres_data; if docker volume inspect \"$vol\" >/dev/null 2>&1; then "
     "pg=$(docker ps -q --filter label=com.docker.compose.project=tt --filter label=com.docker.compose.service=postgres "
     "--filter label=com.docker.compose.oneoff=False | head -n 1); v=''; "
     "if [ -n \"$pg\" ]; then v=$(docker exec \"$pg\" sh -c 'cat /var/lib/postgresql/data/PG_VERSION 2>/dev/null || echo empty' "
     "2>/dev/null); else img=$(docker ps -a --filter label=com.docker.compose.project=tt "
     "--filter label=com.docker.compose.service=postgres --format '{{.Image}}' | head -n 1); "
     "if [ -n \"$img\" ]; then v=$(docker run --rm --network none --entrypoint sh -v \"$vol\":/d:ro \"$img\" "
     "-c 'cat /d/PG_VERSION 2>/dev/null || echo empty' 2>/dev/null); fi; fi; echo \"pg_data=${v:-unknown}\"; "
     "else echo pg_data=none; fi"),
    ("preflight asks it", ("{ " + release.postgres_data_fact(APP) + "; }") in release.preflight(APP), True),
    ("upgrade_facts", db.upgrade_facts(APP),
     "pg=$(docker ps -q --filter label=com.docker.compose.project=tt --filter label=com.docker.compose.service=postgres "
     "--filter label=com.docker.compose.oneoff=False | head -n 1); if [ -z \"$pg\" ]; then echo running=no; else "
     "echo running=yes; echo \"image=$(docker inspect -f '{{.Config.Image}}' \"$pg\")\"; docker exec \"$pg\" sh -c "
     "'du -sk /var/lib/postgresql/data | cut -f1; df -Pk /var/lib/postgresql/data | awk '\"'\"'NR == 2 {print $4}'\"'\"'' "
     "| paste -sd' ' | awk '{print \"data_kb=\" $1; print \"free_kb=\" $2}'; fi"),
    ("release_override unpinned", compose_commands.release_override("tt-backend:abc", "r1"),
     "# Written by the deploy task for this release; do not edit.\nservices:\n"
     "  postgres:\n    deploy:\n      resources:\n        limits:\n          pids: 512\n"
     "  nats:\n    deploy:\n      resources:\n        limits:\n          pids: 256\n"
     "  api:\n    image: tt-backend:abc\n    environment:\n      RELEASE_ID: r1\n"
     "    deploy:\n      resources:\n        limits:\n          pids: 256\n"
     "  worker:\n    image: tt-backend:abc\n    environment:\n      RELEASE_ID: r1\n"
     "    deploy:\n      resources:\n        limits:\n          pids: 256\n"
     "  nginx:\n    deploy:\n      resources:\n        limits:\n          pids: 256\n"),
    ("release_override pinned, Compose v1",
     compose_commands.release_override("tt-backend:abc", "r1",
                                       postgres_image="pgvector/pgvector:pg17", variant="v1"),
     "# Written by the deploy task for this release; do not edit.\nservices:\n"
     "  postgres:\n    image: pgvector/pgvector:pg17\n    pids_limit: 512\n"
     "  nats:\n    pids_limit: 256\n"
     "  api:\n    image: tt-backend:abc\n    environment:\n      RELEASE_ID: r1\n"
     "    pids_limit: 256\n"
     "  worker:\n    image: tt-backend:abc\n    environment:\n      RELEASE_ID: r1\n"
     "    pids_limit: 256\n"
     "  nginx:\n    pids_limit: 256\n"),
    ("space ok", db.space_problem(100 * 1024, 1024 * 1024), None),
    ("space short", db.space_problem(400 * 1024, 900 * 1024),
     "the data is 400 MiB and the upgrade needs about 1056 MiB free next to it (a copy of the old data and the new "
     "cluster), but only 900 MiB are free"),
    ("parse_upgrade", db.parse_upgrade("[db.upgrade] x\nUPGRADE OK set=20260101T000000Z keep=k tables=2 rows=7\n"),
     {"set": "20260101T000000Z", "keep": "k", "tables": "2", "rows": "7"}),
    ("parse_upgrade absent", db.parse_upgrade("[db.upgrade] FAILED\n"), {}),
]


@pytest.mark.parametrize("built, expected", [(b, e) for _, b, e in TABLE], ids=[i for i, _, _ in TABLE])
def test_builders(built, expected):
    assert built == expected


def test_the_row_counts_are_the_backup_scripts_own():
    assert db.ROW_COUNTS_SQL in backup.BACKUP_SCRIPT


def test_the_upgrade_script_uses_the_hosts_compose_and_the_backup_program():
    script = upgrade_script(V1, {})
    assert "docker-compose --compatibility -p tt -f compose.yml -f docker-compose.production.yml -f release.yml up -d " \
           "--no-deps postgres" in script
    assert "app/bin/tasktracker-backup app tt 7 |" in script
    assert subprocess.run(["bash", "-n", "-c", script]).returncode == 0


# --- the preflight's fact, against a stand-in docker ------------------------------------------------

FACT_DOCKER = r'''#!/bin/bash
echo "docker $*" >> "$FAKE_DOCKER_LOG"
case "$1 $2" in
  "volume inspect") [ -n "${FAKE_VOLUME:-}" ] ;;
  "ps -q") [ -n "${FAKE_PG:-}" ] && echo "$FAKE_PG"; exit 0 ;;
  "ps -a") [ -n "${FAKE_STOPPED_IMAGE:-}" ] && echo "$FAKE_STOPPED_IMAGE"; exit 0 ;;
  exec*|run*) [ -n "${FAKE_PG_VERSION:-}" ] && echo "$FAKE_PG_VERSION" || echo empty ;;
  *) exit 99 ;;
esac
'''


@pytest.mark.parametrize("env, fact, ran", [
    ({}, "none", None),
    ({"FAKE_VOLUME": "1", "FAKE_PG": "pg1", "FAKE_PG_VERSION": "15"}, "15", "docker exec pg1 sh -c"),
    ({"FAKE_VOLUME": "1", "FAKE_PG": "pg1"}, "empty", "docker exec pg1"),
    ({"FAKE_VOLUME": "1", "FAKE_STOPPED_IMAGE": "postgres:15", "FAKE_PG_VERSION": "15"}, "15",
     "docker run --rm --network none --entrypoint sh -v tt_postgres_data:/d:ro postgres:15"),
    ({"FAKE_VOLUME": "1"}, "unknown", None),
], ids=["no volume", "running container", "not initialised", "stopped container", "no container"])
def test_postgres_data_fact_run(tmp_path, env, fact, ran):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "docker").write_text(FACT_DOCKER)
    (bin_dir / "docker").chmod(0o755)
    log = tmp_path / "docker.log"
    log.touch()
    out = subprocess.run(["bash", "-c", release.postgres_data_fact(APP)], capture_output=True, text=True,
                         env={"PATH": f"{bin_dir}:/usr/bin:/bin", "FAKE_DOCKER_LOG": str(log), **env})
    assert release.parse_facts(out.stdout) == {"pg_data": fact}
    if ran:
        assert ran in log.read_text()


# --- the deploy's guard -------------------------------------------------------------------------------


class FakeHost:
    def __init__(self, pg_data: str):
        self.facts = {"pg_data": pg_data}
        self.name = "vps"
        self.ctx = APP


@pytest.mark.parametrize("data, verdict", [("17", db.MATCH), ("none", db.FRESH), ("unknown", db.UNKNOWN)])
def test_the_deploy_goes_on_when_the_data_fits(data, verdict, capsys):
    assert guards.check_postgres_major(FakeHost(data)) == verdict
    assert ("could not be read" in capsys.readouterr().out) == (verdict == db.UNKNOWN)


def test_the_deploy_refuses_data_of_another_major_before_anything_changes():
    from invoke import Exit

    with pytest.raises(Exit) as refused:
        guards.check_postgres_major(FakeHost("15"), env="staging")
    assert refused.value.code == ExitCode.REFUSED
    assert "PostgreSQL 15 (volume tt_postgres_data)" in refused.value.message
    assert "`fab -H vps db.upgrade --env staging`" in refused.value.message


# --- the upgrade script, run against a stand-in docker ------------------------------------------------

UPGRADE_DOCKER = r'''#!/bin/bash
# Stand-in for the docker CLI: answers what the upgrade script asks, logs every call, fails where told.
echo "docker $*" >> "$FAKE_DOCKER_LOG"
if [ -n "${FAKE_FAIL:-}" ] && [[ "$*" == *"$FAKE_FAIL"* ]]; then echo "fake docker: failing: $*" >&2; exit 1; fi
state=$FAKE_STATE
case "$1" in
  ps) case "$*" in
        *service=postgres*) echo pg1 ;;
        *service=api*) echo api1 ;;
        *service=worker*) echo wk1 ;;
      esac ;;
  inspect) case "$*" in *Config.Image*) echo postgres:15 ;; *Health*) echo healthy ;; esac ;;
  stop|start|rm|volume) ;;
  run) case "$*" in *"find /d -mindepth 1 -delete"*) touch "$state.wiped" ;; esac ;;
  compose) case "$*" in *"up -d --no-deps postgres"*) [ -f "$state.wiped" ] && [ ! -f "$state.restored" ] && touch "$state.new" ;; esac ;;
  exec) case "$*" in
          *PG_VERSION*) if [ -f "$state.new" ]; then echo "${FAKE_NEW_MAJOR:-17}"; else echo 15; fi ;;
          *pg_isready*) ;;
          *pg_restore*) cat > /dev/null ;;
          *ANALYZE*) ;;
          *"psql -X -At"*) cat > /dev/null; printf '%s\n' ${FAKE_COUNTS:-alembic_version=1 tasks=3} ;;
          *) echo "fake docker: unexpected exec: $*" >&2; exit 99 ;;
        esac ;;
  *) echo "fake docker: unexpected: $*" >&2; exit 99 ;;
esac
'''

FAKE_BACKUP = r'''#!/bin/bash
# Stand-in for the host's backup program: one verified set with its row counts.
[ -n "${FAKE_BACKUP_FAILS:-}" ] && { echo "BACKUP FAILED at step 'database dump'" >&2; exit 1; }
mkdir -p "$1/backups/20260101T000000Z"
printf 'alembic_version=1\ntasks=3\n' > "$1/backups/20260101T000000Z/rowcounts.txt"
echo dump > "$1/backups/20260101T000000Z/database.dump"
echo "[backup] database dump (streamed) and row counts in one snapshot"
echo "BACKUP OK 20260101T000000Z"
echo '{"set": "20260101T000000Z"}'
'''

def upgrade_script(ctx: HostContext, pins: dict[str, str]) -> str:
    return db.upgrade(ctx, old_major="15", new_image="pgvector/pgvector:pg17", keep="tt_postgres_data_pg15_T",
                      backup_keep=7, pins=pins, probe="echo probe ok")


def run_upgrade(tmp_path: Path, **env) -> tuple[subprocess.CompletedProcess, str]:
    """Run the script in a temporary home with APP_DIR `app`: two releases, r2 current."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "docker").write_text(UPGRADE_DOCKER)
    (bin_dir / "docker").chmod(0o755)
    for rid in ("r1", "r2"):
        (tmp_path / "app" / "releases" / rid).mkdir(parents=True)
        (tmp_path / "app" / "releases" / rid / "release.yml").write_text(compose_commands.release_override("tt-backend:b", rid))
    (tmp_path / "app" / "current").symlink_to("releases/r2")
    (tmp_path / "app" / "bin").mkdir()
    (tmp_path / "app" / "bin" / "tasktracker-backup").write_text(FAKE_BACKUP)
    (tmp_path / "app" / "bin" / "tasktracker-backup").chmod(0o755)
    log = tmp_path / "docker.log"
    pins = {rid: compose_commands.release_override("tt-backend:b", rid, postgres_image="pgvector/pgvector:pg17")
            for rid in ("r1", "r2")}
    out = subprocess.run(["bash", "-c", upgrade_script(APP, pins)], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                         env={"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path), "FAKE_DOCKER_LOG": str(log),
                              "FAKE_STATE": str(tmp_path / "state"), **env})
    return out, log.read_text() if log.exists() else ""


def calls(log: str, *needles: str) -> list[int]:
    """The log line of each needle's first occurrence (-1 when absent)."""
    lines = log.splitlines()
    return [next((i for i, line in enumerate(lines) if needle in line), -1) for needle in needles]


def test_the_upgrade_runs_every_step_in_order(tmp_path):
    out, log = run_upgrade(tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-1] == "UPGRADE OK set=20260101T000000Z keep=tt_postgres_data_pg15_T tables=2 rows=4"
    order = calls(log, "docker stop -t 30 api1", "docker stop -t 30 wk1", "docker stop -t 120 pg1",
                  "docker volume create --label org.tasktracker.kept-postgres-data=tt", "cp -a /from/. /to/ && diff -r -q /from /to",
                  "find /d -mindepth 1 -delete", f"{D2} up -d --no-deps postgres", "pg_restore", "ANALYZE", "psql -X -At",
                  "docker start api1 wk1")
    assert -1 not in order and order == sorted(order), log
    assert "org.tasktracker.kept-from=tt_postgres_data" in log and "docker volume rm" not in log
    assert "com.docker.compose.project=tt " not in log.split("docker volume create", 1)[1].splitlines()[0]
    assert "probe ok" in out.stdout and "FAILED" not in out.stderr
    for rid in ("r1", "r2"):
        assert (tmp_path / "app" / "releases" / rid / "release.yml").read_text().startswith(
            "# Written by the deploy task for this release; do not edit.\nservices:\n"
            "  postgres:\n    image: pgvector/pgvector:pg17\n")
    assert not list((tmp_path / "app" / "releases").glob("*/*.pre-upgrade"))


@pytest.mark.parametrize("env, stage, wiped, copied, postgres_ups", [
    ({"FAKE_BACKUP_FAILS": "1"}, "verified backup", False, False, 0),
    ({"FAKE_FAIL": "cat /var/lib/postgresql/data/PG_VERSION"}, "stop PostgreSQL 15", False, False, 1),
    ({"FAKE_FAIL": "diff -r -q /from /to"}, "keep the old data in tt_postgres_data_pg15_T", False, True, 1),
    ({"FAKE_NEW_MAJOR": "15"}, "new PostgreSQL 17 cluster", True, True, 2),
    ({"FAKE_FAIL": "pg_restore"}, "restore the dump", True, True, 2),
    ({"FAKE_COUNTS": "alembic_version=1 tasks=2"}, "compare row counts", True, True, 2),
], ids=["backup", "reading the old version", "copy", "new cluster", "restore", "row counts"])
def test_a_failed_upgrade_puts_the_old_postgres_back_once(tmp_path, env, stage, wiped, copied, postgres_ups):
    out, log = run_upgrade(tmp_path, **env)
    assert out.returncode == 1
    assert out.stderr.count("putting PostgreSQL 15 back") == 1, out.stderr
    assert f"[db.upgrade] FAILED at '{stage}'" in out.stderr
    assert "UPGRADE OK" not in out.stdout and "PostgreSQL 15, api and worker are running again" in out.stdout
    for rid in ("r1", "r2"):  # each release's own release.yml again
        assert (tmp_path / "app" / "releases" / rid / "release.yml").read_text() == compose_commands.release_override("tt-backend:b", rid)
    assert not list((tmp_path / "app" / "releases").glob("*/*.pre-upgrade"))
    assert ("-v tt_postgres_data_pg15_T:/from:ro -v tt_postgres_data:/to" in log) == wiped  # the old data copied back
    assert ("docker rm -f pg1" in log) == wiped  # the new cluster's container goes first
    assert ("docker volume rm tt_postgres_data_pg15_T" in log) == (copied and not wiped)  # a copy nobody needs
    assert log.count(f"{D2} up -d --no-deps postgres") == postgres_ups  # the old image started again where stopped
    assert log.count("docker start api1 wk1") == 1  # the containers it stopped, started again
    assert calls(log, "docker start api1 wk1")[0] > calls(log, "docker stop -t 30 wk1")[0]


def test_the_postgres_build_context_holds_every_file_its_dockerfile_copies():
    """db.upgrade sends postgres/ as the build context when the host builds the new image (a
    context of the Dockerfile alone failed at its COPY of the health check)."""
    packed = tarfile.open(fileobj=io.BytesIO(build_context(PROJECT_ROOT / "postgres")))
    names = set(packed.getnames())
    dockerfile = (PROJECT_ROOT / "postgres" / "Dockerfile").read_text()
    copied = {line.split()[1] for line in dockerfile.splitlines() if line.startswith(("COPY ", "ADD "))}
    assert "Dockerfile" in names and copied and copied <= names
    assert packed.getmember("healthcheck.sh").mode & 0o111  # run by the health check as is
