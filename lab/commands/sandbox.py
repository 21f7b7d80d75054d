"""What the sandbox VPS is made of: config files and local commands, built without running anything."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

PROGRAMS_DIR = Path(__file__).resolve().parent.parent / "programs"
STANDIN_BASE = "tasktracker-standin-base:bookworm"
STANDIN_LABEL = "org.tasktracker.standin=1"
# The digest of what a stand-in (or its base) was built from: one built from an older recipe (say,
# before SLIM) is rebuilt, not used as it is (`lab/machine.py` stale_standin_images).
RECIPE_LABEL = "org.tasktracker.standin.recipe"
# Debian packages in the stand-in base image: enough to honour each upstream image's contract.
STANDIN_PACKAGES = ["ca-certificates", "wget", "procps", "passwd", "python3", "python3-venv", "python3-pip",
                    "postgresql-15", "postgresql-client-15", "nginx-light", "nats-server"]
# pgvector: Debian 12 has none for any Postgres; Debian 13 (trixie) has postgresql-17-pgvector, so the
# pgvector/pgvector:pg17 stand-in gets a trixie base of its own.
PGVECTOR_BASE = "tasktracker-standin-base:trixie-pgvector"
PGVECTOR_PACKAGES = ["postgresql-17", "postgresql-17-pgvector", "procps"]
# What no stand-in uses, about 200 MB of each base: PostgreSQL's JIT (LLVM and its z3; without its
# provider PostgreSQL runs with JIT off), translations and docs. Every deploy to a VM-like host
# ships these images (docker save | gzip | ssh | docker load), so their size is CPU and time.
SLIM = ("rm -rf /usr/lib/x86_64-linux-gnu/libLLVM* /usr/lib/x86_64-linux-gnu/libz3.* /usr/lib/postgresql/*/lib/llvmjit* "
        "/usr/lib/postgresql/*/lib/bitcode /usr/share/locale/* /usr/share/doc/* /usr/share/man/*")
# base image -> (Debian suite, packages, what to remove afterwards)
STANDIN_BASES: dict[str, tuple[str, list[str], str]] = {
    STANDIN_BASE: ("bookworm", STANDIN_PACKAGES,
                   "rm -rf /var/lib/postgresql/15/main /etc/postgresql/15/main && "
                   f"python3 -m venv /opt/python && /opt/python/bin/python -m pip --version >/dev/null && {SLIM}"),
    PGVECTOR_BASE: ("trixie", PGVECTOR_PACKAGES, f"rm -rf /var/lib/postgresql/17/main /etc/postgresql/17/main && {SLIM}"),
}

# The stand-in Postgres images' entrypoint (lab/programs/, shellchecked in tests/test_static.py).
POSTGRES_ENTRYPOINT = (PROGRAMS_DIR / "sandbox-postgres-entrypoint.sh").read_text()

# name: (Dockerfile lines after FROM, extra files). The stack runs pgvector/pgvector:pg17 (the
# postgres:17 image with pgvector: same entrypoint contract, PGDATA, PG_MAJOR); postgres:15 stays for
# hosts whose data is still PostgreSQL 15 (`db.upgrade` moves them, and its test starts from one).
STANDINS: dict[str, tuple[list[str], dict[str, str]]] = {
    "pgvector/pgvector:pg17": ([
        "COPY docker-entrypoint.sh /usr/local/bin/docker-entrypoint.sh",
        "RUN chmod 755 /usr/local/bin/docker-entrypoint.sh",
        "ENV PATH=/usr/lib/postgresql/17/bin:$PATH PGDATA=/var/lib/postgresql/data PG_MAJOR=17",
        "STOPSIGNAL SIGINT",
        'ENTRYPOINT ["docker-entrypoint.sh"]',
        'CMD ["postgres"]',
    ], {"docker-entrypoint.sh": POSTGRES_ENTRYPOINT}),
    "postgres:15": ([
        "COPY docker-entrypoint.sh /usr/local/bin/docker-entrypoint.sh",
        "RUN chmod 755 /usr/local/bin/docker-entrypoint.sh",
        "ENV PATH=/usr/lib/postgresql/15/bin:$PATH PGDATA=/var/lib/postgresql/data",
        "STOPSIGNAL SIGINT",
        'ENTRYPOINT ["docker-entrypoint.sh"]',
        'CMD ["postgres"]',
    ], {"docker-entrypoint.sh": POSTGRES_ENTRYPOINT}),
    "nats:2.10-alpine": ([
        'ENTRYPOINT ["nats-server"]',
        'CMD ["--jetstream"]',
    ], {}),
    "nginx:1.27-alpine": ([
        "RUN mkdir -p /usr/share/nginx/html /etc/nginx/conf.d && rm -f /etc/nginx/sites-enabled/default",
        "STOPSIGNAL SIGQUIT",
        'CMD ["nginx", "-g", "daemon off;"]',
    ], {}),
    "python:3.12-slim": ([
        # pip in the stand-in trusts the machine's CA bundle (registries are reached through a TLS proxy).
        "ENV PATH=/opt/python/bin:$PATH PIP_CERT=/etc/ssl/certs/ca-certificates.crt",
        'CMD ["python3"]',
    ], {}),
}


def standin_base(name: str) -> str:
    """The base image a stand-in is built FROM."""
    return PGVECTOR_BASE if name.startswith("pgvector/") else STANDIN_BASE


def base_recipe(base: str) -> str:
    """The digest of a base image's recipe: its suite, packages and what is removed after."""
    return digest(["debootstrap --variant=minbase", *STANDIN_BASES[base][:2], STANDIN_BASES[base][2]])


def standin_recipe(name: str) -> str:
    """The digest of a stand-in's recipe: its base's, its Dockerfile lines and extra files."""
    lines, files = STANDINS[name]
    return digest([base_recipe(standin_base(name)), *lines, *sorted(files.items())])


def digest(parts: list) -> str:
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:12]


def standin_dockerfile(name: str) -> str:
    lines, _ = STANDINS[name]
    labels = f"LABEL {STANDIN_LABEL} {RECIPE_LABEL}={standin_recipe(name)}"
    return "\n".join([f"FROM {standin_base(name)}", labels, *lines]) + "\n"


def debootstrap(rootfs: Path, mirror: str, base: str = STANDIN_BASE) -> list[str]:
    return ["debootstrap", "--variant=minbase", STANDIN_BASES[base][0], str(rootfs), mirror]


def chroot_install(rootfs: Path, base: str = STANDIN_BASE) -> list[str]:
    _, packages, after = STANDIN_BASES[base]
    return ["chroot", str(rootfs), "sh", "-c",
            "printf '#!/bin/sh\\nexit 101\\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && "
            "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "
            + " ".join(packages) + " >/dev/null && "
            + after + " && "
            "apt-get clean && rm -rf /var/lib/apt/lists/* /usr/sbin/policy-rc.d"]


def docker_import(rootfs: Path, base: str = STANDIN_BASE) -> str:
    labels = f"LABEL {STANDIN_LABEL} {RECIPE_LABEL}={base_recipe(base)}"
    return f"tar -C {rootfs} -c . | docker import -c 'CMD [\"/bin/bash\"]' -c '{labels}' - {base}"


def apt_mirror(sources_text: str, suite: str = "bookworm") -> str | None:
    """The Debian mirror serving `suite` main, from apt sources (deb822 stanzas or one-line `deb`)."""
    for stanza in re.split(r"\n\s*\n", sources_text):
        fields = {}
        for line in stanza.splitlines():
            key, sep, value = line.partition(":")
            if sep and not line.startswith((" ", "#")):
                fields[key.strip().lower()] = value.split()
        if suite in fields.get("suites", []) and "main" in fields.get("components", []) and fields.get("uris"):
            return fields["uris"][0]
    for line in sources_text.splitlines():
        parts = [p for p in line.split() if not p.startswith("[")]
        if len(parts) >= 4 and parts[0] == "deb" and parts[2] == suite and "main" in parts[3:]:
            return parts[1]
    return None


def sshd_config(state_dir: Path, address: str, port: int, user: str) -> str:
    return "\n".join([
        f"ListenAddress {address}:{port}",
        f"HostKey {state_dir}/ssh_host_ed25519_key",
        f"PidFile {state_dir}/sshd.pid",
        "AuthorizedKeysFile .ssh/authorized_keys",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "PermitRootLogin no",
        f"AllowUsers {user}",
        "UsePAM no",
        "StrictModes yes",
        "MaxStartups 50:30:100",
        "Subsystem sftp internal-sftp",
    ]) + "\n"


def ssh_config(alias: str, state_dir: Path, address: str, port: int, user: str) -> str:
    return "\n".join([
        f"Host {alias}",
        f"  HostName {address}",
        f"  Port {port}",
        f"  User {user}",
        f"  IdentityFile {state_dir}/id_ed25519",
        "  IdentitiesOnly yes",
        f"  UserKnownHostsFile {state_dir}/known_hosts",
        "  StrictHostKeyChecking yes",
    ]) + "\n"


def known_hosts_line(address: str, port: int, public_key: str) -> str:
    host = address if port == 22 else f"[{address}]:{port}"
    keytype, key = public_key.split()[:2]
    return f"{host} {keytype} {key}\n"
