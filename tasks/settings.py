"""One typed, validated settings object for every task.

Values come from, lowest precedence first: defaults, the `tasktracker:` section of
`fabric.yaml` / `invoke.yaml`, the settings file (`.env`, or one per environment: see
`resolve_env_file`), then environment variables. Everything is checked before any connection
opens, and every problem is reported in one message.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from dotenv import dotenv_values
from invoke import Exit

from .commands.db import app_role_password
from .exits import ExitCode
from .settings_checks import (URL_PASSWORD_RE, address_problems, choice_problems, provider_problems,
                              token_problems)
from .settings_files import (ENV_HELP, PROJECT_ROOT, _shown, choose_env,  # noqa: F401
                             config_section, env_file_choice, env_file_path)
from .settings_managed import managed_problems
from .secret_value import Secret

__all__ = ["Secret", "Settings", "SettingsError"]

_ANNOUNCED: set[Path] = set()  # settings files already named on stderr (from_context)


class SettingsError(ValueError):
    """Raised with every problem found in the settings, never with a secret value."""

    def __init__(self, problems: list[str], source: str):
        self.problems = problems
        listed = "; ".join(problems)
        super().__init__(
            f"Settings are invalid ({source}): {listed}. Fix these keys in .env "
            "(every key is documented in .env.example) or in the environment, then run the task "
            f"again. Nothing was changed on any server."
        )


def _spec(default: Any = None, *, required: bool = False, secret: bool = False,
          key: str | None = None,
          doc: str = "", group: str = "", example: str | None = None):
    """A setting: its default, whether it must be set and is secret, and for the settings reference
    (docs/settings.md) and .env.example, both rendered by tasks/settings_doc.py: a one-sentence
    description, its group and, where the default will not do, the value .env.example shows."""
    return field(default=default, metadata={"required": required, "secret": secret, "key": key,
                                            "doc": doc,
                                            "group": group, "example": example})


@dataclass(frozen=True)
class Settings:
    """Everything the deploy tasks and the stack need, validated."""

    postgres_user: str = _spec("postgres", group="Database", doc="The database user.")
    postgres_password: Secret = _spec(
        required=True, secret=True, example="change-me", group="Database",
        doc="The database password (any characters: database URLs carry it URL-encoded, so `@ / # "
            ": $` work).")
    postgres_db: str = _spec("tasktracker", group="Database", doc="The database name.")
    app_db_user: str = _spec(
        "tasktracker_app", group="Database",
        doc="The database role the API and the worker connect as: no superuser, owner of nothing, "
            "only reading and writing the app's tables (backend/README.md, \"The database role\"); "
            "its password is derived from POSTGRES_PASSWORD. Migrations and the toolkit's backups "
            "and restores use POSTGRES_USER.")
    nats_url: str = _spec("nats://nats:4222", group="NATS JetStream",
                          doc="Where the API and the worker reach NATS (a nats:// or tls:// URL).")
    nats_user: str = _spec("tasktracker", group="NATS JetStream",
                           doc="The login nats-server requires; the API and the worker connect "
                               "with it.")
    nats_password: Secret = _spec(
        required=True, secret=True, example="change-me-too", group="NATS JetStream",
        doc="The NATS password; it reaches nats-server through a private config file, never a "
            "command line.")
    database_host: str = _spec(
        "", group="Managed services",
        doc="A managed PostgreSQL's host name or address (docs/managed-services.md): the stack "
            "then runs no postgres of its own; POSTGRES_USER, POSTGRES_PASSWORD and POSTGRES_DB "
            "are that server's. Empty: the stack's own postgres.")
    database_port: int = _spec(5432, group="Managed services",
                               doc="The managed PostgreSQL's port.")
    database_sslmode: str = _spec(
        "verify-full", group="Managed services",
        doc="How the server's TLS certificate is checked: verify-full (the CA and the host name) "
            "or verify-ca (the CA only); TLS is always required.")
    database_ca_file: str = _spec(
        "", group="Managed services",
        doc="The CA certificate (PEM) that signed the managed server's certificate, a file on this "
            "machine (your provider's download); required with DATABASE_HOST.")
    telegram_bot_token: Secret = _spec(required=True, secret=True, example="123456:replace-me",
                                       group="Telegram",
                                       doc="The Telegram bot's token.")
    llm_provider: str = _spec("openai", group="LLM provider", doc="The LLM provider the app calls: "
                                                                  "openai or anthropic.")
    openai_api_key: Secret = _spec("", secret=True, example="sk-proj-replace-me",
                                   group="LLM provider",
                                   doc="The OpenAI API key, required when LLM_PROVIDER=openai.")
    openai_api_base_url: str = _spec("https://api.openai.com/v1", group="LLM provider",
                                     doc="The OpenAI API's base URL.")
    openai_default_model: str = _spec("gpt-4o-mini", group="LLM provider",
                                      doc="The OpenAI model the app uses.")
    anthropic_api_key: Secret = _spec("", secret=True, group="LLM provider",
                                      doc="The Anthropic API key, required when "
                                          "LLM_PROVIDER=anthropic.")
    anthropic_default_model: str = _spec("claude-3-5-haiku-20241022", group="LLM provider",
                                         doc="The Anthropic model the app uses.")
    app_url: str = _spec(required=True, example="https://tasks.example.com",
                         group="Public addresses",
                         doc="The app's public http(s) URL.")
    webapp_url: str = _spec(required=True, example="https://tasks.example.com",
                            group="Public addresses",
                            doc="The web app's public http(s) URL.")
    domain: str = _spec(required=True, example="tasks.example.com", group="Public addresses",
                        doc="The public domain name; `ssl.issue` certifies it unless given "
                            "`--domain`.")
    api_workers: int = _spec(1, group="Runtime and deploy", doc="Uvicorn worker processes in the "
                                                                "API container.")
    app_dir: str = _spec("tasktracker", group="Runtime and deploy",
                         doc="Where releases live on the host: absolute, or relative to the deploy "
                             "user's home.")
    keep_releases: int = _spec(5, group="Runtime and deploy",
                               doc="Successful releases kept on the host (at least 2: the live one "
                                   "and the one a rollback returns to).")
    http_port: int = _spec(80, group="Runtime and deploy", doc="The host port nginx listens on for "
                                                               "HTTP.")
    https_port: int = _spec(443, group="Runtime and deploy",
                            doc="The host port nginx listens on for HTTPS once `ssl.issue` has run "
                                "(not HTTP_PORT).")
    compose_project: str = _spec("tasktracker", group="Runtime and deploy",
                                 doc="The Compose project name on the host: containers and volumes "
                                     "are named after it.")
    backup_keep: int = _spec(7, group="Runtime and deploy",
                             doc="Full backup sets kept on the host, and pre-deploy sets "
                                 "separately (the newest verified set is never deleted).")
    wal_archive_timeout: int = _spec(3, group="Runtime and deploy",
                                     doc="Seconds after which Postgres archives a WAL segment that "
                                         "is not full (archive_timeout, 1 to 60): under writes, "
                                         "the archive, off-site copy included, trails the database "
                                         "by this plus the push (about 0.5 s), the most a lost "
                                         "host takes with it. 3 keeps that within 5 s; each second "
                                         "less adds archived segments (about 40 KB compressed "
                                         "each while writing, none at idle). Applied to a running "
                                         "postgres by `fab compose.recreate --service postgres`.")
    db_wait_seconds: int = _spec(60, group="Runtime and deploy",
                                 doc="How long a deploy or rollback waits for Postgres to answer "
                                     "before it refuses to go on.")
    engine: str = _spec("auto", group="Images and engine",
                        doc="What runs the stack: auto (Docker Swarm when the host is a swarm "
                            "manager, else Compose), compose or swarm.")
    swarm_data_path: str = _spec("", group="Images and engine",
                                 doc="On a swarm, the interface (same name on every node, e.g. the "
                                     "private network's) whose address carries the overlay "
                                     "(`cluster.init`'s --data-path-addr); empty: the advertised.")
    swarm_overlay_encryption: str = _spec("auto", group="Images and engine",
                                          doc="On a swarm, IPsec on the stack's overlay network "
                                              "when it is created: auto (when the kernel has ESP), "
                                              "yes or no.")
    registry: str = _spec("", group="Images and engine",
                          doc="On a swarm, a container registry the nodes pull the built images "
                              "from "
                              "(`host[:port][/path]`; this machine pushes to it, `docker login` as "
                              "usual); empty: images are sent to each node over SSH.")
    build_backend: str = _spec("auto", group="Images and engine",
                               doc="Where the backend image is built: auto (this machine when it "
                                   "has Docker, else "
                                   "the host), local (build here and ship it; spares the VPS's 2 "
                                   "CPUs) or host (docker compose build on the VPS).")
    ship_images: str = _spec("auto", group="Images and engine",
                             doc="Whether images the host lacks are sent from this machine over "
                                 "SSH: auto (when "
                                 "this machine has them), always (fail if it cannot) or never (the "
                                 "host pulls them itself).")
    alert_telegram_chat_id: str = _spec("", group="Alerts",
                                        doc="The Telegram chat (an id, or @channel) the bot sends "
                                            "alerts to; find a "
                                            "chat's id by messaging the bot, then opening "
                                            "`https://api.telegram.org/bot<token>/getUpdates`; "
                                            "empty: no Telegram alerts.")
    alert_webhook_url: Secret = _spec("", secret=True, group="Alerts",
                                      doc="A webhook that receives each alert as a POST of "
                                          "`{\"text\": \"...\"}` (a Slack "
                                          "or Mattermost incoming webhook, or your own endpoint); "
                                          "secret, since its URL holds a token; empty: none.")
    telegram_webhook: str = _spec("auto", group="Telegram",
                                  doc="auto: every deploy (and `ssl.issue`) points the bot's "
                                      "webhook at APP_URL + "
                                      "/api/telegram/webhook once the host serves HTTPS for "
                                      "DOMAIN, with a secret token "
                                      "derived from TELEGRAM_BOT_TOKEN; off: the toolkit leaves "
                                      "the webhook alone.")
    telegram_api_base_url: str = _spec("https://api.telegram.org", group="Alerts",
                                       doc="The Telegram Bot API (a local Bot API server; the "
                                           "tests point it at a local endpoint).")
    logfire_token: Secret = _spec(
        "", secret=True, group="Tracing",
        doc="A Logfire project's write token; it reaches the API and the worker only in the "
            "release's .env (0600). Empty: no tracing, no exporter, no call to Logfire.")
    logfire_base_url: str = _spec(
        "", group="Tracing",
        doc="Where traces go: empty for Logfire's own (the token's region), or any endpoint that "
            "takes Logfire's OTLP/HTTP exports; https://, or http:// only to a loopback or private "
            "address (the token travels with them).")
    offsite_repository: str = _spec("", group="Off-site copies",
                                    doc="The restic repository, like "
                                        "`sftp:backup@backup.example.com:/srv/restic/tasktracker` "
                                        "(`fab -H HOST backup.offsite.init` prints the host's key "
                                        "to authorize there) or "
                                        "`s3:https://s3.eu-central-1.amazonaws.com/my-bucket/"
                                        "tasktracker`; empty: no off-site copies.")
    offsite_host_key: str = _spec("", group="Off-site copies",
                                  doc="The SFTP server's host key fingerprint, as "
                                      "`ssh-keygen -lf` prints it (`SHA256:` and 43 characters), "
                                      "read on the server itself or from its provider: "
                                      "`backup.offsite.init` trusts that key and no other (empty: "
                                      "init shows the keys the server offers and stops).")
    offsite_password: Secret = _spec("", secret=True, group="Off-site copies",
                                     doc="Encrypts the repository (required with "
                                         "OFFSITE_REPOSITORY): keep a copy OFF "
                                         "the VPS (a password manager), since without it the "
                                         "copies are unreadable.")
    offsite_aws_access_key_id: Secret = _spec(
        "", secret=True, group="Off-site copies",
        doc="The S3 access key id, for s3: repositories only.")
    offsite_aws_secret_access_key: Secret = _spec("", secret=True, group="Off-site copies",
                                                  doc="The S3 secret access key, for s3: "
                                                      "repositories only.")
    offsite_append_only: bool = _spec(False, group="Off-site copies", doc="true: the account is "
                                      "append-only (`backup.offsite.account --append-only`): the "
                                      "host adds sets and deletes none; retention runs on the "
                                      "server (`backup.offsite.prune`); no WAL archive off-site.")
    offsite_keep_daily: int = _spec(7, group="Off-site copies",
                                    doc="Off-site retention (restic forget): the newest set of "
                                        "each of the last N days.")
    offsite_keep_weekly: int = _spec(4, group="Off-site copies",
                                     doc="Off-site retention: the newest set of each of the last N "
                                         "weeks.")
    offsite_keep_monthly: int = _spec(6, group="Off-site copies",
                                      doc="Off-site retention: the newest set of each of the last "
                                          "N months.")

    @staticmethod
    def env_key(name: str) -> str:
        return name.upper()

    def __repr__(self) -> str:
        shown = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in fields(self))
        return f"Settings({shown})"

    @property
    def app_db_password(self) -> Secret:
        """The app role's password: derived from POSTGRES_PASSWORD (commands/db.app_role_password),
        so there is nothing new to keep; the release's .env gives it to the API and the worker."""
        owner = self.postgres_password.reveal()
        return Secret(app_role_password(owner) if owner else "")

    @property
    def managed_db(self) -> bool:
        return bool(self.database_host)

    def secret_values(self) -> list[str]:
        """Non-empty secret values, for redacting command output (and a password written into
        OFFSITE_REPOSITORY's URL, as restic's `rest:` repositories take it), and the ones derived
        from them (the app role's password)."""
        values = [getattr(self, f.name).reveal() for f in fields(self)
                  if f.metadata["secret"] and getattr(self, f.name)]
        in_url = URL_PASSWORD_RE.search(self.offsite_repository)
        derived = [self.app_db_password.reveal()] if self.postgres_password else []
        return values + ([in_url.group(1)] if in_url else []) + derived

    @classmethod
    def load(
        cls,
        config: Mapping[str, Any] | None = None,
        env_file: str | os.PathLike | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> "Settings":
        """Merge defaults < fabric.yaml section < .env < environment, then validate."""
        env_path = Path(env_file) if env_file else PROJECT_ROOT / ".env"
        environ = os.environ if environ is None else environ
        raw: dict[str, Any] = {}
        for f in fields(cls):
            key = cls.env_key(f.name)
            if config and f.name in config and config[f.name] is not None:
                raw[f.name] = config[f.name]
        file_values = dotenv_values(env_path) if env_path.is_file() else {}
        for f in fields(cls):
            key = cls.env_key(f.name)
            for source in (file_values, environ):
                if source.get(key) is not None:
                    raw[f.name] = source[key]
        return cls._validated(raw,
                              source=f"{env_path.name if env_path.is_file() else 'no .env file'} + "
                                     "environment")

    @classmethod
    def _validated(cls, raw: dict[str, Any], source: str) -> "Settings":
        values, problems = cls._typed(raw)
        problems += provider_problems(values) + address_problems(values) + choice_problems(values)
        problems += cls._placeholder_problems(values)
        problems += token_problems(values) + managed_problems(values)
        if problems:
            raise SettingsError(problems, source)
        return cls(**values)

    @classmethod
    def _typed(cls, raw: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
        """Each field's value as its type (stripped; a default where it is missing or unusable),
        and the problems: a required key missing, a number that is not one."""
        problems: list[str] = []
        values: dict[str, Any] = {}
        for f in fields(cls):
            key = cls.env_key(f.name)
            value = raw.get(f.name, f.default)
            if isinstance(value, str):
                value = value.strip()
            if f.metadata["required"] and (value is None or value == ""):
                problems.append(f"{key} is missing or empty")
                value = ""
            if f.type in ("int", int):
                try:
                    value = int(value)
                    if value < 1:
                        raise ValueError
                except (TypeError, ValueError):
                    problems.append(f"{key} must be a whole number of at least 1")
                    value = f.default
            elif f.type in ("bool", bool):
                word = str(value).lower()
                if word not in ("true", "false", "yes", "no", "1", "0", ""):
                    problems.append(f"{key} must be true or false")
                value = word in ("true", "yes", "1")
            elif f.metadata["secret"]:
                value = Secret(value or "")
            else:
                value = "" if value is None else str(value)
            values[f.name] = value
        return values, problems

    @classmethod
    def _placeholder_problems(cls, values: dict[str, Any]) -> list[str]:
        """.env.example's placeholder left in place of a real secret."""
        problems = []
        for f in fields(cls):
            example = f.metadata["example"]
            value = values[f.name]
            if f.metadata["secret"] and example and str(value) and value.reveal() == example:
                problems.append(f"{cls.env_key(f.name)} is still .env.example's placeholder "
                                f"{example!r}: set the real value")
        return problems

    @classmethod
    def from_context(cls, c) -> "Settings":
        """Settings for a task: the context's `tasktracker` config section, its settings file
        (`env_file_choice`) and environment. Says once which file that is (on stderr: `--json`
        output stays clean), never a value from it.

        Invalid settings end the task with the one-paragraph message (no traceback)."""
        path, reason = env_file_choice(c)
        if path not in _ANNOUNCED:
            _ANNOUNCED.add(path)
            shown = (_shown(path) if path.is_file() else f"{_shown(path)} does not exist: "
                                                         "environment variables only")
            print(f"settings: {shown}" + (f" ({reason})" if reason else ""), file=sys.stderr)
        try:
            return cls.load(config=dict(config_section(c)), env_file=path)
        except SettingsError as err:
            raise Exit(str(err), code=ExitCode.USAGE) from None
