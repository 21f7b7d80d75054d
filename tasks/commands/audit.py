"""The host's audit log: one JSON line per deploy, rollback, migration and lock action."""

from __future__ import annotations

import json
import shlex


def log_path(app_dir: str) -> str:
    return f"{app_dir}/audit.log"


def append(app_dir: str, entry: dict) -> str:
    return (f"mkdir -p {shlex.quote(app_dir)} && "
            f"printf '%s\\n' {shlex.quote(json.dumps(entry, sort_keys=True))} >> {shlex.quote(log_path(app_dir))}")


def tail(app_dir: str, lines: int) -> str:
    return f"tail -n {int(lines)} {shlex.quote(log_path(app_dir))} 2>/dev/null || true"


def format_entries(text: str) -> list[str]:
    rows = []
    for line in text.splitlines():
        try:
            e = json.loads(line)
        except ValueError:
            continue
        rows.append(f"{e.get('time', '?'):25} {e.get('action', '?'):9} {e.get('result', '?'):8} "
                    f"{e.get('release', '-') or '-':32} {e.get('duration_s', 0):>7}s  {e.get('user', '?')}@{e.get('machine', '?')}"
                    + (f"  {e['detail']}" if e.get("detail") else ""))
    return rows
