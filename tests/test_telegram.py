"""The Telegram webhook's builders and parser (tasks/commands/telegram.py), and the secret token
the toolkit and the reference app derive alike."""

from __future__ import annotations

import importlib.util
import json

import pytest

from tasks.commands import telegram
from tests.support import ROOT


@pytest.mark.parametrize("app_url, expected", [
    ("https://tasks.example.com", "https://tasks.example.com/api/telegram/webhook"),
    ("https://tasks.example.com:8443/app", "https://tasks.example.com:8443/api/telegram/webhook"),
    ("http://tasks.example.com", None),
    ("http://127.0.0.2:18080", None),
])
def test_the_webhook_url_is_https_on_app_urls_origin(app_url, expected):
    assert telegram.webhook_url(app_url) == expected


def test_the_secret_is_derived_from_the_bot_token_as_the_app_derives_it():
    spec = importlib.util.spec_from_file_location("reference_backend_config", ROOT / "backend" / "app" / "config.py")
    backend = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(backend)
    secret = telegram.webhook_secret("123456:token")
    assert secret == backend.webhook_secret("123456:token") != telegram.webhook_secret("123456:other")
    assert len(secret) == 64 and secret.isalnum()  # Telegram allows A-Z a-z 0-9 _ - (1-256)
    body = json.loads(telegram.set_webhook_body("https://t.example.com/api/telegram/webhook", "123456:token"))
    assert body == {"url": "https://t.example.com/api/telegram/webhook", "secret_token": secret,
                    "allowed_updates": ["message"], "drop_pending_updates": False}
    assert telegram.api_url("https://api.telegram.org/", "1:t", "setWebhook") == "https://api.telegram.org/bot1:t/setWebhook"


URL = "https://t.example.com/api/telegram/webhook"


@pytest.mark.parametrize("answer, problems", [
    ({"url": URL, "pending_update_count": 3}, []),
    ({"url": "https://elsewhere.example.com/hook", "pending_update_count": 0},
     [f"the bot's webhook points at https://elsewhere.example.com/hook instead of {URL}"]),
    ({"url": "", "pending_update_count": 0}, [f"the bot's webhook points at nothing instead of {URL}"]),
    ({"url": URL, "last_error_message": "Connection timed out", "last_error_date": 1_000_000 - 120},
     ["Telegram's last delivery failed 120 s ago: Connection timed out"]),
    ({"url": URL, "last_error_message": "Connection timed out", "last_error_date": 1_000_000 - 7200}, []),
])
def test_what_telegram_reports_becomes_findings(answer, problems):
    state = telegram.WebhookState.parse(json.dumps({"ok": True, "result": answer}))
    assert state.problems(URL, now=1_000_000) == problems
    assert state.line().startswith(answer["url"] or "(none)")
