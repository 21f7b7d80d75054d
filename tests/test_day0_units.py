"""Day 0 without a host: provision's facts -> plan, image planning, test-host builders."""

from __future__ import annotations

import re
import json
import subprocess

import pytest

from lab.commands import testhost
from tasks.commands import images, provision
from tasks.commands.images import backend_build_place, image_plan
from tests.support import ROOT

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOperatorKey operator@laptop"
BARE = {"os": "debian", "version": "12", "codename": "bookworm", "uid": "0", "compose": "", "docker_enabled": "",
        "docker_active": "", "daemon_json": "", "user_groups": "", "sshd_passwordauthentication": "yes",
        "sshd_permitrootlogin": "yes", "sshd_port": "22", "timesync": "", "swap": "", "mem_mb": "7900"}
DONE = {**BARE, **{f"pkg_{p}": "1" for p in provision.PACKAGES}, "compose": "2.40.3", "docker_enabled": "enabled",
        "docker_active": "active", "daemon_json": json.dumps(provision.DAEMON_JSON), "user_groups": "deploy docker",
        "key": "1", "sudoers": "1", **{f"sshd_{k}": v for k, v in provision.SSHD_SETTINGS.items()}, "firewall": "1",
        "auto_upgrades": "1", "timesync": "enabled", "swap_fstab": "1"}


def test_a_bare_debian_host_gets_every_change_in_a_safe_order():
    names = [c.name for c in provision.plan(BARE, "deploy", KEY)]
    assert names == ["packages", "compose plugin", "docker daemon settings", "docker at boot", "deploy user", "deploy key",
                     "deploy sudo", "ssh hardening", "firewall", "security upgrades", "time sync", "swap"]
    assert names.index("ssh hardening") > names.index("deploy key")  # never close root before the key is in


def test_a_host_hardened_by_an_older_provision_gets_the_forwarding_and_login_limits():
    older = {**DONE, "sshd_x11forwarding": "yes", "sshd_allowtcpforwarding": "yes", "sshd_maxauthtries": "6"}
    assert [c.name for c in provision.plan(older, "deploy", KEY)] == ["ssh hardening"]
    assert [c.name for c in provision.plan(DONE, "deploy", KEY)] == []


def test_the_sshd_drop_in_says_what_the_facts_check():
    lines = provision.SSHD_HARDENING.splitlines()[1:]
    assert dict(line.split(" ", 1) for line in lines) == provision.SSHD_SETTINGS
    assert {"x11forwarding no", "allowtcpforwarding no", "maxauthtries 3", "logingracetime 30"} <= set(lines)


def test_a_provisioned_host_plans_nothing():
    assert provision.plan(DONE, "deploy", KEY) == []


def test_ubuntu_gets_compose_from_its_own_package():
    plan = provision.plan({**BARE, "os": "ubuntu", "version": "24.04"}, "deploy", KEY)
    assert "docker-compose-v2" in plan[0].command and "compose plugin" not in [c.name for c in plan]


@pytest.mark.parametrize("facts, words", [
    ({**BARE, "os": "centos", "version": "7"}, "centos 7 is not supported"),
    ({**BARE, "version": "11"}, "debian 11 is not supported"),
    ({**BARE, "uid": "1000"}, "not root and cannot use sudo"),
], ids=["other OS", "old Debian", "no root no sudo"])
def test_refusals(facts, words):
    assert words in provision.unsupported(facts)


def test_sudo_user_is_accepted_and_commands_go_through_sudo():
    assert provision.unsupported({**BARE, "uid": "1000", "sudo": "yes"}) is None
    assert provision.as_root("id -u", "1000") == "sudo -n sh -c 'id -u'"
    assert provision.as_root("id -u", "0") == "id -u"


def test_daemon_settings_keep_what_the_operator_had():
    plan = provision.plan({**DONE, "daemon_json": '{"data-root": "/srv/docker"}'}, "deploy", KEY)
    assert [c.name for c in plan] == ["docker daemon settings"]
    assert '"data-root": "/srv/docker"' in plan[0].command and '"live-restore": true' in plan[0].command


def test_firewall_keeps_a_non_default_ssh_port_open():
    rules = provision.firewall_rules(2202)
    assert "tcp dport { 80, 443, 2202 } accept" in rules and "policy drop" in rules


def chain(rules: str, name: str) -> list[str]:
    """The rule lines of one chain in the ruleset text, without comments."""
    body = rules.split(f"chain {name} {{", 1)[1].split("\n    }", 1)[0]
    return [line.strip() for line in body.splitlines() if line.strip() and not line.strip().startswith("#")]


@pytest.mark.parametrize("rule, verdict", [
    # (a rule of the forward chain, in order: replies and Docker's published ports pass first)
    ("type filter hook forward priority -10; policy accept;", "runs before Docker's rules (filter, 0)"),
    ("ct state established,related accept", "replies to what a container opened"),
    ("ct status dnat accept", "nginx's published 80/443 (Docker DNAT-s them)"),
    ('iifname "docker0" accept', "containers to each other and out (Docker's own checks still run)"),
    ('iifname "br-*" accept', "the same for Compose's networks"),
    ('iifname "docker_gwbridge" accept', "the same for a swarm node's services"),
    ('oifname "docker0" counter drop', "anything else routed to a container: Postgres, NATS, 8222"),
    ('oifname "br-*" counter drop', "the same for Compose's networks"),
    ('oifname "docker_gwbridge" counter drop', "the same for a swarm node's services"),
])
def test_firewall_drops_what_is_routed_to_the_containers_from_outside(rule, verdict):
    rules = chain(provision.firewall_rules(22), "forward")
    assert rule in rules, verdict
    if rule.startswith("oifname"):  # every drop comes after every accept
        assert rules.index(rule) > max(i for i, r in enumerate(rules) if r.endswith("accept"))
    assert len(rules) == 9  # nothing else


def test_firewall_input_is_unchanged_by_the_forward_chain():
    assert chain(provision.firewall_rules(22), "input") == [
        "type filter hook input priority 0; policy drop;", "iif lo accept", "ct state established,related accept",
        "ct state invalid drop", "meta l4proto { icmp, ipv6-icmp } accept", "tcp dport { 22, 80, 443 } accept"]


def test_an_older_firewall_without_the_forward_chain_is_rewritten_and_a_swarm_nodes_rules_stay():
    assert "nft list chain inet tasktracker forward" in provision.facts("deploy", KEY)
    (change,) = [c for c in provision.plan({**DONE, "firewall": ""}, "deploy", KEY)]
    assert change.name == "firewall" and "nginx's published ports" in change.why
    command = change.command
    keep = "if [ -f /etc/tasktracker-swarm.nft ]; then echo 'include \"/etc/tasktracker-swarm.nft\"' >> " \
           "/etc/tasktracker-firewall.nft; fi"
    assert keep in command
    assert command.index("/etc/tasktracker-firewall.nft.new") < command.index(keep) < command.index("nft -f ")


def test_firewall_rules_parse_with_nft():
    nft = subprocess.run(["sh", "-c", "command -v nft"], capture_output=True, text=True).stdout.strip()
    if not nft:
        pytest.skip("nft is not installed on this machine")
    out = subprocess.run([nft, "-c", "-f", "-"], input=provision.firewall_rules(22), capture_output=True, text=True)
    assert out.returncode == 0 or "Operation not permitted" in out.stderr, out.stderr


def test_facts_command_is_valid_shell_and_parses():
    command = provision.facts("deploy", KEY)
    assert subprocess.run(["bash", "-n", "-c", command]).returncode == 0
    assert provision.parse_facts("os=debian\nversion=12\npkg_rsync=1\nsshd_port=22\n")["pkg_rsync"] == "1"


def test_stack_and_build_images_come_from_the_files():
    assert images.stack_images(ROOT) == ["nats:2.10-alpine", "nginx:1.27-alpine"]  # postgres and the backend are built
    assert images.build_base_images(ROOT / "backend" / "Dockerfile") == ["python:3.12-slim"]
    assert images.build_base_images(ROOT / "postgres" / "Dockerfile") == ["pgvector/pgvector:pg17"]
    assert re.fullmatch(r"tt-postgres:pg17-[0-9a-f]{12}", images.postgres_image(ROOT, "tt"))


def test_image_planning():
    needed = ["postgres:15", "nginx:1.27-alpine", "app:1"]
    assert image_plan(needed, {"postgres:15"}, {"nginx:1.27-alpine", "app:1"}, "auto") == (["nginx:1.27-alpine", "app:1"], [])
    assert image_plan(needed, set(), {"app:1"}, "auto") == (["app:1"], ["postgres:15", "nginx:1.27-alpine"])
    assert image_plan(needed, set(), set(needed), "never") == ([], [])
    assert backend_build_place("auto", True) == "local" and backend_build_place("auto", False) == "host"
    assert backend_build_place("host", True) == "host"


def test_present_command_and_parser():
    assert images.present(["a:1", "b c"]) == ("docker image inspect a:1 >/dev/null 2>&1 && echo have=a:1; "
                                              "docker image inspect 'b c' >/dev/null 2>&1 && echo 'have=b c'; true")
    assert images.parse_present("have=a:1\nnoise\n") == {"a:1"}


def test_testhost_container_is_not_privileged_and_publishes_on_loopback_only():
    argv = testhost.docker_run("tt-vm-x-a", 2201, 8001, 8443, "vol", "owner")
    assert "--privileged" not in argv and "SYS_RESOURCE" in argv
    published = [argv[i + 1] for i, a in enumerate(argv) if a == "-p"]
    assert published == ["127.0.0.1:2201:22", "127.0.0.1:8001:80", "127.0.0.1:8443:443"]
    assert f"{testhost.LABEL}=owner" in argv
