"""The per-host deploy lock: an atomic `mkdir` of APP_DIR/.deploy.lock holding who/where/when/what,
kept alive by a keeper process tied to the holder's SSH session (it exits when the session dies)."""

from __future__ import annotations

import json
import shlex


def lock_dir(app_dir: str) -> str:
    return f"{app_dir}/.deploy.lock"


def _q(s: str) -> str:
    return shlex.quote(s)


def _holder_report(d: str) -> str:
    return (f"cat {_q(d)}/info.json 2>/dev/null; echo; "
            f"if [ -f {_q(d)}/keeper.pid ] && kill -0 \"$(cat {_q(d)}/keeper.pid)\" 2>/dev/null; then echo ALIVE; "
            f"elif [ ! -f {_q(d)}/keeper.pid ] && [ -n \"$(find {_q(d)} -maxdepth 0 -newermt '-60 seconds' 2>/dev/null)\" ]; then echo STARTING; "
            f"else echo STALE; fi")


def acquire(app_dir: str, info: dict) -> str:
    """Prints ACQUIRED, or HELD followed by the holder's info and ALIVE / STARTING / STALE."""
    d = lock_dir(app_dir)
    return (f"mkdir -p {_q(app_dir)} && if mkdir {_q(d)} 2>/dev/null; then "
            f"printf '%s\\n' {_q(json.dumps(info, sort_keys=True))} > {_q(d)}/info.json && echo ACQUIRED; "
            f"else echo HELD; {_holder_report(d)}; fi")


def keeper(app_dir: str) -> str:
    """Runs for as long as the SSH channel is open: stdin reaches EOF when the holder goes away."""
    return f"echo $$ > {_q(lock_dir(app_dir))}/keeper.pid && exec cat > /dev/null"


def status(app_dir: str) -> str:
    d = lock_dir(app_dir)
    return f"if [ -d {_q(d)} ]; then echo HELD; {_holder_report(d)}; else echo FREE; fi"


def release(app_dir: str) -> str:
    d = lock_dir(app_dir)
    return (f"if [ -f {_q(d)}/keeper.pid ]; then kill \"$(cat {_q(d)}/keeper.pid)\" 2>/dev/null || true; fi; "
            f"rm -rf {_q(d)}")


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
