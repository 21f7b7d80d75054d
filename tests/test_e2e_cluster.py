"""Several hosts (issue 16) on three VM-like hosts on one test-made Docker network: provisioned
hosts -> `cluster.init` (and again: nothing to do) -> `cluster.deploy` -> tasks written and read
through the entry host -> a changed release rolled out by plain `deploy` (ENGINE=auto: the manager is
a swarm manager) under load with no failed request -> `status` and `doctor` show the swarm -> a
release whose API fails its health check: Swarm rolls it back by itself, the deploy puts the
previous release back, no request fails -> `rollback` under load -> a worker node stopped: the API
keeps serving and its replicas move, then the node comes back -> `cluster.drain` of a node under
load with no failed request -> `backup` and `backup.restore` on the data node. Everything made here
is removed by its own records."""

from __future__ import annotations

import json
import os
import re
import shlex
import secrets
import shutil
import socket
import ssl
import subprocess
import time
import urllib.request

import pytest

from tests.capture import Capture
from tests.support import (DOMAIN, ROOT, LoadProbe, Pebble, Registry, TestHosts, Writers,
                           app_settings, copy_project, network_gateway, wait_for)

pytestmark = pytest.mark.e2e
NAMES = ("cl1", "cl2", "cl3")
MANAGER = NAMES[0]


@pytest.fixture(scope="module")
def hosts(docker_machine):  # Docker and the stand-in images on this machine
    made = TestHosts(dict(os.environ))
    network = f"ttcl-{secrets.token_hex(3)}"
    subprocess.run(["docker", "network", "create", network], check=True, capture_output=True)
    made.network = network
    try:
        made.invoke("testhost.up", ",".join(NAMES), "--network", network, timeout=900)  # provisioned, in parallel
        yield made
    finally:
        made.down()
        subprocess.run(["docker", "network", "rm", network], capture_output=True)


@pytest.fixture(scope="module")
def settings(hosts):
    # The overlay's VXLAN from each node's eth0 address (`--data-path-addr`): here the same network.
    return app_settings(hosts.dir / "app.env", SWARM_DATA_PATH="eth0")


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=10) as res:
        return res.status, json.loads(res.read())


def post_task(url: str, title: str) -> int:
    req = urllib.request.Request(url, data=json.dumps({"title": title, "body": "cluster"}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as res:
        return res.status


def status(hosts, settings) -> str:
    return hosts.fab(MANAGER, "cluster.status", env_file=settings).stdout


def node_line(out: str, name: str) -> str:
    return next(line for line in out.splitlines() if line.strip().startswith(name + " "))


def converged(hosts, settings) -> bool:
    return "state: done" in status(hosts, settings)


def test_init_forms_the_swarm_and_again_changes_nothing(hosts, settings):
    started = time.monotonic()
    out = hosts.fab(",".join(NAMES), "cluster.init", env_file=settings)
    print(f"cluster.init: {time.monotonic() - started:.1f}s")
    assert f"{MANAGER}: swarm initialised, manager at" in out.stdout and ", data path " in out.stdout
    # each through the Engine API with the token on stdin, the token rotated after each join
    assert out.stdout.count("joined the swarm as a worker") == 2
    assert out.stdout.count("; the join token was rotated") == 2
    again = hosts.fab(",".join(NAMES), "cluster.init", env_file=settings)
    assert again.stdout.count("already in the swarm") == 3
    listed = status(hosts, settings)
    assert "3 node(s)" in listed
    assert "manager" in node_line(listed, MANAGER) and "data,entry" in node_line(listed, MANAGER)
    for worker in NAMES[1:]:
        assert "worker" in node_line(listed, worker) and "active" in node_line(listed, worker)


def test_deploy_serves_through_the_entry_host(hosts, settings):
    started = time.monotonic()
    out = hosts.fab(MANAGER, "cluster.deploy", env_file=settings, timeout=1200)
    print(f"first cluster.deploy: {time.monotonic() - started:.1f}s")
    print(out.stdout[out.stdout.rfind("Cluster deploy via"):])  # its steps and times (`-s` shows them)
    assert "shipped" in out.stdout and "is live on the swarm (3 nodes)" in out.stdout
    assert get_json(hosts.url(MANAGER, "/api/health"))[1]["status"] == "ok"
    assert post_task(hosts.url(MANAGER, "/api/tasks"), "made on the swarm") == 201
    assert any(t["title"] == "made on the swarm" for t in get_json(hosts.url(MANAGER, "/api/tasks"))[1])
    # The API replicas and the worker log in over the overlay as the app's role, not the superuser
    # (the toolkit's own psql uses the local socket: no client address).
    remote = ("SELECT DISTINCT usename FROM pg_stat_activity "
              "WHERE backend_type = 'client backend' AND client_addr IS NOT NULL")
    assert data_query(hosts, remote) == ["tasktracker_app"]
    # ... over TLS, each one (issue 24: pg_hba takes no other login from the network)
    assert data_query(hosts, "SELECT DISTINCT ssl FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) "
                             "WHERE client_addr IS NOT NULL") == ["t"]
    assert data_query(hosts, "SELECT rolsuper FROM pg_roles WHERE rolname = 'tasktracker_app'") == ["f"]
    listed = status(hosts, settings)
    assert "postgres.1" in node_line(listed, MANAGER) and "nginx.1" in node_line(listed, MANAGER)
    api_nodes = [n for n in NAMES if "api." in node_line(listed, n)]
    assert len(api_nodes) == 2, listed  # two API replicas, on two nodes
    # The stack keeps compose.yml's least privilege (docs/security.md, "On a swarm").
    from tasks.commands.compose import PIDS_LIMITS
    from tests.test_static import CAPABILITIES

    for service in ("postgres", "nats", "nginx"):
        task = f"$(docker ps -q --filter label=com.docker.swarm.service.name=tasktracker_{service})"
        inspect = f"docker inspect -f '{{{{json .HostConfig}}}}' {task}"
        config = json.loads(hosts.exec(MANAGER, inspect).stdout)
        added = sorted(cap.removeprefix("CAP_") for cap in config["CapAdd"] or [])
        assert config["CapDrop"] == ["ALL"] and added == CAPABILITIES[service], (service, added)
        assert config["ReadonlyRootfs"] is True, service
        assert config["PidsLimit"] == PIDS_LIMITS[service], service


def release_of(hosts) -> str:
    return get_json(hosts.url(MANAGER, "/api/version"))[1]["release"]


def load_urls(hosts) -> list[str]:
    return [hosts.url(MANAGER, "/api/health"), hosts.url(MANAGER, "/api/tasks"), hosts.url(MANAGER, "/")]


def test_a_changed_release_rolls_out_under_load_with_no_failed_request(hosts, settings):
    before = release_of(hosts)
    hosts.first_release = before
    changed = hosts.dir / "changed.env"
    changed.write_text(settings.read_text() + "API_WORKERS=2\n")
    marker = f"clearmark{secrets.token_hex(4)}"  # in every written title: must cross no host in clear
    with Capture(bridge_of(hosts.network), (5432, 4222)) as wire, \
            LoadProbe(load_urls(hosts), clients=3) as probe, \
            Writers(hosts.url(MANAGER, "/api/tasks"), clients=1, title=marker) as writers:
        started = time.monotonic()
        out = hosts.fab(MANAGER, "deploy", "--skip-build", env_file=changed, timeout=1200)  # ENGINE=auto: a swarm manager
        rollout = time.monotonic() - started
        time.sleep(2)
    print(f"rolling update: {rollout:.1f}s, {len(probe.results)} reads, {len(writers.acknowledged)} writes, "
          f"failed {len(probe.failures())} + {len(writers.errors)}")
    assert "-> stack tasktracker" in out.stdout and "rolling update (docker stack deploy)" in out.stdout
    assert "shipped" not in out.stdout  # every node has the images already
    assert probe.failures() == [] and writers.errors == [] and len(probe.results) > 50
    assert release_of(hosts) != before
    newest = {t["id"] for t in get_json(hosts.url(MANAGER, "/api/tasks"))[1]}  # the newest 100
    assert writers.acknowledged and max(writers.acknowledged) in newest
    assert_nothing_in_clear(wire, marker, settings)


def bridge_of(network: str) -> str:
    return "br-" + subprocess.run(["docker", "network", "inspect", "-f", "{{.Id}}", network],
                                  capture_output=True, text=True, check=True).stdout.strip()[:12]


def assert_nothing_in_clear(wire: Capture, marker: str, settings) -> None:
    """Issue 24: what crossed the hosts' network to or from Postgres (5432) and NATS (4222), inside
    the overlay's VXLAN or not, holds no SQL, no written title and no NATS login."""
    sql, nats = bytes(wire.payloads[5432]), bytes(wire.payloads[4222])
    print(f"captured {wire.frames} frames; postgres {wire.segments[5432]} segments "
          f"({len(sql)} bytes), nats {wire.segments[4222]} ({len(nats)} bytes)")
    assert len(sql) > 10_000 and len(nats) > 1_000  # the writes and their jobs did cross hosts
    password = re.search(r"^NATS_PASSWORD=(.*)$", settings.read_text(), re.M).group(1).encode()
    clear = {"the title marker": marker.encode(), "INSERT INTO": b"INSERT INTO", "SELECT": b"SELECT",
             "a NATS CONNECT": b"CONNECT {", "a NATS user": b'"user"', "the NATS password": password}
    found = [f"{what} ({name})" for name, data in (("postgres", sql), ("nats", nats))
             for what, text in clear.items() if text in data]
    assert found == [], f"crossed the hosts' network in clear: {', '.join(found)}"
    assert b"\x00\x00\x00\x08\x04\xd2\x16\x2f" in sql  # libpq's SSLRequest: each asked for TLS


def test_a_deploy_with_nothing_changed_changes_nothing(hosts):
    live = release_of(hosts)
    out = hosts.fab(MANAGER, "deploy", "--skip-build", env_file=hosts.dir / "changed.env")
    assert f"Nothing changed since release {live}" in out.stdout and "docker stack deploy" not in out.stdout
    assert release_of(hosts) == live
    assert '"result": "unchanged"' in hosts.exec(MANAGER, "tail -n 1 /home/*/tasktracker/audit.log").stdout


def test_a_dry_run_on_the_swarm_plans_and_changes_nothing(hosts, settings):
    releases = hosts.fab(MANAGER, "releases", env_file=settings).stdout
    audit = hosts.exec(MANAGER, "cat /home/*/tasktracker/audit.log").stdout
    out = hosts.fab(MANAGER, "deploy", "--dry-run", env_file=settings).stdout
    assert f"Dry run on {MANAGER}: nothing is changed" in out and f"-> stack tasktracker via {MANAGER}" in out
    assert re.search(r"^   api +tasktracker-backend:\S+ +replicas 2 ", out, re.M), out
    assert all(f"   {n}: has all " in out for n in NAMES), out  # every node has this checkout's images
    assert "none pending" in out and "docker stack deploy --resolve-image never" in out
    assert hosts.fab(MANAGER, "releases", env_file=settings).stdout == releases
    assert hosts.exec(MANAGER, "cat /home/*/tasktracker/audit.log").stdout == audit


def test_status_and_doctor_on_the_manager_show_the_swarm(hosts, settings):
    out = hosts.fab(MANAGER, "status", env_file=settings).stdout
    assert f"release  {release_of(hosts)}" in out
    assert "Swarm: 3 node(s)" in out and "state: done" in out
    assert re.search(r"^  postgres +running +healthy", out, re.M), out  # the data node's task, found by the stack's labels
    doctor = hosts.fab(MANAGER, "doctor", env_file=settings, check=False)
    assert "[swarm]" not in doctor.stdout and "[services]" not in doctor.stdout, doctor.stdout


def test_a_release_whose_api_fails_its_health_check_is_rolled_back_with_no_failed_request(hosts, settings, tmp_path):
    serving = release_of(hosts)
    broken = copy_project(tmp_path / "broken")
    shutil.copytree(ROOT / "frontend" / "dist", broken / "frontend" / "dist", dirs_exist_ok=True)
    main = broken / "backend" / "app" / "main.py"
    main.write_text(main.read_text().replace('healthy = all(c["ok"] for c in checks.values())', "healthy = False"))
    changed = hosts.dir / "changed.env"
    with LoadProbe(load_urls(hosts), clients=3) as probe, Writers(hosts.url(MANAGER, "/api/tasks"), clients=1) as writers:
        started = time.monotonic()
        out = hosts.fab(MANAGER, "deploy", "--skip-build", env_file=changed, cwd=broken, check=False, timeout=1200)
        took = time.monotonic() - started
        time.sleep(2)
    print(out.stdout[out.stdout.rfind("Deploy to"):])
    print(f"failed release rolled back: {took:.1f}s, {len(probe.results)} reads, {len(writers.acknowledged)} writes, "
          f"failed {len(probe.failures())} + {len(writers.errors)}")
    assert out.returncode == 1, out.stdout + out.stderr
    # Only the changed code's layer crossed the network: every node had the rest (tasks/shipping.py).
    assert re.search(r"layer\(s\), \d+ MB, already on (cl\d, ){2}cl\d: not sent", out.stdout), out.stdout
    shipped = re.search(r"shipped \S+-backend:\S+ to \S+, \S+, \S+: ([\d.]+) MB \((?:zstd|gzip)\)", out.stdout)
    assert shipped and float(shipped.group(1)) < 1, out.stdout
    assert "Swarm rolled the update back by itself" in out.stderr and f"Release {serving} was put back automatically" in out.stderr
    assert probe.failures() == [] and writers.errors == [] and len(probe.results) > 50
    assert release_of(hosts) == serving
    listed = status(hosts, settings)
    assert "state: done" in listed, listed
    releases = hosts.fab(MANAGER, "releases", env_file=settings).stdout
    assert re.search(r"failed", releases), releases
    services = json.loads(hosts.fab(MANAGER, "status", "--json", env_file=settings).stdout)["swarm"]["services"]
    images = {name: s["image"] for name, s in services.items()}
    assert images["tasktracker_api"] == images["tasktracker_worker"], images  # the worker went back too


def test_rollback_returns_to_the_previous_release_under_load(hosts, settings):
    current, target = release_of(hosts), hosts.first_release
    with LoadProbe(load_urls(hosts), clients=3) as probe:
        out = hosts.fab(MANAGER, "rollback", env_file=settings, timeout=900)
        time.sleep(2)
    print(f"rollback on the swarm: {len(probe.failures())} of {len(probe.results)} requests failed")
    assert f"Rolling back {MANAGER} from {current} to {target}" in out.stdout
    assert probe.failures() == [] and len(probe.results) > 20
    assert release_of(hosts) == target
    assert post_task(hosts.url(MANAGER, "/api/tasks"), "after the rollback") == 201


def data_query(hosts, sql: str) -> list[str]:
    """Rows of one column, read with psql on the data node (the manager here)."""
    return hosts.exec(MANAGER, "docker exec $(docker ps -q --filter label=com.docker.swarm.service.name=tasktracker_postgres) "
                               f"psql -U postgres -d tasktracker -Atc {shlex.quote(sql)}").stdout.splitlines()


def pending_of(hosts, ids: set[int]) -> set[int]:
    """Of these tasks, the ones not done yet."""
    if not ids:
        return set()
    done = data_query(hosts, f"SELECT id FROM tasks WHERE status = 'done' AND id IN ({','.join(map(str, ids))})")
    return ids - {int(i) for i in done}


def test_a_lost_worker_node_leaves_the_api_serving_and_comes_back(hosts, settings):
    """The node running the worker (or else an API replica) stops: the API keeps serving, its
    replicas and the worker move, and every task written meanwhile is processed (issue 25)."""
    listed = status(hosts, settings)
    lost = next((n for n in NAMES[1:] if "worker." in node_line(listed, n)), None) \
        or next(n for n in NAMES[1:] if "api." in node_line(listed, n))
    container = hosts.state(lost)["container"]
    try:
        with LoadProbe([hosts.url(MANAGER, "/api/health")], clients=2) as probe, \
                Writers(hosts.url(MANAGER, "/api/tasks"), clients=1) as writers:
            started = time.monotonic()
            subprocess.run(["docker", "stop", "-t", "0", container], check=True, capture_output=True)
            wait_for(lambda: "down" in node_line(status(hosts, settings), lost), 120, interval=2, what=f"{lost} seen down")
            wait_for(lambda: converged(hosts, settings), 180, interval=2, what="the API replicas rescheduled")
            recovered = time.monotonic() - started
        failed = probe.failures()
        acknowledged = set(writers.acknowledged)
        stopped = time.monotonic()
        while (left := pending_of(hosts, acknowledged)) and time.monotonic() - stopped < 180:
            time.sleep(3)
        print(f"lost node {lost} ({'worker' if 'worker.' in node_line(listed, lost) else 'api'}): replicas back in "
              f"{recovered:.1f}s; {len(failed)} of {len(probe.results)} requests failed; {len(acknowledged)} tasks written, "
              f"{len(writers.errors)} refused, {len(left)} jobs lost, drained {time.monotonic() - stopped:.1f} s after")
        assert len(probe.results) > 20 and len(failed) <= len(probe.results) * 0.05
        assert acknowledged and not left, sorted(left)[:20]
        assert get_json(hosts.url(MANAGER, "/api/health"))[1]["status"] == "ok"
    finally:  # the later tests need the node back, whatever this one found
        subprocess.run(["docker", "start", container], check=True, capture_output=True)
        wait_for(lambda: "ready" in node_line(status(hosts, settings), lost), 180, interval=2,
                 what=f"{lost} back in the swarm")


def test_drain_under_load_fails_no_request_and_activate_takes_it_back(hosts, settings):
    listed = status(hosts, settings)
    busy = next((n for n in NAMES[1:] if "api." in node_line(listed, n)), NAMES[1])
    with LoadProbe([hosts.url(MANAGER, "/api/health"), hosts.url(MANAGER, "/api/tasks")], clients=3) as probe:
        out = hosts.fab(MANAGER, "cluster.drain", busy, env_file=settings)
        wait_for(lambda: converged(hosts, settings), 180, interval=2, what="tasks moved off the drained node")
        time.sleep(2)
    print(f"drain {busy}: {len(probe.failures())} of {len(probe.results)} requests failed")
    assert "availability active -> drain" in out.stdout
    assert probe.failures() == [] and len(probe.results) > 20
    line = node_line(status(hosts, settings), busy)
    assert "drain" in line and "(no tasks)" in line
    assert "availability drain -> active" in hosts.fab(MANAGER, "cluster.activate", busy, env_file=settings).stdout


def test_backup_and_restore_run_on_the_data_node(hosts, settings):
    out = hosts.fab(MANAGER, "backup", env_file=settings, timeout=900).stdout
    name = re.search(r"Backup (\S+) is complete and verified on " + MANAGER, out).group(1)
    assert post_task(hosts.url(MANAGER, "/api/tasks"), "written after the backup") == 201
    restored = hosts.fab(MANAGER, "backup.restore", "--name", name, "--yes", env_file=settings, timeout=900)
    assert f"Backup {name} restored on {MANAGER}; health checks pass." in restored.stdout
    # by title in the database: the API lists only the newest tasks, and the tests before wrote hundreds
    titles = data_query(hosts, "SELECT title FROM tasks WHERE title IN ('after the rollback', 'written after the backup')")
    assert titles == ["after the rollback"], titles
    wait_for(lambda: converged(hosts, settings), 120, interval=2, what="api and worker scaled back")
    assert re.search(r"tasktracker_api +2/2", status(hosts, settings))


def network_address(hosts, name: str | None = None) -> str:
    """A host's address on the test network, or (no name) this machine's: the network's gateway."""
    if name is None:
        return network_gateway(hosts.network)
    return subprocess.run(["docker", "inspect", "-f", f"{{{{(index .NetworkSettings.Networks \"{hosts.network}\").IPAddress}}}}",
                           hosts.state(name)["container"]], capture_output=True, text=True, check=True).stdout.strip()


def tls_secrets(hosts, service: str) -> list[str]:
    """The Docker secrets a service's tasks get (commands/swarm_tls.py: named by fingerprint)."""
    template = "{{range .Spec.TaskTemplate.ContainerSpec.Secrets}}{{.SecretName}} {{end}}"
    return hosts.exec(MANAGER, f"docker service inspect -f '{template}' tasktracker_{service}").stdout.split()


def test_with_a_registry_the_nodes_pull_the_built_images(hosts, settings):
    """REGISTRY set: this machine pushes the built images and every node pulls them; nothing goes over SSH.
    The same deploy rotates the TLS certificates (`cluster.deploy --rotate-tls`)."""
    registry = Registry(network_address(hosts)).start()
    try:
        for name in NAMES:
            registry.trust_on(hosts.state(name)["container"])
        env = hosts.dir / "registry.env"
        env.write_text(settings.read_text() + f"REGISTRY={registry.name}/tt\n")
        before = release_of(hosts)
        secrets_before = {s: tls_secrets(hosts, s) for s in ("postgres", "nats", "api")}
        # Postgres restarts on this deploy anyway (its image is renamed): the certificates rotate too.
        out = hosts.fab(MANAGER, "cluster.deploy", "--rotate-tls", env_file=env, timeout=1200)
        assert f"pushed {registry.name}/tt/tasktracker-backend:" in out.stdout, out.stdout
        for service in ("postgres", "nats"):  # new certificates, new secrets; the CA the clients trust stays
            assert set(tls_secrets(hosts, service)).isdisjoint(secrets_before[service]), service
        assert tls_secrets(hosts, "api") == secrets_before["api"]
        assert post_task(hosts.url(MANAGER, "/api/tasks"), "after the rotation") == 201
        assert data_query(hosts, "SELECT DISTINCT ssl FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) "
                                 "WHERE client_addr IS NOT NULL") == ["t"]
        assert "shipped" not in out.stdout  # no image went over SSH
        assert release_of(hosts) != before
        # Swarm places the new tasks where it likes (a drained node got none back): every node that
        # runs an API or worker task now pulled its image, and so did at least one worker node.
        by_hostname = {hosts.state(name)["container"]: name for name in NAMES}  # the container's hostname
        nodes = hosts.exec(MANAGER, "docker service ps tasktracker_api tasktracker_worker "
                                    "--filter desired-state=running --format '{{.Node}}'").stdout.split()
        running = {by_hostname.get(node, node) for node in nodes}
        assert running and running <= set(NAMES), (running, by_hostname)
        assert running - {MANAGER}, running
        for name in sorted(running):
            pulled = hosts.exec(name, "docker images --format '{{.Repository}}'").stdout
            assert f"{registry.name}/tt/tasktracker-backend" in pulled, (name, pulled)
        services = json.loads(hosts.fab(MANAGER, "status", "--json", env_file=env).stdout)["swarm"]["services"]
        assert services["tasktracker_api"]["image"].startswith(f"{registry.name}/tt/tasktracker-backend:")
    finally:
        registry.stop()


def test_ssl_issue_on_the_swarm_serves_https_from_the_entry_node(hosts, settings, tmp_path):
    """Last: from here on HTTP redirects to HTTPS. Pebble listens on this machine's address on the
    hosts' network and resolves DOMAIN to the entry node, whose nginx task answers the challenge."""
    entry = network_address(hosts, MANAGER)
    pebble = Pebble(80, address=network_address(hosts), target=entry).start()
    try:
        subprocess.run(["docker", "cp", pebble.ca_bundle, f"{hosts.state(MANAGER)['container']}:/usr/local/share/pebble-ca.pem"], check=True)
        hosts.exec(MANAGER, "chmod 644 /usr/local/share/pebble-ca.pem")
        out = hosts.fab(MANAGER, "ssl.issue", "--domain", DOMAIN, "--email", "ops@example.test", "--server", pebble.directory,
                        "--ca-bundle", "/usr/local/share/pebble-ca.pem", env_file=settings, timeout=600)
        assert f"HTTPS is enabled for {DOMAIN}" in out.stdout
        roots = tmp_path / "roots.pem"
        roots.write_text(pebble.roots())
        context = ssl.create_default_context(cafile=str(roots))
        with socket.create_connection((entry, 443), timeout=10) as raw, context.wrap_socket(raw, server_hostname=DOMAIN) as tls:
            assert ("DNS", DOMAIN) in tls.getpeercert()["subjectAltName"]
            tls.sendall(f"GET /api/health HTTP/1.1\r\nHost: {DOMAIN}\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while chunk := tls.recv(65536):
                data += chunk
        assert data.startswith(b"HTTP/1.1 200") and b'"status":"ok"' in data.replace(b" ", b""), data[:300]
        assert DOMAIN in hosts.fab(MANAGER, "ssl.status", env_file=settings).stdout
    finally:
        pebble.stop()
