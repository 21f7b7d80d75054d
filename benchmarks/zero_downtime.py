"""Zero-downtime benchmark on a throwaway sandbox VPS (run as root): prints figures, asserts nothing.

    uv run python benchmarks/zero_downtime.py [--clients 8] [--writers 4] [--swaps 8]

Constant load (several concurrent clients) on `/` and `/api/health` during: no deploy (idle), a
deploy of a changed dashboard, and a rollback; then `--swaps` deploys that each replace the API
(a changed setting) while `--writers` clients keep creating tasks (POST, which nginx never retries
on another container). Prints requests, non-2xx responses, connection errors and p50/p95/max
latency per phase, and the writes refused by status.
Target (issue 4): 0 failed of at least 2,000 requests in each phase, p95 at most 2x the idle p95;
0 refused writes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
import time

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.support import throwaway_sandbox  # noqa: E402

from tests.support import LoadProbe, Writers  # noqa: E402


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


def swaps_under_writes(box, writers: int, swaps: int) -> str:
    """`swaps` deploys, each replacing the API (JOB_REQUEUE_AFTER changes), under `writers` clients
    creating tasks; what was acknowledged and what was refused (by HTTP status)."""
    env = box.state / ".env"
    base = env.read_text()
    url = f"http://{box.address}:{box.http_port}/api/tasks"
    seconds = []
    with Writers(url, clients=writers, max_seconds=3600, title="swap") as load:
        for n in range(swaps):
            env.write_text(base + f"JOB_REQUEUE_AFTER={61 + n}\n")
            seconds.append(box.run("fab", "-H", "sandbox", "deploy", "--skip-build")[0])
            replaced = load.acknowledged[:]
            print(f"  swap {n + 1}: deploy {seconds[-1]:.1f}s, {len(replaced)} writes acknowledged, "
                  f"{len(load.refused)} refused, {len(load.errors) - len(load.refused)} unanswered so far")
        time.sleep(2)
    statuses: dict[int, int] = {}
    for status, _ in load.refused:
        statuses[status] = statuses.get(status, 0) + 1
    return (f"{swaps} deploys (mean {sum(seconds) / len(seconds):.1f}s), {len(load.acknowledged)} writes "
            f"acknowledged, {len(load.errors)} refused {statuses or ''}")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients")
    parser.add_argument("--min-requests", type=int, default=2000, help="keep each phase going until this many requests")
    parser.add_argument("--writers", type=int, default=4, help="clients creating tasks during the API swaps")
    parser.add_argument("--swaps", type=int, default=8, help="deploys that replace the API under writes")
    args = parser.parse_args()
    with throwaway_sandbox("127.0.0.5", "zd") as box:
        def phase(name, action=None):
            urls = [f"http://{box.address}:{box.http_port}/", f"http://{box.address}:{box.http_port}/api/health"]
            started = time.monotonic()
            with LoadProbe(urls, clients=args.clients, max_seconds=300, pace=0) as load:
                if action:
                    action()
                while len(load.results) < args.min_requests:
                    time.sleep(0.05)
            return report(name, load, time.monotonic() - started)

        box.run("fab", "-H", "sandbox", "deploy")
        app = box.copy / "frontend" / "src" / "App.jsx"
        app.write_text(app.read_text().replace("<h2>Health</h2>", "<h2>Health (new release)</h2>"))
        box.run("invoke", "build")
        print(f"Zero-downtime benchmark: {args.clients} clients on / and /api/health (sandbox VPS on this machine)")
        failed_idle, p95_idle = phase("idle (no deploy)")
        timings = {}
        failed_deploy, p95_deploy = phase("deploy of a changed release",
                                          lambda: timings.setdefault("deploy", box.run("fab", "-H", "sandbox", "deploy", "--skip-build")[0]))
        failed_rollback, p95_rollback = phase("rollback", lambda: timings.setdefault("rollback", box.run("fab", "-H", "sandbox", "rollback")[0]))
        writes = swaps_under_writes(box, args.writers, args.swaps)
    print(f"  deploy took {timings['deploy']:.1f}s, rollback took {timings['rollback']:.1f}s")
    print(f"  failed requests: idle {failed_idle}, deploy {failed_deploy}, rollback {failed_rollback} (target 0)")
    print(f"  p95 vs idle: deploy {p95_deploy / p95_idle:.2f}x, rollback {p95_rollback / p95_idle:.2f}x (target <= 2x)")
    print(f"  API swaps under writes: {writes} (target 0 refused)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
