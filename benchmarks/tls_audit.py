"""TLS audit with testssl.sh (Debian package) against the sandbox's HTTPS port (run as root).

    uv run python benchmarks/tls_audit.py

Creates a throwaway sandbox, deploys, issues a certificate from a local Pebble with
`fab ssl.issue`, then runs testssl.sh's protocol and cipher-category checks and prints them.
Expected (issue 6): nothing below TLS 1.2 offered, no weak cipher category offered.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.helpers import copy_project, free_port  # noqa: E402
from tests.test_e2e_ssl import DOMAIN, Pebble  # noqa: E402

BIN = Path(sys.executable).parent


def main() -> int:
    if not shutil.which("testssl"):
        raise SystemExit("testssl.sh is not installed: apt-get install testssl.sh")
    work = Path(tempfile.mkdtemp(prefix="tasktracker-tls-"))
    copy = copy_project(work / "project")
    state = work / "sandbox"
    env = {**os.environ, "TASKTRACKER_SANDBOX_DIR": str(state), "TASKTRACKER_ENV_FILE": str(state / ".env")}
    http_port = free_port()
    address = "127.0.0.7"
    pebble = None

    def run(tool, *argv):
        out = subprocess.run([str(BIN / tool), *argv], cwd=copy, env=env, capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"{tool} {' '.join(argv)} failed:\n{out.stdout}\n{out.stderr}")
        return out.stdout

    try:
        run("invoke", "sandbox.up", "--address", address, "--port", str(free_port()),
            "--user", f"tt-tls-{secrets.token_hex(3)}", "--http-port", str(http_port))
        https_port = int([line.split("=")[1] for line in (state / ".env").read_text().splitlines() if line.startswith("HTTPS_PORT=")][0])
        run("fab", "-H", "sandbox", "deploy")
        pebble = Pebble(http_port).start()
        run("fab", "-H", "sandbox", "ssl.issue", "--domain", DOMAIN, "--email", "ops@example.test",
            "--server", pebble.directory, "--ca-bundle", pebble.ca_bundle)
        out = subprocess.run(["testssl", "--quiet", "--color", "0", "--warnings", "off", "-p", "-s",
                              "--ip", address, f"https://{DOMAIN}:{https_port}"], capture_output=True, text=True, timeout=600)
        wanted = ("SSLv2", "SSLv3", "TLS 1 ", "TLS 1.1", "TLS 1.2", "TLS 1.3", "NULL", "Anonymous", "Export", "LOW",
                  "Triple DES", "Obsoleted", "Strong encryption", "Forward Secrecy")
        print(f"testssl.sh against https://{DOMAIN}:{https_port} (certificate from Pebble via `fab ssl.issue`):")
        for line in out.stdout.splitlines():
            if any(line.strip().startswith(w) for w in wanted):
                print("  " + " ".join(line.split()))
        return 0
    finally:
        if pebble:
            pebble.stop()
        subprocess.run([str(BIN / "invoke"), "sandbox.down"], cwd=copy, env=env, capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
