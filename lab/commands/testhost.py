"""VM-like test hosts: containers that boot systemd like a small VPS, with their own sshd and
(once provisioned) their own Docker Engine, reached only through loopback-published ports
(TESTBED.md, "VM-like hosts"). Built here, run by lab/testhost.py; nothing here runs anything.

A *bare* host looks like a freshly bought Debian 12 VPS: root login with a key, sshd, apt,
systemd; no Docker, no deploy user.
"""

from __future__ import annotations

from pathlib import Path

from tasks.commands import q

IMAGE = "tasktracker-vmhost:bookworm"
LABEL = "org.tasktracker.testhost"
PACKAGES = ["systemd", "systemd-sysv", "openssh-server", "sudo", "python3", "iptables", "ca-certificates", "curl",
            "dbus", "iproute2", "procps", "netbase", "kmod"]
MASKED_UNITS = ["getty@tty1.service", "console-getty.service", "systemd-udevd.service", "systemd-udevd-control.socket",
                "systemd-udevd-kernel.socket", "systemd-modules-load.service", "sys-kernel-config.mount",
                "sys-kernel-debug.mount", "sys-kernel-tracing.mount", "systemd-remount-fs.service",
                "systemd-firstboot.service"]

# PID 1 of the container: make /sys and the cgroup mounts writable (systemd and the inner Docker
# need them), then boot. A bind remount changes only this mount's flags: a plain remount of a
# cgroup v1 hierarchy fails with "busy" (its superblock is the host's). Passed as the container's
# command, so a change here needs no image rebuild.
INIT = ("mount -o remount,rw /sys; "
        "for m in $(awk '$2 ~ \"^/sys/fs/cgroup\" {print $2}' /proc/mounts); do "
        "mount -o remount,rw \"$m\" 2>/dev/null || mount -o remount,bind,rw \"$m\"; done; "
        "exec /sbin/init")

# First boot: host keys of its own (as a provider's image does), before sshd starts.
HOSTKEYS_UNIT = """[Unit]
Description=Generate SSH host keys on first boot
Before=ssh.service
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A

[Install]
WantedBy=multi-user.target
"""


def debootstrap(rootfs: Path, mirror: str) -> list[str]:
    return ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", "bookworm", str(rootfs), mirror]


def prepare_rootfs(rootfs: Path) -> list[str]:
    """Inside the new root: no host keys or machine id baked in, units a container cannot run
    masked, first-boot key generation enabled, root may log in with a key only."""
    script = " && ".join([
        "rm -f /etc/ssh/ssh_host_*",
        ": > /etc/machine-id",
        "systemctl mask " + " ".join(MASKED_UNITS),
        "systemctl enable ssh-hostkeys.service ssh.service",
        "mkdir -p /root/.ssh && chmod 700 /root/.ssh",
        "printf 'PermitRootLogin prohibit-password\\nPasswordAuthentication no\\n' > /etc/ssh/sshd_config.d/00-vps.conf",
        "update-ca-certificates >/dev/null 2>&1 || true",
        "apt-get clean && rm -rf /var/lib/apt/lists/*",
    ])
    return ["chroot", str(rootfs), "sh", "-c", script]


def docker_import(rootfs: Path) -> str:
    changes = ["CMD [\"/sbin/init\"]", f"LABEL {LABEL}.image=1"]  # (`import` takes no STOPSIGNAL: docker_run sets it)
    return f"tar -C {q(str(rootfs))} -c . | docker import " + " ".join(f"-c {q(c)}" for c in changes) + f" - {IMAGE}"


def docker_run(name: str, ssh_port: int, http_port: int, https_port: int, volume: str, owner: str,
               network: str | None = None) -> list[str]:
    """The container of one host: systemd as PID 1 without --privileged (TESTBED.md), its own
    /var/lib/docker volume, ports published on loopback only."""
    argv = ["docker", "run", "-d", "--name", name, "--hostname", name,
            "--label", f"{LABEL}={owner}", "--label", f"{LABEL}.name={name}",
            "--cap-add", "ALL", "--cap-drop", "SYS_RESOURCE",
            "--security-opt", "seccomp=unconfined", "--security-opt", "apparmor=unconfined",
            "--security-opt", "systempaths=unconfined", "--device-cgroup-rule", "a *:* rwm",
            "--cgroupns=private", "--stop-signal", "SIGRTMIN+3", "--stop-timeout", "30",
            "--tmpfs", "/run", "--tmpfs", "/run/lock", "--tmpfs", "/tmp",
            "-v", f"{volume}:/var/lib/docker",
            "-p", f"127.0.0.1:{ssh_port}:22", "-p", f"127.0.0.1:{http_port}:80", "-p", f"127.0.0.1:{https_port}:443"]
    if network:
        argv += ["--network", network]
    return [*argv, IMAGE, "/bin/sh", "-c", INIT]


def ssh_config(alias: str, port: int, user: str, key: Path, known_hosts: Path) -> str:
    return "\n".join([
        f"Host {alias}",
        "  HostName 127.0.0.1",
        f"  Port {port}",
        f"  User {user}",
        f"  IdentityFile {key}",
        "  IdentitiesOnly yes",
        f"  UserKnownHostsFile {known_hosts}",
        "  StrictHostKeyChecking yes",
    ]) + "\n"
