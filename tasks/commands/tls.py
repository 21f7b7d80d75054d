"""TLS with certbot's webroot mode through the running nginx (no downtime, nothing copied by hand).

certbot runs on the host as the deploy user with its state in APP_DIR/shared/letsencrypt; the
ACME webroot is APP_DIR/shared/acme (served by nginx at /.well-known/acme-challenge/); the HTTPS
server is APP_DIR/shared/nginx/conf.d/tasktracker-tls.conf. All three live outside releases, so
deploys keep HTTPS, and they are part of the app-files backup.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone

from . import notify, q, sh
from .backup import cron_marker
from .context import HostContext

TLS_CONF = "tasktracker-tls.conf"
CIPHERS = ":".join([
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384", "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
])


def certbot_base(ctx: HostContext) -> list[str]:
    le = ctx.letsencrypt_dir
    return ["certbot", "--config-dir", le, "--work-dir", f"{le}/work", "--logs-dir", f"{le}/logs",
            "--non-interactive"]


def certbot_present() -> list[str]:
    return ["sh", "-c", "command -v certbot"]


def make_dirs(ctx: HostContext) -> list[str]:
    le = ctx.letsencrypt_dir
    return ["mkdir", "-p", *ctx.mounted_dirs, f"{le}/work", f"{le}/logs"]


def issue(ctx: HostContext, domains: list[str], email: str, server: str | None = None,
          staging: bool = False,
          force: bool = False) -> list[str]:
    argv = [*certbot_base(ctx), "certonly", "--webroot", "-w", ctx.acme_webroot, "--cert-name",
            domains[0],
            "--agree-tos", "--email", email, "--keep-until-expiring", "--expand"]
    for domain in domains:
        argv += ["-d", domain]
    if server:
        argv += ["--server", server]
    elif staging:
        argv += ["--staging"]
    if force:
        argv.append("--force-renewal")
    return argv


def renew(ctx: HostContext, force: bool = False, now: bool = False) -> list[str]:
    """`certbot renew`. Run with no terminal, certbot first sleeps up to 8 minutes to spread the
    load on the CA: right for the nightly job, not for `ssl.renew`, which an operator is waiting
    on (`now`)."""
    return [*certbot_base(ctx), "renew", *(["--force-renewal"] if force else []),
            *(["--no-random-sleep-on-renew"] if now else [])]


def with_ca_bundle(command: str, ca_bundle: str | None) -> str:
    """certbot trusts a private ACME server (Pebble) through REQUESTS_CA_BUNDLE (a path, no
    secret)."""
    return f"REQUESTS_CA_BUNDLE={q(ca_bundle)} {command}" if ca_bundle else command


def nginx_test_running(ctx: HostContext, release_id: str) -> str:
    """On a swarm (no Compose to start a throwaway nginx): `nginx -t` of the release's config inside
    the running nginx task on this node, which mounts the same conf.d and certificates; it reloads
    nothing."""
    return (f"c=$({ctx.container('nginx')}); [ -n \"$c\" ] || {{ echo 'no nginx task on this node: "
            "run on the entry node' >&2; exit 1; }; docker exec \"$c\" nginx -t -q -c "
            f"{q(f'/srv/app/releases/{release_id}/nginx/nginx.conf')}")


def nginx_reload(ctx: HostContext) -> str:
    nginx = ctx.containers("nginx")
    # After HUP the old workers hand over to new ones within a moment; wait for that, so the new
    # configuration is what answers when the task says it is done.
    return f"for c in $({nginx}); do docker exec $c kill -HUP 1; done; sleep 1.5"


def tls_server_config(domains: list[str], https_port: int) -> str:
    names = " ".join(domains)
    port = "" if https_port == 443 else f":{https_port}"
    live = f"/srv/app/shared/letsencrypt/live/{domains[0]}"
    return f"""# Written by `fab ssl.issue` for {names}; lives outside releases, so deploys keep it.

# With HTTPS on, a request on port 80 for any other Host is not served the app over plain HTTP:
# it is sent to the HTTPS site. (Requests for localhost/127.0.0.1, the deploy's own health probe
# on the host, still reach the app server in nginx.conf by name.)
server {{
    listen 80 default_server;
    server_name _;
    location ^~ /.well-known/acme-challenge/ {{
        root /var/www/certbot;
        default_type text/plain;
        try_files $uri =404;
    }}
    location / {{
        return 301 https://{domains[0]}{port}$request_uri;
    }}
}}

server {{
    listen 80;
    server_name {names};
    location ^~ /.well-known/acme-challenge/ {{
        root /var/www/certbot;
        default_type text/plain;
        try_files $uri =404;
    }}
    location / {{
        return 301 https://$host{port}$request_uri;
    }}
}}

server {{
    listen 443 ssl http2;
    server_name {names};
    root /srv/app/current/frontend/dist;

    ssl_certificate {live}/fullchain.pem;
    ssl_certificate_key {live}/privkey.pem;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_ciphers {CIPHERS};
    ssl_prefer_server_ciphers off;
    ssl_session_cache shared:TLS:10m;
    ssl_session_timeout 1d;
    ssl_session_tickets off;

    include /srv/app/current/nginx/app-locations.conf;
}}
"""


def tls_config_path(ctx: HostContext) -> str:
    return f"{ctx.conf_d}/{TLS_CONF}"


def install_tls_config(ctx: HostContext) -> str:
    """Move the uploaded config into place, keeping the previous one to restore on a failed
    check."""
    live = q(tls_config_path(ctx))
    return (f"mkdir -p {q(ctx.conf_d)} && "
            f"if [ -f {live} ]; then cp -p {live} {live}.previous; fi && mv -f {live}.new {live}")


def restore_tls_config(ctx: HostContext) -> str:
    live = q(tls_config_path(ctx))
    return f"if [ -f {live}.previous ]; then mv -f {live}.previous {live}; else rm -f {live}; fi"


def status(ctx: HostContext) -> str:
    live = q(f"{ctx.letsencrypt_dir}/live")
    return (f"for d in $(ls -1 {live} 2>/dev/null); do [ -f {live}/$d/cert.pem ] || continue; "
            f"printf 'cert=%s|%s|%s|%s\\n' \"$d\" "
            f"\"$(openssl x509 -noout -enddate -in {live}/$d/cert.pem | cut -d= -f2)\" "
            f"\"$(openssl x509 -noout -issuer -in {live}/$d/cert.pem | sed 's/^issuer=//')\" "
            f"\"$(openssl x509 -noout -ext subjectAltName -in {live}/$d/cert.pem 2>/dev/null | "
            "tail -n +2 | tr -d ' ')\"; done")


def explain_failure(output: str, domains: list[str]) -> str:
    """certbot's failure in one sentence with the likely fix."""
    text = output.lower()
    if any(sign in text for sign in ("dns problem", "nxdomain", "no valid ip addresses",
                                     "no such host", "could not resolve")):
        return (f"DNS for {', '.join(domains)} does not point at this server (the ACME server "
                "could not resolve it). "
                f"Create an A/AAAA record pointing here, wait for it to propagate, and try again.")
    if "connection refused" in text or "timeout" in text or "connection reset" in text:
        return ("the ACME server could not reach this server on port 80. Open port 80 in the "
                "firewall and make sure "
                "nginx answers on it (it must serve /.well-known/acme-challenge/).")
    if "ratelimit" in text.replace(" ", "") or "too many" in text:
        return ("the ACME server's rate limit was hit. Wait (Let's Encrypt: up to a week), or test "
                "with --staging.")
    if "unauthorized" in text or "404" in text:
        return ("the ACME server fetched the challenge but got the wrong answer: check that this "
                "domain's port 80 reaches this server's nginx.")
    if "can't set attribute" in text:  # certbot#9539: certbot 2.1 on Python 3.11 (Debian 12)
        return ("certbot crashed on an error the ACME server sent (Debian 12's certbot cannot show "
                "it: certbot issue 9539; its log, shared/letsencrypt/logs/letsencrypt.log, has the "
                "server's answer). A one-off refusal (a rejected nonce) passes when run again; if "
                "it does not, read the server's answer in that log.")
    last = [line for line in output.strip().splitlines() if line.strip()][-3:]
    return "certbot failed: " + " ".join(last)


def reported_problems(output: str) -> list[str]:
    """The CA's own words about each failed domain, from certbot's output."""
    return [line.strip() for line in output.splitlines()
            if line.strip().startswith(("Domain:", "Type:", "Detail:"))]


def parse_status(output: str, now: datetime | None = None) -> list[dict]:
    now = now or datetime.now(timezone.utc)
    certs = []
    for line in output.splitlines():
        if not line.startswith("cert="):
            continue
        name, enddate, issuer, sans = (line[5:].split("|") + ["", "", ""])[:4]
        expires = datetime.strptime(re.sub(r"\s+", " ", enddate.strip()),
                                    "%b %d %H:%M:%S %Y %Z").replace(tzinfo=timezone.utc)
        days = (expires - now).days
        certs.append({"name": name, "expires": expires, "days_left": days, "issuer": issuer.strip(),
                      "domains": [s.split(":", 1)[1] for s in sans.split(",") if ":" in s]})
    return certs


def cron_line(ctx_abs: HostContext, at: str, ca_bundle: str | None) -> str:
    hour, minute = at.split(":")
    # `{ reload; }`: the job's exit status is certbot's when it fails (the reload ends with a sleep)
    command = with_ca_bundle(sh(renew(ctx_abs)),
                             ca_bundle) + " && { " + nginx_reload(ctx_abs) + "; }"
    job = notify.on_failure(ctx_abs, "certificate renewal", f"( {command} )",
                            f"{ctx_abs.letsencrypt_dir}/renew.log")
    return f"{int(minute)} {int(hour)} * * * {job} {cron_marker('ssl', ctx_abs.project)}"
