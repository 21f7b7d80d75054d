"""Bad input and unusable hosts: one clear message each, and nothing changes on the host."""

import os
import shutil
import subprocess
import time

import pytest

from tests.support import free_port, port_open, wait_for

pytestmark = pytest.mark.e2e


def host_state(sandbox) -> list[str]:
    """Everything a deploy could change: the app tree and the project's containers."""
    tree = []
    app = sandbox.home / "tasktracker"
    for dirpath, dirnames, filenames in os.walk(app):
        for name in sorted(dirnames + filenames):
            path = os.path.join(dirpath, name)
            tree.append(f"{path} {os.lstat(path).st_mtime_ns}")
    containers = subprocess.run(["docker", "ps", "-a", "--filter", f"label=com.docker.compose.project={sandbox.project}",
                                 "--format", "{{.ID}} {{.Image}} {{.State}} {{.CreatedAt}}"], capture_output=True, text=True).stdout
    return sorted(tree) + sorted(containers.splitlines())


def add_host_alias(sandbox, alias, **options):
    base = {"HostName": sandbox.address, "Port": sandbox.port, "User": sandbox.user,
            "IdentityFile": sandbox.dir / "id_ed25519", "IdentitiesOnly": "yes",
            "UserKnownHostsFile": sandbox.dir / "known_hosts", "StrictHostKeyChecking": "yes"}
    base.update(options)
    with open(sandbox.dir / "ssh_config", "a") as f:
        f.write(f"\nHost {alias}\n" + "".join(f"  {k} {v}\n" for k, v in base.items()))


@pytest.fixture(scope="module")
def stable(sandbox, deployed):
    return host_state(sandbox)


def assert_refused(sandbox, stable, out, *needles):
    assert out.returncode != 0
    message = out.stderr.strip()
    for needle in needles:
        assert needle in message, message
    assert "Nothing was changed on" in message
    assert "Traceback" not in out.stderr
    assert host_state(sandbox) == stable


def test_invalid_settings_are_refused_before_connecting(sandbox, stable):
    env_file = sandbox.env_file("bad.env", LLM_PROVIDER="gemini", DOMAIN="not a domain", POSTGRES_PASSWORD="")
    out = sandbox.fab("deploy", env_file=env_file, check=False)
    assert_refused(sandbox, stable, out, "LLM_PROVIDER 'gemini' is unknown", "DOMAIN 'not a domain'",
                   "POSTGRES_PASSWORD is missing or empty")
    assert "-> connect" not in out.stdout


def test_unreachable_host(sandbox, stable):
    add_host_alias(sandbox, "sandbox-closed", Port=free_port())
    out = sandbox.fab("deploy", "--skip-build", host="sandbox-closed", check=False)
    assert_refused(sandbox, stable, out, "Cannot reach sandbox-closed", "Unable to connect to port")


def test_refused_key(sandbox, stable):
    key = sandbox.dir / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    add_host_alias(sandbox, "sandbox-wrongkey", IdentityFile=key)
    out = sandbox.fab("deploy", "--skip-build", host="sandbox-wrongkey", check=False)
    assert_refused(sandbox, stable, out, "refused the SSH key", "authorized_keys")


def test_unknown_host_key(sandbox, stable):
    empty = sandbox.dir / "empty_known_hosts"
    empty.write_text("")
    add_host_alias(sandbox, "sandbox-unknown", UserKnownHostsFile=empty)
    out = sandbox.fab("deploy", "--skip-build", host="sandbox-unknown", check=False)
    assert_refused(sandbox, stable, out, "host key of sandbox-unknown", "is unknown", "known_hosts")


def test_changed_host_key(sandbox, stable):
    other = sandbox.dir / "other_host_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    forged = sandbox.dir / "forged_known_hosts"
    keytype, key = other.with_suffix(".pub").read_text().split()[:2]
    forged.write_text(f"[{sandbox.address}]:{sandbox.port} {keytype} {key}\n")
    add_host_alias(sandbox, "sandbox-forged", UserKnownHostsFile=forged)
    out = sandbox.fab("deploy", "--skip-build", host="sandbox-forged", check=False)
    assert_refused(sandbox, stable, out, "does not match the one pinned")


@pytest.fixture()
def user_without_docker(sandbox):
    """A second user and sshd on the sandbox: the user is not in the docker group."""
    user = f"{sandbox.user}-nd"
    subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", user], check=True)
    subprocess.run(["usermod", "-p", "*", user], check=True)
    home = f"/home/{user}"
    os.makedirs(f"{home}/.ssh", mode=0o700, exist_ok=True)
    shutil.copy(sandbox.dir / "id_ed25519.pub", f"{home}/.ssh/authorized_keys")
    subprocess.run(["chown", "-R", f"{user}:{user}", f"{home}/.ssh"], check=True)
    port = free_port()
    config = sandbox.dir / "sshd_nodocker_config"
    config.write_text((sandbox.dir / "sshd_config").read_text()
                      .replace(f"{sandbox.address}:{sandbox.port}", f"{sandbox.address}:{port}")
                      .replace(f"AllowUsers {sandbox.user}", f"AllowUsers {user}")
                      .replace("sshd.pid", "sshd_nodocker.pid"))
    subprocess.run(["/usr/sbin/sshd", "-f", str(config)], check=True)
    wait_for(lambda: port_open(port, sandbox.address), 10, what="second sshd")
    known = sandbox.dir / "known_hosts_nodocker"
    keytype, key = (sandbox.dir / "ssh_host_ed25519_key.pub").read_text().split()[:2]
    known.write_text(f"[{sandbox.address}]:{port} {keytype} {key}\n")
    add_host_alias(sandbox, "sandbox-nodocker", Port=port, User=user, UserKnownHostsFile=known)
    try:
        yield user
    finally:
        pidfile = sandbox.dir / "sshd_nodocker.pid"
        if pidfile.exists():
            os.kill(int(pidfile.read_text()), 15)
        subprocess.run(["pkill", "-u", user], check=False)
        time.sleep(0.2)
        subprocess.run(["userdel", "-r", user], check=False, capture_output=True)


def test_host_where_the_user_cannot_use_docker(sandbox, stable, user_without_docker):
    out = sandbox.fab("deploy", "--skip-build", host="sandbox-nodocker", check=False)
    assert_refused(sandbox, stable, out, f"{user_without_docker} cannot use Docker on sandbox-nodocker",
                   f"usermod -aG docker {user_without_docker}")
    assert not os.path.exists(f"/home/{user_without_docker}/tasktracker")


def test_compose_tasks_say_when_there_is_no_release(sandbox, stable):
    env_file = sandbox.env_file("norelease.env", APP_DIR="nothing-here")
    out = sandbox.fab("compose.ps", env_file=env_file, check=False)
    assert out.returncode == 3
    assert "has no release yet" in out.stderr and "fab -H sandbox deploy" in out.stderr
    out = sandbox.fab("migrate", env_file=env_file, check=False)
    assert out.returncode == 3 and "nothing to migrate" in out.stderr


def test_tasks_that_need_a_host_say_so(sandbox):
    out = sandbox.fab("deploy", host=None, check=False)
    assert out.returncode == 2
    assert "give it one with -H" in out.stderr
