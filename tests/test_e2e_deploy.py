"""`fab -H sandbox deploy` end to end: real sshd, Docker Engine, Compose, nginx, Postgres, NATS."""

import json
import os
import re
import shutil
import stat
import subprocess
import time
import urllib.error
import urllib.request

import pytest
from websockets.sync.client import connect as ws_connect

from tests.support import ROOT, LoadProbe, copy_project, wait_for

pytestmark = pytest.mark.e2e


def http(url, data=None):
    req = urllib.request.Request(url, data=json.dumps(data).encode() if data is not None else None,
                                 headers={"Content-Type": "application/json"} if data is not None else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as res:
            return res.status, res.headers, res.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read().decode()


def current_release(sandbox) -> str:
    return os.readlink(sandbox.host_path("tasktracker/current")).split("/")[-1]


def releases(sandbox) -> list[str]:
    path = sandbox.host_path("tasktracker/releases")
    return sorted(os.listdir(path)) if path.exists() else []


def test_deploy_prints_a_step_table_and_switches_current(sandbox, deployed):
    out = deployed.stdout
    for step in ("connect and check host", "build frontend", "upload files (rsync)", "build images",
                 "start postgres and nats", "migrate database", "replace api (new beside old)", "restart worker (graceful)",
                 "switch current and reload nginx", "health checks", "record release and prune", "total"):
        assert step in out
    release = current_release(sandbox)
    assert re.fullmatch(r"\d{8}T\d{6}Z-\w+", release)
    assert f"Release {release} is live on sandbox." in out
    meta = json.loads(sandbox.host_path(f"tasktracker/releases/{release}/RELEASE.json").read_text())
    assert meta["result"] == "ok" and meta["compose"] == "v2"
    status, _, body = http(sandbox.url("/api/version"))
    assert status == 200 and json.loads(body)["release"] == release


def test_dashboard_and_hashed_assets_are_served_with_the_right_cache_headers(sandbox, deployed):
    status, headers, html = http(sandbox.url("/"))
    assert status == 200 and "<div id=\"root\">" in html
    assert headers["Cache-Control"] == "no-cache"
    csp = headers["Content-Security-Policy"]
    needed = ("default-src 'self'", "connect-src 'self'", "frame-ancestors 'none'")
    assert all(part in csp for part in needed), csp
    local_html = (ROOT / "frontend" / "dist" / "index.html").read_text()
    assets = re.findall(r'"(/assets/[^"]+)"', local_html)
    assert assets and all(a in html for a in assets)
    for asset in assets:
        status, headers, _ = http(sandbox.url(asset))
        assert status == 200
        assert "immutable" in headers["Cache-Control"] and "max-age=31536000" in headers["Cache-Control"]
    assert headers.get("Server") == "nginx"  # server_tokens off: no version
    status, _, body = http(sandbox.url("/some/spa/route"))
    assert status == 200 and "<div id=\"root\">" in body


def test_api_health_is_ok_through_nginx(sandbox, deployed):
    status, _, body = http(sandbox.url("/api/health"))
    health = json.loads(body)
    assert status == 200
    assert health["checks"]["database"]["ok"] and health["checks"]["nats"]["ok"]


def test_nginx_refuses_a_burst_from_one_client_and_serves_it_again_after(sandbox, deployed):
    """Rate limiting end to end (nginx/nginx.conf): 200 API requests at once from one address get
    429 beyond the burst, none fails otherwise, and the same client is served again once the burst
    has drained. The load probes of the other tests (sequential clients) are only slowed."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(200) as pool:
        statuses = list(pool.map(lambda _: http(sandbox.url("/api/version"))[0], range(200)))
    assert set(statuses) == {200, 429} and statuses.count(429) >= 40, sorted(statuses)
    wait_for(lambda: http(sandbox.url("/api/version"))[0] == 200, 30,
             what="the API serving the same client again after the burst")


def test_a_task_is_stored_processed_and_announced_on_the_websocket(sandbox, deployed):
    with ws_connect(sandbox.url("/ws").replace("http", "ws"), open_timeout=10) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "hello"
        status, _, body = http(sandbox.url("/api/tasks"), {"title": "Deploy from the sandbox", "body": "end to end"})
        assert status == 201
        task = json.loads(body)
        events = set()
        while events != {"task.created", "task.processed"}:
            event = json.loads(ws.recv(timeout=30))
            if event.get("task", {}).get("id") == task["id"]:
                events.add(event["type"])
    _, _, listed = http(sandbox.url("/api/tasks"))
    assert any(t["id"] == task["id"] and t["status"] == "done" and t["word_count"] == 7 for t in json.loads(listed))
    project = sandbox.project
    row = subprocess.run(["docker", "compose", "-p", project, "exec", "-T", "postgres", "psql", "-U", "postgres",
                          "-d", "tasktracker", "-Atc", f"SELECT title, status, word_count FROM tasks WHERE id = {task['id']}"],
                         capture_output=True, text=True, check=True).stdout.strip()
    assert row == "Deploy from the sandbox|done|7"


def test_env_file_is_private_to_the_deploy_user(sandbox, deployed):
    release = current_release(sandbox)
    env = sandbox.host_path(f"tasktracker/env/{release}.env")
    info = env.stat()
    assert stat.S_IMODE(info.st_mode) == 0o600
    assert stat.S_IMODE(env.parent.stat().st_mode) == 0o700
    import pwd

    assert pwd.getpwuid(info.st_uid).pw_name == sandbox.user
    assert "POSTGRES_PASSWORD=" in env.read_text()
    assert os.readlink(sandbox.host_path("tasktracker/current/.env")) == f"../../env/{release}.env"


def test_nginx_sees_no_settings_backups_or_account_keys(sandbox, deployed):
    """nginx mounts only what it serves: settings, backups, host programs and certbot's state
    are hidden from it (empty tmpfs mounts), its own config and webroot are there."""
    nginx = subprocess.run(["docker", "ps", "-q", "--filter", f"label=com.docker.compose.project={sandbox.project}",
                            "--filter", "label=com.docker.compose.service=nginx"], capture_output=True, text=True).stdout.split()[0]

    def listing(path):
        return subprocess.run(["docker", "exec", nginx, "ls", "-A", path], capture_output=True, text=True).stdout.split()

    assert listing("/srv/app/env") == [] and listing("/srv/app/backups") == [] and listing("/srv/app/bin") == []
    assert sorted(listing("/srv/app/shared")) == ["letsencrypt"]
    assert sorted(listing("/srv/app/shared/letsencrypt")) == ["archive", "live"]
    release = current_release(sandbox)
    assert "index.html" in listing(f"/srv/app/releases/{release}/frontend/dist")
    leaked = subprocess.run(["docker", "exec", nginx, "cat", f"/srv/app/releases/{release}/.env"], capture_output=True, text=True)
    assert leaked.returncode != 0 and "POSTGRES_PASSWORD" not in leaked.stdout


def test_every_service_runs_with_least_privilege(sandbox, deployed):
    """What compose.yml and release.yml ask for is what Docker applied: no capability but the ones a
    service adds back, a read-only root, a pids limit; the API and worker as uid 10001."""
    from tasks.commands.compose import PIDS_LIMITS
    from tests.test_static import CAPABILITIES

    def run(*argv, check=True):
        return subprocess.run(argv, capture_output=True, text=True, check=check)

    for service, caps in CAPABILITIES.items():
        ids = container_ids(sandbox, service)[service]
        assert ids, service
        host = json.loads(run("docker", "inspect", "-f", "{{json .HostConfig}}", ids[0]).stdout)
        added = sorted(cap.removeprefix("CAP_") for cap in host["CapAdd"] or [])  # Docker adds CAP_
        assert host["CapDrop"] == ["ALL"] and added == caps, service
        assert host["ReadonlyRootfs"] is True and host["PidsLimit"] == PIDS_LIMITS[service], service
        wrote = run("docker", "exec", ids[0], "sh", "-c", "touch /probe", check=False)
        assert wrote.returncode != 0 and "Read-only file system" in wrote.stderr, (service, wrote)
    for service in ("api", "worker"):
        container = container_ids(sandbox, service)[service][0]
        uid = run("docker", "exec", container, "id", "-u").stdout.strip()
        assert uid == "10001", service


def test_secrets_never_appear_in_deploy_output(sandbox, deployed):
    env = dict(line.split("=", 1) for line in (sandbox.dir / ".env").read_text().splitlines() if "=" in line and not line.startswith("#"))
    for key in ("POSTGRES_PASSWORD", "TELEGRAM_BOT_TOKEN", "OPENAI_API_KEY"):
        assert env[key] not in deployed.stdout + deployed.stderr


def test_redeploy_with_nothing_changed_keeps_serving_and_sends_nothing(sandbox, deployed):
    before = current_release(sandbox)
    out = sandbox.fab("deploy", "--skip-build")
    assert f"Nothing changed since release {before}" in out.stdout
    assert current_release(sandbox) == before
    assert http(sandbox.url("/api/health"))[0] == 200
    out = sandbox.fab("deploy")
    assert "Frontend is up to date" in out.stdout and "Nothing changed" in out.stdout


def container_ids(sandbox, *services: str) -> dict[str, list[str]]:
    return {s: sorted(subprocess.run(["docker", "ps", "-q", "--filter", f"label=com.docker.compose.project={sandbox.project}",
                                      "--filter", f"label=com.docker.compose.service={s}"],
                                     capture_output=True, text=True, check=True).stdout.split()) for s in services}


def test_a_dashboard_only_change_leaves_the_api_and_worker_alone(sandbox, deployed, tmp_path):
    copy = copy_project(tmp_path / "project")
    shutil.copytree(ROOT / "frontend" / "dist", copy / "frontend" / "dist")
    index = copy / "frontend" / "dist" / "index.html"
    index.write_text(index.read_text().replace("</body>", "<!-- dashboard-only change -->\n</body>"))
    before, api_release = current_release(sandbox), json.loads(http(sandbox.url("/api/version"))[2])["release"]
    ids = container_ids(sandbox, "api", "worker", "postgres", "nats", "nginx")
    env = sandbox.dir / ".env"
    with LoadProbe([sandbox.url("/"), sandbox.url("/api/tasks"), sandbox.url("/api/health")]) as load:
        out = sandbox.fab_in(copy, "deploy", "--skip-build", env_file=env)
    assert current_release(sandbox) != before
    assert container_ids(sandbox, "api", "worker", "postgres", "nats", "nginx") == ids  # not one container replaced
    assert "<!-- dashboard-only change -->" in http(sandbox.url("/"))[2]
    assert json.loads(http(sandbox.url("/api/version"))[2])["release"] == api_release  # the API's truth: where it came from
    assert f"skipped (unchanged since {api_release}: its containers keep running)" in out.stdout
    assert re.search(r"remote commands: [0-7] ", out.stdout), out.stdout[-600:]
    assert load.failures() == [] and len(load.results) > 10
    listing = sandbox.fab("releases").stdout
    assert any(line.startswith(f"* {current_release(sandbox)}") and line.endswith(f" {api_release}") for line in listing.splitlines())

    noop = sandbox.fab_in(copy, "deploy", "--skip-build", env_file=env)
    assert "Nothing changed since release" in noop.stdout and re.search(r"remote commands: [0-3]\b", noop.stdout), noop.stdout
    assert not (sandbox.host_path("tasktracker/.deploy.lock")).exists()

    rolled = sandbox.fab("rollback", "--to", before)  # the same backend: the API is left alone again
    assert "skipped" in rolled.stdout and current_release(sandbox) == before
    assert container_ids(sandbox, "api", "worker", "postgres", "nats", "nginx") == ids
    assert "<!-- dashboard-only change -->" not in http(sandbox.url("/"))[2]


def test_a_changed_release_is_deployed_and_old_releases_are_pruned(sandbox, deployed):
    first = current_release(sandbox)
    seen = [first]
    for workers in (2, 1, 2):
        env_file = sandbox.env_file("changed.env", API_WORKERS=workers, KEEP_RELEASES=2)
        out = sandbox.fab("deploy", "--skip-build", env_file=env_file)
        assert "sent " in out.stdout
        seen.append(current_release(sandbox))
        time.sleep(1)  # release ids have one-second resolution
    assert len(set(seen)) == 4
    assert releases(sandbox) == sorted(seen[-2:])
    status, _, body = http(sandbox.url("/api/version"))
    assert json.loads(body)["release"] == seen[-1]
    # Unchanged files of a new release are hard links to the previous release's copies.
    a, b = (sandbox.host_path(f"tasktracker/releases/{r}/compose.yml").stat() for r in seen[-2:])
    assert a.st_ino == b.st_ino


def test_compose_tasks_work_on_the_current_release(sandbox, deployed):
    ps = sandbox.fab("compose.ps").stdout
    for service in ("api", "worker", "nginx", "postgres", "nats"):
        assert service in ps
    assert "dashboard" not in ps
    logs = sandbox.fab("compose.logs", "--service", "api", "--tail", "20").stdout
    assert re.search(r"api[-_]\d+", logs), logs[:500]
    out = sandbox.fab("migrate")
    assert out.returncode == 0
    sandbox.fab("compose.restart", "--service", "worker")
    wait_for(lambda: http(sandbox.url("/api/health"))[0] == 200, 60, what="health after restart")
