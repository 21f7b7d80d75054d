"""Alerts nobody has to poll for (issue 13), on the sandbox: Telegram's API base URL and the
webhook point at a local endpoint that records what it receives; a deploy, a rollback and a
failing cron backup (run exactly as cron would, with nobody's laptop involved) each send their
message, and no message carries a secret."""

import json
import os
import re
import secrets
import stat
import subprocess

import pytest

from tasks.identity import identity
from tasks.settings import Settings
from tests.support import RecordingServer, wait_for

pytestmark = pytest.mark.e2e
APP = "al"
CHAT = "-1004242"


@pytest.fixture(scope="module")
def endpoint():
    with RecordingServer() as server:
        yield server


@pytest.fixture(scope="module")
def app(sandbox, endpoint):
    hook = f"/hooks/T0/B1/{secrets.token_hex(12)}"
    env = sandbox.app_env(APP, "alerts", TELEGRAM_API_BASE_URL=endpoint.url, ALERT_TELEGRAM_CHAT_ID=CHAT,
                          ALERT_WEBHOOK_URL=endpoint.url + hook)
    return env, hook


def settings_of(env) -> Settings:
    return Settings.load(env_file=env, environ={})


def messages(endpoint, since: int) -> list[tuple[str, dict]]:
    return [(r["path"], json.loads(r["body"])) for r in endpoint.requests[since:]]


def current(sandbox) -> str:
    return os.readlink(sandbox.home / APP / "current").split("/")[-1]


def assert_sent_once(endpoint, since: int, env, hook: str, text: str) -> None:
    """One Telegram message and one webhook POST since `since`, both with `text` (after the prefix)."""
    token = settings_of(env).telegram_bot_token.reveal()
    sent = wait_for(lambda: messages(endpoint, since) if len(endpoint.requests) - since >= 2 else None, 30,
                    what="the alert at the endpoint")
    prefix = f"[{os.uname().nodename} {settings_of(env).compose_project}] "
    assert sent == [(f"/bot{token}/sendMessage", {"chat_id": CHAT, "text": prefix + text, "disable_web_page_preview": True}),
                    (hook, {"text": prefix + text})]


def sent_text(endpoint, since: int) -> str:
    """The first alert's text since `since`, without the [host project] prefix."""
    wait_for(lambda: len(endpoint.requests) > since, 30, what="an alert at the endpoint")
    return messages(endpoint, since)[0][1]["text"].split("] ", 1)[1]


def by() -> str:
    who = identity()
    return f"{who['user']}@{who['machine']}" + (f" (CI {who['ci_run']})" if "ci_run" in who else "")


def test_a_deploy_sends_one_alert_and_installs_the_program(sandbox, endpoint, app):
    env, hook = app
    since = len(endpoint.requests)
    out = sandbox.fab("deploy", env_file=env)
    text = sent_text(endpoint, since)
    assert re.fullmatch(re.escape(f"deploy ok: release {current(sandbox)}, commit {identity()['commit']}, by {by()}, ") + r"\d+s",
                        text), text
    assert_sent_once(endpoint, since, env, hook, text)
    assert "Warning: the deploy alert" not in out.stdout
    bin_dir = sandbox.home / APP / "bin"
    assert stat.S_IMODE((bin_dir / "notify.conf").stat().st_mode) == 0o600
    assert stat.S_IMODE((bin_dir / "tasktracker-notify").stat().st_mode) == 0o700
    assert (bin_dir / "notify.conf").stat().st_uid == (sandbox.home / APP).stat().st_uid


def test_a_rollback_sends_one_alert_with_the_release_commit(sandbox, endpoint, app):
    env, hook = app
    first = current(sandbox)
    sandbox.fab("deploy", env_file=sandbox.env_file(f"{APP}-alerts-2.env", base=env, KEEP_RELEASES=4))
    assert current(sandbox) != first
    since = len(endpoint.requests)
    sandbox.fab("rollback", env_file=env)
    assert current(sandbox) == first
    meta = json.loads((sandbox.home / APP / "releases" / first / "RELEASE.json").read_text())
    text = sent_text(endpoint, since)
    assert re.fullmatch(re.escape(f"rollback ok: release {first}, commit {meta['commit']}, by {by()}, ") + r"\d+s", text), text
    assert_sent_once(endpoint, since, env, hook, text)


def test_a_failing_cron_backup_alerts_from_the_host(sandbox, endpoint, app):
    """The installed cron line, run as cron runs it (sh, as the deploy user, in its home) while
    Postgres is down: the backup fails and the host itself sends the alert."""
    env, hook = app
    sandbox.fab("backup.schedule", "--at", "02:00", env_file=env)
    project = settings_of(env).compose_project
    crontab = subprocess.run(["crontab", "-l", "-u", sandbox.user], capture_output=True, text=True, check=True).stdout
    line = [entry for entry in crontab.splitlines() if entry.endswith(f"# tasktracker-backup:{project}")][0]
    command = line[len("0 2 * * * "):].rsplit(" # ", 1)[0]
    postgres = subprocess.run(["docker", "ps", "-q", "--filter", f"label=com.docker.compose.project={project}", "--filter",
                               "label=com.docker.compose.service=postgres"], capture_output=True, text=True, check=True).stdout.split()
    assert postgres
    since = len(endpoint.requests)
    subprocess.run(["docker", "stop", *postgres], check=True, capture_output=True)
    try:
        job = subprocess.run(["su", "-s", "/bin/sh", sandbox.user, "-c", f"cd && {command}"], capture_output=True, text=True,
                             timeout=300)
    finally:
        subprocess.run(["docker", "start", *postgres], check=True, capture_output=True)
    assert job.returncode == 0 and job.stdout == job.stderr == ""  # all of it went to the job's log
    log = sandbox.home / APP / "backups" / "cron.log"
    assert_sent_once(endpoint, since, env, hook, f"daily backup FAILED (exit 1); log: {log}")
    assert "BACKUP FAILED" in log.read_text()


def test_no_alert_carries_a_secret(endpoint, app):
    env, hook = app
    assert endpoint.requests, "no alert was recorded"
    values = settings_of(env).secret_values()
    assert settings_of(env).alert_webhook_url.reveal() in values and len(values) >= 4
    for request in endpoint.requests:
        for secret in values:
            assert secret.encode() not in request["body"], request["path"]
