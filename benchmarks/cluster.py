"""Several hosts, timed: three VM-like hosts on one Docker network as a swarm.

    sudo uv run python benchmarks/cluster.py

Runs the end-to-end cluster test (tests/test_e2e_cluster.py: its hosts, network and records are
made and removed by the test itself) and prints the figures it measures: `cluster.init`, the first
`cluster.deploy` (images shipped to every node), the rolling update's time and failed requests
under load, a release whose API fails its health check (rolled back by Swarm and put back by the
deploy: its time and failed requests), `rollback` under load, the time until the API's replicas
run again after a worker node is lost (and the requests that failed meanwhile), and a drain under load.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIGURES = re.compile(r"(cluster\.init:|first cluster\.deploy:|rolling update:|failed release rolled back:|rollback on the swarm:|"
                     r"lost node|drain \w+:) [^\n]*")  # after pytest's dots


def main() -> int:
    out = subprocess.run([sys.executable, "-m", "pytest", "-m", "e2e", "-x", "-s", "-q", "tests/test_e2e_cluster.py"],
                         cwd=ROOT, capture_output=True, text=True)
    figures = [m.group(0) for m in FIGURES.finditer(out.stdout)]
    print("Cluster (3 VM-like hosts, Docker Swarm, dnsrr + host-mode nginx: no IPVS here)")
    for line in figures:
        print(f"  {line}")
    if out.returncode:
        print(out.stdout[-3000:], out.stderr[-2000:], sep="\n")
    return out.returncode


if __name__ == "__main__":
    sys.exit(main())
