"""The app's own database role (commands/db.py): the SQL every deploy and restore applies, run
against a real PostgreSQL with pgvector, the reference backend migrated as the owner first, as a
deploy does; then what the role may and may not do, connecting with the password the settings
derive (which reaches Postgres only as a SCRAM verifier)."""

import os
import subprocess
import sys

import psycopg
import pytest

from tasks.commands import db
from tests.support import ROOT, LocalPostgres, pgvector_bindir

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("app_role")]

OWNER_PASSWORD = "test-pw"  # LocalPostgres's superuser, as POSTGRES_USER is in the stack
ROLE = "tasktracker_app"


def psql_file(pg: LocalPostgres, sql: str, db_name: str) -> subprocess.CompletedProcess:
    """The SQL on psql's stdin, as `docker exec -i ... psql < app-role.sql` runs it."""
    return subprocess.run(
        [
            "psql",
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            "127.0.0.1",
            "-p",
            str(pg.port),
            "-U",
            "postgres",
            "-d",
            db_name,
        ],
        input=sql,
        capture_output=True,
        text=True,
        env={**os.environ, "PGPASSWORD": pg.password},
    )


@pytest.fixture(scope="module")
def cluster():
    pg = LocalPostgres(pgvector_bindir()).start()
    pg.psql("CREATE DATABASE tasktracker")
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env.update(
        POSTGRES_USER="postgres",
        POSTGRES_PASSWORD=pg.password,
        POSTGRES_HOST="127.0.0.1",
        POSTGRES_PORT=str(pg.port),
        POSTGRES_DB="tasktracker",
    )
    migrated = subprocess.run(
        [sys.executable, "-m", "alembic", "upgrade", "head"],
        cwd=ROOT / "backend",
        env=env,
        capture_output=True,
        text=True,
    )
    assert migrated.returncode == 0, migrated.stderr
    yield pg
    pg.stop()


def app_connect(pg: LocalPostgres, password: str | None = None, db_name: str = "tasktracker"):
    return psycopg.connect(
        host="127.0.0.1",
        port=pg.port,
        dbname=db_name,
        user=ROLE,
        autocommit=True,
        password=db.app_role_password(OWNER_PASSWORD) if password is None else password,
    )


def refused(conn, sql: str) -> str:
    with pytest.raises(psycopg.Error) as err:
        conn.execute(sql)
    return str(err.value)


def test_the_password_is_derived_and_only_its_verifier_is_sent():
    password = db.app_role_password(OWNER_PASSWORD)
    assert len(password) == 64 and password == db.app_role_password(
        OWNER_PASSWORD
    ) != db.app_role_password("other")
    sql = db.app_role_script(ROLE, "postgres", OWNER_PASSWORD, "tasktracker")
    assert password not in sql and OWNER_PASSWORD not in sql
    assert sql == db.app_role_script(
        ROLE, "postgres", OWNER_PASSWORD, "tasktracker"
    )  # same settings, same file


def test_the_app_role_reads_and_writes_rows_and_nothing_more(cluster):
    sql = db.app_role_script(ROLE, "postgres", OWNER_PASSWORD, "tasktracker")
    for _ in range(2):  # every deploy applies it again
        applied = psql_file(cluster, sql, "tasktracker")
        assert applied.returncode == 0, applied.stderr
    assert (
        cluster.psql(
            "SELECT rolsuper, rolcreaterole, rolcreatedb, rolreplication, rolbypassrls "
            f"FROM pg_roles "
            f"WHERE rolname = '{ROLE}'"
        )
        == "f|f|f|f|f"
    )
    with app_connect(cluster) as conn:
        new_id = conn.execute(
            "INSERT INTO tasks (title) VALUES ('as the app') RETURNING id"
        ).fetchone()[0]
        conn.execute("UPDATE tasks SET status = 'done' WHERE id = %s", (new_id,))
        assert conn.execute("SELECT status FROM tasks WHERE id = %s", (new_id,)).fetchone() == (
            "done",
        )
        conn.execute("DELETE FROM tasks WHERE id = %s", (new_id,))
        assert "permission denied" in refused(conn, "SELECT pg_read_file('/etc/passwd')")
        assert "COPY to or from an external program" in refused(
            conn, "COPY (SELECT 1) TO PROGRAM 'id'"
        )
        assert "permission denied" in refused(conn, "CREATE ROLE intruder SUPERUSER")
        assert "permission denied" in refused(conn, "CREATE TABLE mine (x int)")
        assert "must be owner" in refused(conn, "DROP TABLE tasks")
        assert "must be owner" in refused(conn, "ALTER TABLE tasks ADD COLUMN x int")
        assert "permission denied" in refused(conn, "CREATE DATABASE other")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        app_connect(cluster, password="not-the-derived-one")
    # A later migration's table (created by the owner) is the app's to use without a new grant.
    cluster.psql(
        "CREATE TABLE later_migration (id serial PRIMARY KEY, note text)", db="tasktracker"
    )
    with app_connect(cluster) as conn:
        conn.execute("INSERT INTO later_migration (note) VALUES ('default privileges')")
        assert conn.execute("SELECT count(*) FROM later_migration").fetchone() == (1,)


def test_a_database_restored_without_privileges_gets_them_back(cluster):
    """The restore paths: pg_restore --no-owner --no-privileges into a new database (no role or
    grant in it: roles live in the cluster), then the same SQL; the app reads the rows again."""
    psql_file(
        cluster, db.app_role_script(ROLE, "postgres", OWNER_PASSWORD, "tasktracker"), "tasktracker"
    )
    cluster.psql("INSERT INTO tasks (title) VALUES ('kept by the restore')", db="tasktracker")
    env = {**os.environ, "PGPASSWORD": cluster.password}
    bindir = pgvector_bindir()
    dump = subprocess.run(
        [
            str(bindir / "pg_dump"),
            "-h",
            "127.0.0.1",
            "-p",
            str(cluster.port),
            "-U",
            "postgres",
            "-d",
            "tasktracker",
            "-Fc",
        ],
        env=env,
        capture_output=True,
        check=True,
    ).stdout
    cluster.psql("CREATE DATABASE restored")
    subprocess.run(
        [
            str(bindir / "pg_restore"),
            "-h",
            "127.0.0.1",
            "-p",
            str(cluster.port),
            "-U",
            "postgres",
            "-d",
            "restored",
            "--no-owner",
            "--no-privileges",
            "--exit-on-error",
        ],
        input=dump,
        env=env,
        capture_output=True,
        check=True,
    )
    with app_connect(cluster, db_name="restored") as conn:
        assert "permission denied" in refused(conn, "SELECT count(*) FROM tasks")
    applied = psql_file(
        cluster, db.app_role_script(ROLE, "postgres", OWNER_PASSWORD, "restored"), "restored"
    )
    assert applied.returncode == 0, applied.stderr
    with app_connect(cluster, db_name="restored") as conn:
        titles = [row[0] for row in conn.execute("SELECT title FROM tasks")]
        assert "kept by the restore" in titles
        conn.execute("INSERT INTO tasks (title) VALUES ('after the restore')")  # its sequence too
