"""VM-like test hosts (`invoke testhost.up NAME [--bare]`, `testhost.status`, `testhost.down`):
containers that boot systemd like a small VPS, with their own sshd and Docker Engine, reached
only through loopback-published ports. A bare host is a freshly bought Debian 12 VPS (root login
with a key; no Docker, no deploy user); without --bare it is provisioned (`provision`).

Records (state.json, the key, known_hosts, ssh_config) live in $TASKTRACKER_TESTHOST_DIR
(default .testhosts/); `down` removes exactly the containers and volumes recorded there.
After `up`, `fab -H NAME-root provision` reaches root and `fab -H NAME deploy` the deploy user.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from invoke import Collection, Exit, task

from tasks.exits import ExitCode
from tasks.localhost import ok, run
from tasks.remote import testhost_dir

from .commands import testhost as build
from .machine import apt_install, debian_mirror, read_records, say, start_dockerd, write_records

DEPLOY_USER = "deploy"


def state_path() -> Path:
    return testhost_dir() / "state.json"


def load_state() -> dict:
    return read_records(state_path()) or {"hosts": {}}


def save_state(state: dict) -> None:
    write_records(state_path(), state)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_image() -> None:
    """The VM-like host image, built once per machine (about 75 s) and kept."""
    if ok(["docker", "image", "inspect", build.IMAGE]):
        return
    if not shutil.which("debootstrap"):
        apt_install(["debootstrap"])
    mirror = debian_mirror()
    started = time.monotonic()
    say(f"building the VM-like host image {build.IMAGE} with debootstrap (about a minute, once per machine)", "testhost")
    with tempfile.TemporaryDirectory(prefix="tasktracker-vmhost-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        run(build.debootstrap(rootfs, mirror))
        (rootfs / "etc/systemd/system/ssh-hostkeys.service").write_text(build.HOSTKEYS_UNIT)
        # The machine's extra CA certificates (registries are reached through a TLS proxy here).
        extra = Path("/usr/local/share/ca-certificates")
        if extra.is_dir():
            shutil.copytree(extra, rootfs / "usr/local/share/ca-certificates", dirs_exist_ok=True)
        run(build.prepare_rootfs(rootfs))
        run(["sh", "-c", build.docker_import(rootfs)])
    say(f"image ready in {time.monotonic() - started:.0f}s", "testhost")


def write_ssh_files(state: dict) -> None:
    d = testhost_dir()
    key = d / "id_ed25519"
    lines = []
    for name, host in sorted(state["hosts"].items()):
        lines.append(build.ssh_config(f"{name}-root", host["ssh_port"], "root", key, d / "known_hosts"))
        lines.append(build.ssh_config(name, host["ssh_port"], DEPLOY_USER, key, d / "known_hosts"))
    (d / "ssh_config").write_text("".join(lines))
    (d / "known_hosts").write_text("".join(h.get("known_hosts", "") for _, h in sorted(state["hosts"].items())))


def wait_for_ssh(container: str, timeout: float = 60) -> str:
    """Boot, then read the host key the way an operator reads it from the provider's console."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = run(["docker", "exec", container, "sh", "-c",
                   "systemctl is-active ssh >/dev/null && cat /etc/ssh/ssh_host_ed25519_key.pub"], check=False)
        if out.returncode == 0 and out.stdout.startswith("ssh-ed25519"):
            return out.stdout.strip()
        time.sleep(0.3)
    raise Exit(f"{container} did not start sshd within {timeout:.0f}s (`docker logs {container}`).", code=ExitCode.FAILED)


@task(help={
    "name": "Name of the host (its SSH aliases are NAME-root and NAME); several, comma-separated "
            "(cl1,cl2,cl3), boot one after another and are provisioned in parallel.",
    "bare": "Leave it as a freshly bought VPS (root with a key; no Docker, no deploy user).",
    "network": "Attach the host to this Docker network (several hosts that must reach each other).",
})
def up(c, name, bare=False, network=None):
    """Start VM-like test hosts (systemd, sshd, their own Docker Engine once provisioned)."""
    if os.geteuid() != 0:
        raise Exit("VM-like test hosts need root (Docker, a state dir): run as root.", code=ExitCode.USAGE)
    names = [n for n in name.split(",") if n]
    for n in names:
        if not n.replace("-", "").isalnum() or not n[0].isalpha():
            raise Exit(f"Test host name {n!r} must be letters, digits and '-', starting with a letter.",
                       code=ExitCode.USAGE)
    if network and not ok(["docker", "network", "inspect", network]):
        raise Exit(f"Docker network {network!r} does not exist (or Docker is not running), so no "
                   f"test host was made. Create it first (`docker network create {network}`) or "
                   f"leave out --network, then run `invoke testhost.up {name} --network {network}` "
                   "again. Nothing was changed.",
                   code=ExitCode.USAGE)
    d = testhost_dir()
    d.mkdir(parents=True, exist_ok=True)
    d.chmod(0o700)
    state = load_state()
    state.setdefault("owner", secrets.token_hex(4))
    pid = start_dockerd(d / "dockerd.log")
    if pid:
        state["dockerd_pid"] = pid
    save_state(state)
    new = [n for n in names if not restart(state, n)]
    if not new:
        return
    ensure_image()
    key = d / "id_ed25519"
    if not key.exists():
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "operator@testhosts", "-f", str(key)])
    for n in new:
        boot(state, n, bare, network)
    if not bare:
        provision_all(new)


def restart(state: dict, name: str) -> bool:
    """Start a recorded host again (`docker start`); False when there is none to start."""
    if name not in state["hosts"] or not ok(["docker", "inspect", state["hosts"][name]["container"]]):
        return False
    if "known_hosts" not in state["hosts"][name]:  # its boot never finished: no ssh config yet
        record = state["hosts"][name]
        run(["docker", "rm", "-f", record["container"]], check=False)
        run(["docker", "volume", "rm", "-f", record["volume"]], check=False)
        return False
    run(["docker", "start", state["hosts"][name]["container"]], check=False)
    wait_for_ssh(state["hosts"][name]["container"])
    say(f"{name} is up (ssh -F {testhost_dir() / 'ssh_config'} {name}-root)", "testhost")
    return True


def boot(state: dict, name: str, bare: bool, network: str | None) -> None:
    """A new host: its container (recorded first), sshd, root's key, the pinned host key."""
    d = testhost_dir()
    key = d / "id_ed25519"
    container = f"tt-vm-{state['owner']}-{name}"
    volume = f"{container}-docker"
    host = {"container": container, "volume": volume, "ssh_port": free_port(), "http_port": free_port(),
            "https_port": free_port(), "bare": bool(bare)}
    state["hosts"][name] = host
    save_state(state)  # recorded before it exists, so `down` finds it whatever happens next
    started = time.monotonic()
    run(build.docker_run(container, host["ssh_port"], host["http_port"], host["https_port"], volume, state["owner"], network))
    hostkey = wait_for_ssh(container)
    # What a provider does when the VPS is ordered with a key: root's authorized_keys.
    run(["docker", "exec", "-i", container, "sh", "-c", "umask 077; mkdir -p /root/.ssh; cat > /root/.ssh/authorized_keys"],
        input=key.with_suffix(".pub").read_text())
    host["known_hosts"] = f"[127.0.0.1]:{host['ssh_port']} {' '.join(hostkey.split()[:2])}\n"
    save_state(state)
    write_ssh_files(state)
    say(f"{name} booted in {time.monotonic() - started:.1f}s: ssh on 127.0.0.1:{host['ssh_port']}, "
        f"http {host['http_port']}, https {host['https_port']}", "testhost")


def provision_all(names: list[str]) -> None:
    """`fab -H NAME-root provision` on each host, in parallel; each one's output printed whole
    when it ends."""
    started = time.monotonic()
    say(f"provisioning {', '.join(names)}", "testhost")
    fab = str(Path(sys.executable).parent / "fab")
    env = {**os.environ, "TASKTRACKER_TESTHOST_DIR": str(testhost_dir())}
    with ThreadPoolExecutor(max_workers=len(names)) as pool:
        results = list(pool.map(lambda n: run([fab, "-H", f"{n}-root", "provision"], check=False, env=env), names))
    failed = []
    for n, out in zip(names, results, strict=True):
        print(out.stdout + out.stderr, end="", flush=True)
        if out.returncode != 0:
            failed.append(n)
    if failed:
        raise Exit(f"Provisioning {', '.join(failed)} failed (above); the hosts are kept for inspection "
                   f"(`testhost.down`).", code=ExitCode.FAILED)
    say(f"provisioned {', '.join(names)} in {time.monotonic() - started:.1f}s", "testhost")


@task
def status(c):
    """List the VM-like test hosts: container state and ports."""
    state = load_state()
    if not state["hosts"]:
        print("No test hosts.")
    for name, host in sorted(state["hosts"].items()):
        running = run(["docker", "inspect", "-f", "{{.State.Status}}", host["container"]], check=False).stdout.strip() or "missing"
        print(f"  {name:16} {running:9} ssh 127.0.0.1:{host['ssh_port']}  http {host['http_port']}  https {host['https_port']}"
              f"  {'bare' if host.get('bare') else 'provisioned'}")


@task(help={"name": "Remove only this host (default: all of them)."})
def down(c, name=None):
    """Remove the test hosts made here, by their records: containers, Docker volumes, files."""
    state = load_state()
    names = [name] if name else sorted(state["hosts"])
    removing = [(n, state["hosts"].pop(n)) for n in names if n in state["hosts"]]

    def remove(item: tuple[str, dict]) -> None:  # the hosts side by side: most of it is disk
        n, host = item
        run(["docker", "rm", "-f", "-v", host["container"]], check=False)
        run(["docker", "volume", "rm", "-f", host["volume"]], check=False)
        say(f"removed {n} ({host['container']}, volume {host['volume']})", "testhost")

    with ThreadPoolExecutor(max_workers=max(1, len(removing))) as pool:
        list(pool.map(remove, removing))
    if state["hosts"]:
        save_state(state)
        write_ssh_files(state)
        return
    if state.get("dockerd_pid"):
        try:
            os.kill(int(state["dockerd_pid"]), 15)
        except OSError:
            pass
    shutil.rmtree(testhost_dir(), ignore_errors=True)


ns = Collection("testhost")
for t in (up, status, down):
    ns.add_task(t)
