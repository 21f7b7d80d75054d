"""Zero-downtime benchmark on a throwaway sandbox VPS (run as root): prints figures, asserts nothing.

    uv run python benchmarks/zero_downtime.py [--clients 8]

Constant load (several concurrent clients) on `/` and `/api/health` during: no deploy (idle), a
deploy of a changed release (new dashboard assets and a new API container), and a rollback.
Prints requests, non-2xx responses, connection errors and p50/p95/max latency per phase.
Target (issue 4): 0 failed of at least 2,000 requests in each phase, p95 at most 2x the idle p95.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.helpers import LoadProbe, copy_project, free_port  # noqa: E402

BIN = Path(sys.executable).parent


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def report(name: str, load: LoadProbe, seconds: float) -> tuple[int, float]:
    latencies = [r[2] for r in load.results]
    non2xx = sum(1 for r in load.results if isinstance(r[1], int) and not 200 <= r[1] < 300)
    errors = sum(1 for r in load.results if not isinstance(r[1], int))
    p95 = percentile(latencies, 0.95)
    print(f"  {name:28} {len(load.results):6} req in {seconds:5.1f}s  non-2xx {non2xx:3}  conn errors {errors:3}  "
          f"p50 {percentile(latencies, 0.5) * 1000:6.1f} ms  p95 {p95 * 1000:6.1f} ms  max {max(latencies or [0]) * 1000:7.1f} ms")
    return non2xx + errors, p95


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients")
    parser.add_argument("--min-requests", type=int, default=2000, help="keep each phase going until this many requests")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tasktracker-zd-"))
    copy = copy_project(work / "project")
    state = work / "sandbox"
    env = {**os.environ, "TASKTRACKER_SANDBOX_DIR": str(state), "TASKTRACKER_ENV_FILE": str(state / ".env")}
    http_port = free_port()

    def run(tool, *argv):
        started = time.monotonic()
        out = subprocess.run([str(BIN / tool), *argv], cwd=copy, env=env, capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"{tool} {' '.join(argv)} failed:\n{out.stdout}\n{out.stderr}")
        return time.monotonic() - started

    def phase(name, action=None):
        urls = [f"http://127.0.0.5:{http_port}/", f"http://127.0.0.5:{http_port}/api/health"]
        started = time.monotonic()
        with LoadProbe(urls, clients=args.clients, max_seconds=300) as load:
            if action:
                action()
            while len(load.results) < args.min_requests:
                time.sleep(0.05)
        return report(name, load, time.monotonic() - started)

    try:
        run("invoke", "sandbox.up", "--address", "127.0.0.5", "--port", str(free_port()),
            "--user", f"tt-zd-{secrets.token_hex(3)}", "--http-port", str(http_port))
        run("fab", "-H", "sandbox", "deploy")
        app = copy / "frontend" / "src" / "App.jsx"
        app.write_text(app.read_text().replace("<h2>Health</h2>", "<h2>Health (new release)</h2>"))
        run("invoke", "build")
        print(f"Zero-downtime benchmark: {args.clients} clients on / and /api/health (sandbox VPS on this machine)")
        failed_idle, p95_idle = phase("idle (no deploy)")
        timings = {}
        failed_deploy, p95_deploy = phase("deploy of a changed release",
                                          lambda: timings.setdefault("deploy", run("fab", "-H", "sandbox", "deploy", "--skip-build")))
        failed_rollback, p95_rollback = phase("rollback", lambda: timings.setdefault("rollback", run("fab", "-H", "sandbox", "rollback")))
        print(f"  deploy took {timings['deploy']:.1f}s, rollback took {timings['rollback']:.1f}s")
        print(f"  failed requests: idle {failed_idle}, deploy {failed_deploy}, rollback {failed_rollback} (target 0)")
        print(f"  p95 vs idle: deploy {p95_deploy / p95_idle:.2f}x, rollback {p95_rollback / p95_idle:.2f}x (target <= 2x)")
        return 0
    finally:
        subprocess.run([str(BIN / "invoke"), "sandbox.down"], cwd=copy, env=env, capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
