"""Which settings file a task reads (`resolve_env_file`): a file or an environment named in the
config or the environment, else the host's own, else .env."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Mapping

from invoke import Exit

from .exits import ExitCode

PROJECT_ROOT = Path(__file__).resolve().parent.parent


ENV_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]*")


HOST_ALIAS_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # an SSH alias; not user@host:port


class EnvChoiceError(ValueError):
    """The settings file cannot be chosen (a bad or missing environment, or two choices that
    disagree)."""


def resolve_env_file(section: Mapping[str, Any], environ: Mapping[str, str], host: str | None,
                     root: Path) -> tuple[Path, str]:
    """The settings file and why it was chosen; the first rule that applies wins:

    1. a file: `tasktracker.env_file` (fabric.yaml / invoke.yaml), else $TASKTRACKER_ENV_FILE;
    2. an environment name: `tasktracker.env` (set by `--env`) or $TASKTRACKER_ENV -> .env.NAME,
       which must exist (a file and a name, or two different names, are refused: a deploy must
       not guess which settings were meant);
    3. the host: .env.HOST when it exists (`fab -H staging deploy` reads .env.staging); the
       sandbox's own settings (`invoke sandbox.up` writes them) for host `sandbox`;
    4. .env (the single-file setup).
    """
    files = [(src, str(value)) for src, value in (("tasktracker.env_file", section.get("env_file")),
                                                  ("TASKTRACKER_ENV_FILE",
                                                   environ.get("TASKTRACKER_ENV_FILE"))) if value]
    names = [(src, str(value)) for src, value in (("--env / tasktracker.env", section.get("env")),
                                                  ("TASKTRACKER_ENV",
                                                   environ.get("TASKTRACKER_ENV"))) if value]
    fix = "Nothing was changed on any server."
    if len({value for _, value in names}) > 1:
        raise EnvChoiceError(f"Two environments were chosen: {names[0][1]!r} ({names[0][0]}) and "
                             f"{names[1][1]!r} "
                             f"({names[1][0]}). Choose one (unset TASKTRACKER_ENV, or drop --env) "
                             f"and run again. {fix}")
    if files and names:
        raise EnvChoiceError(f"Both a settings file, {files[0][1]} ({files[0][0]}), and an "
                             f"environment, {names[0][1]!r} "
                             f"({names[0][0]}), were chosen. Choose one and run again. {fix}")
    if files:
        return Path(files[0][1]), files[0][0]
    if names:
        source, name = names[0]
        if not ENV_NAME_RE.fullmatch(name) or name == "example":
            raise EnvChoiceError(f"The environment name {name!r} ({source}) must be lower-case "
                                 "letters, digits, '-' or "
                                 "'_' (like staging or production; 'example' is the template). "
                                 f"{fix}")
        path = root / f".env.{name}"
        if not path.is_file():
            raise EnvChoiceError(f"The environment {name!r} ({source}) has no settings file: "
                                 f"create {path} "
                                 f"(`cp .env.example .env.{name}` in {root}, then fill it in), or "
                                 f"choose another environment. {fix}")
        return path, f"environment {name}"
    if host and HOST_ALIAS_RE.fullmatch(host) and host != "example":
        path = root / f".env.{host}"
        if path.is_file():
            return path, f"host {host}"
        # The sandbox's directory, as `remote.sandbox_dir` finds it.
        sandbox = Path(environ.get("TASKTRACKER_SANDBOX_DIR") or root / ".sandbox") / ".env"
        if host == "sandbox" and sandbox.is_file():
            return sandbox, "host sandbox, written by `invoke sandbox.up`"
    return root / ".env", ""


def config_section(c) -> Mapping[str, Any]:
    return (c.config.get("tasktracker") or {}) if hasattr(c, "config") else {}


ENV_HELP = ("Use the settings of this environment, .env.NAME (same as TASKTRACKER_ENV=NAME); "
            "default: .env.HOST when that file exists, else .env.")


def env_file_choice(c=None) -> tuple[Path, str]:
    """The task's settings file and why (`resolve_env_file`); a bad choice ends the task (usage)."""
    try:
        return resolve_env_file(config_section(c), os.environ, getattr(c, "original_host", None),
                                PROJECT_ROOT)
    except EnvChoiceError as err:
        raise Exit(str(err), code=ExitCode.USAGE) from None


def env_file_path(c=None) -> Path:
    """The task's settings file (`resolve_env_file`)."""
    return env_file_choice(c)[0]


def choose_env(c, env: str | None) -> None:
    """A task's `--env NAME` (help: ENV_HELP): the settings of .env.NAME, as $TASKTRACKER_ENV
    would."""
    if env:
        if not c.config.get("tasktracker"):
            c.config["tasktracker"] = {}
        c.config.tasktracker["env"] = env


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


