"""TLS (issue 6) on the sandbox with a real ACME server: Pebble, with pebble-challtestsrv as its DNS."""

import os
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest

from tests import browser
from tests.support import DOMAIN, Pebble, wait_for

pytestmark = pytest.mark.e2e
APP = "tls"


@pytest.fixture(scope="module")
def tls_app(sandbox, deployed):
    env = sandbox.app_env(APP)
    sandbox.fab("deploy", "--skip-build", env_file=env)
    pebble = Pebble(sandbox.ports[APP]).start()
    try:
        yield env, pebble
    finally:
        pebble.stop()


def https_get(sandbox, pebble, path="/"):
    """GET over HTTPS to the sandbox, verifying the chain against Pebble's root for DOMAIN."""
    roots = Path(pebble.dir / "roots.pem")
    roots.write_text(pebble.roots())
    context = ssl.create_default_context(cafile=str(roots))
    port = sandbox.https_ports[APP]
    with socket.create_connection((sandbox.address, port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=DOMAIN) as tls:
            cert = tls.getpeercert()
            tls.sendall(f"GET {path} HTTP/1.1\r\nHost: {DOMAIN}\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while chunk := tls.recv(65536):
                data += chunk
    head = data.split(b"\r\n\r\n", 1)[0].decode()
    return head, cert, data


def http_get(sandbox, path, host=DOMAIN):
    with socket.create_connection((sandbox.address, sandbox.ports[APP]), timeout=10) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data.decode(errors="replace")


def nginx_started_at(sandbox):
    cid = subprocess.run(["docker", "ps", "-q", "--filter", f"label=com.docker.compose.project={sandbox.project}-{APP}",
                          "--filter", "label=com.docker.compose.service=nginx"], capture_output=True, text=True).stdout.split()[0]
    return subprocess.run(["docker", "inspect", "-f", "{{.State.StartedAt}}", cid], capture_output=True, text=True).stdout.strip()


def issue(sandbox, env, pebble, domain=DOMAIN, check=True):
    return sandbox.fab("ssl.issue", "--domain", domain, "--email", "ops@example.test", "--server", pebble.directory,
                       "--ca-bundle", pebble.ca_bundle, env_file=env, check=check)


def test_issue_serves_https_redirects_http_and_keeps_acme_over_http(sandbox, tls_app):
    env, pebble = tls_app
    out = issue(sandbox, env, pebble)
    assert "HTTPS is enabled for app.example.test" in out.stdout
    head, cert, _ = https_get(sandbox, pebble)
    assert head.startswith("HTTP/1.1 200") and "Strict-Transport-Security: max-age=63072000" in head
    assert ("DNS", DOMAIN) in cert["subjectAltName"]
    redirect = http_get(sandbox, "/some/page?x=1")
    assert redirect.startswith("HTTP/1.1 301")
    assert f"Location: https://{DOMAIN}:{sandbox.https_ports[APP]}/some/page?x=1" in redirect
    token_dir = sandbox.home / APP / "shared" / "acme" / ".well-known" / "acme-challenge"
    token_dir.mkdir(parents=True, exist_ok=True)
    (token_dir / "probe-token").write_text("token-body")
    subprocess.run(["chown", "-R", f"{sandbox.user}:{sandbox.user}", str(token_dir.parent)], check=True)
    acme = http_get(sandbox, "/.well-known/acme-challenge/probe-token")
    assert acme.startswith("HTTP/1.1 200") and acme.endswith("token-body"), acme[:300]
    status = sandbox.fab("ssl.status", env_file=env).stdout
    assert DOMAIN in status and "Pebble" in status and "days left" in status
    assert "ssl.issue" in (sandbox.home / APP / "audit.log").read_text()


def test_the_dashboard_over_https_has_no_mixed_content_and_its_websocket_is_wss(sandbox, tls_app, tmp_path_factory, capsys):
    """tests/test_e2e_browser.py's check in headless Chromium, over HTTPS after `ssl.issue`: the
    browser trusts exactly the key of the certificate Pebble issued (checked against Pebble's root
    first) and resolves the domain to the sandbox without DNS."""
    env, pebble = tls_app
    if reason := browser.available():
        pytest.fail(reason)
    https_get(sandbox, pebble)  # writes Pebble's roots.pem
    context = ssl.create_default_context(cafile=str(pebble.dir / "roots.pem"))
    port = sandbox.https_ports[APP]
    with socket.create_connection((sandbox.address, port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=DOMAIN) as tls:
            leaf = tls.getpeercert(binary_form=True)
    live = (sandbox.home / APP / "current").readlink().name
    origin = f"https://{DOMAIN}:{port}"
    shot = browser.artifacts_dir(tmp_path_factory) / f"dashboard-https-{live}.png"
    with browser.chromium(reach=[(sandbox.address, port)], resolve={DOMAIN: sandbox.address},
                         trust_spki=browser.spki_hash(leaf)) as driver:
        seen = browser.dashboard_check(driver, f"{origin}/", f"Typed over HTTPS {os.getpid()}", shot)
    with capsys.disabled():
        print(f"\n[browser] screenshot of the dashboard over HTTPS: {seen.screenshot}")
    assert seen.release == live
    assert seen.health == ["API: healthy", "database: ok", "nats: ok"]
    assert seen.problems() == [], seen.console  # no console error, no mixed-content warning
    assert seen.websockets == [f"wss://{DOMAIN}:{port}/ws"]
    assert seen.requests and all(url.startswith(f"{origin}/") for url in seen.requests), seen.requests
    assert any(f.get("type") == "task.processed" and f["task"]["id"] == seen.task_id for f in seen.frames)


def test_forced_renewal_gives_a_new_serial_without_restarting_nginx(sandbox, tls_app):
    env, pebble = tls_app
    _, before, _ = https_get(sandbox, pebble)
    started = nginx_started_at(sandbox)
    sandbox.fab("ssl.renew", "--force", "--ca-bundle", pebble.ca_bundle, env_file=env)
    wait_for(lambda: https_get(sandbox, pebble)[1]["serialNumber"] != before["serialNumber"], 15, what="the renewed certificate")
    assert nginx_started_at(sandbox) == started


def test_issuance_for_a_domain_that_does_not_resolve_fails_clearly_and_http_keeps_serving(sandbox, tls_app):
    env, pebble = tls_app
    conf = (sandbox.home / APP / "shared" / "nginx" / "conf.d" / "tasktracker-tls.conf").read_text()
    out = issue(sandbox, env, pebble, domain="nowhere.example.test", check=False)
    assert out.returncode == 1
    assert "DNS for nowhere.example.test does not point at this server" in out.stderr, out.stdout + out.stderr
    assert "keeps serving unchanged" in out.stderr
    assert (sandbox.home / APP / "shared" / "nginx" / "conf.d" / "tasktracker-tls.conf").read_text() == conf
    assert http_get(sandbox, "/nginx-health", host="127.0.0.1").startswith("HTTP/1.1 200")
    assert https_get(sandbox, pebble)[0].startswith("HTTP/1.1 200")


def test_after_issue_an_unknown_host_on_port_80_is_not_served_the_app(sandbox, tls_app):
    env, pebble = tls_app
    for path in ("/", "/api/version", "/index.html"):
        answer = http_get(sandbox, path, host="unknown.example.org")
        assert answer.startswith("HTTP/1.1 301"), answer[:200]
        assert f"Location: https://{DOMAIN}:{sandbox.https_ports[APP]}{path}" in answer
        assert '"release"' not in answer and 'id="root"' not in answer  # neither the API nor the dashboard


def test_a_redeploy_keeps_https(sandbox, tls_app):
    env, pebble = tls_app
    time.sleep(1)
    sandbox.fab("deploy", "--skip-build", env_file=sandbox.app_env(APP, "redeploy", API_WORKERS=2))
    head, _, _ = https_get(sandbox, pebble, "/api/version")
    assert head.startswith("HTTP/1.1 200")


def test_renewal_schedule_is_installed(sandbox, tls_app):
    env, pebble = tls_app
    sandbox.fab("ssl.schedule", "--at", "03:00", "--ca-bundle", pebble.ca_bundle, env_file=env)
    crontab = subprocess.run(["crontab", "-l", "-u", sandbox.user], capture_output=True, text=True, check=True).stdout
    line = [entry for entry in crontab.splitlines() if f"tasktracker-ssl:{sandbox.project}-{APP}" in entry][0]
    assert line.startswith("0 3 * * * ") and "certbot" in line and "kill -HUP 1" in line
    command = line[len("0 3 * * * "):].rsplit(" # ", 1)[0]
    subprocess.run(["su", "-s", "/bin/sh", sandbox.user, "-c", f"cd && {command}"], check=True, timeout=300)
    assert "renew" in (sandbox.home / APP / "shared" / "letsencrypt" / "renew.log").read_text().lower()
