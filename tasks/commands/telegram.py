"""The Telegram bot's webhook: its URL, the secret token Telegram sends with each update, the Bot
API requests that set and read it, and what `status`/`doctor` make of the answer. Pure: the
requests are built here and sent by tasks/telegram.py.

The secret token is derived from the bot token (HMAC-SHA256), so the app (backend/app/main.py,
`webhook_secret`) and the toolkit agree on it with nothing new to store, and it changes with the
bot token. It is never printed: it travels in the JSON body of setWebhook only."""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from urllib.parse import urlparse

WEBHOOK_PATH = "/api/telegram/webhook"
ALLOWED_UPDATES = ["message"]
RECENT_ERROR_SECONDS = 3600  # a delivery error younger than this is a `doctor` finding


def webhook_secret(bot_token: str) -> str:
    """The `secret_token` for setWebhook (Telegram allows A-Z, a-z, 0-9, _ and -, 1-256 chars)."""
    return hmac.new(bot_token.encode(), b"tasktracker telegram webhook", hashlib.sha256).hexdigest()


def webhook_url(app_url: str) -> str | None:
    """Where Telegram posts updates: APP_URL's origin + WEBHOOK_PATH; None unless https (Telegram
    calls nothing else)."""
    parsed = urlparse(app_url)
    if parsed.scheme != "https" or not parsed.hostname:
        return None
    return f"https://{parsed.netloc}{WEBHOOK_PATH}"


def api_url(base_url: str, bot_token: str, method: str) -> str:
    return f"{base_url.rstrip('/')}/bot{bot_token}/{method}"


def set_webhook_body(url: str, bot_token: str) -> bytes:
    return json.dumps({"url": url, "secret_token": webhook_secret(bot_token),
                       "allowed_updates": ALLOWED_UPDATES,
                       "drop_pending_updates": False}).encode()


@dataclass(frozen=True)
class WebhookState:
    """getWebhookInfo's answer, as `status` shows it."""

    url: str
    pending: int
    last_error: str
    last_error_at: int  # unix time; 0: none

    @classmethod
    def parse(cls, text: str) -> "WebhookState":
        result = json.loads(text).get("result") or {}
        return cls(url=result.get("url", ""), pending=int(result.get("pending_update_count", 0)),
                   last_error=result.get("last_error_message", ""),
                   last_error_at=int(result.get("last_error_date", 0)))

    def problems(self, expected_url: str, now: float) -> list[str]:
        """What is wrong with it for a host that should receive updates at `expected_url`."""
        found = []
        if self.url != expected_url:
            found.append(f"the bot's webhook points at {self.url or 'nothing'} instead of "
                         f"{expected_url}")
        if self.last_error and now - self.last_error_at < RECENT_ERROR_SECONDS:
            found.append(f"Telegram's last delivery failed {int(now - self.last_error_at)} s ago: "
                         f"{self.last_error}")
        return found

    def line(self) -> str:
        error = f"; last error: {self.last_error}" if self.last_error else "; no delivery error"
        return f"{self.url or '(none)'}, {self.pending} updates pending{error}"
