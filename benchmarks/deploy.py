"""Deploy benchmark on a throwaway sandbox VPS (run as root): prints figures, asserts nothing.

    uv run python benchmarks/deploy.py

Figures, each beside its goal (issue 17): the first deploy; a no-op redeploy (`--skip-build`, and
with the build step finding nothing changed); a dashboard-only change (one asset) under load: time,
failed requests, whether the API and worker containers were left alone, bytes sent against the
asset; a backend change under load: time and failed requests; the remote commands of each.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.support import LoadProbe, throwaway_sandbox  # noqa: E402


def commands(stdout: str) -> int:
    return int(re.search(r"remote commands: (\d+)", stdout).group(1))


def step_table(stdout: str) -> list[str]:
    lines = stdout.splitlines()
    start = max(i for i, line in enumerate(lines) if line.startswith("Deploy to "))
    return lines[start + 1:start + 30]


def container_ids(project: str, service: str) -> list[str]:
    return sorted(subprocess.run(["docker", "ps", "-q", "--filter", f"label=com.docker.compose.project={project}",
                                  "--filter", f"label=com.docker.compose.service={service}"],
                                 capture_output=True, text=True, check=True).stdout.split())


def main() -> int:
    with throwaway_sandbox("127.0.0.4", "bench") as box:
        base = f"http://{box.address}:{box.http_port}"
        first, out = box.run("fab", "-H", "sandbox", "deploy")
        first_commands = commands(out)
        noop_skip, out = box.run("fab", "-H", "sandbox", "deploy", "--skip-build")
        noop_commands = commands(out)
        noop_build, _ = box.run("fab", "-H", "sandbox", "deploy")

        app = box.copy / "frontend" / "src" / "App.jsx"
        app.write_text(app.read_text().replace("Live events", "Live events (benchmark)"))
        box.run("invoke", "build")
        html = (box.copy / "frontend" / "dist" / "index.html").read_text()
        js = re.search(r'src="(/assets/[^"]+\.js)"', html).group(1)
        asset_size = (box.copy / "frontend" / "dist" / js.lstrip("/")).stat().st_size
        before = {s: container_ids(box.user, s) for s in ("api", "worker")}
        with LoadProbe([f"{base}/", f"{base}/api/tasks", f"{base}/api/health"], clients=4, pace=0) as load:
            dashboard, out = box.run("fab", "-H", "sandbox", "deploy", "--skip-build")
        after = {s: container_ids(box.user, s) for s in ("api", "worker")}
        dashboard_failed, dashboard_requests = len(load.failures()), len(load.results)
        sent = int(re.search(r"sent (\d+) bytes", out).group(1))
        dashboard_commands = commands(out)
        dashboard_table = step_table(out)

        main_py = box.copy / "backend" / "app" / "main.py"
        main_py.write_text(main_py.read_text() + "\n# benchmark: a backend change\n")
        with LoadProbe([f"{base}/", f"{base}/api/tasks", f"{base}/api/health"], clients=4, pace=0) as load:
            backend, out = box.run("fab", "-H", "sandbox", "deploy", "--skip-build")
        backend_failed, backend_requests = len(load.failures()), len(load.results)
        backend_commands = commands(out)
        backend_table = step_table(out)

    def line(label: str, seconds: float, goal: str, extra: str = "") -> str:
        return f"  {label:46} {seconds:7.2f} s  {goal:18} {extra}"

    print("Deploy benchmark (sandbox VPS on this machine; times include starting fab and connecting)")
    print(line("first deploy (build + image build + start)", first, "", f"remote commands {first_commands} (goal <= 12)"))
    print(line("no-op redeploy --skip-build", noop_skip, "(goal <= 1.0 s)", f"remote commands {noop_commands} (goal <= 3)"))
    print(line("no-op redeploy, build finds nothing changed", noop_build, ""))
    print(line("dashboard-only change (one asset)", dashboard, "(goal <= 3 s)",
               f"remote commands {dashboard_commands}; {dashboard_failed} of {dashboard_requests} requests failed (goal 0)"))
    print(f"  {'':46} api/worker containers untouched: {'yes' if before == after else 'NO'} (goal yes)")
    print(f"  {'':46} bytes sent {sent} vs asset {asset_size} = {sent / asset_size:.2f}x")
    print(line("backend change (one line of backend/)", backend, "(goal <= 8 s)",
               f"remote commands {backend_commands}; {backend_failed} of {backend_requests} requests failed (goal 0)"))
    print("  step table, dashboard-only deploy:")
    print("\n".join("    " + line for line in dashboard_table if line.strip()))
    print("  step table, backend deploy:")
    print("\n".join("    " + line for line in backend_table if line.strip()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
