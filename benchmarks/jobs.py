"""Background-jobs benchmark on a throwaway sandbox VPS (run as root): prints figures, asserts nothing.

    uv run python benchmarks/jobs.py [--job-seconds 6] [--burst 300]

The stand-in job waits JOB_STANDIN_SECONDS, as the real app's LLM call would (the plan: 5-10 LLM
calls a minute). Prints the jobs per second the worker sustains (a burst of `--burst` tasks
written at once, from the first write to the last task done), the worker's peak memory against
its 2 GB limit, and, for the plan's peak times ten (100 tasks written over one minute), the
backlog when that minute ends and how long it takes to drain.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.support import throwaway_sandbox  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--job-seconds", type=float, default=6.0, help="how long the stand-in job takes (an LLM call)")
    parser.add_argument("--burst", type=int, default=300, help="tasks written at once for the throughput figure")
    args = parser.parse_args()
    with throwaway_sandbox("127.0.0.7", "jobs") as box:
        with (box.state / ".env").open("a") as env:
            env.write(f"JOB_STANDIN_SECONDS={args.job_seconds}\n")
        box.run("fab", "-H", "sandbox", "deploy")
        project = box.setting("COMPOSE_PROJECT")
        url = f"http://{box.address}:{box.http_port}/api/tasks"

        def container(service: str) -> str:
            return subprocess.run(["docker", "ps", "-q", "--filter", f"label=com.docker.compose.project={project}",
                                   "--filter", f"label=com.docker.compose.service={service}"],
                                  capture_output=True, text=True, check=True).stdout.split()[0]

        pg, worker = container("postgres"), container("worker")

        def pending() -> int:
            return int(subprocess.run(["docker", "exec", pg, "psql", "-U", "postgres", "-d", "tasktracker", "-Atc",
                                       "select count(*) from tasks where status <> 'done'"],
                                      capture_output=True, text=True, check=True).stdout)

        def write(title: str) -> None:
            req = urllib.request.Request(url, data=json.dumps({"title": title}).encode(),
                                         headers={"Content-Type": "application/json"})
            urllib.request.urlopen(req, timeout=30).read()

        peak = [0.0]
        sampling = threading.Event()

        def sample_memory() -> None:
            while not sampling.is_set():
                out = subprocess.run(["docker", "stats", "--no-stream", "--format", "{{.MemUsage}}", worker],
                                     capture_output=True, text=True).stdout.split("/")[0].strip()
                scale = {"GiB": 1024, "MiB": 1, "KiB": 1 / 1024}
                for unit, factor in scale.items():
                    if out.endswith(unit):
                        peak[0] = max(peak[0], float(out[:-len(unit)]) * factor)

        sampler = threading.Thread(target=sample_memory, daemon=True)
        sampler.start()
        started = time.monotonic()
        threads = [threading.Thread(target=lambda i=i: write(f"burst {i}")) for i in range(args.burst)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        written = time.monotonic() - started
        while pending():
            time.sleep(0.5)
        took = time.monotonic() - started
        print(f"burst of {args.burst} tasks ({args.job_seconds:g} s jobs): written in {written:.1f} s, all done in "
              f"{took:.1f} s: {args.burst / took:.1f} jobs/s sustained")

        started = time.monotonic()
        for i in range(100):  # the plan's peak, 10 a minute, times ten
            write(f"peak x10 {i}")
            time.sleep(max(0.0, started + (i + 1) * 0.6 - time.monotonic()))
        backlog = pending()
        ended = time.monotonic()
        while pending():
            time.sleep(0.5)
        sampling.set()
        sampler.join(10)
        print(f"10x the plan's peak (100 tasks in {ended - started:.0f} s): backlog {backlog} when the minute ended, "
              f"drained {time.monotonic() - ended:.1f} s later")
        print(f"worker memory peak: {peak[0]:.0f} MiB of its 2048 MiB limit")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
