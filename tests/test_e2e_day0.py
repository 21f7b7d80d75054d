"""Day 0 (issue 12) on a VM-like host that looks like a freshly bought Debian 12 VPS: provision ->
deploy (images shipped, the host cannot pull) -> HTTPS (Pebble on the host) -> backup -> the host
restarts -> provision again changes nothing -> a deploy under load fails no request -> rollback
-> the backend built on the host instead. The main paths, proven off the shared Docker daemon."""

from __future__ import annotations

import json
import os
import re
import socket
import ssl
import subprocess
import time
import urllib.request

import pytest

from tests.support import DOMAIN, LoadProbe, TestHosts, app_settings, copy_project, restic_rest_status, wait_for

pytestmark = pytest.mark.e2e
NAME = "day0"


@pytest.fixture(scope="module")
def hosts(docker_machine):  # Docker and the stand-in images on this machine
    made = TestHosts(dict(os.environ))
    try:
        made.invoke("testhost.up", NAME, "--bare")
        yield made
    finally:
        made.down()


@pytest.fixture(scope="module")
def settings(hosts):
    return app_settings(hosts.dir / "app.env")


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=10) as res:
        return res.status, json.loads(res.read())


def https_get(hosts, roots: str, path: str = "/api/health") -> str:
    context = ssl.create_default_context(cadata=roots)
    with socket.create_connection(("127.0.0.1", hosts.state(NAME)["https_port"]), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=DOMAIN) as tls:
            tls.sendall(f"GET {path} HTTP/1.1\r\nHost: {DOMAIN}\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while chunk := tls.recv(65536):
                data += chunk
    return data.decode(errors="replace")


def test_a_bare_host_has_nothing_a_deploy_needs(hosts, settings):
    out = hosts.fab(NAME, "deploy", "--skip-build", env_file=settings, check=False)  # no deploy user yet
    assert out.returncode == 3 and "Nothing was changed" in out.stderr
    assert hosts.exec(NAME, "command -v docker || echo none").stdout.strip() == "none"


def test_provision_takes_the_bare_host_to_what_deploy_needs(hosts):
    out = hosts.fab(f"{NAME}-root", "provision", timeout=900)
    assert "debian 12" in out.stdout
    for change in ("packages", "compose plugin", "docker daemon settings", "deploy user", "ssh hardening", "firewall"):
        assert f"  {change}" in out.stdout and "changed" in out.stdout
    sshd = hosts.exec(NAME, "sshd -T").stdout
    for line in ("passwordauthentication no", "permitrootlogin no", "x11forwarding no", "allowtcpforwarding no",
                 "maxauthtries 3", "logingracetime 30"):
        assert line in sshd.splitlines(), line
    assert "tcp dport { 22, 80, 443 } accept" in hosts.exec(NAME, "nft list table inet tasktracker").stdout
    daemon = json.loads(hosts.exec(NAME, "cat /etc/docker/daemon.json").stdout)
    assert daemon["live-restore"] is True and daemon["log-opts"]["max-size"] == "10m"
    assert hosts.exec(NAME, "systemctl is-enabled docker").stdout.strip() == "enabled"
    assert "docker" in hosts.exec(NAME, "id -nG deploy").stdout.split()
    refused = hosts.fab(f"{NAME}-root", "provision", check=False)
    assert refused.returncode == 3 and "refused the SSH key" in refused.stderr  # root login is off now


def test_provision_again_changes_nothing(hosts):
    started = time.monotonic()
    out = hosts.fab(NAME, "provision")
    assert "0 changed" in out.stdout and "deploy login" in out.stdout
    assert time.monotonic() - started < 30


def test_an_sftp_only_account_holds_off_site_copies(hosts, tmp_path):
    """`backup.offsite.account` on a server the operator owns (here the provisioned host, through
    its deploy user's sudo): bad input changes nothing; then an account that does SFTP and nothing
    else, into which restic backs up; the settings it prints name it and pin the server's key; a
    second run changes nothing."""
    key = tmp_path / "vps_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "tasktracker-offsite@vps", "-f", str(key)],
                   check=True)
    pub = key.with_suffix(".pub").read_text().strip()
    bad = hosts.fab(NAME, "backup.offsite.account", "--key", pub, "--user", "Bad User", check=False)
    assert bad.returncode == 2 and "--user 'Bad User' is not a valid account name" in bad.stderr, bad.stderr
    assert "Nothing was changed" in bad.stderr
    assert hosts.exec(NAME, "getent passwd tasktracker-offsite || echo none").stdout.strip() == "none"
    # It never takes over an account or a directory it did not make.
    for argv, why in ((["--user", "deploy"], "the account exists and was not made by this task"),
                      (["--path", "/srv"], "the directory exists and is not the account's")):
        taken = hosts.fab(NAME, "backup.offsite.account", "--key", pub, *argv, check=False)
        assert taken.returncode == 1 and why in taken.stderr, taken.stderr
    assert "tasktracker-offsite" not in hosts.exec(NAME, "ls /etc/ssh/sshd_config.d/").stdout
    assert hosts.exec(NAME, "stat -c %U /srv").stdout.strip() == "root"
    out = hosts.fab(NAME, "backup.offsite.account", "--key", str(key.with_suffix(".pub")))
    port = hosts.state(NAME)["ssh_port"]
    known = tmp_path / "known_hosts"
    known.write_text(hosts.state(NAME)["known_hosts"])
    fingerprint = subprocess.run(["ssh-keygen", "-lf", str(known)], capture_output=True, text=True,
                                 check=True).stdout.split()[1]
    assert f"  OFFSITE_REPOSITORY=sftp://tasktracker-offsite@127.0.0.1:{port}//srv/tasktracker-offsite" in out.stdout
    assert f"  OFFSITE_HOST_KEY={fingerprint}" in out.stdout, out.stdout
    for directory in ("/srv/tasktracker-offsite", "/srv/tasktracker-offsite-pgbackrest"):
        assert hosts.exec(NAME, f"stat -c '%U %a' {directory}").stdout.strip() == "tasktracker-offsite 700"
    # its key in a file it cannot rewrite
    keys = "/etc/ssh/tasktracker-offsite/tasktracker-offsite"
    assert hosts.exec(NAME, f"stat -c '%U %a' {keys}").stdout.strip() == "root 644"
    ssh = ["ssh", "-i", str(key), "-p", str(port), "-o", f"UserKnownHostsFile={known}", "-o", "StrictHostKeyChecking=yes",
           "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes"]
    shell = subprocess.run([*ssh, "tasktracker-offsite@127.0.0.1", "id"], capture_output=True, text=True, timeout=60)
    assert "uid=" not in shell.stdout and "sftp connections only" in shell.stdout + shell.stderr, shell
    forward = subprocess.run([*ssh, "-N", "-o", "ExitOnForwardFailure=yes", "-R", "127.0.0.1:0:127.0.0.1:22",
                              "tasktracker-offsite@127.0.0.1"], capture_output=True, text=True, timeout=60)
    assert forward.returncode != 0, forward  # no port forwarding through the account
    restic = ["restic", "-r", "sftp:tasktracker-offsite@127.0.0.1:/srv/tasktracker-offsite", "-o",
              f"sftp.command={' '.join(ssh)} tasktracker-offsite@127.0.0.1 -s sftp"]
    env = {**os.environ, "RESTIC_PASSWORD": "day0-offsite-test"}
    for argv in (["init"], ["backup", str(key.with_suffix(".pub"))]):
        subprocess.run([*restic, *argv], env=env, capture_output=True, text=True, timeout=120, check=True)
    snapshots = subprocess.run([*restic, "snapshots", "--json"], env=env, capture_output=True, text=True, timeout=120,
                               check=True).stdout
    assert len(json.loads(snapshots)) == 1
    again = hosts.fab(NAME, "backup.offsite.account", "--key", pub)
    assert "already as wanted: nothing changed" in again.stdout and "changed:" not in again.stdout, again.stdout


def test_deploy_ships_the_images_the_host_lacks_and_serves(hosts, settings):
    out = hosts.fab(NAME, "deploy", "--skip-build", env_file=settings)
    assert "shipped" in out.stdout and "-postgres:pg17-" in out.stdout  # built here (pgvector plus pgBackRest), then sent
    assert get_json(hosts.url(NAME, "/api/health"))[1]["status"] == "ok"
    req = urllib.request.Request(hosts.url(NAME, "/api/tasks"), data=json.dumps({"title": "made on day 0", "body": "vm"}).encode(),
                                 headers={"Content-Type": "application/json"})
    assert urllib.request.urlopen(req, timeout=10).status == 201
    again = hosts.fab(NAME, "deploy", "--skip-build", env_file=settings)
    assert "Nothing changed since release" in again.stdout and "shipped" not in again.stdout


@pytest.fixture(scope="module")
def pebble_roots(hosts):
    return start_pebble_on(hosts)


def start_pebble_on(hosts):
    """Pebble (Let's Encrypt's test CA) and its DNS on the host itself: the ACME traffic never
    leaves the VM-like host."""
    hosts.exec(NAME, "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pebble openssl >/dev/null",
               timeout=600)
    hosts.exec(NAME, """set -e; mkdir -p /opt/pebble; cd /opt/pebble
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj '/CN=test pebble CA' -keyout ca.key -out ca.pem 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj /CN=localhost -keyout key.pem -out req.csr 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\\n' > san.ext
openssl x509 -req -in req.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile san.ext -out cert.pem 2>/dev/null
chmod 644 ./*
printf '%s' '{"pebble": {"listenAddress": "127.0.0.1:14000", "managementListenAddress": "127.0.0.1:15000",
 "certificate": "/opt/pebble/cert.pem", "privateKey": "/opt/pebble/key.pem", "httpPort": 80, "tlsPort": 5001,
 "ocspResponderURL": "", "externalAccountBindingRequired": false}}' > pebble.json""")
    container = hosts.state(NAME)["container"]
    subprocess.run(["docker", "exec", "-d", container, "pebble-challtestsrv", "-defaultIPv4", "", "-defaultIPv6", "",
                    "-dns01", "127.0.0.1:8053", "-http01", "", "-https01", "", "-tlsalpn01", "", "-management",
                    "127.0.0.1:8055"], check=True)
    subprocess.run(["docker", "exec", "-d", "-e", "PEBBLE_VA_NOSLEEP=1", "-e", "PEBBLE_WFE_NONCEREJECT=0", container, "pebble", "-config",
                    "/opt/pebble/pebble.json", "-dnsserver", "127.0.0.1:8053", "-strict=false"], check=True)
    wait_for(lambda: hosts.exec(NAME, "curl -sf -X POST -d '{\"host\": \"%s\", \"addresses\": [\"127.0.0.1\"]}' "
                                      "http://127.0.0.1:8055/add-a" % DOMAIN, check=False).returncode == 0, 30, what="pebble DNS")
    wait_for(lambda: hosts.exec(NAME, "curl -skf https://127.0.0.1:14000/dir", check=False).returncode == 0, 30, what="pebble")
    return hosts


def test_https_is_issued_on_the_host_through_its_nginx(pebble_roots, settings):
    hosts = pebble_roots
    out = hosts.fab(NAME, "ssl.issue", "--domain", DOMAIN, "--email", "ops@example.test", "--server",
                    "https://127.0.0.1:14000/dir", "--ca-bundle", "/opt/pebble/ca.pem", env_file=settings)
    assert f"HTTPS is enabled for {DOMAIN}" in out.stdout
    roots = hosts.exec(NAME, "curl -skf https://127.0.0.1:15000/roots/0").stdout
    answer = https_get(hosts, roots)
    assert answer.startswith("HTTP/1.1 200") and '"status":"ok"' in answer.replace(" ", "")


def test_backup_on_the_host(hosts, settings):
    out = hosts.fab(NAME, "backup", env_file=settings)
    assert "is complete and verified" in out.stdout


def test_an_append_only_account_keeps_off_site_sets_from_the_host_itself(hosts, settings, tmp_path):
    """Issue 24: the host pushes its nightly sets to an append-only account (here on the host
    itself, as its own off-site server) and, with its own key, can neither delete nor overwrite
    them; retention runs from the trusted side (`backup.offsite.prune`, as root on the server)."""
    user, path = "tt-appendonly", "/srv/tt-appendonly"
    known = tmp_path / "known_hosts"
    known.write_text(hosts.state(NAME)["known_hosts"])
    fingerprint = subprocess.run(["ssh-keygen", "-lf", str(known)], capture_output=True, text=True,
                                 check=True).stdout.split()[1]
    vps = tmp_path / "vps.env"  # the host reaches the account on its own sshd (port 22 inside)
    vps.write_text(settings.read_text() + f"OFFSITE_REPOSITORY=sftp:{user}@127.0.0.1:{path}\nOFFSITE_PASSWORD=day0-append-only\n"
                   f"OFFSITE_HOST_KEY={fingerprint}\nOFFSITE_APPEND_ONLY=true\n")
    first = hosts.fab(NAME, "backup.offsite.init", env_file=vps, check=False)  # its key is not authorized yet
    key = re.search(r"^\s+(ssh-ed25519 \S+ tasktracker-offsite@\S+)$", first.stdout, re.M)
    assert first.returncode == 1 and key, first.stdout + first.stderr
    made = hosts.fab(NAME, "backup.offsite.account", "--key", key.group(1), "--user", user, "--path", path, "--append-only")
    assert "  OFFSITE_APPEND_ONLY=true" in made.stdout and "backup.offsite.prune" in made.stdout, made.stdout
    assert f"  OFFSITE_HOST_KEY={fingerprint}" in made.stdout
    assert "repository created" in hosts.fab(NAME, "backup.offsite.init", env_file=vps).stdout
    nightly = hosts.fab(NAME, "backup", env_file=vps)  # what cron runs: a set, pushed, no retention by the host
    assert "off-site retention runs on the off-site server" in nightly.stdout, nightly.stdout
    snapshots = hosts.exec(NAME, f"ls {path}/snapshots").stdout.split()
    assert len(snapshots) == 1
    # An intruder on the host, with the host's own key: a shell command, SFTP, and restic's own
    # protocol (what `restic forget` and a rewrite send) are each refused; the set stays whole.
    secret = tmp_path / "vps_key"
    secret.write_text(hosts.exec(NAME, "cat /home/deploy/.ssh/tasktracker-offsite").stdout)
    secret.chmod(0o600)
    ssh = ["ssh", "-i", str(secret), "-p", str(hosts.state(NAME)["ssh_port"]), "-o", f"UserKnownHostsFile={known}",
           "-o", "StrictHostKeyChecking=yes", "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", f"{user}@127.0.0.1"]
    before = hosts.exec(NAME, f"cd {path} && find . -type f ! -path './locks/*' | sort | xargs sha256sum").stdout
    subprocess.run([*ssh, f"rm -rf {path}/snapshots {path}/config"], input="", capture_output=True, timeout=60)
    sftp = subprocess.run(["sftp", "-b", "-", "-P", str(hosts.state(NAME)["ssh_port"]), *ssh[1:3], *ssh[5:]], input=f"rm {path}/snapshots/{snapshots[0]}\n",
                          capture_output=True, text=True, timeout=60)
    assert sftp.returncode != 0, sftp
    assert restic_rest_status(ssh, "DELETE", f"snapshots/{snapshots[0]}") == 403
    assert restic_rest_status(ssh, "POST", f"snapshots/{snapshots[0]}", b"rewritten") == 403
    assert restic_rest_status(ssh, "POST", "config", b"rewritten") == 403
    assert hosts.exec(NAME, f"cd {path} && find . -type f ! -path './locks/*' | sort | xargs sha256sum").stdout == before
    refused = hosts.fab(NAME, "backup.offsite.unkeep", env_file=vps, check=False)
    assert refused.returncode == 2 and "backup.offsite.prune --unkeep all" in refused.stderr, refused.stderr
    # the nightly push still works, and only the trusted side applies retention (keep 1 here)
    hosts.fab(NAME, "backup", env_file=vps)
    listed = hosts.fab(NAME, "backup.offsite.list", env_file=vps).stdout
    assert len(re.findall(r"snapshot [0-9a-f]{8}", listed)) == 2, listed
    status = hosts.fab(NAME, "backup.offsite.status", env_file=vps).stdout
    assert "on the off-site server (append-only: `backup.offsite.prune`)" in status and "last push" in status, status
    trusted = tmp_path / "trusted.env"
    trusted.write_text(vps.read_text() + "OFFSITE_KEEP_DAILY=1\nOFFSITE_KEEP_WEEKLY=1\nOFFSITE_KEEP_MONTHLY=1\n")
    pruned = hosts.fab(NAME, "backup.offsite.prune", "--user", user, env_file=trusted)
    assert "The repository holds 1 set(s) of" in pruned.stdout and "day0-append-only" not in pruned.stdout + pruned.stderr
    assert len(re.findall(r"snapshot [0-9a-f]{8}", hosts.fab(NAME, "backup.offsite.list", env_file=vps).stdout)) == 1
    hosts.exec(NAME, "rm -f /home/deploy/tasktracker/shared/offsite.conf")  # later backups stay on the host


def test_the_host_restarts_and_everything_comes_back(pebble_roots, settings):
    hosts = pebble_roots
    container = hosts.state(NAME)["container"]
    subprocess.run(["docker", "stop", container], check=True, capture_output=True)
    subprocess.run(["docker", "start", container], check=True, capture_output=True)
    wait_for(lambda: get_json(hosts.url(NAME, "/api/health"))[1]["status"] == "ok", 120, interval=1,
             what="the stack back after the host restarted")
    assert any(t["title"] == "made on day 0" for t in get_json(hosts.url(NAME, "/api/tasks"))[1])
    answer = https_get_without_verify(hosts)  # (Pebble, a test CA, did not survive the restart)
    assert answer.startswith("HTTP/1.1 200")
    assert hosts.fab(NAME, "provision").stdout.count("0 changed") == 1


def https_get_without_verify(hosts) -> str:
    """The certificate is checked above; after a restart Pebble (a test CA) is not running, so
    only that HTTPS still answers with the issued certificate is checked here."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", hosts.state(NAME)["https_port"]), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=DOMAIN) as tls:
            cert = tls.getpeercert(binary_form=True)
            assert cert
            tls.sendall(f"GET /nginx-health HTTP/1.1\r\nHost: {DOMAIN}\r\nConnection: close\r\n\r\n".encode())
            return tls.recv(65536).decode(errors="replace")


PEER = "day0-peer"  # a second machine on the same network segment (the outer Docker network)
STACK_ADDRESSES = ("for c in $(docker ps -q); do docker inspect -f '{{index .Config.Labels "
                   "\"com.docker.compose.service\"}} {{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}' \"$c\"; done")


def outer_address(container: str) -> str:
    out = subprocess.run(["docker", "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}", container],
                         check=True, capture_output=True, text=True)
    return out.stdout.split()[0]


def test_a_machine_on_the_segment_reaches_the_app_but_not_postgres_or_nats(hosts):
    """Issue 24: on Docker Engine before 28 a machine on the same segment reaches any container
    port by routing the container's address through the host (moby/moby#45610). The peer does just
    that (`ip route ... via` the host): Postgres, NATS and NATS monitoring do not answer, nor nginx's
    container directly; the app does, through nginx's published port. After the restart above, so
    the firewall the boot unit loaded is the one tried."""
    hosts.invoke("testhost.up", PEER, "--bare")
    host = outer_address(hosts.state(NAME)["container"])
    stack = {line.split()[0]: line.split()[1] for line in hosts.exec(NAME, STACK_ADDRESSES).stdout.splitlines()
             if len(line.split()) >= 2}
    targets = {"postgres": (stack["postgres"], 5432), "nats": (stack["nats"], 4222),
               "nats monitoring": (stack["nats"], 8222), "nginx container": (stack["nginx"], 80)}
    routes = "; ".join(f"ip route replace {address}/32 via {host}" for address, _ in targets.values())
    probes = " ".join(f"(if timeout 3 bash -c 'exec 3<>/dev/tcp/{address}/{port}' 2>/dev/null; then echo '{name}: open'; "
                      f"else echo '{name}: closed'; fi) &" for name, (address, port) in targets.items())
    app = (f"curl -s -o /dev/null -w 'http %{{http_code}}\\n' --max-time 10 http://{host}/api/health; "
           f"curl -sfk --max-time 10 --resolve {DOMAIN}:443:{host} https://{DOMAIN}/api/health")
    out = hosts.exec(PEER, f"{routes}; {probes} wait; {app}").stdout
    assert [line for line in out.splitlines() if line.endswith(": open")] == [], out
    # The app serves the peer through the published ports (80 redirects to HTTPS since ssl.issue).
    assert "http 301" in out and '"status":"ok"' in out.replace(" ", ""), out
    # The probes did reach the host and were dropped there, by provision's forward chain.
    forward = hosts.exec(NAME, "nft list chain inet tasktracker forward").stdout
    dropped = [int(n) for n in re.findall(r'oifname "(?:br-\*|docker0)" counter packets (\d+)', forward)]
    assert sum(dropped) >= len(targets), forward


def test_a_second_deploy_under_load_fails_no_request_and_rollback_returns(hosts, settings):
    before = get_json(hosts.url(NAME, "/api/version"))[1]["release"]
    changed = app_settings(hosts.dir / "changed.env")
    changed.write_text(settings.read_text() + "API_WORKERS=2\n")
    time.sleep(1)
    with LoadProbe([hosts.url(NAME, "/api/health"), hosts.url(NAME, "/")], clients=4) as probe:
        hosts.fab(NAME, "deploy", "--skip-build", env_file=changed)
        time.sleep(1)
    assert probe.failures() == [] and len(probe.results) > 50
    after = get_json(hosts.url(NAME, "/api/version"))[1]["release"]
    assert after != before
    hosts.fab(NAME, "rollback", env_file=changed)
    assert get_json(hosts.url(NAME, "/api/version"))[1]["release"] == before


def test_the_backend_can_be_built_on_the_host_instead(hosts, settings, tmp_path):
    copy = copy_project(tmp_path / "project")
    main = copy / "backend" / "app" / "main.py"
    main.write_text(main.read_text() + "\n# built on the host\n")
    on_host = app_settings(hosts.dir / "host-build.env")
    on_host.write_text(settings.read_text() + "BUILD_BACKEND=host\n")
    out = hosts.fab(NAME, "deploy", env_file=on_host, cwd=copy, timeout=900)
    assert "python:3.12-slim" in out.stdout  # the base image was shipped for the build
    assert "naming to" in out.stdout or "Successfully tagged" in out.stdout or "Built" in out.stdout + out.stderr
    assert get_json(hosts.url(NAME, "/api/health"))[1]["status"] == "ok"
