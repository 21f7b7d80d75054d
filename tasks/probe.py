"""Post-deploy health probe, run on the host inside a throwaway container (stdlib only).

    python - BASE_URL TIMEOUT_SECONDS [ASSET_PATH ...]  < probe.py

Checks what a user sees through nginx: /nginx-health, /api/health with database and NATS ok,
a WebSocket upgrade on /ws, and index.html referencing exactly the assets just deployed.
Prints one JSON line per check; exits 1 with the failing check's output after the timeout.
"""

import base64
import json
import os
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request


def http_get(url):
    try:
        with urllib.request.urlopen(url, timeout=5) as res:
            return res.status, dict(res.headers), res.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read().decode("utf-8", "replace")


def check_nginx(base, _assets):
    status, _, body = http_get(base + "/nginx-health")
    return status == 200 and body.strip() == "healthy", f"HTTP {status} {body.strip()[:200]}"


def check_api(base, _assets):
    status, _, body = http_get(base + "/api/health")
    try:
        checks = json.loads(body).get("checks", {})
    except ValueError:
        checks = {}
    ok = status == 200 and all(c.get("ok") for c in checks.values()) and {"database",
                                                                          "nats"} <= set(checks)
    return ok, f"HTTP {status} {body.strip()[:300]}"


def check_websocket(base, _assets):
    url = urllib.parse.urlparse(base)
    key = base64.b64encode(os.urandom(16)).decode()
    request = (f"GET /ws HTTP/1.1\r\nHost: {url.hostname}\r\nUpgrade: websocket\r\nConnection: "
               f"Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")
    with socket.create_connection((url.hostname, url.port or 80), timeout=5) as sock:
        sock.sendall(request.encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        status_line = head.split(b"\r\n", 1)[0].decode()
        if " 101 " not in status_line + " ":
            return False, status_line
        while len(rest) < 2:
            rest += sock.recv(4096)
        length = rest[1] & 0x7F
        offset = 2
        if length == 126:
            while len(rest) < 4:
                rest += sock.recv(4096)
            length, offset = int.from_bytes(rest[2:4], "big"), 4
        while len(rest) < offset + length:
            rest += sock.recv(4096)
        message = rest[offset:offset + length].decode()
    return (json.loads(message).get("type") == "hello", f"{status_line}; first message "
                                                        f"{message[:200]}")


def check_dashboard(base, assets):
    status, headers, html = http_get(base + "/")
    if status != 200:
        return False, f"HTTP {status}"
    missing = [a for a in assets if a not in html]
    if missing:
        return False, f"index.html does not reference the new assets {missing}"
    for asset in assets:
        a_status, a_headers, _ = http_get(base + asset)
        if a_status != 200 or "immutable" not in a_headers.get("Cache-Control", ""):
            return (False, f"{asset}: HTTP {a_status}, Cache-Control "
                           f"{a_headers.get('Cache-Control')!r}")
    cache = headers.get("Cache-Control", "")
    return "no-cache" in cache, f"index.html Cache-Control {headers.get('Cache-Control')!r}"


CHECKS = [("nginx", check_nginx), ("api", check_api), ("websocket", check_websocket),
          ("dashboard", check_dashboard)]


def main(argv):
    base, timeout, assets = argv[1].rstrip("/"), float(argv[2]), argv[3:]
    deadline = time.monotonic() + timeout
    for name, check in CHECKS:
        started = time.monotonic()
        while True:
            try:
                ok, detail = check(base, assets)
            except Exception as exc:  # connection refused while containers start, etc.
                ok, detail = False, f"{type(exc).__name__}: {exc}"
            if ok or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        print(json.dumps({"check": name, "ok": ok, "seconds": round(time.monotonic() - started, 2),
                          "detail": detail}), flush=True)
        if not ok:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
