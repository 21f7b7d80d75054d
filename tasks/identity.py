"""Who is acting: recorded in the host lock and the audit log (never any setting's value)."""

import getpass
import os
import socket
from datetime import datetime, timezone

from .build import git_commit


def identity() -> dict:
    who = {"user": getpass.getuser(), "machine": socket.gethostname(), "commit": git_commit()}
    if os.environ.get("GITHUB_RUN_ID"):
        who["ci_run"] = f"{os.environ.get('GITHUB_REPOSITORY', '')}#{os.environ['GITHUB_RUN_ID']}"
    return who


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
