"""Day 0, timed: a bare VM-like host (a freshly bought Debian 12 VPS) to HTTPS serving.

    sudo uv run python benchmarks/day0.py

Prints the wall time of each step (boot, provision, deploy with image shipping, ssl.issue against
a Pebble on the host) and of an idempotent provision re-run. Goal (issue 12): bare host to HTTPS
serving in under 5 minutes here. The VM-like host image is built once per machine before the clock
starts (its build time is printed separately).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from lab.testhost import ensure_image  # noqa: E402
from tests.support import DOMAIN, TestHosts, app_settings, throwaway_sandbox  # noqa: E402
from tests.test_e2e_day0 import NAME, https_get, start_pebble_on  # noqa: E402

STEPS: list[tuple[str, float]] = []


def timed(name: str, action):
    started = time.monotonic()
    result = action()
    STEPS.append((name, time.monotonic() - started))
    print(f"  {name:44} {STEPS[-1][1]:7.1f} s", flush=True)
    return result


def main() -> None:
    if os.geteuid() != 0:
        raise SystemExit("run as root (it starts a VM-like host)")
    with throwaway_sandbox("127.0.0.9", "day0") as bench:  # Docker and the stand-in images on this machine
        hosts = TestHosts(bench.env)
        try:
            image = time.monotonic()
            ensure_image()
            print(f"  (VM-like host image ready in {time.monotonic() - image:.1f} s; built once per machine)")
            settings = app_settings(hosts.dir / "app.env")
            started = time.monotonic()
            timed("boot a bare host", lambda: hosts.invoke("testhost.up", NAME, "--bare"))
            timed("provision (root -> deploy user, hardened)", lambda: hosts.fab(f"{NAME}-root", "provision"))
            timed("deploy (build, ship images, migrate, serve)", lambda: hosts.fab(NAME, "deploy", env_file=settings))
            pebble_started = time.monotonic()
            start_pebble_on(hosts)  # Pebble on the host (test CA setup, not counted)
            setup = time.monotonic() - pebble_started
            timed("ssl.issue (ACME HTTP-01 through nginx)", lambda: hosts.fab(
                NAME, "ssl.issue", "--domain", DOMAIN, "--email", "ops@example.test", "--server", "https://127.0.0.1:14000/dir",
                "--ca-bundle", "/opt/pebble/ca.pem", env_file=settings))
            roots = hosts.exec(NAME, "curl -skf https://127.0.0.1:15000/roots/0").stdout
            assert https_get(hosts, roots).startswith("HTTP/1.1 200")
            total = time.monotonic() - started - setup
            print(f"  {'bare host -> HTTPS serving (without CA setup)':44} {total:7.1f} s   (goal < 300 s)")
            timed("provision again (idempotent: 0 changed)", lambda: hosts.fab(NAME, "provision"))
            timed("deploy again (nothing changed)", lambda: hosts.fab(NAME, "deploy", "--skip-build", env_file=settings))
        finally:
            hosts.down()


if __name__ == "__main__":
    main()
