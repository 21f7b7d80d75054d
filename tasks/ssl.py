"""TLS certificates without downtime: `ssl.issue`, `ssl.renew`, `ssl.schedule`, `ssl.status`."""

from __future__ import annotations

import io
import time
from pathlib import Path

from invoke import Collection, Exit, task

from . import remote
from .audit import record
from .commands import backup as backup_commands
from .commands import release as release_commands
from .commands import rollout
from .commands import sh
from .commands import ssl as commands
from .deploy import app_root, preflight
from .settings import Settings

WARN_DAYS = 14


def _host(c, settings: Settings | None = None):
    settings = settings or Settings.from_context(c)
    conn = remote.connect(c)
    facts, variant = preflight(conn, settings, "auto")
    current = Path(facts.get("current") or "").name
    if not current:
        raise Exit(f"{conn.original_host} has no release yet: deploy first (`fab -H {conn.original_host} deploy`), "
                   f"so nginx can answer the ACME challenge.", code=3)
    if not conn.run("command -v certbot", warn=True, hide=True, in_stream=False).ok:
        raise Exit(f"certbot is not installed on {conn.original_host}: install it (`apt-get install certbot`) and run "
                   f"again. Nothing was changed.", code=3)
    return settings, conn, variant, current


def check_and_reload(conn, settings: Settings, variant: str, current: str) -> str | None:
    """`nginx -t` with the shared conf.d in a throwaway container, then a graceful reload."""
    check = release_commands.in_release(settings.app_dir, current, sh(rollout.nginx_check(variant, settings.compose_project, current)))
    result = conn.run(check, warn=True, hide=True, in_stream=False)
    if not result.ok:
        return (result.stderr.strip() or result.stdout.strip())[-400:]
    conn.run(commands.nginx_reload(settings.compose_project), hide=True, in_stream=False)
    return None


@task(iterable=["domain"], help={
    "domain": "Domain to certify (repeatable; the first names the certificate). Default: DOMAIN from settings.",
    "email": "Contact address for the ACME account (expiry warnings).",
    "staging": "Use Let's Encrypt's staging directory (untrusted certificates, generous limits).",
    "server": "ACME directory URL of another CA (e.g. a test Pebble).",
    "ca_bundle": "CA bundle on the host that certbot should trust for --server (e.g. Pebble's).",
})
def issue(c, domain=None, email=None, staging=False, server=None, ca_bundle=None):
    """Obtain a certificate through the running nginx (webroot) and enable HTTPS, without downtime."""
    settings = Settings.from_context(c)
    domains = list(domain or []) or [settings.domain]
    if not email:
        raise Exit("Give a contact address with --email (the CA sends expiry warnings there).", code=2)
    settings, conn, variant, current = _host(c, settings)
    started = time.monotonic()
    d = commands.dirs(settings.app_dir)
    conn.run(sh(["mkdir", "-p", d["webroot"], d["work"], d["logs"], d["conf_d"]]), hide=True, in_stream=False)
    print(f"Requesting a certificate for {', '.join(domains)} (webroot through the running nginx)")
    result = conn.run(commands.with_ca_bundle(sh(commands.issue(settings.app_dir, domains, email, server, staging)), ca_bundle),
                      warn=True, hide=True, in_stream=False)
    if not result.ok:
        reason = commands.explain_failure(result.stdout + "\n" + result.stderr, domains)
        for line in commands.reported_problems(result.stdout + "\n" + result.stderr):
            print(f"   {line}")
        record(conn, settings.app_dir, "ssl.issue", "failed", duration=time.monotonic() - started, detail=reason)
        raise Exit(f"No certificate for {', '.join(domains)}: {reason} The running configuration keeps serving "
                   f"unchanged.", code=1)
    conn.put(io.BytesIO(commands.tls_server_config(domains, settings.https_port).encode()),
             remote=f"{d['conf_d']}/{commands.TLS_CONF}.new")
    conn.run(commands.install_tls_config(settings.app_dir), hide=True, in_stream=False)
    problem = check_and_reload(conn, settings, variant, current)
    if problem:
        conn.run(commands.restore_tls_config(settings.app_dir), hide=True, in_stream=False)
        record(conn, settings.app_dir, "ssl.issue", "failed", duration=time.monotonic() - started, detail=problem)
        raise Exit(f"The certificate was issued but the HTTPS configuration failed `nginx -t` ({problem}); the previous "
                   f"configuration was put back and keeps serving.", code=1)
    record(conn, settings.app_dir, "ssl.issue", "ok", duration=time.monotonic() - started, detail=" ".join(domains))
    print(f"HTTPS is enabled for {', '.join(domains)} on port {settings.https_port}; HTTP redirects to it "
          f"(except /.well-known/acme-challenge/).")


@task(help={"force": "Renew even certificates that are not close to expiry.",
            "ca_bundle": "CA bundle on the host that certbot should trust (test CAs)."})
def renew(c, force=False, ca_bundle=None):
    """Renew certificates that are due (or all with --force) and reload nginx gracefully."""
    settings, conn, variant, current = _host(c)
    result = conn.run(commands.with_ca_bundle(sh(commands.renew(settings.app_dir, force)), ca_bundle),
                      warn=True, hide=True, in_stream=False)
    if not result.ok:
        record(conn, settings.app_dir, "ssl.renew", "failed", detail=result.stderr[-300:])
        raise Exit(f"Renewal failed on {conn.original_host}: {commands.explain_failure(result.stdout + result.stderr, [])} "
                   f"The current certificates keep serving.", code=1)
    problem = check_and_reload(conn, settings, variant, current)
    if problem:
        raise Exit(f"Renewed, but nginx -t failed ({problem}); nginx keeps serving the previous certificates.", code=1)
    record(conn, settings.app_dir, "ssl.renew", "ok")
    print(f"Certificates renewed where due on {conn.original_host}; nginx reloaded without a restart.")


@task(help={"at": "Time of day (host time, HH:MM) for the daily renewal check (default 03:00).",
            "ca_bundle": "CA bundle on the host that certbot should trust (test CAs)."})
def schedule(c, at="03:00", ca_bundle=None):
    """Install the daily renewal job (cron): renews what is due and reloads nginx gracefully."""
    settings = Settings.from_context(c)
    conn = remote.connect(c)
    facts, _ = preflight(conn, settings, "auto")
    line = commands.cron_line(app_root(facts, settings.app_dir), settings.compose_project, at, ca_bundle)
    result = conn.run(backup_commands.install_cron(line, f"# tasktracker-ssl:{settings.compose_project}"),
                      warn=True, hide=True, in_stream=False)
    if not result.ok:
        raise Exit(f"Could not install the renewal job: {result.stderr.strip()[-300:]} (is cron installed?)", code=1)
    record(conn, settings.app_dir, "schedule", "ok", detail=f"daily certificate renewal at {at}")
    print(f"Daily renewal installed on {conn.original_host}:\n  {result.stdout.strip()}")


@task
def status(c):
    """Each certificate's domains, issuer, expiry and days left (warns below 14 days)."""
    settings = Settings.from_context(c)
    conn = remote.connect(c)
    certs = commands.parse_status(conn.run(commands.status(settings.app_dir), hide=True, in_stream=False).stdout)
    if not certs:
        print(f"No certificates on {conn.original_host} yet: `fab -H {conn.original_host} ssl.issue --email ...`.")
        return
    for cert in certs:
        warn = "  WARNING: renew soon (`fab ssl.renew`)" if cert["days_left"] < WARN_DAYS else ""
        print(f"  {', '.join(cert['domains']) or cert['name']}: issuer {cert['issuer']}; expires "
              f"{cert['expires']:%Y-%m-%d} ({cert['days_left']} days left){warn}")


ns = Collection("ssl")
for t in (issue, renew, schedule, status):
    ns.add_task(t)
