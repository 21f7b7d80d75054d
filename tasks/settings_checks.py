"""The checks `Settings` (tasks/settings.py) runs before any connection opens: each returns the
problems it finds, in words that name the key and never show a secret value."""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlparse

from .commands.offsite import REPOSITORY_SCHEMES, sftp_target


LLM_PROVIDERS = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}


DOMAIN_RE = re.compile(r"^(?=.{1,253}$)(?!-)([a-z0-9-]{1,63}(?<!-)\.)+[a-z]{2,63}$|^localhost$", re.I)


URL_PASSWORD_RE = re.compile(r"://[^:/@\s]+:([^@/\s]+)@")


def sftp_server_is_safe(repository: str) -> bool:
    """A user and host (in either of restic's SFTP spellings) that ssh cannot read as an option."""
    target = sftp_target(repository)
    return target is not None and bool(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.-]*", target[1])) and (
        not target[0] or bool(re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", target[0])))


def offsite_problems(values: dict) -> list[str]:
    repository = values["offsite_repository"]
    if not repository:
        return []
    problems = []
    if not (repository.startswith(REPOSITORY_SCHEMES) or repository.startswith("/")) or re.search(r"[\s'\"\\]", repository):
        shown = URL_PASSWORD_RE.sub("://USER:[REDACTED]@", repository)
        problems.append(f"OFFSITE_REPOSITORY {shown!r} is not a restic repository like sftp:backup@backup.example.com:/srv/restic/tasktracker "
                        f"or s3:https://s3.example.com/bucket/tasktracker")
    if repository.startswith("sftp:") and not sftp_server_is_safe(repository):
        problems.append(f"OFFSITE_REPOSITORY {repository!r} must name its SFTP server as sftp:USER@HOST:/PATH "
                        f"(or sftp://USER@HOST:PORT//PATH), the user and host "
                        f"in letters, digits, '.', '-' or '_' and not starting with '-' (ssh would read it as an option)")
    if not values["offsite_password"]:
        problems.append("OFFSITE_PASSWORD is missing or empty (it encrypts the off-site copies; keep it outside the VPS too)")
    elif re.search(r"[\r\n]", values["offsite_password"]) or values["offsite_password"] != values["offsite_password"].strip():
        problems.append("OFFSITE_PASSWORD has a line break or leading/trailing spaces, which pgBackRest's settings file cannot "
                        "hold exactly: choose one without")
    if repository.startswith("s3:") and not (values["offsite_aws_access_key_id"] and values["offsite_aws_secret_access_key"]):
        problems.append("OFFSITE_AWS_ACCESS_KEY_ID and OFFSITE_AWS_SECRET_ACCESS_KEY are needed for an s3: OFFSITE_REPOSITORY")
    return problems


def logfire_problems(values: dict) -> list[str]:
    """LOGFIRE_BASE_URL an http(s) URL, plain http:// only to a loopback or private address (the
    token goes with every export); LOGFIRE_TOKEN one line without spaces (never shown)."""
    problems, url = [], values["logfire_base_url"]
    if url and not is_http_url(url):
        problems.append(f"LOGFIRE_BASE_URL {url!r} is not an http(s) URL like "
                        f"https://logfire-eu.pydantic.dev")
    elif url.startswith("http://") and not is_private(urlparse(url).hostname or ""):
        problems.append(f"LOGFIRE_BASE_URL {url!r} must be https:// (the token goes with every "
                        f"export; plain http:// only to a loopback or private address)")
    if re.search(r"\s", values["logfire_token"].reveal()):
        problems.append("LOGFIRE_TOKEN has a space or line break (value not shown: it is secret): "
                        "copy the write token again")
    return problems


def is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_private(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_private
    except ValueError:
        return False


def is_http_url(value: str) -> bool:
    parsed = urlparse(value)
    return parsed.scheme in ("http", "https") and bool(parsed.hostname) and " " not in value
