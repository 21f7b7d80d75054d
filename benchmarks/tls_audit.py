"""TLS audit with testssl.sh (Debian package) against the sandbox's HTTPS port (run as root).

    uv run python benchmarks/tls_audit.py

Creates a throwaway sandbox, deploys, issues a certificate from a local Pebble with
`fab ssl.issue`, then runs testssl.sh's protocol and cipher-category checks and prints them.
Expected (issue 6): nothing below TLS 1.2 offered, no weak cipher category offered.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.support import throwaway_sandbox  # noqa: E402

from tests.support import DOMAIN, Pebble  # noqa: E402

WANTED = ("SSLv2", "SSLv3", "TLS 1 ", "TLS 1.1", "TLS 1.2", "TLS 1.3", "NULL", "Anonymous", "Export", "LOW",
          "Triple DES", "Obsoleted", "Strong encryption", "Forward Secrecy")


def main() -> int:
    if not shutil.which("testssl"):
        raise SystemExit("testssl.sh is not installed: apt-get install testssl.sh")
    with throwaway_sandbox("127.0.0.7", "tls") as box:
        https_port = box.setting("HTTPS_PORT")
        box.run("fab", "-H", "sandbox", "deploy")
        pebble = Pebble(box.http_port).start()
        try:
            box.run("fab", "-H", "sandbox", "ssl.issue", "--domain", DOMAIN, "--email", "ops@example.test",
                    "--server", pebble.directory, "--ca-bundle", pebble.ca_bundle)
            out = subprocess.run(["testssl", "--quiet", "--color", "0", "--warnings", "off", "-p", "-s",
                                  "--ip", box.address, f"https://{DOMAIN}:{https_port}"], capture_output=True, text=True, timeout=600)
        finally:
            pebble.stop()
    print(f"testssl.sh against https://{DOMAIN}:{https_port} (certificate from Pebble via `fab ssl.issue`):")
    for line in out.stdout.splitlines():
        if any(line.strip().startswith(w) for w in WANTED):
            print("  " + " ".join(line.split()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
