"""TLS between a swarm's services (issue 24): the CA program on a real openssl, the stack's secrets
and flags, the clients' settings, and a real nats-server started with the stack's TLS flags and the
CA's certificate, reached by the reference backend's own options (tests/test_e2e_cluster.py runs
the whole stack and captures the wire)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tasks.commands import cluster, swarm_tls
from tasks.commands.context import HostContext
from tests.test_cluster import TLS_FINGERPRINTS, rendered  # noqa: F401  (the fixture)

DIR = "/srv/tt/shared/tls-ca"


def run_ca(directory: Path, mode: str) -> dict[str, str]:
    out = subprocess.run(["sh", "-c", swarm_tls.TLS_PROGRAM, "tls-ca", str(directory), mode, *swarm_tls.SERVERS],
                         capture_output=True, text=True, check=True)
    return swarm_tls.parse_fingerprints(out.stdout)


def test_the_ca_issues_once_checks_without_changing_and_rotates_the_servers_only(tmp_path):
    ca = tmp_path / "tls-ca"
    assert run_ca(ca, "check") == {"ca": "renew", "postgres": "renew", "nats": "renew"}
    assert not ca.exists()  # check changes nothing
    issued = run_ca(ca, "ensure")
    assert swarm_tls.ready(issued)
    assert oct(ca.stat().st_mode & 0o777) == "0o700"
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in ca.glob("*.key")} == {
        "ca.key": "0o600", "postgres.key": "0o600", "nats.key": "0o600"}
    assert run_ca(ca, "ensure") == issued == run_ca(ca, "check")  # nothing near expiry: unchanged
    rotated = run_ca(ca, "rotate")
    assert rotated["ca"] == issued["ca"] and rotated["postgres"] != issued["postgres"]
    for server in swarm_tls.SERVERS:  # the name the clients use, checked as strictly as OpenSSL can
        subprocess.run(["openssl", "verify", "-x509_strict", "-CAfile", ca / "ca.pem", "-verify_hostname", server,
                        ca / f"{server}.pem"], check=True, capture_output=True)


def test_a_certificate_near_its_end_is_renewed_by_ensure(tmp_path):
    ca = tmp_path / "tls-ca"
    run_ca(ca, "ensure")
    short = ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "5",
             "-subj", "/CN=nats", "-keyout", ca / "nats.key", "-out", ca / "nats.pem"]
    subprocess.run(short, check=True, capture_output=True)
    assert run_ca(ca, "check")["nats"] == "renew"
    assert swarm_tls.ready(run_ca(ca, "ensure"))


@pytest.mark.parametrize("output, expected", [
    ("ca aa\npostgres bb\nnats cc\n", {"ca": "aa", "postgres": "bb", "nats": "cc"}),
    ("ca aa\npostgres renew\n", {"ca": "aa", "postgres": "renew", "nats": "renew"}),
    ("", {"ca": "renew", "postgres": "renew", "nats": "renew"}),
], ids=["issued", "one-to-renew-one-missing", "nothing"])
def test_parse_fingerprints(output, expected):
    assert swarm_tls.parse_fingerprints(output) == expected
    assert swarm_tls.ready(expected) == (output.count("\n") == 3)


def test_the_stack_gives_each_service_its_secrets_named_by_fingerprint(rendered):  # noqa: F811
    assert rendered["secrets"]["tls_ca"] == {"file": f"{DIR}/ca.pem", "name": "tt_tls_ca_0123456789ab"}
    assert rendered["secrets"]["tls_postgres_key"] == {"file": f"{DIR}/postgres.key",
                                                       "name": "tt_tls_postgres_key_1123456789ab"}
    services = rendered["services"]
    assert [s["target"] for s in services["postgres"]["secrets"]] == ["postgres.pem", "postgres.key"]
    assert [s["target"] for s in services["nats"]["secrets"]] == ["nats.pem", "nats.key"]
    for client in ("api", "worker"):
        assert services[client]["secrets"] == [{"source": "tls_ca", "target": "tasktracker-ca.pem", "mode": 0o444}]
        env = services[client]["environment"]
        assert (env["PGSSLMODE"], env["PGSSLROOTCERT"]) == ("verify-full", "/run/secrets/tasktracker-ca.pem")
        assert (env["NATS_URL"], env["NATS_TLS_CA"]) == ("tls://nats:4222", "/run/secrets/tasktracker-ca.pem")
    assert "secrets" not in services["nginx"]
    command = services["postgres"]["command"]
    assert command[:2] == ["postgres", "-c"] and "archive_mode=on" in command  # compose.yml's, kept
    assert command[-8:] == ["-c", "ssl=on", "-c", "ssl_cert_file=/run/secrets/postgres.pem",
                            "-c", "ssl_key_file=/var/run/postgresql/server.key",
                            "-c", "hba_file=/var/run/postgresql/pg_hba.conf"]
    assert services["nats"]["command"][-5:] == ["--tls", "--tlscert", "/run/secrets/nats.pem",
                                               "--tlskey", "/run/secrets/nats.key"]
    # the stack CLI reads `$$` as `$`: the entrypoint passes the command on
    assert services["postgres"]["entrypoint"][2].endswith('exec docker-entrypoint.sh "$$@"\n')


def test_the_one_off_containers_get_the_ca():
    ctx = HostContext("/home/deploy/tasktracker", "tt", "v2")
    extra = tuple(swarm_tls.one_off_args("/home/deploy/tasktracker/shared/tls-ca"))
    line = " ".join(cluster.migrate(ctx, "r1", "tt", "tt-backend:1", extra))
    assert ("--network tt_default -v /home/deploy/tasktracker/shared/tls-ca/ca.pem:"
            "/run/secrets/tasktracker-ca.pem:ro --env-file") in line
    assert "-v /home/deploy/tasktracker/shared/tls-ca/ca.pem:" in cluster.ensure_app_role(ctx, "r1", "tt", "pg:1", extra)


def test_the_ca_command_refuses_an_unknown_mode():
    with pytest.raises(ValueError, match="check, ensure or rotate"):
        swarm_tls.ca_command(DIR, "renew")


def test_nats_with_the_stacks_flags_takes_the_backends_tls_login_only(tmp_path):
    """nats-server with the stack's --tls flags and the CA's certificate; the reference backend's
    options (NATS_TLS_CA) log in, a client that does not trust the CA sends no CONNECT."""
    import asyncio

    import nats

    from tests.test_backend import backend_config_module

    from tests.support import free_port

    port = free_port()
    ca = tmp_path / "tls-ca"
    run_ca(ca, "ensure")
    flags = [str(ca / f.removeprefix("/run/secrets/")) if f.startswith("/run/") else f for f in swarm_tls.NATS_FLAGS]
    server = subprocess.Popen(["nats-server", "-a", "127.0.0.1", "-p", str(port), "--user", "u", "--pass", "p",
                               *flags], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        config = backend_config_module().AppConfig("", f"tls://127.0.0.1:{port}", "u", "p", "r1", 1, 1, 1, 1,
                           nats_tls_ca=str(ca / "ca.pem"))

        async def attempt(**options) -> str:
            for _ in range(50):  # until the server listens
                try:
                    nc = await nats.connect(config.nats_url, tls_hostname="nats", connect_timeout=2,
                                            allow_reconnect=False, **options)
                except OSError as err:
                    if "Connect call failed" in str(err):
                        await asyncio.sleep(0.1)
                        continue
                    return type(err).__name__
                except Exception as err:  # noqa: BLE001  (what refused it is the answer)
                    return type(err).__name__
                await nc.close()
                return "connected"
            return "no server"

        assert asyncio.run(attempt(**config.nats_options())) == "connected"
        assert asyncio.run(attempt(user="u", password="p")) == "SSLCertVerificationError"
    finally:
        server.kill()
        server.wait()


def test_the_encrypted_overlay_is_asked_for_on_the_stacks_network(rendered, tmp_path):  # noqa: F811
    """SWARM_OVERLAY_ENCRYPTION (where the kernel has ESP): Swarm's IPsec on the stack's network, a
    stack Debian's 20.10 CLI accepts."""
    from tests.test_cluster import test_docker_20_10_accepts_the_rendered_stack

    encrypted = swarm_tls.with_encrypted_overlay(rendered)
    assert encrypted["networks"]["default"] == {"driver": "overlay", "attachable": True,
                                                "driver_opts": {"encrypted": ""}}
    assert "driver_opts" not in rendered["networks"]["default"]  # the input is left as it was
    test_docker_20_10_accepts_the_rendered_stack(encrypted, tmp_path)


def test_the_swarm_firewall_admits_esp_from_the_peers_and_nft_accepts_it():
    import os
    import shutil

    rules = cluster.swarm_firewall(["10.0.0.2", "10.0.0.1"])
    assert "ip saddr @swarm_peers ip protocol esp accept" in rules
    nft = shutil.which("nft") or next((p for p in ("/usr/sbin/nft", "/sbin/nft") if os.path.exists(p)), None)
    if not nft:
        pytest.skip("nft is not installed on this machine")
    base = "table inet tasktracker {\n    chain input {\n        type filter hook input priority 0; policy drop;\n    }\n}\n"
    out = subprocess.run([nft, "-c", "-f", "-"], input=base + rules, capture_output=True, text=True)
    assert out.returncode == 0 or "Operation not permitted" in out.stderr, out.stderr


@pytest.mark.parametrize("wanted, esp, expected", [
    ("auto", True, True), ("auto", False, False), ("no", True, False), ("yes", True, True), ("yes", False, "refused"),
])
def test_the_overlay_is_encrypted_where_the_kernel_has_esp(wanted, esp, expected):
    from invoke import Exit

    from tasks.host import Host
    from tasks.swarm import SwarmHost
    from tests.test_executors import FACTS, FakeConnection, ok, settings

    facts = f"ipvs=no\nesp={'yes' if esp else 'no'}\n"
    host = SwarmHost.adopt(Host(FakeConnection().on("printf 'swarm=", ok(facts)),
                                settings(SWARM_OVERLAY_ENCRYPTION=wanted), "v2", FACTS))
    if expected == "refused":
        with pytest.raises(Exit, match="kernel has no ESP"):
            host.read_kernel()
        return
    host.read_kernel()
    assert host.encrypted is expected and host.mesh is False
