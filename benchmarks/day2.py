"""Day 2 costs on a throwaway sandbox (run as root):

    uv run python benchmarks/day2.py

Deploys, then prints: the wall time of `fab status` and `fab doctor` (median of 5, including
connecting), the snapshot's round trips and bytes, and the sampler's cost per minute (wall and
CPU time of one run, bytes per line, and so the history's size per day and for 8 days).
"""

from __future__ import annotations

import resource
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.support import throwaway_sandbox  # noqa: E402

RUNS = 5


def timed(box, *argv: str) -> list[float]:
    times = []
    for _ in range(RUNS):
        started = time.monotonic()
        subprocess.run([str(Path(sys.executable).parent / "fab"), "-H", "sandbox", *argv], cwd=box.copy, env=box.env,
                       capture_output=True, text=True)
        times.append(time.monotonic() - started)
    return times


def main() -> int:
    with throwaway_sandbox("127.0.0.9", "day2") as box:
        box.run("fab", "-H", "sandbox", "deploy")
        _, out = box.run("fab", "-H", "sandbox", "status")
        status_times = timed(box, "status")
        doctor_times = timed(box, "doctor")
        home = Path("/home") / box.user
        line = [entry for entry in subprocess.run(["crontab", "-l", "-u", box.user], capture_output=True, text=True).stdout.splitlines()
                if "tasktracker-sample" in entry][0]
        command = line[len("* * * * * "):].split(" >> ")[0]
        runs = []
        for _ in range(6):
            for _request in range(50):
                urllib.request.urlopen(f"http://{box.address}:{box.http_port}/api/tasks", timeout=10).read()
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            started = time.monotonic()
            subprocess.run(["runuser", "-u", box.user, "--", "bash", "-c", command], check=True)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            runs.append((time.monotonic() - started, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)))
        samples = sorted((home / "tasktracker" / "shared" / "metrics").glob("samples-*.log"))[-1].read_text().splitlines()
        per_line = statistics.mean(len(s) + 1 for s in samples)
    print("Day 2 on the sandbox (2 CPU machine; includes SSH connect and Python start of fab):")
    print(f"  fab status : median {statistics.median(status_times):.2f}s (min {min(status_times):.2f}, max {max(status_times):.2f}), "
          f"1 snapshot round trip after the connect/facts one")
    print(f"  fab doctor : median {statistics.median(doctor_times):.2f}s")
    print(f"  sampler    : {statistics.median(r[0] for r in runs):.2f}s wall, {statistics.median(r[1] for r in runs) * 1000:.0f} ms CPU "
          f"(its own processes) per run; {per_line:.0f} bytes per line -> {per_line * 1440 / 1024:.0f} KB/day, "
          f"{per_line * 1440 * 8 / 1024 / 1024:.1f} MB for 8 days")
    print("  last sample: " + samples[-1][:300])
    print("  status (first lines):")
    for text in out.splitlines()[:30]:
        print("    " + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
