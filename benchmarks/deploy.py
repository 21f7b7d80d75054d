"""Deploy benchmark on a throwaway sandbox VPS (run as root): prints figures, asserts nothing.

    uv run python benchmarks/deploy.py

Figures: first deploy time; no-op redeploy time with --skip-build and with the build step finding
nothing changed; bytes rsync sent when one frontend asset changes, against that asset's size; the
number of remote commands a deploy runs. Targets (issue 3): no-op <= 3 s with --skip-build and
<= 5 s without, one changed asset sends <= 2x its size, <= 25 remote commands.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="tasktracker-bench-"))
    copy = work / "project"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for rel in files:
        (copy / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, copy / rel)
    shutil.copytree(ROOT / "frontend" / "node_modules", copy / "frontend" / "node_modules", symlinks=True)
    state = work / "sandbox"
    user = f"tt-bench-{secrets.token_hex(3)}"
    env = {**os.environ, "TASKTRACKER_SANDBOX_DIR": str(state), "TASKTRACKER_ENV_FILE": str(state / ".env")}

    def run(tool, *args):
        started = time.monotonic()
        out = subprocess.run([str(BIN / tool), *args], cwd=copy, env=env, capture_output=True, text=True)
        seconds = time.monotonic() - started
        if out.returncode != 0:
            raise SystemExit(f"{tool} {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}")
        return seconds, out.stdout

    def commands(stdout):
        return int(re.search(r"remote commands: (\d+)", stdout).group(1))

    try:
        run("invoke", "sandbox.up", "--address", "127.0.0.4", "--port", str(free_port()), "--user", user,
            "--http-port", str(free_port()))
        first, out = run("fab", "-H", "sandbox", "deploy")
        first_commands = commands(out)
        noop_skip, out = run("fab", "-H", "sandbox", "deploy", "--skip-build")
        noop_commands = commands(out)
        noop_build, _ = run("fab", "-H", "sandbox", "deploy")

        app = copy / "frontend" / "src" / "App.jsx"
        app.write_text(app.read_text().replace("Live events", "Live events (benchmark)"))
        run("invoke", "build")
        html = (copy / "frontend" / "dist" / "index.html").read_text()
        js = re.search(r'src="(/assets/[^"]+\.js)"', html).group(1)
        asset_size = (copy / "frontend" / "dist" / js.lstrip("/")).stat().st_size
        changed, out = run("fab", "-H", "sandbox", "deploy", "--skip-build")
        sent = int(re.search(r"sent (\d+) bytes", out).group(1))
        changed_commands = commands(out)

        print("Deploy benchmark (sandbox VPS on this machine)")
        print(f"  first deploy (build + image build + start)      {first:7.2f} s   remote commands {first_commands}")
        print(f"  no-op redeploy --skip-build                     {noop_skip:7.2f} s   remote commands {noop_commands}  (target <= 3 s)")
        print(f"  no-op redeploy, build finds nothing changed     {noop_build:7.2f} s   (target <= 5 s)")
        print(f"  one asset changed: deploy                       {changed:7.2f} s   remote commands {changed_commands}  (target <= 25)")
        print(f"  one asset changed: bytes sent {sent} vs asset {asset_size} bytes = {sent / asset_size:.2f}x  (target <= 2x)")
        return 0
    finally:
        subprocess.run([str(BIN / "invoke"), "sandbox.down"], cwd=copy, env=env, capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
