"""`telegram.webhook` points the bot's webhook at this host (a deploy and `ssl.issue` do it too)
and `telegram.status` shows it as Telegram reports it (tasks/botapi.py does the work)."""

from __future__ import annotations

from invoke import Collection, Exit, task

from .botapi import BotApiError, host_not_ready, register, webhook_state
from .engines import open_host
from .exits import ExitCode


@task
def webhook(c):
    """Point the Telegram bot's webhook at this host (needs HTTPS: `ssl.issue`), check it took."""
    host = open_host(c)
    reason = host_not_ready(host)
    if reason:
        raise Exit(f"The Telegram webhook was not set: {reason}. Nothing was changed.",
                   code=ExitCode.HOST_NOT_READY)
    try:
        print(register(host))
    except BotApiError as err:
        raise Exit(f"The Telegram webhook could not be set: {err}.", code=ExitCode.FAILED) from None


@task
def status(c):
    """The Telegram webhook as Telegram sees it: URL, pending updates, the last delivery error."""
    host = open_host(c)
    reason = host_not_ready(host)
    if reason:
        print(f"Telegram webhook: not in use ({reason}).")
        return
    state, problems = webhook_state(host.settings)
    print(f"Telegram webhook: {state.line()}" if state else "Telegram webhook: unknown")
    for problem in problems:
        print(f"  WARNING: {problem}")


ns = Collection("telegram")
for t in (webhook, status):
    ns.add_task(t)
