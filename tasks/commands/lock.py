"""The per-host lock: an atomic `mkdir` of APP_DIR/.deploy.lock holding who/where/when/what and
an owner token, kept alive by a keeper process tied to the holder's SSH session (it exits when
the session dies). Only the holder's token removes the lock, so a holder whose lock was
force-released cannot remove a later holder's lock."""

from __future__ import annotations

import json

from . import q
from .context import HostContext


def _holder_report(d: str) -> str:
    return (f"cat {q(d)}/info.json 2>/dev/null; echo; "
            f"if [ -f {q(d)}/keeper.pid ] && kill -0 \"$(cat {q(d)}/keeper.pid)\" 2>/dev/null; "
            "then echo ALIVE; "
            f"elif [ ! -f {q(d)}/keeper.pid ] && [ -n \"$(find {q(d)} -maxdepth 0 -newermt '-60 "
            f"seconds' 2>/dev/null)\" ]; then echo STARTING; else echo STALE; fi")


def acquire(ctx: HostContext, info: dict) -> str:
    """Prints ACQUIRED, or HELD followed by the holder's info and ALIVE / STARTING / STALE.
    `info` carries the owner token; it is written with the lock directory's contents."""
    d = ctx.lock_dir
    return (f"mkdir -p {q(ctx.app_dir)} && if mkdir {q(d)} 2>/dev/null; then "
            f"printf '%s\\n' {q(json.dumps(info, sort_keys=True))} > {q(d)}/info.json && "
            f"install -d -m 700 {q(ctx.inbox)} && echo ACQUIRED; "
            f"else echo HELD; {_holder_report(d)}; fi")


def _owned(d: str, token: str) -> str:
    return f"grep -qF {q(json.dumps(token))} {q(d)}/info.json 2>/dev/null"


def keeper(ctx: HostContext, token: str) -> str:
    """Runs for as long as the SSH channel is open: stdin reaches EOF when the holder goes away."""
    d = ctx.lock_dir
    return f"{_owned(d, token)} && echo $$ > {q(d)}/keeper.pid && exec cat > /dev/null"


def status(ctx: HostContext) -> str:
    d = ctx.lock_dir
    return f"if [ -d {q(d)} ]; then echo HELD; {_holder_report(d)}; else echo FREE; fi"


def _remove(d: str) -> str:
    """The lock leaves in one atomic rename, and only then is its keeper stopped: a run waiting for
    it sees the lock held by a live keeper or no lock, never a lock whose keeper is gone (which
    reads as stale and fails closed)."""
    gone = f"{q(d + '.released.')}$$"  # quoted, then this shell's pid
    return (f"if mv {q(d)} {gone} 2>/dev/null; then "
            f"if [ -f {gone}/keeper.pid ]; then kill \"$(cat {gone}/keeper.pid)\" 2>/dev/null || "
            f"true; fi; rm -rf {gone}; fi")


def release(ctx: HostContext, token: str) -> str:
    """Remove the lock only if this token still owns it (prints RELEASED or NOT-OURS)."""
    d = ctx.lock_dir
    return f"if {_owned(d, token)}; then {_remove(d)}; echo RELEASED; else echo NOT-OURS; fi"


def force_release(ctx: HostContext) -> str:
    return _remove(ctx.lock_dir)


def parse_report(output: str) -> tuple[str, dict, str]:
    """(state, holder info, liveness) from what acquire/status printed."""
    lines = [line for line in output.strip().splitlines() if line.strip()]
    state = lines[0] if lines else "FREE"
    info: dict = {}
    for line in lines[1:]:
        if line.startswith("{"):
            try:
                info = json.loads(line)
            except ValueError:
                pass
    liveness = lines[-1] if len(lines) > 1 and lines[-1] in ("ALIVE", "STALE", "STARTING") else ""
    return state, info, liveness


def describe(info: dict, liveness: str) -> str:
    who = f"{info.get('user', '?')}@{info.get('machine', '?')}"
    what = info.get("action", "?")
    return (f"{what} by {who} since {info.get('since', '?')} (commit {info.get('commit', '?')})"
            + (" -- its holder is gone (stale lock)" if liveness == "STALE" else ""))
