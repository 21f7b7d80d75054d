"""The audit log on the host: `fab -H HOST audit` shows the latest entries."""

from __future__ import annotations

import time
from contextlib import contextmanager

from invoke import Collection, task

from . import remote
from .commands import audit as commands
from .operator import identity, now_iso
from .settings import Settings


def record(conn, app_dir: str, action: str, result: str, *, release: str = "", duration: float = 0.0, detail: str = "") -> None:
    entry = {"time": now_iso(), **identity(), "host": conn.original_host, "action": action, "result": result,
             "release": release, "duration_s": round(duration, 1)}
    if detail:
        entry["detail"] = " ".join(detail.split())[-300:]
    conn.run(commands.append(app_dir, entry), hide=True, warn=True, in_stream=False)


@contextmanager
def audited(conn, app_dir: str, action: str, outcome: dict):
    """Append one line when the block ends: ok, or failed with the reason. `outcome` may carry
    `release` and `detail` set inside the block."""
    started = time.monotonic()
    try:
        yield outcome
    except BaseException as exc:
        detail = outcome.get("detail") or str(getattr(exc, "message", "") or exc)
        record(conn, app_dir, action, "failed", release=outcome.get("release", ""),
               duration=time.monotonic() - started, detail=detail)
        raise
    record(conn, app_dir, action, outcome.get("result", "ok"), release=outcome.get("release", ""),
           duration=time.monotonic() - started, detail=outcome.get("detail", ""))


@task(name="audit", default=True, help={"lines": "How many of the latest entries to show (default 20)."})
def show(c, lines=20):
    """Show the latest audit log entries of the host (deploys, rollbacks, migrations, locks)."""
    settings = Settings.from_context(c)
    conn = remote.connect(c)
    out = conn.run(commands.tail(settings.app_dir, int(lines)), hide=True, in_stream=False).stdout
    rows = commands.format_entries(out)
    print("\n".join(rows) if rows else f"No audit entries on {conn.original_host} yet.")


ns = Collection("audit")
ns.add_task(show)
