"""What `provision` reads from a new VPS and the commands that bring it to what `deploy` needs.

pyinfra's shape: one command prints the host's *facts* (parsed by `parse_facts`), `plan()`
compares them with the wanted state and returns only the changes that are needed, so a second
run plans nothing. Every command here runs as root (the task prefixes `sudo -n` for a sudo user).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from . import q
from .programs import filled, program
from .release import parse_facts  # noqa: F401  (provision's facts are `key=value` lines too)

SUPPORTED = {("debian", "12"), ("ubuntu", "22.04"), ("ubuntu", "24.04")}
PACKAGES = ["docker.io", "rsync", "cron", "certbot", "unattended-upgrades", "nftables",
            "systemd-timesyncd", "sudo",
            "ca-certificates", "curl", "restic",  # restic: off-site copies (commands/offsite.py)
            "zstd"]  # images arrive zstd-packed (tasks/shipping.py)
# Ubuntu ships Compose v2 as a package; Debian 12 does not (Docker's repository, or an upload).
COMPOSE_PACKAGES = {"ubuntu": "docker-compose-v2"}
DOCKER_REPO_FINGERPRINT = "9DC858229FC7DD38854AE2D88D81803C0EBFCD88"  # Docker's release key
COMPOSE_PLUGIN_PATH = "/usr/local/lib/docker/cli-plugins/docker-compose"
DAEMON_JSON = {"log-driver": "json-file", "log-opts": {"max-size": "10m", "max-file": "3"},
               "live-restore": True}
SSHD_DROPIN = "/etc/ssh/sshd_config.d/00-tasktracker-hardening.conf"
# What sshd must say (`sshd -T`, lower case) once hardened: keys only, no root, nothing forwarded
# through the deploy login (X11, TCP, agent), few tries and a short window to log in.
SSHD_SETTINGS = {"passwordauthentication": "no", "kbdinteractiveauthentication": "no",
                 "permitrootlogin": "no",
                 "x11forwarding": "no", "allowtcpforwarding": "no", "allowagentforwarding": "no",
                 "maxauthtries": "3", "logingracetime": "30"}
SSHD_HARDENING = ("# Written by `fab provision` after a login as the deploy user was proven.\n"
                  + "".join(f"{key} {value}\n" for key, value in SSHD_SETTINGS.items()))
FIREWALL_FILE = "/etc/tasktracker-firewall.nft"
SWARM_FIREWALL_FILE = "/etc/tasktracker-swarm.nft"  # cluster.init's rules, included by it
FIREWALL_UNIT = "/etc/systemd/system/tasktracker-firewall.service"
AUTO_UPGRADES = "/etc/apt/apt.conf.d/20auto-upgrades"
AUTO_UPGRADES_TEXT = ('APT::Periodic::Update-Package-Lists "1";\nAPT::Periodic::Unattended-Upgrade '
                      '"1";\n')
SWAPFILE = "/swapfile"
SWAP_MB = 2048  # the plan: 8 GB VPS, about 2.5 GB used at peak; swap is the cushion, not capacity


def facts(deploy_user: str, public_key: str) -> str:
    """One round trip: OS, privileges, packages, Docker, the deploy user, sshd, firewall, swap."""
    key = " ".join(public_key.split()[:2])
    pkgs = " ".join(PACKAGES + sorted(set(COMPOSE_PACKAGES.values())))
    inner = "; ".join([
        ". /etc/os-release 2>/dev/null; echo \"os=$ID\"; echo \"version=$VERSION_ID\"; echo "
        "\"codename=$VERSION_CODENAME\"",
        f"for p in {pkgs}; do dpkg-query -W -f='${{Status}}' $p 2>/dev/null | grep -q 'install ok "
        "installed' && echo \"pkg_$p=1\"; done",
        "echo \"compose=$(docker compose version --short 2>/dev/null)\"",
        "echo \"docker_enabled=$(systemctl is-enabled docker 2>/dev/null)\"",
        "echo \"docker_active=$(systemctl is-active docker 2>/dev/null)\"",
        "echo \"daemon_json=$(tr -d '\\n' < /etc/docker/daemon.json 2>/dev/null)\"",
        f"echo \"user_groups=$(id -nG {q(deploy_user)} 2>/dev/null)\"",
        f"echo \"user_home=$(getent passwd {q(deploy_user)} | cut -d: -f6)\"",
        f"h=$(getent passwd {q(deploy_user)} | cut -d: -f6); "
        f"if [ -n \"$h\" ] && grep -qF {q(key)} \"$h/.ssh/authorized_keys\" 2>/dev/null; then echo "
        "key=1; fi",
        f"if [ -f /etc/sudoers.d/tasktracker-{deploy_user} ]; then echo sudoers=1; fi",
        f"sshd -T 2>/dev/null | grep -E '^({'|'.join([*SSHD_SETTINGS, 'port'])}) ' | sed "
        "'s/^/sshd_/; s/ /=/'",
        f"if [ -f {SSHD_DROPIN} ]; then echo sshd_dropin=1; fi",
        f"if [ -f {FIREWALL_FILE} ] && nft list chain inet tasktracker forward >/dev/null 2>&1; "
        "then echo firewall=1; fi",
        f"if [ -f {AUTO_UPGRADES} ] && grep -q Unattended-Upgrade {AUTO_UPGRADES}; then echo "
        "auto_upgrades=1; fi",
        "echo \"timesync=$(systemctl is-enabled systemd-timesyncd 2>/dev/null)\"",
        "echo \"swap=$(swapon --show=NAME --noheadings 2>/dev/null | head -n 1)\"",
        f"if grep -q '^{SWAPFILE} ' /etc/fstab 2>/dev/null; then echo swap_fstab=1; fi",
        "echo \"mem_mb=$(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo)\"",
    ])
    # Read as root where the login may become root (sshd -T, nft need it); `uid` is the login's.
    return (f"echo \"uid=$(id -u)\"; if [ \"$(id -u)\" = 0 ]; then sh -c {q(inner)}; "
            f"elif sudo -n true 2>/dev/null; then echo sudo=yes; sudo -n sh -c {q(inner)}; else sh "
            f"-c {q(inner)}; fi")


@dataclass(frozen=True)
class Change:
    """One thing provision will change: its name, why, and the root shell command that does it."""

    name: str
    why: str
    command: str = ""
    kind: str = "shell"  # shell | upload-compose | prove-login | harden-ssh


def unsupported(f: dict[str, str]) -> str | None:
    if (f.get("os"), f.get("version")) not in SUPPORTED:
        found = f"{f.get('os') or 'unknown OS'} {f.get('version') or ''}".strip()
        return (f"{found} is not supported: provision knows Debian 12 and Ubuntu 22.04/24.04. Use "
                "one of them (most providers offer Debian 12), or prepare the host by hand as "
                "docs/getting-started.md describes.")
    if f.get("uid") != "0" and f.get("sudo") != "yes":
        return ("the login user is not root and cannot use sudo without a password. Connect as "
                "root (`fab -H root@HOST provision`), or give this user passwordless sudo.")
    return None


def daemon_json_ok(text: str) -> bool:
    try:
        current = json.loads(text) if text else {}
    except ValueError:
        return False
    return all(current.get(k) == v for k, v in wanted_daemon_json(current).items())


def wanted_daemon_json(current: dict) -> dict:
    """DAEMON_JSON, except that an explicit `"live-restore": false` is kept: swarm mode refuses to
    start with live-restore on, and `cluster.init` turns it off on every node."""
    return {**DAEMON_JSON, **({"live-restore": False} if current.get("live-restore") is False
                              else {})}


def firewall_rules(ssh_port: int) -> str:
    """tasks/programs/firewall.nft: SSH, HTTP and HTTPS in; nothing routed to a container network
    from outside but replies and Docker's published (DNAT-ed) ports."""
    ports = ", ".join(str(p) for p in sorted({ssh_port, 80, 443}))
    return filled(program("firewall.nft"), {"@TCP_PORTS@": ports})


FIREWALL_UNIT_TEXT = f"""[Unit]
Description=Task Tracker host firewall (SSH, HTTP, HTTPS in; containers closed to the network)
Before=network-pre.target docker.service
Wants=network-pre.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/sbin/nft -f {FIREWALL_FILE}

[Install]
WantedBy=multi-user.target
"""


def write_file(path: str, text: str, mode: str = "644") -> str:
    return (f"install -d {q(path.rsplit('/', 1)[0])} && printf '%s' {q(text)} > {q(path)}.new && "
            f"chmod {mode} {q(path)}.new && mv -f {q(path)}.new {q(path)}")


def docker_changes(f: dict[str, str]) -> list[Change]:
    """The packages, the Compose plugin, Docker's daemon settings and Docker at boot."""
    os_id = f.get("os", "")
    changes: list[Change] = []
    wanted = PACKAGES + ([COMPOSE_PACKAGES[os_id]] if os_id in COMPOSE_PACKAGES else [])
    missing = [p for p in wanted if not f.get(f"pkg_{p}")]
    if missing:
        changes.append(Change("packages", "install " + " ".join(missing),
                              "export DEBIAN_FRONTEND=noninteractive; apt-get update -qq && "
                              f"apt-get install -y -qq --no-install-recommends {' '.join(missing)} "
                              ">/dev/null"))
    if not f.get("compose") and os_id not in COMPOSE_PACKAGES:
        changes.append(Change("compose plugin", "Docker Compose v2 is missing",
                              kind="upload-compose"))
    if not daemon_json_ok(f.get("daemon_json", "")):
        try:
            current = json.loads(f.get("daemon_json") or "{}")
            merged = {**current, **wanted_daemon_json(current)}
        except ValueError:
            merged = dict(DAEMON_JSON)
        changes.append(Change("docker daemon settings", "log rotation (10m x 3) and live-restore",
                              write_file("/etc/docker/daemon.json", json.dumps(merged, indent=2)
                                         + "\n")
                              + " && systemctl restart docker"))
    if f.get("docker_enabled") != "enabled" or f.get("docker_active") != "active":
        changes.append(Change("docker at boot", "enable and start Docker",
                              "systemctl enable --now docker >/dev/null 2>&1"))
    return changes


def user_changes(f: dict[str, str], deploy_user: str, public_key: str) -> list[Change]:
    """The deploy user in the docker group, the operator's key, and its sudo rule."""
    changes: list[Change] = []
    key = " ".join(public_key.split()[:2])
    user = q(deploy_user)
    if "docker" not in f.get("user_groups", "").split():
        changes.append(Change("deploy user", f"create {deploy_user} in the docker group",
                              f"if id {user} >/dev/null 2>&1; then usermod -aG docker {user}; "
                              "else useradd --create-home --shell /bin/bash --groups docker "
                              f"{user}; fi"))
    if not f.get("key"):
        changes.append(Change("deploy key", f"the operator's public key for {deploy_user}",
                              f"h=$(getent passwd {user} | cut -d: -f6) && install -d -m 700 -o "
                              f"{user} -g {user} \"$h/.ssh\" && "
                              f"touch \"$h/.ssh/authorized_keys\" && chown {user}:{user} "
                              "\"$h/.ssh/authorized_keys\" && "
                              f"chmod 600 \"$h/.ssh/authorized_keys\" && printf '%s\\n' {q(key)} "
                              ">> \"$h/.ssh/authorized_keys\""))
    if not f.get("sudoers"):
        changes.append(Change("deploy sudo", f"{deploy_user} may re-run provision once root login "
                                             "is off",
                              write_file(f"/etc/sudoers.d/tasktracker-{deploy_user}",
                                         f"{deploy_user} ALL=(ALL) NOPASSWD:ALL\n", "440")
                              + f" && visudo -cf /etc/sudoers.d/tasktracker-{deploy_user} "
                                ">/dev/null"))
    return changes


def plan(f: dict[str, str], deploy_user: str, public_key: str) -> list[Change]:
    """The changes this host needs, in order; empty when it is already provisioned."""
    changes = docker_changes(f) + user_changes(f, deploy_user, public_key)
    hardened = all(f.get(f"sshd_{key}") == value for key, value in SSHD_SETTINGS.items())
    if not hardened:
        changes.append(Change("ssh hardening", "no passwords, no root login, no forwarding, 3 "
                                               "tries in 30 s "
                                               "(after the deploy user's login is proven)",
                              kind="harden-ssh"))
    if not f.get("firewall"):
        changes.append(firewall_change(int(f.get("sshd_port") or 22)))
    if not f.get("auto_upgrades"):
        changes.append(Change("security upgrades", "unattended-upgrades daily",
                              write_file(AUTO_UPGRADES, AUTO_UPGRADES_TEXT)))
    return changes + upkeep_changes(f)


def firewall_change(ssh_port: int) -> Change:
    """Write and load the firewall and its boot unit. A swarm node's rules (cluster.init's file)
    stay included, so rewriting the firewall of a cluster member keeps its Swarm ports open."""
    include = f'include "{SWARM_FIREWALL_FILE}"'
    return Change("firewall", f"nftables: only {ssh_port}, 80 and 443 in; nothing routed to the "
                              "containers from outside but nginx's published ports",
                  write_file(FIREWALL_FILE, firewall_rules(ssh_port)) + " && "
                  + f"if [ -f {SWARM_FIREWALL_FILE} ]; then echo {q(include)} >> {FIREWALL_FILE}; "
                    "fi && "
                  + write_file(FIREWALL_UNIT, FIREWALL_UNIT_TEXT)
                  + f" && nft -f {FIREWALL_FILE} && systemctl daemon-reload && "
                    "systemctl enable tasktracker-firewall.service >/dev/null 2>&1")


def upkeep_changes(f: dict[str, str]) -> list[Change]:
    """Time sync and a swap file."""
    changes: list[Change] = []
    if f.get("timesync") not in ("enabled", "static", "alias"):
        changes.append(Change("time sync", "systemd-timesyncd",
                              "systemctl enable systemd-timesyncd >/dev/null 2>&1; systemctl start "
                              "systemd-timesyncd >/dev/null 2>&1; "
                              "systemctl is-enabled systemd-timesyncd >/dev/null"))
    if not f.get("swap") and not f.get("swap_fstab"):
        changes.append(Change("swap", f"{SWAP_MB} MB swap file (the host has none)",
                              f"if [ ! -f {SWAPFILE} ]; then fallocate -l {SWAP_MB}M {SWAPFILE} && "
                              f"chmod 600 {SWAPFILE} && "
                              f"mkswap {SWAPFILE} >/dev/null; fi && grep -q '^{SWAPFILE} ' "
                              "/etc/fstab || "
                              f"echo '{SWAPFILE} none swap sw 0 0' >> /etc/fstab; swapon "
                              f"{SWAPFILE} 2>/dev/null || echo 'SWAPON-REFUSED'"))
    return changes


def compose_plugin_install(uploaded: str) -> str:
    return (f"install -d {q(COMPOSE_PLUGIN_PATH.rsplit('/', 1)[0])} && install -m 755 "
            f"{q(uploaded)} {q(COMPOSE_PLUGIN_PATH)} && "
            f"rm -f {q(uploaded)} && docker compose version --short")


def harden_ssh() -> str:
    """Write the drop-in, check the whole sshd config, then reload (an error keeps the old
    config)."""
    return (write_file(SSHD_DROPIN, SSHD_HARDENING) + " && if sshd -t; then systemctl reload ssh "
            "2>/dev/null || "
            f"systemctl reload sshd; else rm -f {SSHD_DROPIN}; echo 'sshd -t failed; hardening not "
            "applied' >&2; exit 1; fi")


def as_root(command: str, uid: str) -> str:
    """The command as root: directly for root, through `sudo -n` for a sudo user."""
    return command if uid == "0" else f"sudo -n sh -c {q(command)}"
