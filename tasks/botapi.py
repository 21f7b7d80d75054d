"""The Telegram bot's webhook on a host (below the tasks: `deploy`, `ssl.issue`, `status` and the
`telegram.*` tasks use it). The Bot API is called from this machine (the laptop or CI), with the
token in the URL path and the secret token in the body; neither is ever printed."""

from __future__ import annotations

import time
import urllib.error
import urllib.request

from .commands import sh
from .commands import telegram as commands
from .commands import tls as tls_commands
from .host import Host
from .settings import Settings

TIMEOUT = 10


class BotApiError(Exception):
    """The Bot API did not answer, or said no; the message holds no secret."""


def bot_api(settings: Settings, method: str, body: bytes | None = None) -> str:
    token = settings.telegram_bot_token.reveal()
    request = urllib.request.Request(commands.api_url(settings.telegram_api_base_url, token,
                                                      method), data=body or b"{}",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as answer:
            return answer.read().decode()
    except urllib.error.HTTPError as err:  # its text names the status, never the URL
        detail = err.read().decode(errors="replace")[:300]
        raise BotApiError(f"the Bot API answered {err.code} to {method}: "
                          f"{detail.replace(token, '[REDACTED]')}") from None
    except (urllib.error.URLError, OSError) as err:
        reason = str(getattr(err, "reason", err)).replace(token, "[REDACTED]")
        raise BotApiError(f"the Bot API at {settings.telegram_api_base_url} did not answer "
                          f"{method}: {reason}") from None


def serves_https(host: Host) -> bool:
    """The host has DOMAIN's certificate and nginx's TLS server (what `ssl.issue` leaves)."""
    live = f"{host.ctx.shared_dir}/letsencrypt/live/{host.settings.domain}/fullchain.pem"
    return host.probe_run(sh(["test", "-s", live]) + " && "
                          + sh(["test", "-f", tls_commands.tls_config_path(host.ctx)])).ok


def not_ready_reason(settings: Settings, name: str, https: bool | None) -> str | None:
    """Why this host cannot receive the bot's updates (None: it can). `https`: whether it serves
    HTTPS for DOMAIN (None: not asked yet; only the settings are checked)."""
    if settings.telegram_webhook == "off":
        return "TELEGRAM_WEBHOOK is off"
    if not commands.webhook_url(settings.app_url):
        return f"APP_URL {settings.app_url} is not https:// (Telegram only calls HTTPS URLs)"
    if https is False:
        return (f"{name} serves no HTTPS for {settings.domain} yet (Telegram only calls HTTPS "
                f"URLs): run `fab -H {name} ssl.issue --email ...`, which sets the webhook")
    return None


def host_not_ready(host: Host) -> str | None:
    return not_ready_reason(host.settings, host.name, None) or not_ready_reason(host.settings,
                                                                                host.name,
                                                                                serves_https(host))


def register(host: Host) -> str:
    """Point the bot's webhook at this host and check that it took: a line to print, or raises
    BotApiError."""
    url = commands.webhook_url(host.settings.app_url)
    body = commands.set_webhook_body(url, host.settings.telegram_bot_token.reveal())
    answer = bot_api(host.settings, "setWebhook", body)
    if '"ok":true' not in answer.replace(" ", ""):
        raise BotApiError(f"setWebhook was refused: {host.redact(answer)[:300]}")
    state = commands.WebhookState.parse(bot_api(host.settings, "getWebhookInfo"))
    if state.url != url:
        raise BotApiError(f"getWebhookInfo shows {state.url or 'no URL'} after setWebhook({url})")
    return f"Telegram webhook: {state.line()}"


def after_change(host: Host) -> None:
    """After a deploy or `ssl.issue`: set the webhook when the host can take updates, else say why
    it was not set. A failure is loud but does not undo what was done."""
    reason = host_not_ready(host)
    if reason:
        if host.settings.telegram_webhook != "off":
            print(f"Telegram webhook not set: {reason}.")
        return
    try:
        print(register(host))
    except BotApiError as err:
        print(f"WARNING: the Telegram webhook could not be set: {err}. The release is live; run "
              f"`fab -H {host.name} telegram.webhook` once the cause is fixed.")


def webhook_state(settings: Settings) -> tuple[commands.WebhookState | None, list[str]]:
    """For `status`/`doctor` on a host that can take updates: the webhook as Telegram reports it,
    and what is wrong with it."""
    try:
        state = commands.WebhookState.parse(bot_api(settings, "getWebhookInfo"))
    except BotApiError as err:
        return None, [str(err)]
    return state, state.problems(commands.webhook_url(settings.app_url), time.time())
