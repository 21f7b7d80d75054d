"""Deploy benchmark on a throwaway sandbox VPS (run as root): prints figures, asserts nothing.

    uv run python benchmarks/deploy.py

Figures: first deploy time; no-op redeploy time with --skip-build and with the build step finding
nothing changed; bytes rsync sent when one frontend asset changes, against that asset's size; the
number of remote commands a deploy runs. Targets (issue 3): no-op <= 3 s with --skip-build and
<= 5 s without, one changed asset sends <= 2x its size, <= 25 remote commands.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.support import throwaway_sandbox  # noqa: E402


def main() -> int:
    def commands(stdout):
        return int(re.search(r"remote commands: (\d+)", stdout).group(1))

    with throwaway_sandbox("127.0.0.4", "bench") as box:
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
        changed, out = box.run("fab", "-H", "sandbox", "deploy", "--skip-build")
        sent = int(re.search(r"sent (\d+) bytes", out).group(1))
        changed_commands = commands(out)

    print("Deploy benchmark (sandbox VPS on this machine)")
    print(f"  first deploy (build + image build + start)      {first:7.2f} s   remote commands {first_commands}")
    print(f"  no-op redeploy --skip-build                     {noop_skip:7.2f} s   remote commands {noop_commands}  (target <= 3 s)")
    print(f"  no-op redeploy, build finds nothing changed     {noop_build:7.2f} s   (target <= 5 s)")
    print(f"  one asset changed: deploy                       {changed:7.2f} s   remote commands {changed_commands}  (target <= 25)")
    print(f"  one asset changed: bytes sent {sent} vs asset {asset_size} bytes = {sent / asset_size:.2f}x  (target <= 2x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
