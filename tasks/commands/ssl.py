"""TLS with certbot's webroot mode through the running nginx (no downtime, nothing copied by hand).

certbot runs on the host as the deploy user with its state in APP_DIR/shared/letsencrypt; the
ACME webroot is APP_DIR/shared/acme (served by nginx at /.well-known/acme-challenge/); the HTTPS
server is APP_DIR/shared/nginx/conf.d/tasktracker-tls.conf. All three live outside releases, so
deploys keep HTTPS, and they are part of the app-files backup.
"""

from __future__ import annotations

import re
import shlex

from . import sh

TLS_CONF = "tasktracker-tls.conf"
CIPHERS = ":".join([
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384", "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
])


def dirs(app_dir: str) -> dict[str, str]:
    le = f"{app_dir}/shared/letsencrypt"
    return {"config": le, "work": f"{le}/work", "logs": f"{le}/logs", "webroot": f"{app_dir}/shared/acme",
            "conf_d": f"{app_dir}/shared/nginx/conf.d"}


def certbot_base(app_dir: str) -> list[str]:
    d = dirs(app_dir)
    return ["certbot", "--config-dir", d["config"], "--work-dir", d["work"], "--logs-dir", d["logs"], "--non-interactive"]


def issue(app_dir: str, domains: list[str], email: str, server: str | None = None, staging: bool = False,
          force: bool = False) -> list[str]:
    argv = [*certbot_base(app_dir), "certonly", "--webroot", "-w", dirs(app_dir)["webroot"], "--cert-name", domains[0],
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


def renew(app_dir: str, force: bool = False) -> list[str]:
    return [*certbot_base(app_dir), "renew", *(["--force-renewal"] if force else [])]


def with_ca_bundle(command: str, ca_bundle: str | None) -> str:
    """certbot trusts a private ACME server (Pebble) through REQUESTS_CA_BUNDLE (a path, no secret)."""
    return f"REQUESTS_CA_BUNDLE={shlex.quote(ca_bundle)} {command}" if ca_bundle else command


def nginx_reload(project: str) -> str:
    nginx = (f"docker ps -q --filter label=com.docker.compose.project={shlex.quote(project)} "
             f"--filter label=com.docker.compose.service=nginx --filter label=com.docker.compose.oneoff=False")
    # After HUP the old workers hand over to new ones within a moment; wait for that, so the new
    # configuration is what answers when the task says it is done.
    return f"for c in $({nginx}); do docker exec $c kill -HUP 1; done; sleep 1.5"


def tls_server_config(domains: list[str], https_port: int) -> str:
    names = " ".join(domains)
    port = "" if https_port == 443 else f":{https_port}"
    live = f"/srv/app/shared/letsencrypt/live/{domains[0]}"
    return f"""# Written by `fab ssl.issue` for {names}; lives outside releases, so deploys keep it.
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


def install_tls_config(app_dir: str) -> str:
    """Move the uploaded config into place, keeping the previous one to restore on a failed check."""
    conf_d = dirs(app_dir)["conf_d"]
    live = f"{conf_d}/{TLS_CONF}"
    return (f"mkdir -p {shlex.quote(conf_d)} && "
            f"if [ -f {shlex.quote(live)} ]; then cp -p {shlex.quote(live)} {shlex.quote(live)}.previous; fi && "
            f"mv -f {shlex.quote(live)}.new {shlex.quote(live)}")


def restore_tls_config(app_dir: str) -> str:
    live = f"{dirs(app_dir)['conf_d']}/{TLS_CONF}"
    return (f"if [ -f {shlex.quote(live)}.previous ]; then mv -f {shlex.quote(live)}.previous {shlex.quote(live)}; "
            f"else rm -f {shlex.quote(live)}; fi")


def status(app_dir: str) -> str:
    live = shlex.quote(f"{dirs(app_dir)['config']}/live")
    return (f"for d in $(ls -1 {live} 2>/dev/null); do [ -f {live}/$d/cert.pem ] || continue; "
            f"printf 'cert=%s|%s|%s|%s\\n' \"$d\" "
            f"\"$(openssl x509 -noout -enddate -in {live}/$d/cert.pem | cut -d= -f2)\" "
            f"\"$(openssl x509 -noout -issuer -in {live}/$d/cert.pem | sed 's/^issuer=//')\" "
            f"\"$(openssl x509 -noout -ext subjectAltName -in {live}/$d/cert.pem 2>/dev/null | tail -n +2 | tr -d ' ')\"; done")


def explain_failure(output: str, domains: list[str]) -> str:
    """certbot's failure in one sentence with the likely fix."""
    text = output.lower()
    if any(sign in text for sign in ("dns problem", "nxdomain", "no valid ip addresses", "no such host", "could not resolve")):
        return (f"DNS for {', '.join(domains)} does not point at this server (the ACME server could not resolve it). "
                f"Create an A/AAAA record pointing here, wait for it to propagate, and try again.")
    if "connection refused" in text or "timeout" in text or "connection reset" in text:
        return ("the ACME server could not reach this server on port 80. Open port 80 in the firewall and make sure "
                "nginx answers on it (it must serve /.well-known/acme-challenge/).")
    if "ratelimit" in text.replace(" ", "") or "too many" in text:
        return "the ACME server's rate limit was hit. Wait (Let's Encrypt: up to a week), or test with --staging."
    if "unauthorized" in text or "404" in text:
        return ("the ACME server fetched the challenge but got the wrong answer: check that this domain's port 80 "
                "reaches this server's nginx.")
    last = [line for line in output.strip().splitlines() if line.strip()][-3:]
    return "certbot failed: " + " ".join(last)


def reported_problems(output: str) -> list[str]:
    """The CA's own words about each failed domain, from certbot's output."""
    return [line.strip() for line in output.splitlines() if line.strip().startswith(("Domain:", "Type:", "Detail:"))]


def parse_status(output: str) -> list[dict]:
    from datetime import datetime, timezone

    certs = []
    for line in output.splitlines():
        if not line.startswith("cert="):
            continue
        name, enddate, issuer, sans = (line[5:].split("|") + ["", "", ""])[:4]
        expires = datetime.strptime(re.sub(r"\s+", " ", enddate.strip()), "%b %d %H:%M:%S %Y %Z").replace(tzinfo=timezone.utc)
        days = (expires - datetime.now(timezone.utc)).days
        certs.append({"name": name, "expires": expires, "days_left": days, "issuer": issuer.strip(),
                      "domains": [s.split(":", 1)[1] for s in sans.split(",") if ":" in s]})
    return certs


def cron_line(app_dir_abs: str, project: str, at: str, ca_bundle: str | None) -> str:
    hour, minute = at.split(":")
    command = with_ca_bundle(sh(renew(app_dir_abs)), ca_bundle) + " && " + nginx_reload(project)
    log = shlex.quote(f"{app_dir_abs}/shared/letsencrypt/renew.log")
    return f"{int(minute)} {int(hour)} * * * ( {command} ) >> {log} 2>&1 # tasktracker-ssl:{project}"
