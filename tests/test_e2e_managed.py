"""A managed PostgreSQL (issue 27, part 3), on the sandbox: a Postgres container of its own plays the
provider's server (TLS required: `hostssl` only, a self-signed CA made here, its own admin user,
reached at Docker's gateway like a server off the host). Bad settings are refused with nothing
changed; an app deployed with its own postgres moves to it under writers and keeps every
acknowledged write; it then serves through it with no postgres of its own, a deploy under load
fails no request, `status` and `doctor` see the server over TLS, and a backup is a verified
logical dump over TLS."""

import json
import secrets
import subprocess
import time
import urllib.request

import pytest

from tests.support import LoadProbe, Writers, docker_gateway, free_port, wait_for

pytestmark = pytest.mark.e2e
APP = "mg"
ADMIN = "managed_admin"  # the provider's user: not `postgres`
IMAGE = "pgvector/pgvector:pg17"  # the stand-in upstream image, as a provider's server
SERVER = r"""set -e
install -d -o postgres /tls
install -o postgres -m 600 /certs/server.key /tls/server.key
install -o postgres -m 644 /certs/server.pem /tls/server.pem
printf 'local all all trust\nhostssl all all 0.0.0.0/0 scram-sha-256\n' > /tls/pg_hba.conf
chown postgres /tls/pg_hba.conf
exec docker-entrypoint.sh postgres -c ssl=on -c ssl_cert_file=/tls/server.pem \
  -c ssl_key_file=/tls/server.key -c hba_file=/tls/pg_hba.conf
"""


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The managed server: name, CA file, address, port, admin password."""
    d = tmp_path_factory.mktemp("managed-pg")
    address, port = docker_gateway(), free_port()
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
            "-days", "2", "-subj", "/CN=tt-managed test CA", cwd=d)
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
            "-subj", f"/CN={address}", cwd=d)
    (d / "ext").write_text(f"subjectAltName=IP:{address}\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "ext", cwd=d)
    (d / "server.key").chmod(0o644)  # copied in as the container's postgres, 0600
    password = "m@naged/" + secrets.token_hex(8)
    env = d / "server.env"
    env.write_text(f"POSTGRES_USER={ADMIN}\nPOSTGRES_PASSWORD={password}\nPOSTGRES_DB=tasktracker\n")
    name = f"tt-managed-{secrets.token_hex(3)}"
    subprocess.run(["docker", "run", "-d", "--name", name, "--env-file", str(env), "-v",
                    f"{d}:/certs:ro", "-p", f"{address}:{port}:5432", "--entrypoint", "sh", IMAGE,
                    "-c", SERVER], check=True, capture_output=True)
    try:
        wait_for(lambda: subprocess.run(["docker", "exec", name, "pg_isready", "-q", "-h",
                                         "127.0.0.1"]).returncode == 0, 60, 0.5, "managed server")
        yield {"name": name, "ca": d / "ca.pem", "address": address, "port": port,
               "password": password}
    finally:
        subprocess.run(["docker", "rm", "-f", "-v", name], capture_output=True)


def on_server(server, sql: str) -> str:
    return subprocess.run(["docker", "exec", server["name"], "psql", "-U", ADMIN, "-d",
                           "tasktracker", "-XAtc", sql], capture_output=True, text=True,
                          check=True).stdout.strip()


def settings(sandbox, server, variant="managed", **overrides):
    return sandbox.app_env(APP, variant, DATABASE_HOST=server["address"],
                           DATABASE_PORT=server["port"], DATABASE_CA_FILE=server["ca"],
                           POSTGRES_USER=ADMIN, POSTGRES_PASSWORD=server["password"], **overrides)


def post_task(sandbox, title: str) -> int:
    req = urllib.request.Request(sandbox.app_url(APP, "/api/tasks"),
                                 data=json.dumps({"title": title}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as res:
        assert res.status in (200, 201)
        return json.loads(res.read())["id"]


def project_containers(sandbox, service: str) -> str:
    return subprocess.run(["docker", "ps", "-aq", "--filter",
                           f"label=com.docker.compose.project={sandbox.project}-{APP}", "--filter",
                           f"label=com.docker.compose.service={service}"],
                          capture_output=True, text=True, check=True).stdout.strip()


def test_settings_without_verified_tls_are_refused_and_change_nothing(sandbox, server):
    env = settings(sandbox, server, "no-tls", DATABASE_SSLMODE="require")
    out = sandbox.fab("deploy", "--skip-build", env_file=env, check=False)
    assert out.returncode != 0
    assert "DATABASE_SSLMODE 'require' must be one of: verify-full, verify-ca" in out.stderr
    assert "Nothing was changed on any server" in out.stderr
    assert server["password"] not in out.stdout + out.stderr
    assert not (sandbox.home / APP).exists()


@pytest.fixture(scope="module")
def deployed_managed(sandbox, deployed, server):
    """The app deployed with its own postgres, then moved to the managed server under writers."""
    sandbox.fab("deploy", "--skip-build", env_file=sandbox.app_env(APP))
    before = [post_task(sandbox, f"local {i}") for i in range(20)]
    env = settings(sandbox, server)
    with Writers(sandbox.app_url(APP, "/api/tasks"), clients=2, title="moving") as writers:
        time.sleep(1)
        out = sandbox.fab("db.move-to-managed", "--yes", env_file=env)
        time.sleep(1)
    MOVE.update(out=out.stdout, before=before, acknowledged=writers.acknowledged)
    print(out.stdout[out.stdout.index("Moved: "):].splitlines()[0] if "Moved: " in out.stdout
          else out.stdout, f"acknowledged {len(writers.acknowledged)}, refused "
          f"{len(writers.errors)}", sep="\n")
    return env, out.stdout


MOVE: dict = {}


def test_the_move_keeps_every_acknowledged_write(sandbox, server, deployed_managed):
    out = MOVE["out"]
    assert "copy under a write freeze" in out and "Moved: " in out, out
    assert "the same counts on both sides" in out, out
    written = set(MOVE["before"]) | set(MOVE["acknowledged"])
    assert len(MOVE["acknowledged"]) > 10  # writes went on before the freeze and after the switch
    ids = {int(i) for i in on_server(server, "SELECT id FROM tasks").split()}
    assert written <= ids, sorted(written - ids)[:10]
    assert project_containers(sandbox, "postgres") == ""  # the local one is gone, its volume kept
    volumes = subprocess.run(["docker", "volume", "ls", "-q", "--filter",
                              f"name={sandbox.project}-{APP}_postgres_data"], capture_output=True,
                             text=True, check=True).stdout
    assert volumes.strip() == f"{sandbox.project}-{APP}_postgres_data"


def test_the_app_serves_through_the_managed_database(sandbox, server, deployed_managed):
    env, deploy_out = deployed_managed
    assert "point-in-time recovery is the managed database's provider's" in deploy_out
    assert on_server(server, "SELECT count(*) FROM tasks WHERE title LIKE 'local %'") == "20"
    ids = [post_task(sandbox, f"managed {i}") for i in range(5)]
    with urllib.request.urlopen(sandbox.app_url(APP, "/api/tasks"), timeout=10) as res:
        assert res.status == 200 and {t["id"] for t in json.loads(res.read())} >= set(ids)
    assert on_server(server, "SELECT count(*) FROM tasks WHERE title LIKE 'managed %'") == "5"
    assert '"status":"ok"' in urllib.request.urlopen(sandbox.app_url(APP, "/api/health"),
                                                     timeout=10).read().decode()
    # The app's own role, over TLS, on the provider's server; the stack has no postgres at all.
    assert on_server(server, "SELECT DISTINCT usename || ' ' || ssl FROM pg_stat_ssl JOIN "
                             "pg_stat_activity USING (pid) WHERE usename = 'tasktracker_app'") \
        == "tasktracker_app true"
    assert project_containers(sandbox, "postgres") == ""
    status = sandbox.fab("status", env_file=env).stdout
    assert "db-client" in status and "\npostgres" not in status and " postgres " not in status, \
        status
    assert "database managed (DATABASE_HOST): reached over TLSv1.3 (TLS true)" in status, status
    assert "point in time: the managed database's provider's" in status, status


def test_a_deploy_under_load_fails_no_request(sandbox, server, deployed_managed):
    env = settings(sandbox, server, "managed-2", API_WORKERS=2)
    urls = [sandbox.app_url(APP, "/"), sandbox.app_url(APP, "/api/health")]
    with LoadProbe(urls) as load:
        out = sandbox.fab("deploy", "--skip-build", env_file=env)
    assert "is live on sandbox" in out.stdout and "NOTICE" not in out.stdout, out.stdout
    assert load.results and load.failures() == [], load.failures()[:5]


def test_a_backup_is_a_verified_logical_dump_over_tls(sandbox, server, deployed_managed):
    env, _ = deployed_managed
    rows = int(on_server(server, "SELECT count(*) FROM tasks"))
    out = sandbox.fab("backup", env_file=env).stdout
    assert "managed database: a logical dump over the network (TLS)" in out, out
    assert "point-in-time recovery is the managed database's provider's" in out, out
    assert "is complete and verified" in out, out
    backups = sandbox.home / APP / "backups"
    name = sorted(p.name for p in backups.iterdir() if p.name[:1].isdigit())[-1]
    manifest = json.loads((backups / name / "manifest.json").read_text())
    assert manifest["verification"]["result"] == "ok" and manifest["verification"]["rows"] >= rows
    # the scratch database it restored into is gone from the provider's server
    assert on_server(server, "SELECT count(*) FROM pg_database WHERE datname LIKE 'verify_%'") \
        == "0"
    pitr = sandbox.fab("backup.restore", "--to-time", "2026-01-01 00:00:00", "--yes",
                       env_file=env, check=False)
    assert pitr.returncode != 0 and "restore to that moment in the provider's console" in \
        pitr.stderr.replace("Restore", "restore"), pitr.stderr
    doctor = sandbox.fab("doctor", env_file=env, check=False).stdout
    assert "[managed database]" not in doctor and "[WAL archive]" not in doctor, doctor
