"""TLS certificates without downtime: `ssl.issue`, `ssl.renew`, `ssl.schedule`, `ssl.status`.

(The module is tls.py so that it does not shadow the standard library's `ssl`; the tasks are
still `ssl.*`.)"""

from __future__ import annotations

import re

from invoke import Collection, Exit, task

from . import botapi
from .commands import backup as backup_commands
from .commands import sh
from .commands import tls as commands
from .engines import open_host
from .exits import ExitCode
from .host import WAIT_HELP, Host
from .settings import Settings
from .settings_checks import DOMAIN_RE

WARN_DAYS = 14


def open_for_tls(c, settings: Settings | None = None) -> Host:
    """A host that has a live release (nginx answers the challenge) and certbot."""
    host = open_host(c, settings)
    if not host.current_id:
        raise Exit(f"{host.name} has no release yet: deploy first (`fab -H {host.name} deploy`), "
                   f"so nginx can answer the ACME challenge. Nothing was changed.",
                   code=ExitCode.HOST_NOT_READY)
    if not host.probe_run(sh(commands.certbot_present())).ok:
        raise Exit(f"certbot is not installed on {host.name}: install it (`apt-get install "
                   f"certbot`) and run again. Nothing was changed.", code=ExitCode.HOST_NOT_READY)
    return host


def check_and_reload(host: Host) -> str | None:
    """`nginx -t` with the shared conf.d in a throwaway container, then a graceful reload."""
    result = host.probe_run(host.nginx_check_command())
    if not result.ok:
        return (result.stderr.strip() or result.stdout.strip())[-400:]
    host.conn.run(commands.nginx_reload(host.ctx), hide=True)
    return None


@task(iterable=["domain"], help={
    "domain": "Domain to certify (repeatable; the first names the certificate). Default: DOMAIN "
              "from settings.",
    "email": "Contact address for the ACME account (expiry warnings).",
    "staging": "Use Let's Encrypt's staging directory (untrusted certificates, generous limits).",
    "server": "ACME directory URL of another CA (e.g. a test Pebble).",
    "ca_bundle": "CA bundle on the host that certbot should trust for --server (e.g. Pebble's).",
    "wait": WAIT_HELP,
})
def issue(c, domain=None, email=None, staging=False, server=None, ca_bundle=None, wait=False):
    """Obtain a certificate through the running nginx (webroot), enable HTTPS, without downtime."""
    settings = Settings.from_context(c)
    domains = [d.strip().lower() for d in (domain or [])] or [settings.domain]
    bad = [d for d in domains if not DOMAIN_RE.match(d)]
    if bad:
        raise Exit(f"--domain {', '.join(map(repr, bad))} is not a domain name like "
                   f"tasks.example.com. Nothing was changed.", code=ExitCode.USAGE)
    if not email or not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", email):
        raise Exit("Give a contact address with --email (the CA sends expiry warnings there), like "
                   "ops@example.com. Nothing was changed.", code=ExitCode.USAGE)
    host = open_for_tls(c, settings)
    with host.locked("ssl.issue", wait=wait), host.audited("ssl.issue") as outcome:
        outcome["detail"] = " ".join(domains)
        host.run(sh(commands.make_dirs(host.ctx)), "prepare certbot directories")
        print(f"Requesting a certificate for {', '.join(domains)} (webroot through the running "
              "nginx)")
        result = host.probe_run(commands.with_ca_bundle(sh(commands.issue(host.ctx, domains, email,
                                                                          server, staging)),
                                                        ca_bundle))
        if not result.ok:
            reason = commands.explain_failure(result.stdout + "\n" + result.stderr, domains)
            for line in commands.reported_problems(result.stdout + "\n" + result.stderr):
                print(f"   {line}")
            outcome["detail"] = reason
            raise Exit(f"No certificate for {', '.join(domains)}: {reason} The running "
                       f"configuration keeps serving unchanged.", code=ExitCode.FAILED)
        host.put_text(commands.tls_server_config(domains, settings.https_port),
                      commands.tls_config_path(host.ctx) + ".new")
        host.conn.run(commands.install_tls_config(host.ctx), hide=True)
        problem = check_and_reload(host)
        if problem:
            host.conn.run(commands.restore_tls_config(host.ctx), hide=True)
            outcome["detail"] = problem
            raise Exit("The certificate was issued but the HTTPS configuration failed `nginx -t` "
                       f"({problem}); the previous "
                       f"configuration was put back and keeps serving.", code=ExitCode.FAILED)
    print(f"HTTPS is enabled for {', '.join(domains)} on port {settings.https_port}; HTTP "
          f"redirects to it (except /.well-known/acme-challenge/).")
    botapi.after_change(host)  # Telegram calls HTTPS URLs only: now the bot's webhook can be set


@task(help={"force": "Renew even certificates that are not close to expiry.",
            "ca_bundle": "CA bundle on the host that certbot should trust (test CAs).",
            "wait": WAIT_HELP})
def renew(c, force=False, ca_bundle=None, wait=False):
    """Renew certificates that are due (or all with --force) and reload nginx gracefully."""
    host = open_for_tls(c)
    with host.locked("ssl.renew", wait=wait), host.audited("ssl.renew") as outcome:
        result = host.probe_run(commands.with_ca_bundle(sh(commands.renew(host.ctx, force,
                                                                          now=True)), ca_bundle))
        if not result.ok:
            outcome["detail"] = commands.explain_failure(result.stdout + result.stderr, [])
            raise Exit(f"Renewal failed on {host.name}: {outcome['detail']} The current "
                       "certificates keep serving.",
                       code=ExitCode.FAILED)
        problem = check_and_reload(host)
        if problem:
            outcome["detail"] = problem
            raise Exit(f"Renewed, but nginx -t failed ({problem}); nginx keeps serving the "
                       "previous certificates.",
                       code=ExitCode.FAILED)
    print(f"Certificates renewed where due on {host.name}; nginx reloaded without a restart.")


@task(help={"at": "Time of day (host time, HH:MM) for the daily renewal check (default 03:00).",
            "ca_bundle": "CA bundle on the host that certbot should trust (test CAs)."})
def schedule(c, at="03:00", ca_bundle=None):
    """Install the daily renewal job (cron): renews what is due and reloads nginx gracefully."""
    if not re.fullmatch(r"([01]?\d|2[0-3]):[0-5]\d", at):
        raise Exit(f"--at {at!r} is not a time of day like 03:00.", code=ExitCode.USAGE)
    host = open_host(c)
    host.install_notify()  # the job alerts when it fails
    ctx = host.absolute_ctx
    line = commands.cron_line(ctx, at, ca_bundle)
    marker = backup_commands.cron_marker("ssl", ctx.project)
    result = host.probe_run(backup_commands.install_cron(line, marker))
    if not result.ok:
        raise Exit(f"Could not install the renewal job: {result.stderr.strip()[-300:]} (is cron "
                   "installed?)", code=ExitCode.FAILED)
    host.record("schedule", "ok", detail=f"daily certificate renewal at {at}")
    print(f"Daily renewal installed on {host.name}:\n  {result.stdout.strip()}")


@task
def status(c):
    """Each certificate's domains, issuer, expiry and days left (warns below 14 days)."""
    host = open_host(c)
    certs = commands.parse_status(host.conn.run(commands.status(host.ctx), hide=True).stdout)
    if not certs:
        print(f"No certificates on {host.name} yet: `fab -H {host.name} ssl.issue --email ...`.")
        return
    for cert in certs:
        warn = "  WARNING: renew soon (`fab ssl.renew`)" if cert["days_left"] < WARN_DAYS else ""
        print(f"  {', '.join(cert['domains']) or cert['name']}: issuer {cert['issuer']}; expires "
              f"{cert['expires']:%Y-%m-%d} ({cert['days_left']} days left){warn}")


ns = Collection("ssl")
for t in (issue, renew, schedule, status):
    ns.add_task(t)
