"""The host's audit log: one JSON line per deploy, rollback, migration, backup and lock action."""

from __future__ import annotations

import json

from . import q
from .context import HostContext


def append(ctx: HostContext, entry: dict) -> str:
    return (f"mkdir -p {q(ctx.app_dir)} && "
            f"printf '%s\\n' {q(json.dumps(entry, sort_keys=True))} >> {q(ctx.audit_log)}")


def tail(ctx: HostContext, lines: int) -> str:
    return f"tail -n {int(lines)} {q(ctx.audit_log)} 2>/dev/null || true"


def format_entries(text: str) -> list[str]:
    rows = []
    for line in text.splitlines():
        try:
            e = json.loads(line)
        except ValueError:
            continue
        rows.append(f"{e.get('time', '?'):25} {e.get('action', '?'):9} {e.get('result', '?'):8} "
                    f"{e.get('release', '-') or '-':32} {e.get('duration_s', 0):>7}s  "
                    f"{e.get('user', '?')}@{e.get('machine', '?')}"
                    + (f"  {e['detail']}" if e.get("detail") else ""))
    return rows
