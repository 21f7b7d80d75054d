"""A release's settings as its .env holds them (`env_values`): what the stack reads on the host."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

from dotenv import dotenv_values

from .commands.context import stack_files
from .settings import Settings


HOST_ONLY_PREFIXES = ("OFFSITE_",)  # settings kept out of every release's .env (see env_values)


def env_values(settings: Settings, env_file: Path | None, app_root: str) -> dict[str, str]:
    """The release's settings: the local file's keys with every validated setting applied, less
    the ones the stack must never see (the off-site repository's password and keys: an API
    compromise must not reach the copies that outlive the host; offsite.conf holds them)."""
    values: dict[str, str] = {}
    if env_file and env_file.is_file():
        values.update({k: v for k, v in dotenv_values(env_file).items() if v is not None})
    for key in [k for k in values if k.startswith(HOST_ONLY_PREFIXES)]:
        del values[key]
    for f in fields(Settings):
        if Settings.env_key(f.name).startswith(HOST_ONLY_PREFIXES):
            continue
        value = getattr(settings, f.name)
        values[Settings.env_key(f.name)] = value.reveal() if hasattr(value,
                                                                     "reveal") else str(value)
    # The API and the worker connect with these (docker-compose.production.yml); migrations as
    # POSTGRES_USER.
    values["APP_DB_PASSWORD"] = settings.app_db_password.reveal()
    # absolute APP_DIR on the host: nginx's mounts (docker-compose.production.yml)
    values["APP_ROOT"] = app_root
    # So that the plan's own `docker compose ps/logs/exec` typed in APP_DIR/current reach this
    # stack.
    values["COMPOSE_FILE"] = ":".join(stack_files(settings.managed_db))
    values["COMPOSE_PROJECT_NAME"] = settings.compose_project
    return values
