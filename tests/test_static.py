"""The stack files, checked with the real tools: nginx, Compose v1 and v2, hadolint, uv, invoke."""

import os
import re
import shutil
import signal
import subprocess
import sys

import pytest
import yaml

from tests.support import ROOT, compose_v2_binary

# The plan's limits and reservations (vps-deployment-strategy.md, "Resource Analysis").
PLAN_LIMITS = {
    "postgres": ("2G", "2.0", "512M", "0.5"),
    "nats": ("512M", "0.5", "64M", "0.1"),
    "worker": ("2G", "2.0", "512M", "0.5"),
    "api": ("1G", "1.0", "256M", "0.25"),
    "dashboard": ("512M", "0.5", "128M", "0.1"),
    "nginx": ("256M", "0.5", "64M", "0.1"),
}
PRODUCTION_NGINX = ("128M", "0.3")
UNITS = {"M": 2**20, "G": 2**30}


def to_bytes(value) -> int:
    text = str(value)
    return int(text[:-1]) * UNITS[text[-1]] if text[-1] in UNITS else int(text)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A copy of the stack files with a .env from .env.example, as on a host."""
    d = tmp_path_factory.mktemp("stack")
    for name in ("compose.yml", "compose.override.yml", "docker-compose.production.yml"):
        shutil.copy(ROOT / name, d / name)
    for name in ("nginx", "backend", "postgres", "frontend"):
        (d / name).symlink_to(ROOT / name)
    shutil.copy(ROOT / ".env.example", d / ".env")
    # What the deploy adds (settings.env_values): the app role's password.
    with open(d / ".env", "a") as env:
        env.write("APP_DB_PASSWORD=derived-from-postgres-password\n")
    return d


COMPOSE_TOOLS = {
    "v1": ["/usr/bin/docker-compose", "--compatibility"],
    "v2": [compose_v2_binary()],
}


def compose_config(project, tool, *files):
    argv = [*COMPOSE_TOOLS[tool]]
    for f in files:
        argv += ["-f", f]
    out = subprocess.run([*argv, "config"], cwd=project, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return yaml.safe_load(out.stdout)


@pytest.mark.parametrize("tool", ["v1", "v2"])
def test_compose_files_validate(project, tool):
    def targets(config):
        return {v["target"] if isinstance(v, dict) else v.split(":")[1] for v in config["services"]["nginx"]["volumes"]}

    dev = compose_config(project, tool, "compose.yml", "compose.override.yml")
    assert set(dev["services"]) == set(PLAN_LIMITS)
    assert {"/etc/nginx/nginx.conf", "/srv/app/current/frontend/dist"} <= targets(dev)
    prod = compose_config(project, tool, "compose.yml", "docker-compose.production.yml")
    # Production nginx sees the app directory and runs the current release's config.
    assert {"/srv/app", "/etc/nginx/conf.d"} <= targets(prod)
    assert "/etc/nginx/nginx.conf" not in targets(prod)
    assert "/srv/app/current/nginx/nginx.conf" in prod["services"]["nginx"]["command"]
    assert "--workers" in prod["services"]["api"]["command"]


def test_production_runs_no_dashboard_container(project):
    """`config --services` lists only what `up` starts (profiles honoured) in v2; v1 reads the profile too."""
    out = subprocess.run([compose_v2_binary(), "-f", "compose.yml", "-f", "docker-compose.production.yml", "config", "--services"],
                         cwd=project, capture_output=True, text=True, check=True)
    assert "dashboard" not in out.stdout.split()
    assert "nginx" in out.stdout.split()
    v1 = compose_config(project, "v1", "compose.yml", "docker-compose.production.yml")
    assert v1["services"]["dashboard"]["profiles"] == ["development-only"]


def test_resource_limits_match_the_plan(project):
    for files, overrides in ((["compose.yml", "compose.override.yml"], {}), (["compose.yml", "docker-compose.production.yml"], {"nginx": PRODUCTION_NGINX})):
        config = compose_config(project, "v2", *files)
        for name, (mem, cpus, rmem, rcpus) in PLAN_LIMITS.items():
            if name not in config["services"]:
                continue
            res = config["services"][name]["deploy"]["resources"]
            mem, cpus = overrides.get(name, (mem, cpus))
            assert to_bytes(res["limits"]["memory"]) == to_bytes(mem), name
            assert float(res["limits"]["cpus"]) == float(cpus), name
            assert to_bytes(res["reservations"]["memory"]) == to_bytes(rmem), name
            assert float(res["reservations"]["cpus"]) == float(rcpus), name


def test_production_publishes_nothing_but_nginx_and_development_only_on_loopback(project):
    """A port published on 127.0.0.1 is reachable from the network segment by routing to the
    container on Docker Engine before 28 (moby/moby#45610): production publishes only nginx's."""
    config = compose_config(project, "v2", "compose.yml", "docker-compose.production.yml")
    assert {name for name, service in config["services"].items() if service.get("ports")} == {"nginx"}
    development = compose_config(project, "v2", "compose.yml", "compose.override.yml")
    for name in ("postgres", "nats"):
        ports = development["services"][name]["ports"]
        assert ports and all(port["host_ip"] == "127.0.0.1" for port in ports), (name, ports)
    assert config["services"]["nats"]["command"][:1] == ["--jetstream"]
    assert "8222" in config["services"]["nats"]["command"]
    # NATS monitoring has no login: it listens on the nats container's loopback only, and is
    # published nowhere, not even in development (read it with `docker compose exec`).
    assert 'http: "127.0.0.1:8222"' in config["services"]["nats"]["entrypoint"][2]
    assert all(port["target"] != 8222 for port in development["services"]["nats"]["ports"])
    for name in ("postgres", "nats", "api", "worker", "nginx"):
        assert config["services"][name]["healthcheck"]["test"], name
        assert config["services"][name]["restart"] == "unless-stopped"


@pytest.mark.parametrize("tool", ["v1", "v2"])
def test_every_service_rotates_its_logs_and_cannot_gain_privileges(project, tool):
    raw = (ROOT / "compose.yml").read_text()
    services = yaml.safe_load(raw)["services"]
    takes = re.findall(r"^    <<: (?:\*service|\[\*service, \*locked-down\])$", raw, re.M)
    assert len(takes) == len(services), "every service takes the shared x-service block"
    for files in (["compose.yml", "compose.override.yml"], ["compose.yml", "docker-compose.production.yml"]):
        config = compose_config(project, tool, *files)
        for name, service in config["services"].items():
            assert service["logging"] == {"driver": "json-file", "options": {"max-size": "10m", "max-file": "3"}}, (files, name)
            assert "no-new-privileges:true" in service["security_opt"], (files, name)


# What each production service gets back after dropping every capability: found by running each
# image without them (docs/security.md, "Containers").
CAPABILITIES = {
    "postgres": ["CHOWN", "DAC_OVERRIDE", "FOWNER", "KILL", "SETGID", "SETUID"],
    "nginx": ["CHOWN", "DAC_READ_SEARCH", "SETGID", "SETUID"],
    "nats": [], "api": [], "worker": [],
}


@pytest.mark.parametrize("tool", ["v1", "v2"])
def test_production_services_run_with_least_privilege(project, tool, tmp_path):
    """No capability but the ones a service adds back, a read-only root with a tmpfs /tmp, a pids
    limit (from release.yml, in the form this Compose reads), and a non-root backend image."""
    from tasks.commands.compose import PIDS_LIMITS, release_override

    (project / "release.yml").write_text(release_override("tt-backend:abc", "r1", variant=tool))
    files = ("compose.yml", "docker-compose.production.yml", "release.yml")
    config = compose_config(project, tool, *files)
    for name, caps in CAPABILITIES.items():
        service = config["services"][name]
        assert service["cap_drop"] == ["ALL"] and sorted(service.get("cap_add", [])) == caps, name
        assert service["read_only"] is True, name
        tmpfs = [v for v in service["volumes"]
                 if isinstance(v, dict) and v["type"] == "tmpfs" and v["target"] == "/tmp"]
        by_key = "/tmp:size=67108864" in service.get("tmpfs", [])  # postgres's, below
        assert tmpfs and tmpfs[0]["tmpfs"]["size"] or by_key, name
        limits = service["deploy"]["resources"]["limits"]
        pids = service["pids_limit"] if tool == "v1" else limits["pids"]
        assert int(pids) == PIDS_LIMITS[name], name
    assert config["services"]["api"]["image"] == "tt-backend:abc"
    postgres = {v["target"] if isinstance(v, dict) else v.split(":")[1]
                for v in config["services"]["postgres"]["volumes"]}
    assert {"/var/lib/postgresql/data", "/var/lib/pgbackrest"} <= postgres
    # tmpfs mounts by the `tmpfs:` key: a one-off `docker run --volumes-from` it (a restore) works
    tmpfs = ["/var/run/postgresql:size=1048576", "/tmp:size=67108864"]
    assert config["services"]["postgres"]["tmpfs"] == tmpfs
    user = re.findall(r"^USER (\S+)$", (ROOT / "backend" / "Dockerfile").read_text(), re.M)
    assert user and user[-1] not in ("root", "0"), user


@pytest.mark.parametrize("tool", ["v1", "v2"])
def test_nats_login_comes_from_env_and_stays_off_command_lines(project, tool):
    from dotenv import dotenv_values

    env = dotenv_values(project / ".env")
    config = compose_config(project, tool, "compose.yml", "docker-compose.production.yml")
    nats = config["services"]["nats"]
    # Only the login enters the nats container, not the whole .env with the app's secrets.
    assert "env_file" not in nats
    assert nats["environment"] == {"NATS_USER": env["NATS_USER"], "NATS_PASSWORD": env["NATS_PASSWORD"]}
    argv = " ".join(nats["entrypoint"] + nats["command"])
    assert env["NATS_PASSWORD"] not in argv and "--pass" not in argv and "--user" not in argv
    assert "--config" in argv and nats["command"][:1] == ["--jetstream"]
    for name in ("api", "worker"):
        environment = config["services"][name]["environment"]
        assert (environment["NATS_USER"], environment["NATS_PASSWORD"]) == (env["NATS_USER"], env["NATS_PASSWORD"]), name


def test_postgres_drops_a_vanished_client_within_half_a_minute(project):
    """A worker whose node lost power holds its task's row lock until Postgres drops its
    connection: keepalives bound that to idle + interval * count seconds (Linux: two hours)."""
    command = compose_config(project, "v2", "compose.yml", "docker-compose.production.yml")[
        "services"]["postgres"]["command"]
    options = dict(arg.split("=", 1) for arg in command if "=" in arg)
    seconds = sum(int(options[f"tcp_keepalives_{k}"]) * (int(options["tcp_keepalives_count"])
                  if k == "interval" else 1) for k in ("idle", "interval"))
    assert seconds <= 30, options


def test_api_trusts_forwarded_headers_only_from_the_compose_network(project):
    import asyncio
    import ipaddress

    from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

    command = compose_config(project, "v2", "compose.yml", "docker-compose.production.yml")["services"]["api"]["command"]
    assert "--proxy-headers" in command
    allowed = command[command.index("--forwarded-allow-ips") + 1]
    assert allowed != "*"
    for entry in allowed.split(","):
        # uvicorn silently treats an entry that is not an address or network as a host name: parse each here.
        assert ipaddress.ip_network(entry.strip()).is_private, entry

    async def client_seen(peer: str) -> str:
        seen = {}

        async def app(scope, receive, send):
            seen["client"] = scope["client"][0]

        scope = {"type": "http", "scheme": "http", "client": (peer, 40000), "headers": [(b"x-forwarded-for", b"198.51.100.7")]}
        await ProxyHeadersMiddleware(app, trusted_hosts=allowed)(scope, None, None)
        return seen["client"]

    for docker_peer in ("172.17.0.2", "172.18.0.5", "172.31.255.3", "192.168.16.4", "10.10.0.3"):
        assert asyncio.run(client_seen(docker_peer)) == "198.51.100.7", docker_peer
    for outsider in ("203.0.113.9", "8.8.8.8"):
        assert asyncio.run(client_seen(outsider)) == outsider


def test_nginx_config_passes_nginx_t(tmp_path):
    conf = (ROOT / "nginx" / "nginx.conf").read_text()
    # Point the HTTPS include at the repository's conf.d, everything else as in the container.
    conf = conf.replace("/etc/nginx/conf.d/", f"{ROOT}/nginx/conf.d/")
    conf = conf.replace("/tmp/nginx-", f"{tmp_path}/nginx-")
    path = tmp_path / "nginx.conf"
    path.write_text(conf)
    for name in ("app-locations.conf", "maintenance.conf"):
        shutil.copy(ROOT / "nginx" / name, tmp_path / name)
    out = subprocess.run(["nginx", "-t", "-c", str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "syntax is ok" in out.stderr
    # A rollback's check: the release checked is older than the maintenance switch (no file).
    (tmp_path / "maintenance.conf").unlink()
    out = subprocess.run(["nginx", "-t", "-c", str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_nginx_config_has_what_an_operator_expects():
    conf = (ROOT / "nginx" / "nginx.conf").read_text() + (ROOT / "nginx" / "app-locations.conf").read_text()
    for needle in ("server_tokens off;", "gzip on;", "resolver 127.0.0.11", "location ^~ /.well-known/acme-challenge/",
                   "location = /nginx-health", "location /ws", "proxy_set_header Upgrade $http_upgrade;",
                   "try_files $uri $uri/ /index.html;", 'add_header Cache-Control "no-cache";', "immutable"):
        assert needle in conf, needle
    # The API is reached through a variable, so Docker's DNS is asked again after a container is replaced.
    assert re.search(r"proxy_pass \$api_upstream;", conf)
    assert "proxy_pass http://api" not in conf
    assert "$proxy_add_x_forwarded_for" not in conf  # a client's own X-Forwarded-For is never passed on


SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "strict-origin-when-cross-origin",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": ("default-src 'self'; connect-src 'self'; object-src 'none'; "
                                "base-uri 'self'; form-action 'self'; frame-ancestors 'none'"),
}


def test_locations_with_their_own_add_header_repeat_the_servers():
    """nginx drops every inherited add_header in a location that has one of its own."""
    conf = (ROOT / "nginx" / "app-locations.conf").read_text()
    server_level = {line for line in conf.splitlines() if line.startswith("add_header ")}
    assert {f"add_header {name} \"{value}\" always;" for name, value in SECURITY_HEADERS.items()} <= server_level
    blocks = re.findall(r"^location ([^{]+)\{(.*?)^\}", conf, re.M | re.S)
    assert len(blocks) >= 6
    for where, body in blocks:
        lines = {line.strip() for line in body.splitlines()}
        if any(line.startswith("add_header ") for line in lines):
            assert server_level <= lines, f"location {where.strip()} drops {server_level - lines}"
    http_level = (ROOT / "nginx" / "nginx.conf").read_text()
    for name, value in SECURITY_HEADERS.items():  # for servers without add_header (the TLS redirect)
        assert f"add_header {name} \"{value}\" always;" in http_level


@pytest.fixture
def local_nginx():
    """The real nginx.conf + app-locations.conf on a loopback port, with a built dist and an
    upstream that answers every request with the headers it received."""
    import http.server
    import json
    import tempfile
    import threading
    import time
    import urllib.request

    from tests.support import free_port, port_open, wait_for

    held = threading.Semaphore(0)  # one release per request held at /ws/hold
    holding: list[int] = []

    class Echo(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/ws/hold":  # a long-lived /ws connection, until the test releases it
                holding.append(1)
                held.acquire()
            body = json.dumps({k.lower(): v for k, v in self.headers.items()}).encode()
            self.send_response(200)
            self.send_header("X-Upstream-Port", str(self.server.server_address[1]))
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    class Upstream(http.server.ThreadingHTTPServer):
        request_queue_size = 256  # the burst test's connections all wait in the backlog at once

    upstream = Upstream(("127.0.0.1", 0), Echo)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    # nginx's workers run as nobody: a directory they can read (pytest's tmp dirs are private).
    d = tempfile.mkdtemp(prefix="tasktracker-test-nginx-")
    os.chmod(d, 0o755)
    dist = os.path.join(d, "dist")
    os.makedirs(os.path.join(dist, "assets"))
    os.makedirs(os.path.join(d, "conf.d"))
    with open(os.path.join(dist, "index.html"), "w") as f:
        f.write("<!doctype html><script src=/assets/app-1234.js></script>")
    with open(os.path.join(dist, "assets", "app-1234.js"), "w") as f:
        f.write("console.log(1)")
    port = free_port()
    conf = (ROOT / "nginx" / "nginx.conf").read_text()
    for old, new in (("pid /tmp/nginx.pid;", f"pid {d}/nginx.pid;"), ("root /srv/app/current/frontend/dist;", f"root {dist};"),
                     ("/etc/nginx/conf.d/", f"{d}/conf.d/"), ("/tmp/nginx-", f"{d}/nginx-")):
        assert old in conf, old
        conf = conf.replace(old, new)
    conf, listens = re.subn(r"\blisten 80\b", f"listen 127.0.0.1:{port}", conf)
    assert listens == 1
    locations = (ROOT / "nginx" / "app-locations.conf").read_text()
    assert "set $api_upstream http://api:8000;" in locations
    locations = locations.replace("set $api_upstream http://api:8000;", f"set $api_upstream http://127.0.0.1:{upstream.server_address[1]};")
    locations = locations.replace("/etc/nginx/conf.d/", f"{d}/conf.d/")
    with open(os.path.join(d, "nginx.conf"), "w") as f:
        f.write(conf)
    with open(os.path.join(d, "app-locations.conf"), "w") as f:
        f.write(locations)
    maintenance = (ROOT / "nginx" / "maintenance.conf").read_text()
    assert "if (-f /srv/app/.recovering)" in maintenance
    with open(os.path.join(d, "maintenance.conf"), "w") as f:
        f.write(maintenance.replace("/srv/app/.recovering", f"{d}/.recovering"))
    log = open(os.path.join(d, "nginx.log"), "w")
    proc = subprocess.Popen(["nginx", "-c", os.path.join(d, "nginx.conf"), "-g", "daemon off;"], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: proc.poll() is None and port_open(port), 15, what="nginx")

        def get(path, headers=None):
            req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers or {})
            try:
                with urllib.request.urlopen(req, timeout=5) as res:
                    return res.status, res.headers, res.read()
            except urllib.error.HTTPError as err:
                return err.code, err.headers, err.read()

        get.holding, get.held = holding, held

        def send(method, path, source="127.0.0.1"):
            """One request from `source` (127.0.0.1 is nginx's own address, as the recovery's
            probe is in its network namespace; any other loopback address is a client)."""
            import http.client

            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5, source_address=(source, 0))
            try:
                conn.request(method, path, body=b"{}" if method != "GET" else None)
                res = conn.getresponse()
                return res.status, res.headers, res.read()
            finally:
                conn.close()

        get.send, get.flag = send, os.path.join(d, ".recovering")
        get.conf_d, get.upstream_port = os.path.join(d, "conf.d"), upstream.server_address[1]
        get.echo, get.reload = Echo, lambda: proc.send_signal(signal.SIGHUP)
        yield get
    finally:
        for _ in holding:
            held.release()
        proc.terminate()
        proc.wait(10)
        upstream.shutdown()
        time.sleep(0.1)
        shutil.rmtree(d, ignore_errors=True)


def test_nginx_sends_security_headers_on_every_response(local_nginx):
    paths = {"/": 200, "/tasks/42": 200, "/assets/app-1234.js": 200, "/assets/missing.js": 404, "/nginx-health": 200,
             "/api/tasks": 200, "/ws": 200, "/.well-known/acme-challenge/nothing": 404}
    for path, status in paths.items():
        got, headers, _ = local_nginx(path)
        assert got == status, path
        for name, value in SECURITY_HEADERS.items():
            assert headers.get_all(name) == [value], (path, name, headers.get_all(name))
        assert headers.get("Strict-Transport-Security") is None, path  # HTTPS only
    assert local_nginx("/")[1]["Cache-Control"] == "no-cache"
    assert local_nginx("/assets/app-1234.js")[1]["Cache-Control"] == "public, max-age=31536000, immutable"


def test_a_recovering_host_answers_503_recovering_to_every_client(local_nginx):
    """Issue 26: while APP_DIR/.recovering exists every client gets 503 "recovering" (JSON under
    /api/, a page elsewhere), writes included; only nginx's own address (the recovery's probe)
    reads through, and never writes. Without the file everything is served again at once."""
    import json

    client = "127.0.0.3"
    assert local_nginx.send("GET", "/api/tasks", client)[0] == 200
    with open(local_nginx.flag, "w") as f:
        f.write("20261207T020000Z\n")
    for method, path in (("GET", "/api/health"), ("GET", "/api/tasks"), ("POST", "/api/tasks"), ("PUT", "/api/tasks/1"),
                         ("DELETE", "/api/tasks/1"), ("POST", "/api/telegram/webhook")):
        status, headers, body = local_nginx.send(method, path, client)
        assert (status, json.loads(body)["status"]) == (503, "recovering"), (method, path)
        assert headers["Content-Type"] == "application/json"
        for name, value in SECURITY_HEADERS.items():
            assert headers.get_all(name) == [value], (path, name)
    for path in ("/", "/tasks/42", "/assets/app-1234.js", "/ws", "/nginx-health"):
        status, headers, body = local_nginx.send("GET", path, client)
        assert status == 503 and b"Task Tracker is recovering" in body, path
        assert headers["Content-Type"].startswith("text/html"), path
    assert local_nginx.send("GET", "/.recovering.html", client)[0] == 503
    for path in ("/api/health", "/", "/assets/app-1234.js", "/nginx-health"):  # the probe reads
        assert local_nginx.send("GET", path)[0] == 200, path
    assert local_nginx.send("POST", "/api/tasks")[0] == 503  # but does not write
    os.remove(local_nginx.flag)
    assert local_nginx.send("GET", "/api/tasks", client)[0] == 200
    assert local_nginx.send("GET", "/", client)[0] == 200
    assert local_nginx.send("GET", "/.recovering.html", client)[0] == 404  # internal only


def test_a_pinned_api_gets_every_new_request_and_unpinned_the_service_name_again(local_nginx):
    """What `rollout.pin_new_api` writes (conf.d/api-upstream.inc) moves the API to the container it
    names at nginx's next reload, and removing it moves the API back (here: two local upstreams)."""
    import http.server
    import threading
    import time

    from tasks.commands.rollout import API_PIN

    pinned = http.server.ThreadingHTTPServer(("127.0.0.1", 0), local_nginx.echo)
    threading.Thread(target=pinned.serve_forever, daemon=True).start()
    pin = os.path.join(local_nginx.conf_d, API_PIN)

    def upstreams_after_reload() -> set[str]:
        local_nginx.reload()
        time.sleep(0.5)  # the new workers take over; the old ones close their idle connections
        return {local_nginx("/api/tasks")[1]["X-Upstream-Port"] for _ in range(20)}

    try:
        with open(pin, "w") as f:
            f.write(f"set $api_upstream http://127.0.0.1:{pinned.server_address[1]};\n")
        assert upstreams_after_reload() == {str(pinned.server_address[1])}
        os.unlink(pin)
        assert upstreams_after_reload() == {str(local_nginx.upstream_port)}
    finally:
        pinned.shutdown()


def test_nginx_sets_the_client_address_itself(local_nginx):
    import json

    spoofed = {"X-Forwarded-For": "203.0.113.66", "X-Real-IP": "203.0.113.66", "X-Forwarded-Proto": "https"}
    for path in ("/api/tasks", "/ws"):
        status, _, body = local_nginx(path, spoofed)
        seen = json.loads(body)
        assert status == 200, path
        assert seen["x-forwarded-for"] == "127.0.0.1", path
        assert seen["x-real-ip"] == "127.0.0.1", path
        assert seen["x-forwarded-proto"] == "http", path


def location_block(conf: str, where: str) -> str:
    match = re.search(rf"^location {re.escape(where)} \{{(.*?)^\}}", conf, re.M | re.S)
    assert match, where
    return match.group(1)


def test_nginx_limits_each_client_on_the_api_and_the_websocket():
    """Request-rate and connection limits keyed by the client's address, 429 beyond them, and a
    bounded idle time on /ws (it was an hour)."""
    http_level = (ROOT / "nginx" / "nginx.conf").read_text()
    locations = (ROOT / "nginx" / "app-locations.conf").read_text()
    zones = re.findall(r"^\s*limit_req_zone \$binary_remote_addr zone=(\w+):\d+m rate=\d+r/s;",
                       http_level, re.M)
    conn_zones = re.findall(r"^\s*limit_conn_zone \$binary_remote_addr zone=(\w+):\d+m;",
                            http_level, re.M)
    assert set(zones) == {"api", "ws"} and set(conn_zones) == {"api_conn", "ws_conn"}
    assert "limit_req_status 429;" in http_level and "limit_conn_status 429;" in http_level
    api, ws = location_block(locations, "/api/"), location_block(locations, "/ws")
    for block, zone in ((api, "api"), (ws, "ws")):
        assert re.search(rf"limit_req zone={zone} burst=\d+ delay=\d+;", block), zone
        assert re.search(rf"limit_conn {zone}_conn \d+;", block), zone
    idle = re.search(r"proxy_read_timeout (\d+)s;", ws)
    assert idle and 60 <= int(idle.group(1)) <= 300, "a bounded /ws idle time (uvicorn pings: 20 s)"
    for static in ("/assets/", "/"):  # the dashboard's files are not rate-limited
        assert "limit_" not in location_block(locations, static)


def test_nginx_refuses_a_burst_from_one_client_but_only_slows_sequential_clients(local_nginx):
    """Seven clients from one address that each wait for their answer (the load probes' shape)
    are never refused, however fast they ask; 200 requests at once get 429 beyond the burst."""
    from concurrent.futures import ThreadPoolExecutor

    def sequential(client):
        return [local_nginx(f"/api/tasks?client={client}&n={n}")[0] for n in range(20)]

    with ThreadPoolExecutor(7) as pool:
        statuses = [status for statuses in pool.map(sequential, range(7)) for status in statuses]
    assert statuses == [200] * 140
    with ThreadPoolExecutor(200) as pool:
        burst = list(pool.map(lambda n: local_nginx(f"/api/tasks?burst={n}")[0], range(200)))
    assert set(burst) == {200, 429} and burst.count(429) >= 40, sorted(burst)


def test_nginx_caps_open_websockets_per_client(local_nginx):
    """The 17th /ws connection one address holds open at once is refused (429); 16 pass."""
    from concurrent.futures import ThreadPoolExecutor

    from tests.support import wait_for

    with ThreadPoolExecutor(16) as pool:
        held = [pool.submit(local_nginx, "/ws/hold") for _ in range(16)]
        wait_for(lambda: len(local_nginx.holding) == 16, 30, what="16 /ws connections upstream")
        refused, _, _ = local_nginx("/ws")
        for _ in range(16):
            local_nginx.held.release()
        local_nginx.holding.clear()
        assert [f.result()[0] for f in held] == [200] * 16
    assert refused == 429
    assert local_nginx("/ws")[0] == 200


def test_dockerfiles_pass_hadolint():
    hadolint = shutil.which("hadolint", path=os.path.dirname(sys.executable))
    out = subprocess.run([hadolint, "backend/Dockerfile", "frontend/Dockerfile", "postgres/Dockerfile"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_shell_programs_pass_shellcheck():
    """The repository's own shell programs (the README's commands, CI's entry point) and the ones
    the toolkit runs on hosts (tasks/programs), in its postgres image (postgres/) or the lab's
    images (lab/programs) lint clean."""
    shellcheck = shutil.which("shellcheck", path=os.path.dirname(sys.executable))
    programs = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "scripts").iterdir() if p.is_file())
    host_programs = sorted(str(p.relative_to(ROOT)) for d in ("tasks", "lab")
                           for p in (ROOT / d / "programs").glob("*.sh"))
    host_programs += sorted(str(p.relative_to(ROOT)) for p in (ROOT / "postgres").glob("*.sh"))
    assert len(host_programs) >= 6
    assert "lab/programs/sandbox-postgres-entrypoint.sh" in host_programs
    out = subprocess.run([shellcheck, *programs, ".ci/run", *host_programs], cwd=ROOT, capture_output=True, text=True)
    assert programs and out.returncode == 0, out.stdout + out.stderr


def test_awk_programs_parse():
    for program in [*(ROOT / "tasks/programs").glob("*.awk"),
                    *(ROOT / "lab/programs").glob("*.awk")]:
        out = subprocess.run(["awk", "-f", str(program)], input="", capture_output=True, text=True)
        assert out.returncode == 0, (program.name, out.stderr)


def test_nft_programs_parse():
    """nftables rulesets (placeholders filled with a sample) pass `nft -c` where nft is installed."""
    nft = shutil.which("nft") or next((p for p in ("/usr/sbin/nft", "/sbin/nft") if os.path.exists(p)), None)
    if not nft:
        pytest.skip("nft is not installed on this machine")
    programs = sorted((ROOT / "tasks" / "programs").glob("*.nft"))
    assert programs
    for program in programs:
        text = re.sub(r"@[A-Z_]+@", "22", program.read_text())
        out = subprocess.run([nft, "-c", "-f", "-"], input=text, capture_output=True, text=True)
        assert out.returncode == 0 or "Operation not permitted" in out.stderr, (program.name, out.stderr)


def test_every_host_program_is_used():
    sources = "".join(p.read_text() for p in (ROOT / "tasks").rglob("*.py"))
    for program in (ROOT / "tasks" / "programs").iterdir():
        assert f'program("{program.name}")' in sources, f"{program.name} is read by no builder"
    lab_sources = "".join(p.read_text() for p in (ROOT / "lab").rglob("*.py"))
    for program in (ROOT / "lab" / "programs").iterdir():
        assert f'"{program.name}"' in lab_sources, f"{program.name} is read by nothing in lab/"


def test_frontend_dockerfile_build_stage_keeps_dev_dependencies():
    text = (ROOT / "frontend" / "Dockerfile").read_text()
    build_stage = text.split("AS build", 1)[1].split("FROM", 1)[0]
    run_lines = [line for line in build_stage.splitlines() if line.startswith("RUN")]
    assert "RUN npm ci" in run_lines and not any("--only=production" in line for line in run_lines)
    assert "AS development" in text and "AS production" in text


def test_backend_requirements_are_the_locked_export():
    out = subprocess.run(["uv", "export", "--only-group", "reference-backend", "--no-hashes", "--no-header", "--no-emit-project", "--frozen", "-q"],
                         cwd=ROOT, capture_output=True, text=True, check=True)
    assert (ROOT / "backend" / "requirements.txt").read_text() == out.stdout


def _listing(tool):
    out = subprocess.run([os.path.join(os.path.dirname(sys.executable), tool), "--list"], cwd=ROOT, capture_output=True, text=True, check=True)
    return [line.split()[0] for line in out.stdout.splitlines()[2:] if line.strip() and line.startswith("  ") and not line.startswith("    ")]


def test_invoke_lists_fabs_tasks_and_the_labs_each_with_summary_and_flag_help():
    """`fab` lists the product's tasks; `invoke` (workbench.py) the same plus the lab's."""
    from lab import ns as lab_ns
    from workbench import ns

    listed = _listing("fab")
    lab_tasks = set(lab_ns.task_names)
    assert "build.frontend" in listed and not lab_tasks & set(listed)
    assert {"sandbox.up", "sandbox.down", "testhost.up"} <= lab_tasks
    listed_by_invoke = _listing("invoke")
    assert [name for name in listed_by_invoke if name not in lab_tasks] == listed
    assert lab_tasks <= set(listed_by_invoke)
    for name in ns.task_names:
        task = ns[name]
        assert task.__doc__ and task.__doc__.strip(), f"{name} has no docstring"
        import inspect

        params = [p for p in inspect.signature(task.body).parameters][1:]
        for p in params:
            assert p in task.help, f"{name} --{p} has no help"
