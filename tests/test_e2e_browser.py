"""The deployed dashboard in a real browser (headless Chromium, tests/browser.py): what a person
sees over HTTP. The same check over HTTPS after `ssl.issue` is in tests/test_e2e_ssl.py."""

import json
import os
import secrets

import pytest

from tests import browser

pytestmark = pytest.mark.e2e


def test_the_dashboard_shows_the_live_release_a_new_task_and_the_workers_event(sandbox, deployed, tmp_path_factory, capsys):
    if reason := browser.available():
        pytest.fail(reason)
    live = os.readlink(sandbox.home / "tasktracker" / "current").split("/")[-1]
    # The API reports the release its containers came from: the live one, or the earlier release
    # a dashboard-only deploy kept (RELEASE.json's backend_release).
    meta = json.loads((sandbox.home / "tasktracker" / "current" / "RELEASE.json").read_text())
    api_release = meta.get("backend_release") or live
    shot = browser.artifacts_dir(tmp_path_factory) / f"dashboard-http-{live}.png"
    title = f"Typed in the browser {secrets.token_hex(3)}"
    with browser.chromium(reach=[(sandbox.address, sandbox.http_port)]) as driver:
        seen = browser.dashboard_check(driver, sandbox.url("/"), title, shot)
        inline_ran, violations = browser.csp_enforced(driver)
    with capsys.disabled():
        print(f"\n[browser] screenshot of the deployed dashboard: {seen.screenshot}")
    assert seen.release == api_release
    assert seen.health == ["API: healthy", "database: ok", "nats: ok"]
    assert seen.problems() == [], seen.console
    # The Content-Security-Policy is served with the page and the dashboard breaks none of it
    # (scripts, styles, fetch() and the WebSocket all pass), while an injected inline script is
    # refused: the policy is enforced.
    csp = seen.document_headers.get("content-security-policy", "")
    assert "default-src 'self'" in csp, csp
    assert "'unsafe-inline'" not in csp and "'unsafe-eval'" not in csp, csp
    assert seen.csp_violations == []
    assert not inline_ran and violations == ["script-src-elem inline"], violations
    assert seen.websockets == [sandbox.url("/ws").replace("http://", "ws://")]
    processed = [f for f in seen.frames if f.get("type") == "task.processed" and f["task"]["id"] == seen.task_id]
    assert processed and processed[0]["task"]["title"] == title and processed[0]["task"]["status"] == "done"
    assert shot.stat().st_size > 10_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
