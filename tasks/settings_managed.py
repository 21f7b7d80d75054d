"""The managed services' settings, checked before any connection opens (tasks/settings.py): a
managed PostgreSQL is reached with TLS and its certificate verified, or not at all."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

from .commands.managed import SSL_MODES

HOST_RE = re.compile(r"^(?=.{1,253}$)(?!-)[a-z0-9-]{1,63}(?<!-)(\.(?!-)[a-z0-9-]{1,63}(?<!-))*$",
                     re.I)
PEM_CERT = "-----BEGIN CERTIFICATE-----"


def is_host(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
        return True
    except ValueError:
        return bool(HOST_RE.match(value))


def managed_problems(values: dict) -> list[str]:
    """DATABASE_HOST a host name or address; DATABASE_SSLMODE one that verifies the server (lower-
    cased in `values`); DATABASE_CA_FILE a readable PEM certificate; the port a TCP port."""
    host = values["database_host"]
    if not host:
        return []
    problems = []
    if not is_host(host):
        problems.append(f"DATABASE_HOST {host!r} is not a host name or IP address like "
                        "db.example.com (no scheme, port or path: the port is DATABASE_PORT)")
    if values["database_port"] > 65535:
        problems.append("DATABASE_PORT must be a TCP port (1-65535)")
    mode = values["database_sslmode"] = values["database_sslmode"].lower()
    if mode not in SSL_MODES:
        problems.append(f"DATABASE_SSLMODE {mode!r} must be one of: {', '.join(SSL_MODES)} (TLS "
                        "with the server's certificate verified: without it a machine in between "
                        "would receive the database password)")
    problems += ca_problems(values["database_ca_file"])
    return problems


def ca_problems(path: str) -> list[str]:
    fix = ("set DATABASE_CA_FILE to the CA certificate (PEM) your provider gives for the "
           "database, a file on this machine")
    if not path:
        return [f"DATABASE_CA_FILE is empty while DATABASE_HOST is set: {fix}"]
    file = Path(path).expanduser()
    try:
        text = file.read_text(errors="replace")
    except OSError as err:
        return [f"DATABASE_CA_FILE {path!r} cannot be read ({err.strerror or err}): {fix}"]
    if PEM_CERT not in text:
        return [f"DATABASE_CA_FILE {path!r} holds no PEM certificate ({PEM_CERT}): {fix}"]
    return []


def ca_text(path: str) -> str:
    """The CA file's certificates, as the release's db-ca.pem."""
    return Path(path).expanduser().read_text()
