"""A managed PostgreSQL (DATABASE_HOST): the settings refused before any connection, the release's
compose.managed.yml as Compose v1 and v2 read it, the context's client container, the budget."""

import shutil
import subprocess

import pytest
import yaml

from tasks import health_checks
from tasks.commands import budget, definitions, managed, move, pitr, rollout
from tasks.commands.compose import release_override
from tasks.commands.context import HostContext
from tests.support import ROOT
from tests.test_settings import GOOD
from tests.test_static import COMPOSE_TOOLS
from tasks.settings import Settings, SettingsError

CA = ("-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUQ1Vm9sZQ==\n"
      "-----END CERTIFICATE-----\n")


@pytest.fixture
def ca_file(tmp_path):
    path = tmp_path / "provider-ca.pem"
    path.write_text(CA)
    return str(path)


def load(tmp_path, **overrides):
    env = {k: v for k, v in {**GOOD, **overrides}.items() if v is not None}
    return Settings.load(env_file=tmp_path / "missing.env", environ=env)


def test_a_managed_database_with_a_verified_tls_loads(tmp_path, ca_file):
    s = load(tmp_path, DATABASE_HOST="db-abc.provider.example", DATABASE_CA_FILE=ca_file,
             DATABASE_SSLMODE="VERIFY-CA", DATABASE_PORT="25060")
    assert s.managed_db and s.database_sslmode == "verify-ca" and s.database_port == 25060
    assert not load(tmp_path).managed_db  # the default: the stack's own postgres


@pytest.mark.parametrize("overrides, expected", [
    ({"DATABASE_SSLMODE": "require"}, "DATABASE_SSLMODE 'require' must be one of: verify-full, "
                                      "verify-ca (TLS with the server's certificate verified"),
    ({"DATABASE_SSLMODE": "disable"}, "DATABASE_SSLMODE 'disable' must be one of"),
    ({"DATABASE_CA_FILE": ""}, "DATABASE_CA_FILE is empty while DATABASE_HOST is set: set "
                               "DATABASE_CA_FILE to the CA certificate (PEM)"),
    ({"DATABASE_CA_FILE": "/nonexistent/ca.pem"}, "DATABASE_CA_FILE '/nonexistent/ca.pem' cannot "
                                                  "be read (No such file or directory)"),
    ({"DATABASE_HOST": "postgres://db.example.com:5432"}, "DATABASE_HOST "
                                                          "'postgres://db.example.com:5432' is "
                                                          "not a host name or IP address"),
    ({"DATABASE_PORT": "70000"}, "DATABASE_PORT must be a TCP port (1-65535)"),
], ids=["require", "disable", "no CA", "CA missing", "URL as host", "port"])
def test_a_managed_database_without_verified_tls_is_refused(tmp_path, ca_file, overrides,
                                                            expected):
    settings = {"DATABASE_HOST": "db.example.com", "DATABASE_CA_FILE": ca_file, **overrides}
    with pytest.raises(SettingsError) as err:
        load(tmp_path, **settings)
    assert expected in str(err.value) and "Nothing was changed on any server" in str(err.value)
    assert "pg-secret-value" not in str(err.value)


def test_a_ca_file_that_is_no_certificate_is_refused(tmp_path):
    key = tmp_path / "key.pem"
    key.write_text("-----BEGIN PRIVATE KEY-----\nabc\n-----END PRIVATE KEY-----\n")
    with pytest.raises(SettingsError, match="holds no PEM certificate"):
        load(tmp_path, DATABASE_HOST="10.0.0.5", DATABASE_CA_FILE=str(key))


def rendered():
    return yaml.safe_load(managed.managed_compose((ROOT / "compose.yml").read_text()))


def test_the_managed_compose_file_has_no_postgres_and_points_libpq_at_the_server():
    doc = rendered()
    assert "postgres" not in doc["services"] and managed.CLIENT in doc["services"]
    assert not {"postgres_data", "pgbackrest_repo"} & set(doc["volumes"])
    for name in ("api", "worker"):
        spec = doc["services"][name]
        assert "postgres" not in spec["depends_on"]
        assert spec["depends_on"][managed.CLIENT] == {"condition": "service_healthy"}
        assert spec["environment"]["POSTGRES_HOST"].startswith("${DATABASE_HOST:?")
        assert spec["environment"]["PGSSLMODE"] == "${DATABASE_SSLMODE:-verify-full}"
        assert managed.CA_MOUNT in spec["volumes"]
    client = doc["services"][managed.CLIENT]
    assert client["healthcheck"]["test"] == ["CMD", "psql", "-XAtqc", "select 1"]
    assert client["cap_drop"] == ["ALL"] and client["read_only"] is True
    assert client["environment"]["PGPASSWORD"].startswith("${POSTGRES_PASSWORD")


@pytest.mark.parametrize("tool", ["v1", "v2"])
def test_compose_reads_the_managed_release(tmp_path, tool):
    """As on a host: the release's files with its release.yml, .env and CA; the client stands
    where postgres stood, and nothing names postgres."""
    for name in ("docker-compose.production.yml",):
        shutil.copy(ROOT / name, tmp_path / name)
    for name in ("nginx", "backend", "postgres", "frontend"):
        (tmp_path / name).symlink_to(ROOT / name)
    (tmp_path / managed.MANAGED_FILE).write_text(
        managed.managed_compose((ROOT / "compose.yml").read_text()))
    (tmp_path / "release.yml").write_text(release_override("backend:1", "r1", variant=tool,
                                                           managed_db=True))
    env = (ROOT / ".env.example").read_text()
    (tmp_path / ".env").write_text(env + "APP_DB_PASSWORD=x\nDATABASE_HOST=db.example.com\n"
                                   f"APP_ROOT={tmp_path}\n")
    argv = list(COMPOSE_TOOLS[tool])
    for name in HostContext("/a", "p", managed_db=True).stack_files:
        argv += ["-f", name]
    out = subprocess.run([*argv, "config"], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    config = yaml.safe_load(out.stdout)
    assert "postgres" not in config["services"]
    api = config["services"]["api"]["environment"]
    assert api["POSTGRES_HOST"] == "db.example.com" and api["PGSSLMODE"] == "verify-full"
    assert api["POSTGRES_USER"] == "tasktracker_app"  # still the app role, never the owner
    mounts = [v if isinstance(v, str) else f"{v['source']}:{v['target']}:ro"  # v1 / v2
              for v in config["services"]["db-client"]["volumes"]
              if isinstance(v, str) or v["type"] == "bind"]
    assert mounts == [f"{tmp_path}/shared/db-ca.pem:{managed.CA_PATH}:ro"]  # same in each release


def test_the_context_reaches_the_client_where_it_reached_postgres():
    ctx = HostContext("/srv/app", "tt", managed_db=True)
    assert "com.docker.compose.service=db-client" in ctx.container("postgres")
    assert ctx.compose("ps")[:7] == ["docker", "compose", "-p", "tt", "-f",
                                     "compose.managed.yml", "-f"]
    assert rollout.data_services_up(ctx)[-2:] == ["db-client", "nats"]
    assert definitions.compared(ctx) == ("db-client", "nats", "nginx")
    assert definitions.parse_pending("@@pending db-client\n") == ["db-client"]
    pinned = release_override("b:1", "r1", postgres_image="tt-postgres:pg17-abc", managed_db=True)
    assert "  db-client:\n    image: tt-postgres:pg17-abc\n" in pinned and "\n  postgres:" not in pinned
    local = HostContext("/srv/app", "tt")
    assert "com.docker.compose.service=postgres" in local.container("postgres")
    assert "compose.yml" in local.compose("ps")


def test_the_budget_leaves_the_database_out():
    local = {r.name: r for r in budget.stack_memory(ROOT)}
    remote = {r.name: r for r in budget.stack_memory(ROOT, managed_db=True)}
    assert "postgres" in local and "postgres" not in remote
    assert remote[managed.CLIENT].reservation == 16 * budget.MIB
    assert sum(r.reservation for r in remote.values()) < sum(r.reservation
                                                             for r in local.values())


@pytest.mark.parametrize("output, finding", [
    ("reach=ok\ntls=true\nprotocol=TLSv1.3\nserver=17.2", None),
    ("reach=ok\ntls=false\nprotocol=-\nserver=17.2", "the connection to the managed database is "
                                                     "not encrypted"),
    ("reach=failed\nerror=psql: error: connection to server at \"10.0.0.5\", port 5432 failed: "
     "SSL error: certificate verify failed", "cannot be reached from the host: psql: error: "
                                             "connection to server at \"10.0.0.5\""),
    ("", None),  # the stack's own postgres: nothing to say
], ids=["tls", "plain", "bad CA", "local"])
def test_doctor_says_when_the_managed_database_is_not_reached_over_tls(output, finding):
    found = health_checks.managed_findings({"managed_db": managed.parse_reach(output)})
    assert [f.summary for f in found] == ([] if finding is None else [
        next(f.summary for f in found if finding in f.summary)])


def test_the_reach_check_runs_only_with_a_managed_database():
    assert managed.reach_check(HostContext("/a", "p")) == "true"
    script = managed.reach_check(HostContext("/a", "p", managed_db=True))
    assert "service=db-client" in script and "pg_stat_ssl" in script
    assert pitr.info(HostContext("/a", "p", managed_db=True)) == "echo pitr=managed"
    state = pitr.parse_info("now=1\npitr=managed\n")
    assert state["state"] == "managed" and "provider's" in pitr.window_line(state)


def test_the_move_reaches_the_local_postgres_and_the_server_by_its_env_file():
    ctx = HostContext("/home/d/app", "tt", managed_db=True)
    script = move.move_script(ctx)
    assert "service=postgres" in script and "db-client" not in script
    assert "/home/d/app/.deploy.lock/inbox/db-move.env" in script
    assert "/home/d/app/shared/db-ca.pem" in script
    assert "service=postgres" in move.unfreeze(ctx) and "read_only = off" in move.unfreeze(ctx)
    assert "docker rm -f" in move.retire_local(ctx) and "service=postgres" in move.retire_local(ctx)
    env = move.client_env("db.example.com", 25060, "verify-full", "admin", "p@ss w=rd$", "app")
    assert "PGPASSWORD=p@ss w=rd$\n" in env and "PGSSLROOTCERT=/ca.pem\n" in env
    with pytest.raises(ValueError, match="line break"):
        move.client_env("db.example.com", 5432, "verify-full", "admin", "a\nb", "app")
    assert move.parse_moved("[db.move] x\n@@moved tables=2 rows=41 seconds=1.3\n") == {
        "tables": "2", "rows": "41", "seconds": "1.3"}
    assert move.parse_moved("DB MOVE FAILED: x") == {}
