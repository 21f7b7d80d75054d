"""The app's own database role on the sandbox (issue 24, medium 1): a stack deployed by the release
from before the role (its API a superuser) moves over on the next deploy while it serves, with
every row; then the API and the worker connect as a role that cannot read files, run programs or
create roles; a rollback to the old release still works; a restore onto a cluster without the
role (as on a new host) brings it back."""

import json
import re
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.support import ROOT, LoadProbe, wait_for

pytestmark = pytest.mark.e2e

APP = "approle"
ROLE = "tasktracker_app"


def http_json(url, data=None):
    req = urllib.request.Request(
        url,
        data=json.dumps(data).encode() if data is not None else None,
        headers={"Content-Type": "application/json"} if data is not None else {},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as res:
            return res.status, json.loads(res.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, None


def docker(*args: str, check=True, stdin: str | None = None) -> str:
    return subprocess.run(
        ["docker", *args], capture_output=True, text=True, check=check, input=stdin
    ).stdout.strip()


def container(project: str, service: str) -> str:
    return docker(
        "ps",
        "-q",
        "--filter",
        f"label=com.docker.compose.project={project}",
        "--filter",
        f"label=com.docker.compose.service={service}",
        "--filter",
        "label=com.docker.compose.oneoff=False",
    ).split()[0]


def psql(project: str, sql: str) -> str:
    return docker(
        "exec",
        container(project, "postgres"),
        "psql",
        "-U",
        "postgres",
        "-d",
        "tasktracker",
        "-Atc",
        sql,
    )


def address(cid: str) -> str:
    return docker(
        "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}", cid
    ).split()[0]


KEPT = ("postgres", "nats", "nginx")


def started(project: str) -> dict[str, str]:
    """Each kept service's container id and start time."""
    return {
        s: docker("inspect", "-f", "{{.Id}} {{.State.StartedAt}}", container(project, s))
        for s in KEPT
    }


def users_of(project: str, service: str) -> set[str]:
    """The roles the service's own connections log in as (pg_stat_activity, by the client's
    address)."""
    ip = address(container(project, service))
    out = psql(project, f"SELECT DISTINCT usename FROM pg_stat_activity WHERE client_addr = '{ip}'")
    return set(out.split())


# The app's own credentials, from inside its container, trying what an injection or RCE would try.
ATTEMPTS = r"""
import json, os, psycopg
conn = psycopg.connect(host=os.environ["POSTGRES_HOST"], dbname=os.environ["POSTGRES_DB"],
                       user=os.environ["POSTGRES_USER"], password=os.environ["POSTGRES_PASSWORD"],
                       autocommit=True)
out = {"user": conn.execute("SELECT current_user").fetchone()[0]}
for name, sql in [("read_file", "SELECT pg_read_file('/etc/passwd')"),
                  ("read_offsite",
                   "SELECT pg_read_file('/var/lib/pgbackrest/conf.d/offsite.conf')"),
                  ("program", "COPY (SELECT 1) TO PROGRAM 'id'"),
                  ("create_role", "CREATE ROLE intruder SUPERUSER LOGIN"),
                  ("create_table", "CREATE TABLE intruder (x int)"),
                  ("rows", "SELECT count(*) FROM tasks")]:
    try:
        conn.execute(sql)
        out[name] = "allowed"
    except psycopg.Error as err:
        out[name] = type(err).__name__
print(json.dumps(out))
"""


def app_attempts(project: str) -> dict:
    return json.loads(
        docker("exec", "-i", container(project, "api"), "python", "-", stdin=ATTEMPTS)
    )


def release_before_the_role(dest: Path) -> Path:
    """This checkout as it was before the app role (the parent of the commit that added
    compose.migrate.yml), with the dashboard built here."""
    added = subprocess.run(
        ["git", "log", "--diff-filter=A", "--format=%H", "--", "compose.migrate.yml"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()[-1]
    dest.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "archive", f"{added}^"], cwd=ROOT, capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    assert not (dest / "compose.migrate.yml").exists()
    subprocess.run(
        ["cp", "-a", str(ROOT / "frontend" / "dist"), str(dest / "frontend" / "dist")], check=True
    )
    return dest


@pytest.fixture(scope="module")
def app(sandbox, deployed):
    env = sandbox.app_env(APP)
    project = f"{sandbox.project}-{APP}"
    yield env, project


def test_an_old_stack_moves_to_the_app_role_while_it_serves_and_keeps_every_row(
    sandbox, app, tmp_path
):
    env, project = app
    old = release_before_the_role(tmp_path / "old")
    sandbox.fab_in(old, "deploy", "--skip-build", env_file=env)
    old_release = http_json(sandbox.app_url(APP, "/api/version"))[1]["release"]
    ids = [
        http_json(sandbox.app_url(APP, "/api/tasks"), {"title": f"before the role {i}"})[1]["id"]
        for i in range(5)
    ]
    # The release before: the API is the superuser.
    wait_for(lambda: users_of(project, "api") == {"postgres"}, 30, what="the old api's connections")
    rows = psql(project, "SELECT count(*) FROM tasks")
    kept = started(project)

    with LoadProbe(
        [sandbox.app_url(APP, "/api/health"), sandbox.app_url(APP, "/api/tasks")]
    ) as load:
        out = sandbox.fab("deploy", "--skip-build", env_file=env)
    assert len(load.results) > 20 and load.failures() == [], load.failures()[:5]
    assert "the app's database role and its grants" in out.stdout
    # The new release defines postgres, nats and nginx otherwise (least privilege, keepalives):
    # the deploy left each container running as it was and says so, once, with the command.
    assert started(project) == kept
    for service in KEPT:
        assert out.stdout.count(f"NOTICE: {service}'s definition in release ") == 1, out.stdout
        assert f"`fab -H sandbox compose.recreate --service {service}`" in out.stdout
    new_release = http_json(sandbox.app_url(APP, "/api/version"))[1]["release"]
    assert new_release != old_release
    assert psql(project, "SELECT count(*) FROM tasks") == rows
    assert {t["id"] for t in http_json(sandbox.app_url(APP, "/api/tasks"))[1]} >= set(ids)

    # The API's and the worker's connections are the app role's, which is no superuser.
    wait_for(lambda: users_of(project, "api") == {ROLE}, 30, what="the api's connections")
    assert (
        psql(
            project,
            f"SELECT rolsuper, rolcreaterole, rolcreatedb FROM pg_roles WHERE rolname = '{ROLE}'",
        )
        == "f|f|f"
    )
    assert (
        psql(
            project,
            "SELECT count(*) FROM pg_database WHERE datdba = "
            f"(SELECT oid FROM pg_roles WHERE rolname = '{ROLE}')",
        )
        == "0"
    )

    # From inside the api container, with the app's own credentials.
    tried = app_attempts(project)
    assert tried.pop("user") == ROLE and tried.pop("rows") == "allowed"
    assert set(tried.values()) == {"InsufficientPrivilege"}, tried
    owner_password = next(
        line.split("=", 1)[1]
        for line in env.read_text().splitlines()
        if line.startswith("POSTGRES_PASSWORD=")
    )
    api_env = docker("exec", container(project, "api"), "env")
    assert owner_password not in api_env and f"POSTGRES_USER={ROLE}" in api_env

    # The app serves: a task is stored, processed by the worker and listed.
    status, task = http_json(
        sandbox.app_url(APP, "/api/tasks"), {"title": "as the app role", "body": "two words"}
    )
    assert status == 201

    def processed():
        listed = http_json(sandbox.app_url(APP, "/api/tasks"))[1]
        return any(t["id"] == task["id"] and t["status"] == "done" for t in listed)

    wait_for(processed, 60, what="the worker to process the task")
    wait_for(lambda: users_of(project, "worker") == {ROLE}, 30, what="the worker's connections")

    # Back to the release before the role (it connects as POSTGRES_USER, which is still there),
    # and forward again.
    with LoadProbe([sandbox.app_url(APP, "/api/health")]) as load:
        sandbox.fab("rollback", "--to", old_release, env_file=env)
        assert http_json(sandbox.app_url(APP, "/api/version"))[1]["release"] == old_release
        wait_for(
            lambda: users_of(project, "api") == {"postgres"}, 30, what="the old api's connections"
        )
        sandbox.fab("rollback", "--to", new_release, env_file=env)
    assert load.failures() == [], load.failures()[:5]
    assert http_json(sandbox.app_url(APP, "/api/version"))[1]["release"] == new_release
    wait_for(lambda: users_of(project, "api") == {ROLE}, 30, what="the api's connections")


def test_a_restore_onto_a_cluster_without_the_role_brings_it_back(sandbox, app):
    """A backup holds one database, not the cluster's roles: restored where the role does not exist
    (a new host, a new cluster), the restore makes it and grants it again."""
    env, project = app
    out = sandbox.fab("backup", env_file=env)
    set_name = re.search(r"Backup (\S+) is complete", out.stdout).group(1)
    rows = psql(project, "SELECT count(*) FROM tasks")
    psql(
        project, f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{ROLE}'"
    )
    for c in (container(project, "api"), container(project, "worker")):
        docker("stop", c)
    psql(project, f"DROP OWNED BY {ROLE}; DROP ROLE {ROLE}")
    assert psql(project, f"SELECT count(*) FROM pg_roles WHERE rolname = '{ROLE}'") == "0"

    sandbox.fab("backup.restore", "--name", set_name, "--yes", env_file=env)
    assert psql(project, f"SELECT rolsuper FROM pg_roles WHERE rolname = '{ROLE}'") == "f"
    assert psql(project, "SELECT count(*) FROM tasks") == rows
    assert http_json(sandbox.app_url(APP, "/api/health"))[0] == 200
    status, task = http_json(sandbox.app_url(APP, "/api/tasks"), {"title": "after the restore"})
    assert status == 201
    wait_for(lambda: users_of(project, "api") == {ROLE}, 30, what="the api's connections")
    assert app_attempts(project)["read_file"] == "InsufficientPrivilege"


def test_compose_recreate_applies_a_pending_definition_on_purpose(sandbox, app):
    """After the move above, postgres, nats and nginx still run the old release's definitions:
    `status` names them; `compose.recreate --service postgres` recreates postgres alone with the
    live release's (a read-only root, no capabilities but its own) and waits for it; with no
    --service it applies the rest; then nothing is pending."""
    env, project = app
    before = started(project)
    shown = sandbox.fab("status", env_file=env, check=False).stdout
    for service in KEPT:
        assert f"{service} runs its previous definition" in shown, shown
    out = sandbox.fab("compose.recreate", "--service", "postgres", env_file=env)
    assert "postgres recreated and healthy in" in out.stdout
    after = started(project)
    assert after["postgres"] != before["postgres"]
    assert {s: after[s] for s in ("nats", "nginx")} == {s: before[s] for s in ("nats", "nginx")}
    config = json.loads(
        docker("inspect", "-f", "{{json .HostConfig}}", container(project, "postgres"))
    )
    assert config["ReadonlyRootfs"] is True and config["CapDrop"] == ["ALL"]
    cmd = docker("inspect", "-f", "{{json .Config.Cmd}}", container(project, "postgres"))
    assert "tcp_keepalives_idle=10" in cmd
    wait_for(
        lambda: http_json(sandbox.app_url(APP, "/api/health"))[0] == 200,
        60,
        what="the api on the recreated postgres",
    )

    out = sandbox.fab("compose.recreate", env_file=env)
    assert "Recreating nats, nginx" in out.stdout
    assert all(started(project)[s] != before[s] for s in ("nats", "nginx"))
    wait_for(
        lambda: http_json(sandbox.app_url(APP, "/api/health"))[0] == 200,
        60,
        what="the api through the recreated nginx",
    )
    shown = sandbox.fab("status", env_file=env, check=False).stdout
    assert "runs its previous definition" not in shown
    out = sandbox.fab("compose.recreate", env_file=env)
    assert "nothing was recreated" in out.stdout
