"""Alerts nobody has to poll for: the host-side program `APP_DIR/bin/tasktracker-notify` and the
commands around it.

    tasktracker-notify 'message'      (or the message on stdin)

sends one short message, prefixed with `[<host name> <project>]`, to the channels in
`APP_DIR/bin/notify.conf` beside it: Telegram (the stack's bot, `sendMessage` to
ALERT_TELEGRAM_CHAT_ID) and/or a webhook (POST `{"text": ...}` to ALERT_WEBHOOK_URL). It is POSIX
sh with curl (provision installs it) or else GNU wget, so it runs where cron runs, with no laptop
and no Python. With no channel configured it sends nothing and exits 0.

Secrets: notify.conf (mode 0600, written over SFTP by `Host.install_notify`, never on a command
line) holds the bot token and the webhook URL; the program hands each URL to curl (`-K -`) or
wget (`-i -`) on stdin, so no command line on the host (`ps`) ever shows one. The messages are
built from names, numbers and paths only (job, exit code, log path, release, commit, who), never
from a log's content or a setting's value.

Exit status: 0 sent (or nothing configured), 1 a channel could not be reached (why on stderr,
without its URL), 2 no message. Callers never let it fail their own job: the cron lines call it
only after the job failed, and the deploy/rollback notice turns a failure into a warning.
"""

from __future__ import annotations

import hashlib

from . import q, sh
from .context import HostContext
from .programs import program

SCRIPT_NAME = "tasktracker-notify"
CONF_NAME = "notify.conf"
TIMEOUT_SECONDS = 10
MAX_BYTES = 3000  # Telegram takes 4096 characters

NOTIFY_SCRIPT = program("notify.sh").replace("__MAX_BYTES__", str(MAX_BYTES))


def script_path(ctx: HostContext) -> str:
    return f"{ctx.bin_dir}/{SCRIPT_NAME}"


def conf_path(ctx: HostContext) -> str:
    return f"{ctx.bin_dir}/{CONF_NAME}"


def conf_text(ctx: HostContext, *, telegram_api_base_url: str, bot_token: str, chat_id: str,
              webhook_url: str,
              timeout: int = TIMEOUT_SECONDS) -> str:
    """notify.conf: the channels, as shell assignments the program reads (it holds secrets: it
    reaches the host over SFTP into a 0600 file, never through a command line). Telegram is a
    channel only when a chat id is set; the webhook when its URL is."""
    telegram = (f"{telegram_api_base_url.rstrip('/')}/bot{bot_token}/sendMessage"
                if chat_id and bot_token else "")
    return "\n".join([
        "# tasktracker-notify's channels: written by fab (deploy, backup.schedule, ssl.schedule); "
        "mode 0600, do not edit.",
        f"PROJECT={q(ctx.project)}",
        f"TELEGRAM_URL={q(telegram)}",
        f"TELEGRAM_CHAT_ID={q(chat_id if telegram else '')}",
        f"WEBHOOK_URL={q(webhook_url)}",
        f"TIMEOUT={int(timeout)}",
    ]) + "\n"


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def prepare_install(ctx: HostContext) -> str:
    """Make sure the program (mode 0700) and notify.conf (0600) exist, then print the sha256 of
    each: the host layer sends (over SFTP, into these files) only what differs, so a deploy folds
    this into a command it runs anyway and usually sends nothing more."""
    program, conf = script_path(ctx), conf_path(ctx)
    return " && ".join([
        sh(["mkdir", "-p", ctx.bin_dir]),
        f"{{ [ -f {q(program)} ] || install -m 700 /dev/null {q(program)}; }}",
        f"{{ [ -f {q(conf)} ] || install -m 600 /dev/null {q(conf)}; }}",
        sh(["chmod", "700", program]),
        sh(["chmod", "600", conf]),
        sh(["sha256sum", program, conf]),
    ])


def parse_installed(output: str) -> dict[str, str]:
    """{path: sha256} from what `prepare_install` printed (other lines are ignored)."""
    found = {}
    for line in output.splitlines():
        value, sep, path = line.partition("  ")
        if sep and len(value) == 64 and all(ch in "0123456789abcdef" for ch in value):
            found[path] = value
    return found


def send(ctx: HostContext, message: str) -> str:
    """Send `message` with the host's program when it is installed (nothing otherwise)."""
    program = q(script_path(ctx))
    return f"if [ -x {program} ]; then {program} {q(message)}; fi"


def on_failure(ctx_abs: HostContext, job: str, command: str, log: str) -> str:
    """`command`, its output appended to `log`; when it fails, one alert naming the job, its exit
    code and the log (not the log's content: that stays on the host). For a cron line: no `%`."""
    message_head, message_tail = q(f"{job} FAILED (exit "), q(f"); log: {log}")
    return (f"{command} >> {q(log)} 2>&1 || {q(script_path(ctx_abs))} "
            f"{message_head}\"$?\"{message_tail} >> {q(log)} 2>&1")


def operation_message(action: str, result: str, *, release: str, commit: str, who: str,
                      seconds: float,
                      step: str = "", reason: str = "", put_back: str = "") -> str:
    """One line about a deploy or rollback: what, which release, the result (where it failed: a
    step name or a kind of refusal, never the failure's detail), commit, who, how long."""
    head = f"{action} {'FAILED' if result == 'failed' else result}"
    if step:
        head += f" at '{step}'"
    if reason:
        head += f" ({reason})"
    if put_back:
        head += f"; {put_back} was put back and is serving"
    return f"{head}: release {release or '-'}, commit {commit or '?'}, by {who}, {seconds:.0f}s"
