"""The checks `Settings` (tasks/settings.py) runs before any connection opens: each returns the
problems it finds, in words that name the key and never show a secret value."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from urllib.parse import urlparse

from .commands.db import ROLE_NAME_RE
from .commands.offsite import HOST_KEY_FINGERPRINT, REPOSITORY_SCHEMES, sftp_target

LLM_PROVIDERS = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}
DOMAIN_RE = re.compile(r"^(?=.{1,253}$)(?!-)([a-z0-9-]{1,63}(?<!-)\.)+[a-z]{2,63}$|^localhost$",
                       re.I)
URL_PASSWORD_RE = re.compile(r"://[^:/@\s]+:([^@/\s]+)@")
CHOICES = (("telegram_webhook", ("auto", "off")), ("engine", ("auto", "compose", "swarm")),
           ("build_backend", ("auto", "host", "local")),
           ("ship_images", ("auto", "always", "never")),
           ("swarm_overlay_encryption", ("auto", "yes", "no")))


def provider_problems(values: dict) -> list[str]:
    """LLM_PROVIDER known (lower-cased in `values`), and its API key set."""
    problems = []
    provider = values["llm_provider"].lower()
    if provider not in LLM_PROVIDERS:
        problems.append(f"LLM_PROVIDER {values['llm_provider']!r} is unknown (use one of: "
                        f"{', '.join(LLM_PROVIDERS)})")
    elif not values[LLM_PROVIDERS[provider].lower()]:
        problems.append(f"{LLM_PROVIDERS[provider]} is missing or empty (LLM_PROVIDER is "
                        f"{provider})")
    values["llm_provider"] = provider
    return problems


def address_problems(values: dict) -> list[str]:
    """The URLs, the domain, APP_DIR, the Compose project, the ports and the registry."""
    problems = []
    for name in ("app_url", "webapp_url", "openai_api_base_url", "telegram_api_base_url"):
        url = values[name]
        if url and not is_http_url(url):
            problems.append(f"{name.upper()} {url!r} is not an http(s) URL like "
                            "https://tasks.example.com")
    if values["nats_url"] and urlparse(values["nats_url"]).scheme not in ("nats", "tls"):
        problems.append(f"NATS_URL {values['nats_url']!r} is not a nats:// URL")
    if values["domain"] and not DOMAIN_RE.match(values["domain"]):
        problems.append(f"DOMAIN {values['domain']!r} is not a domain name like tasks.example.com")
    app_dir = values["app_dir"]
    if not app_dir or ".." in Path(app_dir).parts or not re.match(r"^[\w./-]+$", app_dir):
        problems.append(f"APP_DIR {app_dir!r} must be a plain path (absolute, or relative to the "
                        "deploy user's home) without '..'")
    if not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", values["compose_project"]):
        problems.append(f"COMPOSE_PROJECT {values['compose_project']!r} must be lower-case "
                        "letters, digits, '-' or '_'")
    for port in ("http_port", "https_port"):
        if values[port] > 65535:
            problems.append(f"{port.upper()} must be a TCP port (1-65535)")
    if values["http_port"] == values["https_port"]:
        problems.append("HTTP_PORT and HTTPS_PORT must differ (nginx listens on both)")
    if values["registry"] and not re.fullmatch(r"[a-z0-9.-]+(:[0-9]{1,5})?(/[a-z0-9._-]+)*",
                                               values["registry"]):
        problems.append(f"REGISTRY {values['registry']!r} is not a registry like "
                        f"registry.example.com:5000/team (host, optional port and path; no scheme)")
    return problems


def choice_problems(values: dict) -> list[str]:
    """The keys with a few choices (lower-cased in `values`), the app's role, KEEP_RELEASES,
    WAL_ARCHIVE_TIMEOUT and the alert chat."""
    problems = []
    for name, choices in CHOICES:
        values[name] = values[name].lower()
        if values[name] not in choices:
            problems.append(f"{name.upper()} {values[name]!r} must be one of: {', '.join(choices)}")
    role = values["app_db_user"]
    if not ROLE_NAME_RE.fullmatch(role) or role == values["postgres_user"]:
        problems.append(f"APP_DB_USER {role!r} must be a role name in lower-case letters, digits "
                        f"and '_' (not starting with a digit, at most 63) other than POSTGRES_USER")
    if values["keep_releases"] < 2:
        problems.append("KEEP_RELEASES must be at least 2 (the live release and the one a rollback "
                        "returns to)")
    if not 1 <= values["wal_archive_timeout"] <= 60:
        problems.append(f"WAL_ARCHIVE_TIMEOUT {values['wal_archive_timeout']} is out of range: it "
                        "must be 1 to 60 seconds (Postgres's archive_timeout, the longest stretch "
                        "of writes a lost host takes with it; 0 would never archive an unfilled "
                        "segment). Set WAL_ARCHIVE_TIMEOUT=3 in .env (the RPO stays within 5 s)")
    chat = values["alert_telegram_chat_id"]
    if chat and not re.fullmatch(r"-?[0-9]{1,20}|@[A-Za-z][A-Za-z0-9_]{3,31}", chat):
        problems.append(f"ALERT_TELEGRAM_CHAT_ID {chat!r} must be a chat id like 123456789 or "
                        "-1001234567890, or @channelname")
    return problems


def token_problems(values: dict) -> list[str]:
    """Where tokens travel: https:// (plain http:// only to loopback), the alert webhook's URL,
    Logfire and the off-site repository."""
    problems = []
    for key, url in (("TELEGRAM_API_BASE_URL", values["telegram_api_base_url"]),
                     ("ALERT_WEBHOOK_URL", values["alert_webhook_url"].reveal())):
        if url.startswith("http://") and not is_loopback(urlparse(url).hostname or ""):
            problems.append(f"{key} must be https:// (it carries a token; plain http:// only to "
                            "this host's loopback)")
    problems += logfire_problems(values)
    hook = values["alert_webhook_url"].reveal()
    if hook and (not is_http_url(hook) or re.search(r'["\\\s]', hook)):
        problems.append("ALERT_WEBHOOK_URL is not an http(s) URL like "
                        "https://hooks.example.com/... (value not shown: it is secret)")
    problems += offsite_problems(values)
    return problems


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
    if not (repository.startswith(REPOSITORY_SCHEMES)
            or repository.startswith("/")) or re.search(r"[\s'\"\\]", repository):
        shown = URL_PASSWORD_RE.sub("://USER:[REDACTED]@", repository)
        problems.append(f"OFFSITE_REPOSITORY {shown!r} is not a restic repository like "
                        "sftp:backup@backup.example.com:/srv/restic/tasktracker "
                        f"or s3:https://s3.example.com/bucket/tasktracker")
    if repository.startswith("sftp:") and not sftp_server_is_safe(repository):
        problems.append(f"OFFSITE_REPOSITORY {repository!r} must name its SFTP server as "
                        f"sftp:USER@HOST:/PATH (or sftp://USER@HOST:PORT//PATH), the user and host "
                        "in letters, digits, '.', '-' or '_' and not starting with '-' (ssh would "
                        "read it as an option)")
    if values.get("offsite_append_only") and sftp_target(repository) is None:
        problems.append("OFFSITE_APPEND_ONLY=true needs an SFTP server's account made by "
                        "`backup.offsite.account --append-only`: set OFFSITE_REPOSITORY to the "
                        "sftp:USER@HOST:/PATH it printed (or set OFFSITE_APPEND_ONLY=false)")
    pin = values.get("offsite_host_key", "")
    if pin and not re.fullmatch(HOST_KEY_FINGERPRINT, pin):
        problems.append(f"OFFSITE_HOST_KEY {pin!r} is not a host key fingerprint: `SHA256:` and "
                        "43 letters, digits, '+' or '/', as `ssh-keygen -lf "
                        "/etc/ssh/ssh_host_ed25519_key.pub` prints it on the SFTP server")
    if not values["offsite_password"]:
        problems.append("OFFSITE_PASSWORD is missing or empty (it encrypts the off-site copies; "
                        "keep it outside the VPS too)")
    elif (re.search(r"[\r\n]", values["offsite_password"])
          or values["offsite_password"] != values["offsite_password"].strip()):
        problems.append("OFFSITE_PASSWORD has a line break or leading/trailing spaces, which "
                        "pgBackRest's settings file cannot hold exactly: choose one without")
    if repository.startswith("s3:") and not (values["offsite_aws_access_key_id"]
                                             and values["offsite_aws_secret_access_key"]):
        problems.append("OFFSITE_AWS_ACCESS_KEY_ID and OFFSITE_AWS_SECRET_ACCESS_KEY are needed "
                        "for an s3: OFFSITE_REPOSITORY")
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
