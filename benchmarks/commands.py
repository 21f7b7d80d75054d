"""How fast the everyday commands answer, on a throwaway sandbox VPS (run as root): prints
figures beside their goals (issue 23), asserts nothing.

    uv run python benchmarks/commands.py

Each figure is the median wall time of several runs of the whole command (starting fab,
connecting, the remote round trips, printing), after one first deploy: `fab --list`,
`invoke --list`, `status`, `doctor`, `releases` and a no-op redeploy (`deploy --skip-build`).
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.support import throwaway_sandbox  # noqa: E402

RUNS = 5
GOALS = {"fab --list": 0.4, "status": 1.0, "no-op redeploy": 0.8}


def timed(box, *argv: str) -> float:
    """The median wall time of RUNS runs of one command (its exit status is not checked here:
    `doctor` exits 1 when it finds something, which is an answer too)."""
    times = []
    for _ in range(RUNS):
        started = time.monotonic()
        box.run(*argv, check=False)
        times.append(time.monotonic() - started)
    return statistics.median(times)


def main() -> int:
    with throwaway_sandbox("127.0.0.5", "cmds") as box:
        box.run("fab", "-H", "sandbox", "deploy")
        figures = {
            "fab --list": timed(box, "fab", "--list"),
            "invoke --list": timed(box, "invoke", "--list"),
            "status": timed(box, "fab", "-H", "sandbox", "status"),
            "doctor": timed(box, "fab", "-H", "sandbox", "doctor"),
            "releases": timed(box, "fab", "-H", "sandbox", "releases"),
            "no-op redeploy": timed(box, "fab", "-H", "sandbox", "deploy", "--skip-build"),
        }
    print(f"Command benchmark (sandbox VPS on this machine; median of {RUNS} runs, wall time)")
    for name, seconds in figures.items():
        goal = GOALS.get(name)
        print(f"  {name:16} {seconds:6.2f} s" + (f"  (goal <= {goal} s)" if goal else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
