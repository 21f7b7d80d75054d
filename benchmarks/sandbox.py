"""A throwaway sandbox VPS and working copy for the benchmark scripts (run as root)."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.helpers import copy_project, free_port  # noqa: E402

BIN = Path(sys.executable).parent


@dataclass
class Bench:
    work: Path
    copy: Path
    state: Path
    address: str
    user: str
    http_port: int
    env: dict = field(default_factory=dict)

    def run(self, tool: str, *argv: str) -> tuple[float, str]:
        """Run `invoke`/`fab` in the working copy; (seconds, stdout), or exit with its output."""
        started = time.monotonic()
        out = subprocess.run([str(BIN / tool), *argv], cwd=self.copy, env=self.env, capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"{tool} {' '.join(argv)} failed:\n{out.stdout}\n{out.stderr}")
        return time.monotonic() - started, out.stdout

    def setting(self, key: str) -> str:
        return [line.split("=", 1)[1] for line in (self.state / ".env").read_text().splitlines() if line.startswith(f"{key}=")][0]


@contextmanager
def throwaway_sandbox(address: str, prefix: str):
    work = Path(tempfile.mkdtemp(prefix=f"tasktracker-{prefix}-"))
    state = work / "sandbox"
    bench = Bench(work, copy_project(work / "project"), state, address, f"tt-{prefix}-{secrets.token_hex(3)}", free_port(),
                  {**os.environ, "TASKTRACKER_SANDBOX_DIR": str(state), "TASKTRACKER_ENV_FILE": str(state / ".env")})
    try:
        bench.run("invoke", "sandbox.up", "--address", address, "--port", str(free_port()), "--user", bench.user,
                  "--http-port", str(bench.http_port))
        yield bench
    finally:
        subprocess.run([str(BIN / "invoke"), "sandbox.down"], cwd=bench.copy, env=bench.env, capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
