"""The Telegram bot is live after every deploy (issue 27), on the sandbox with a local stand-in for
the Bot API (TELEGRAM_API_BASE_URL): without HTTPS the deploy says why it set no webhook; with
DOMAIN's certificate and TLS server in place it sets the webhook with the secret derived from the
bot token and checks it took; an update with that secret becomes a processed task, one without it
is refused; `status` and `doctor` show a webhook pointed elsewhere; a rollback leaves it on the
live host; the secret and the token appear in no output, log or audit line."""

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.request

import pytest
from dotenv import dotenv_values

from tasks.commands import tls as tls_commands
from tasks.commands.telegram import webhook_secret
from tests.support import BotApiStandIn, wait_for

pytestmark = pytest.mark.e2e
APP = "tg"
DOMAIN = "bot.example.test"
SAID: list[str] = []  # everything the tasks printed, checked for secrets at the end


@pytest.fixture(scope="module")
def bot():
    with BotApiStandIn() as stand_in:
        yield stand_in


@pytest.fixture(scope="module")
def app(sandbox, deployed, bot):
    https_port = sandbox.app_env(APP) and sandbox.https_ports[APP]
    return sandbox.app_env(APP, "bot", APP_URL=f"https://{DOMAIN}:{https_port}", WEBAPP_URL=f"https://{DOMAIN}:{https_port}",
                           DOMAIN=DOMAIN, TELEGRAM_API_BASE_URL=bot.url, TELEGRAM_WEBHOOK="auto")


def fab(sandbox, *args, env_file, check=True):
    out = sandbox.fab(*args, env_file=env_file, check=check)
    SAID.append(out.stdout + out.stderr)
    return out


def secret_of(env_file) -> str:
    return webhook_secret(dotenv_values(env_file)["TELEGRAM_BOT_TOKEN"])


def post_update(sandbox, update: dict, secret: str | None) -> int:
    """As Telegram would, through the host's nginx (`Host: localhost` reaches the app server by
    name whether or not nginx has loaded the TLS server yet)."""
    headers = {"Content-Type": "application/json", "Host": "localhost",
               **({"X-Telegram-Bot-Api-Secret-Token": secret} if secret is not None else {})}
    req = urllib.request.Request(sandbox.app_url(APP, "/api/telegram/webhook"), data=json.dumps(update).encode(), headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as res:
            return res.status
    except urllib.error.HTTPError as err:
        return err.code


def psql(sandbox, sql: str) -> str:
    return subprocess.run(["docker", "compose", "-p", f"{sandbox.project}-{APP}", "exec", "-T", "postgres", "psql", "-U",
                           "postgres", "-d", "tasktracker", "-Atc", sql], capture_output=True, text=True, check=True).stdout.strip()


def test_without_https_the_deploy_sets_no_webhook_and_says_why(sandbox, app, bot):
    out = fab(sandbox, "deploy", "--skip-build", env_file=app)
    assert f"Telegram webhook not set: sandbox serves no HTTPS for {DOMAIN} yet" in out.stdout, out.stdout
    assert bot.calls == []


def test_with_https_the_deploy_sets_the_webhook_and_checks_it(sandbox, app, bot, tmp_path):
    """DOMAIN's certificate (self-signed here; `ssl.issue` in production) and the TLS server."""
    shared = sandbox.home / APP / "shared"
    live = shared / "letsencrypt" / "live" / DOMAIN
    live.mkdir(parents=True, exist_ok=True)
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "90",
                    "-subj", f"/CN={DOMAIN}", "-addext", f"subjectAltName=DNS:{DOMAIN}", "-keyout", str(live / "privkey.pem"),
                    "-out", str(live / "cert.pem")], check=True, capture_output=True)
    shutil.copyfile(live / "cert.pem", live / "fullchain.pem")  # certbot's layout: status reads cert.pem
    (shared / "nginx" / "conf.d").mkdir(parents=True, exist_ok=True)
    (shared / "nginx" / "conf.d" / tls_commands.TLS_CONF).write_text(
        tls_commands.tls_server_config([DOMAIN], int(dotenv_values(app)["HTTPS_PORT"])))
    subprocess.run(["chown", "-R", f"{sandbox.user}:{sandbox.user}", str(shared / "letsencrypt"), str(shared / "nginx")], check=True)
    out = fab(sandbox, "deploy", "--skip-build", env_file=app)
    url = f"https://{DOMAIN}:{dotenv_values(app)['HTTPS_PORT']}/api/telegram/webhook"
    assert f"Telegram webhook: {url}, 0 updates pending; no delivery error" in out.stdout, out.stdout
    assert bot.methods() == ["setWebhook", "getWebhookInfo"]
    assert bot.webhook == {"url": url, "secret_token": secret_of(app), "allowed_updates": ["message"], "drop_pending_updates": False}


def test_an_update_with_the_secret_becomes_a_processed_task_and_others_are_refused(sandbox, app):
    update = {"update_id": 1, "message": {"message_id": 1, "chat": {"id": 42}, "text": "Renew the domain before Friday"}}
    before = psql(sandbox, "SELECT count(*) FROM tasks")
    assert [post_update(sandbox, update, s) for s in (None, "not-the-secret")] == [403, 403]
    assert psql(sandbox, "SELECT count(*) FROM tasks") == before
    assert post_update(sandbox, update, secret_of(app)) == 200
    wait_for(lambda: psql(sandbox, "SELECT status FROM tasks WHERE title = 'Renew the domain before Friday'") == "done",
             60, what="the bot's message processed by the worker")


def test_status_and_doctor_show_a_webhook_pointed_elsewhere_and_webhook_puts_it_back(sandbox, app, bot):
    assert "telegram https://bot.example.test" in fab(sandbox, "status", env_file=app).stdout
    bot.webhook = {**bot.webhook, "url": "https://someone-else.example.com/hook"}
    doctor = fab(sandbox, "doctor", env_file=app, check=False)
    assert doctor.returncode == 1 and "[telegram] the bot's webhook points at https://someone-else.example.com/hook" in doctor.stdout
    bot.last_error = ("Connection refused", int(time.time()) - 30)
    assert "Telegram's last delivery failed" in fab(sandbox, "doctor", env_file=app, check=False).stdout
    bot.last_error = None
    assert "Telegram webhook: https://bot.example.test" in fab(sandbox, "telegram.webhook", env_file=app).stdout
    assert "[telegram]" not in fab(sandbox, "doctor", env_file=app, check=False).stdout


def test_a_rollback_leaves_the_webhook_on_the_live_host(sandbox, app, bot):
    changed = sandbox.app_env(APP, "bot-changed", APP_URL=dotenv_values(app)["APP_URL"], WEBAPP_URL=dotenv_values(app)["APP_URL"],
                              DOMAIN=DOMAIN, TELEGRAM_API_BASE_URL=bot.url, TELEGRAM_WEBHOOK="auto", JOB_MAX_REQUEUES="7")
    fab(sandbox, "deploy", "--skip-build", env_file=changed)
    url, calls = bot.webhook["url"], len(bot.calls)
    fab(sandbox, "rollback", env_file=app)
    assert bot.webhook["url"] == url and len(bot.calls) == calls  # nothing to move: the URL is the host's


def test_the_secret_and_the_token_are_never_shown(sandbox, app):
    token, secret = dotenv_values(app)["TELEGRAM_BOT_TOKEN"], secret_of(app)
    logs = subprocess.run(["docker", "compose", "-p", f"{sandbox.project}-{APP}", "logs", "api", "worker", "nginx"],
                          capture_output=True, text=True).stdout
    audit = (sandbox.home / APP / "audit.log").read_text()
    for text in (*SAID, logs, audit):
        assert token not in text and secret not in text
