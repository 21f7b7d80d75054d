"""Headless Chromium for the dashboard's end-to-end checks: Debian's `chromium` and
`chromium-driver` (installed by `scripts/test`), driven by Selenium. `dashboard_check` opens the
deployed dashboard and checks what a person sees; tests/test_e2e_browser.py (HTTP) and
tests/test_e2e_ssl.py (HTTPS after `ssl.issue`) use it.

Chromium can hang on a response it treats as a download (TESTBED.md), so every run is bounded:
page-load and script timeouts, and a watchdog that kills chromedriver's whole process group (the
browser is its child) when a run exceeds its time."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def available() -> str | None:
    """Why the browser checks cannot run here, or None."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).exists()]
    if missing:
        return f"{' and '.join(missing)} missing: `bash scripts/test` installs chromium and chromium-driver"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed: `uv sync` (dev group)"
    return None


def spki_hash(der_cert: bytes) -> str:
    """base64(sha256(SubjectPublicKeyInfo)) of a certificate: what Chromium's
    --ignore-certificate-errors-spki-list takes, to trust exactly this key and no other."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    key = x509.load_der_x509_certificate(der_cert).public_key()
    spki = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


@contextmanager
def chromium(*, reach: list[tuple[str, int]], resolve: dict[str, str] | None = None,
             trust_spki: str | None = None, limit: float = 180):
    """A Selenium driver for headless Chromium, killed (with its browser) after `limit` seconds.
    Chromedriver and the browser run in a network namespace of their own (tests/netns.py), so
    Docker's bridges coming and going for other tests never fail a request with
    ERR_NETWORK_CHANGED; the page reaches only the (address, port) pairs in `reach`. `resolve`
    maps host names to addresses (no DNS needed); `trust_spki` accepts the certificate with that
    key (a test CA's leaf) and nothing else."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    from tests.netns import IsolatedNetwork
    from tests.support import free_port

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900",
                "--no-first-run", "--disable-extensions", "--disable-background-networking"):
        options.add_argument(arg)
    if resolve:
        options.add_argument("--host-resolver-rules=" + ", ".join(f"MAP {name} {address}" for name, address in resolve.items()))
    if trust_spki:
        options.add_argument(f"--ignore-certificate-errors-spki-list={trust_spki}")
    # The console (errors, mixed-content warnings) and the network log (which URLs, which WebSocket).
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    network = IsolatedNetwork()
    try:
        for address, port in reach:
            network.forward_in(address, port)
        port = free_port()
        network.forward_out(port)
        driver_in_namespace = network.dir / "chromedriver"
        driver_in_namespace.write_text(f'#!/bin/sh\nexec {" ".join(network.command([CHROMEDRIVER]))} "$@"\n')
        driver_in_namespace.chmod(0o755)
        service = Service(str(driver_in_namespace), port=port, popen_kw={"start_new_session": True})
        with _driver(webdriver.Chrome(service=service, options=options), service, limit) as driver:
            yield driver
    finally:
        network.close()


@contextmanager
def _driver(driver, service, limit: float):
    """`driver`, bounded: page-load and script timeouts, and a watchdog that kills chromedriver's
    process group (the browser is its child) after `limit` seconds; killed at the end too."""
    group = service.process.pid

    def kill():
        try:
            os.killpg(group, signal.SIGKILL)
        except ProcessLookupError:
            pass

    watchdog = threading.Timer(limit, kill)
    watchdog.start()
    try:
        driver.set_page_load_timeout(30)
        driver.set_script_timeout(30)
        yield driver
    finally:
        watchdog.cancel()
        try:
            driver.quit()
        finally:
            kill()  # the browser and its helpers, by the group this run started


@dataclass
class Seen:
    """What the page showed and did."""

    release: str = ""
    health: list[str] = field(default_factory=list)
    task_id: int = 0
    console: list[dict] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    websockets: list[str] = field(default_factory=list)
    frames: list[dict] = field(default_factory=list)
    screenshot: Path | None = None
    document_headers: dict[str, str] = field(default_factory=dict)  # the page's, names lower-case
    csp_violations: list[str] = field(default_factory=list)  # "directive blocked-URI"

    def problems(self) -> list[dict]:
        """Console errors, and warnings about mixed content or blocked/insecure requests."""
        return [entry for entry in self.console if entry["level"] == "SEVERE"
                or any(word in entry["message"] for word in ("Mixed Content", "insecure", "blocked",
                                                             "Content Security Policy"))]


def _wait(driver, predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            value = predicate(driver)
            if value:
                return value
        except Exception as exc:  # the element is not there yet
            last = exc
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last error: {last}); page text:\n"
                         f"{driver.find_element('tag name', 'body').text[:2000]}")


def _network(driver, seen: Seen) -> None:
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        method, params = message.get("method"), message.get("params", {})
        if method == "Network.requestWillBeSent":
            seen.requests.append(params["request"]["url"])
        elif (method == "Network.responseReceived" and params.get("type") == "Document"
              and params["response"]["url"].startswith("http") and not seen.document_headers):
            seen.document_headers = {k.lower(): v for k, v in params["response"]["headers"].items()}
        elif method == "Network.webSocketCreated":
            seen.websockets.append(params["url"])
        elif method == "Network.webSocketFrameReceived":
            try:
                seen.frames.append(json.loads(params["response"]["payloadData"]))
            except ValueError:
                pass


def dashboard_check(driver, url: str, title: str, screenshot: Path) -> Seen:
    """Open the dashboard like a person: wait for the release label, the health panel and the live
    event stream, type a task and click Add, then wait for the task's row to be `done` and the
    worker's `task.processed` event to show in "Live events", all without a reload (a marker set on
    `window` after the first load must survive). A screenshot of the result goes to `screenshot`."""
    from selenium.webdriver.common.by import By

    seen = Seen()
    # Every Content-Security-Policy violation the page meets is kept on `window`, from the first
    # script on (the console shows them too; this names the directive and what it blocked).
    driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": CSP_LISTENER})
    driver.get(url)
    label = _wait(driver, lambda d: (t := d.find_element(By.CSS_SELECTOR, ".release").text) != "release …" and t, 30,
                  "the release label")
    seen.release = label.removeprefix("release ").strip()
    # The page's own response now, while it is among the first entries: chromedriver keeps a bounded
    # log, and a slow minute of events and polls may push it out (a CI run then saw no headers).
    _network(driver, seen)
    seen.health = _wait(driver, lambda d: [li.text for li in d.find_elements(By.CSS_SELECTOR, "ul.checks li")], 30,
                        "the health panel")
    _wait(driver, lambda d: any(li.text == "hello" for li in d.find_elements(By.CSS_SELECTOR, "ol.events li")), 30,
          "the WebSocket's hello event")
    driver.execute_script("window.__sameDocument = true;")
    box = driver.find_element(By.CSS_SELECTOR, "form input")
    box.click()
    box.send_keys(title)
    driver.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()

    def row(d):
        for tr in d.find_elements(By.CSS_SELECTOR, "tbody tr"):
            cells = [td.text for td in tr.find_elements(By.TAG_NAME, "td")]
            if len(cells) >= 3 and cells[1] == title:
                return cells
        return None

    seen.task_id = int(_wait(driver, row, 30, f"the task {title!r} in the list")[0])
    _wait(driver, lambda d: any(li.text == f"task.processed #{seen.task_id}"
                                for li in d.find_elements(By.CSS_SELECTOR, "ol.events li")), 60,
          "the worker's task.processed event in Live events")
    _wait(driver, lambda d: (row(d) or [None, None, None])[2] == "done", 30, "the task's status `done`")
    assert driver.execute_script("return window.__sameDocument === true;"), "the page was reloaded"
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(screenshot))
    seen.screenshot = screenshot
    seen.console = driver.get_log("browser")
    seen.csp_violations = driver.execute_script("return window.__cspViolations || [];")
    _network(driver, seen)
    return seen


CSP_LISTENER = """window.__cspViolations = [];
document.addEventListener('securitypolicyviolation',
  (e) => window.__cspViolations.push(e.effectiveDirective + ' ' + (e.blockedURI || 'inline')));"""


def csp_enforced(driver) -> tuple[bool, list[str]]:
    """Whether the page ran an inline script added to it (a CSP without 'unsafe-inline' blocks
    it), and the violations seen after: proof that the policy is enforced, not only sent. Run it
    after `dashboard_check` has read the console."""
    ran = driver.execute_script(
        "const s = document.createElement('script'); s.textContent = 'window.__inlineRan = true;';"
        "document.head.appendChild(s); return window.__inlineRan === true;")
    _wait(driver, lambda d: d.execute_script("return window.__cspViolations.length > 0;"), 10,
          "the violation event")
    return ran, driver.execute_script("return window.__cspViolations;")


def artifacts_dir(tmp_path_factory) -> Path:
    """Where screenshots are kept: $TASKTRACKER_ARTIFACTS, else a pytest tmp dir (kept for the
    last three runs)."""
    if os.environ.get("TASKTRACKER_ARTIFACTS"):
        path = Path(os.environ["TASKTRACKER_ARTIFACTS"])
        path.mkdir(parents=True, exist_ok=True)
        return path
    return tmp_path_factory.mktemp("browser")
