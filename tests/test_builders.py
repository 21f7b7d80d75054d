"""Host command builders as string tables (the modules tests/test_commands.py does not cover), and
the shell they build run with plain bash where that needs no Docker: the lock against a temporary
APP_DIR, releases and backup sets against temporary trees, the cron filter on a sample crontab,
TLS status against certificates made with openssl. Where a command calls docker or psql, a
stand-in on PATH answers (no daemon is touched)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from tasks.commands import audit, backup, images, lock, notify, release, rollout, sh, tls
from tasks.commands import schema as schema_commands
from tasks.commands.context import HostContext
from tests.support import RecordingServer

APP = HostContext("app", "tt")
V1 = HostContext("app", "tt", "v1")
SPACE = HostContext("/srv/my app", "tt")
ABS = HostContext("/home/deploy/tasktracker", "tasktracker")

D2 = "docker compose -p tt -f compose.yml -f docker-compose.production.yml -f release.yml"
D1 = "docker-compose --compatibility -p tt -f compose.yml -f docker-compose.production.yml -f release.yml"
PS = ("docker ps -q --filter label=com.docker.compose.project=tt --filter label=com.docker.compose.service={} "
      "--filter label=com.docker.compose.oneoff=False")
LE = "app/shared/letsencrypt"
CERTBOT = f"certbot --config-dir {LE} --work-dir {LE}/work --logs-dir {LE}/logs --non-interactive"
ABS_LE = "/home/deploy/tasktracker/shared/letsencrypt"
ABS_PS_NGINX = ("docker ps -q --filter label=com.docker.compose.project=tasktracker --filter label=com.docker.compose.service=nginx "
                "--filter label=com.docker.compose.oneoff=False")
HOLDER = ("cat app/.deploy.lock/info.json 2>/dev/null; echo; "
          "if [ -f app/.deploy.lock/keeper.pid ] && kill -0 \"$(cat app/.deploy.lock/keeper.pid)\" 2>/dev/null; then echo ALIVE; "
          "elif [ ! -f app/.deploy.lock/keeper.pid ] && [ -n \"$(find app/.deploy.lock -maxdepth 0 -newermt '-60 seconds' 2>/dev/null)\" ]; "
          "then echo STARTING; else echo STALE; fi")
TLS_CONF = "app/shared/nginx/conf.d/tasktracker-tls.conf"
ABS_NOTIFY = "/home/deploy/tasktracker/bin/tasktracker-notify"

CONTEXT = [
    ("releases_dir", APP.releases_dir, "app/releases"),
    ("release_dir", APP.release_dir("r1"), "app/releases/r1"),
    ("env_dir", APP.env_dir, "app/env"),
    ("release_env", APP.release_env("r1"), "app/env/r1.env"),
    ("release_meta", APP.release_meta("r1"), "app/releases/r1/RELEASE.json"),
    ("current_link", APP.current_link, "app/current"),
    ("shared_dir", APP.shared_dir, "app/shared"),
    ("conf_d", APP.conf_d, "app/shared/nginx/conf.d"),
    ("acme_webroot", APP.acme_webroot, "app/shared/acme"),
    ("letsencrypt_dir", APP.letsencrypt_dir, LE),
    ("mounted_dirs", " ".join(APP.mounted_dirs),
     f"app/shared/nginx/conf.d app/shared/acme {LE}/live {LE}/archive app/backups app/bin"),
    ("backups_dir", APP.backups_dir, "app/backups"),
    ("bin_dir", APP.bin_dir, "app/bin"),
    ("lock_dir", APP.lock_dir, "app/.deploy.lock"),
    ("audit_log", APP.audit_log, "app/audit.log"),
    ("absolute app dir", ABS.release_env("r1"), "/home/deploy/tasktracker/env/r1.env"),
    ("compose v2", sh(APP.compose("ps")), f"{D2} ps"),
    ("compose v1", sh(V1.compose("up", "-d")), f"{D1} up -d"),
    ("compose with_variant", sh(APP.with_variant("v1").compose("ps")), f"{D1} ps"),
    ("containers running", APP.containers("api"), PS.format("api")),
    ("containers all", APP.containers("worker", running_only=False),
     "docker ps -q -a --filter label=com.docker.compose.project=tt --filter label=com.docker.compose.service=worker "
     "--filter label=com.docker.compose.oneoff=False"),
    ("container", APP.container("postgres"), PS.format("postgres") + " | head -n 1"),
]

ROLLOUT = [
    ("worker_restart", sh(rollout.worker_restart(APP)), f"{D2} up -d --no-deps worker"),
    ("data_services_up v1", sh(rollout.data_services_up(V1)), f"{D1} up -d --no-deps --no-recreate postgres nats"),
    ("nginx_check", sh(rollout.nginx_check(APP, "r1")),
     f"{D2} run --rm --no-deps -T nginx nginx -t -q -c /srv/app/releases/r1/nginx/nginx.conf"),
    ("switch_current", rollout.switch_current(SPACE, "r1"),
     "ln -sfn releases/r1 '/srv/my app/current.tmp' && mv -T '/srv/my app/current.tmp' '/srv/my app/current'"),
    ("remove_current", sh(rollout.remove_current(SPACE)), "rm -f '/srv/my app/current'"),
    ("nginx_up_and_reload", rollout.nginx_up_and_reload(APP),
     f"{D2} up -d --no-deps --no-recreate nginx 2>&1 | grep -v -e '^ *Container .* Running$' -e 'is up-to-date' || true; "
     f"{D2} exec -T nginx kill -HUP 1"),
]

LOCK = [
    ("acquire", lock.acquire(APP, {"user": "alice", "token": "t1"}),
     "mkdir -p app && if mkdir app/.deploy.lock 2>/dev/null; then "
     "printf '%s\\n' '{\"token\": \"t1\", \"user\": \"alice\"}' > app/.deploy.lock/info.json && "
     "install -d -m 700 app/.deploy.lock/inbox && echo ACQUIRED; "
     f"else echo HELD; {HOLDER}; fi"),
    ("keeper", lock.keeper(APP, "t1"),
     "grep -qF '\"t1\"' app/.deploy.lock/info.json 2>/dev/null && echo $$ > app/.deploy.lock/keeper.pid && exec cat > /dev/null"),
    ("status", lock.status(APP), f"if [ -d app/.deploy.lock ]; then echo HELD; {HOLDER}; else echo FREE; fi"),
    ("release", lock.release(APP, "t1"),
     "if grep -qF '\"t1\"' app/.deploy.lock/info.json 2>/dev/null; then "
     "if mv app/.deploy.lock app/.deploy.lock.released.$$ 2>/dev/null; then "
     "if [ -f app/.deploy.lock.released.$$/keeper.pid ]; then kill \"$(cat app/.deploy.lock.released.$$/keeper.pid)\" "
     "2>/dev/null || true; fi; rm -rf app/.deploy.lock.released.$$; fi; echo RELEASED; else echo NOT-OURS; fi"),
    ("force_release quoted", lock.force_release(SPACE),
     "if mv '/srv/my app/.deploy.lock' '/srv/my app/.deploy.lock.released.'$$ 2>/dev/null; then "
     "if [ -f '/srv/my app/.deploy.lock.released.'$$/keeper.pid ]; then "
     "kill \"$(cat '/srv/my app/.deploy.lock.released.'$$/keeper.pid)\" 2>/dev/null || true; fi; "
     "rm -rf '/srv/my app/.deploy.lock.released.'$$; fi"),
    ("describe alive", lock.describe({"user": "bob", "machine": "ci", "action": "deploy", "since": "T", "commit": "c1"}, "ALIVE"),
     "deploy by bob@ci since T (commit c1)"),
    ("describe stale", lock.describe({"user": "bob"}, "STALE"), "? by bob@? since ? (commit ?) -- its holder is gone (stale lock)"),
]

TLS = [
    ("certbot_base", sh(tls.certbot_base(APP)), CERTBOT),
    ("certbot_present", sh(tls.certbot_present()), "sh -c 'command -v certbot'"),
    ("make_dirs", sh(tls.make_dirs(APP)),
     f"mkdir -p app/shared/nginx/conf.d app/shared/acme {LE}/live {LE}/archive app/backups app/bin {LE}/work {LE}/logs"),
    ("issue", sh(tls.issue(APP, ["a.example", "www.a.example"], "ops@a.example")),
     f"{CERTBOT} certonly --webroot -w app/shared/acme --cert-name a.example --agree-tos --email ops@a.example "
     "--keep-until-expiring --expand -d a.example -d www.a.example"),
    ("issue server wins over staging", sh(tls.issue(APP, ["a.example"], "o@a.example", server="https://pebble:14000/dir", staging=True)),
     f"{CERTBOT} certonly --webroot -w app/shared/acme --cert-name a.example --agree-tos --email o@a.example "
     "--keep-until-expiring --expand -d a.example --server https://pebble:14000/dir"),
    ("issue staging force", sh(tls.issue(APP, ["a.example"], "o@a.example", staging=True, force=True)),
     f"{CERTBOT} certonly --webroot -w app/shared/acme --cert-name a.example --agree-tos --email o@a.example "
     "--keep-until-expiring --expand -d a.example --staging --force-renewal"),
    ("renew", sh(tls.renew(APP)), f"{CERTBOT} renew"),
    ("renew force", sh(tls.renew(APP, force=True)), f"{CERTBOT} renew --force-renewal"),
    ("renew now", sh(tls.renew(APP, force=True, now=True)), f"{CERTBOT} renew --force-renewal --no-random-sleep-on-renew"),
    ("with_ca_bundle", tls.with_ca_bundle("certbot renew", "/etc/pebble ca.pem"), "REQUESTS_CA_BUNDLE='/etc/pebble ca.pem' certbot renew"),
    ("with_ca_bundle none", tls.with_ca_bundle("certbot renew", None), "certbot renew"),
    ("nginx_reload", tls.nginx_reload(APP), f"for c in $({PS.format('nginx')}); do docker exec $c kill -HUP 1; done; sleep 1.5"),
    ("tls_config_path", tls.tls_config_path(APP), TLS_CONF),
    ("install_tls_config", tls.install_tls_config(APP),
     f"mkdir -p app/shared/nginx/conf.d && if [ -f {TLS_CONF} ]; then cp -p {TLS_CONF} {TLS_CONF}.previous; fi && "
     f"mv -f {TLS_CONF}.new {TLS_CONF}"),
    ("restore_tls_config", tls.restore_tls_config(APP),
     f"if [ -f {TLS_CONF}.previous ]; then mv -f {TLS_CONF}.previous {TLS_CONF}; else rm -f {TLS_CONF}; fi"),
    ("status", tls.status(APP),
     f"for d in $(ls -1 {LE}/live 2>/dev/null); do [ -f {LE}/live/$d/cert.pem ] || continue; "
     f"printf 'cert=%s|%s|%s|%s\\n' \"$d\" \"$(openssl x509 -noout -enddate -in {LE}/live/$d/cert.pem | cut -d= -f2)\" "
     f"\"$(openssl x509 -noout -issuer -in {LE}/live/$d/cert.pem | sed 's/^issuer=//')\" "
     f"\"$(openssl x509 -noout -ext subjectAltName -in {LE}/live/$d/cert.pem 2>/dev/null | tail -n +2 | tr -d ' ')\"; done"),
    ("cron_line", tls.cron_line(ABS, "03:07", None),
     f"7 3 * * * ( certbot --config-dir {ABS_LE} --work-dir {ABS_LE}/work --logs-dir {ABS_LE}/logs --non-interactive renew && "
     f"{{ for c in $({ABS_PS_NGINX}); do docker exec $c kill -HUP 1; done; sleep 1.5; }} ) >> {ABS_LE}/renew.log 2>&1 "
     f"|| {ABS_NOTIFY} 'certificate renewal FAILED (exit '\"$?\"'); log: {ABS_LE}/renew.log' >> {ABS_LE}/renew.log 2>&1 "
     "# tasktracker-ssl:tasktracker"),
    ("cron_line ca bundle", tls.cron_line(ABS, "23:59", "/home/deploy/pebble.pem").split(" renew && ")[0],
     f"59 23 * * * ( REQUESTS_CA_BUNDLE=/home/deploy/pebble.pem certbot --config-dir {ABS_LE} --work-dir {ABS_LE}/work "
     f"--logs-dir {ABS_LE}/logs --non-interactive"),
    ("explain dns", tls.explain_failure("Detail: DNS problem: NXDOMAIN looking up A for a.example", ["a.example"]),
     "DNS for a.example does not point at this server (the ACME server could not resolve it). Create an A/AAAA record pointing "
     "here, wait for it to propagate, and try again."),
    ("explain port 80", tls.explain_failure("Detail: 203.0.113.5: Fetching http://a.example/...: Connection refused", ["a.example"]),
     "the ACME server could not reach this server on port 80. Open port 80 in the firewall and make sure nginx answers on it "
     "(it must serve /.well-known/acme-challenge/)."),
    ("explain certbot 9539", tls.explain_failure("An unexpected error occurred: AttributeError: can't set attribute",
                                                 ["a.example"])[:60],
     "certbot crashed on an error the ACME server sent (Debian 12'"),
    ("explain rate limit", tls.explain_failure("Error: too many certificates (5) already issued", ["a.example"]),
     "the ACME server's rate limit was hit. Wait (Let's Encrypt: up to a week), or test with --staging."),
    ("explain unauthorized", tls.explain_failure("Type: unauthorized\nDetail: Invalid response: 404", ["a.example"]),
     "the ACME server fetched the challenge but got the wrong answer: check that this domain's port 80 reaches this server's nginx."),
    ("explain other", tls.explain_failure("Saving debug log\n\nline a\nline b\nAn unexpected error occurred\n", ["a.example"]),
     "certbot failed: line a line b An unexpected error occurred"),
    ("reported_problems", " | ".join(tls.reported_problems("Certbot failed\n  Domain: a.example\n  Type:   dns\n  Detail: NXDOMAIN\nHint: x\n")),
     "Domain: a.example | Type:   dns | Detail: NXDOMAIN"),
]

BACKUP = [
    ("script_path", backup.script_path(APP), "app/bin/tasktracker-backup"),
    ("install_script", backup.install_script(APP),
     "mkdir -p app/bin app/backups && install -m 700 /dev/null app/bin/tasktracker-backup.new"),
    ("activate_script", sh(backup.activate_script(APP)), "mv -f app/bin/tasktracker-backup.new app/bin/tasktracker-backup"),
    ("run full", sh(backup.run(ABS, 7)), "/home/deploy/tasktracker/bin/tasktracker-backup /home/deploy/tasktracker tasktracker 7"),
    ("run db-only", sh(backup.run(SPACE, 3, db_only=True)), "'/srv/my app/bin/tasktracker-backup' '/srv/my app' tt 3 --db-only"),
    ("list_sets", backup.list_sets(APP),
     "for d in $(ls -1 app/backups 2>/dev/null | grep -E '^[0-9]{8}T' | sort); do "
     "printf '%s\\t%s\\t%s\\n' \"$d\" \"$(du -sb app/backups/$d | cut -f1)\" \"$(tr -d '\\n' < app/backups/$d/manifest.json 2>/dev/null)\"; done; "
     "echo '--log'; tail -n 20 app/backups/backup.log 2>/dev/null || true"),
    ("cron_marker", backup.cron_marker("backup", "tt-staging"), "# tasktracker-backup:tt-staging"),
    ("cron_line", backup.cron_line(ABS, 7, "02:00"),
     "0 2 * * * /home/deploy/tasktracker/bin/tasktracker-backup /home/deploy/tasktracker tasktracker 7 "
     ">> /home/deploy/tasktracker/backups/cron.log 2>&1 || /home/deploy/tasktracker/bin/tasktracker-notify "
     "'daily backup FAILED (exit '\"$?\"'); log: /home/deploy/tasktracker/backups/cron.log' "
     ">> /home/deploy/tasktracker/backups/cron.log 2>&1 # tasktracker-backup:tasktracker"),
    ("install_cron", backup.install_cron("0 2 * * * job # tasktracker-backup:tt", "# tasktracker-backup:tt"),
     "( crontab -l 2>/dev/null | awk -v m=' # tasktracker-backup:tt' 'length($0) < length(m) || substr($0, length($0) - length(m) + 1) != m' ; "
     "printf '%s\\n' '0 2 * * * job # tasktracker-backup:tt' ) | crontab - "
     "&& crontab -l | grep -F -- '# tasktracker-backup:tt' | grep -F -- '0 2 * * * job # tasktracker-backup:tt'"),
    ("verified", " ".join(backup.verified([{"name": "a", "verification": {"result": "ok"}}, {"name": "b"},
                                           {"name": "c", "verification": {"result": "failed"}}])), "a"),
]

AUDIT = [
    ("append", audit.append(APP, {"result": "ok", "action": "deploy", "detail": "it's $HOME"}),
     "mkdir -p app && printf '%s\\n' '{\"action\": \"deploy\", \"detail\": \"it'\"'\"'s $HOME\", \"result\": \"ok\"}' >> app/audit.log"),
    ("tail", audit.tail(APP, "20"), "tail -n 20 app/audit.log 2>/dev/null || true"),
]

RELEASE = [
    ("preflight", release.preflight(APP),
     # the Docker questions side by side, each into its own file, printed in order after `wait`
     "t=$(mktemp -d) || exit 1; { if command -v docker >/dev/null 2>&1; then "
     "echo \"docker=$(docker version --format '{{.Server.Version}}' 2>&1 | tr '\\n' ' ')\"; else echo 'docker=missing'; fi; } "
     "> \"$t/0\" 2>/dev/null & "
     "{ echo \"docker_id=$(docker info --format '{{.ID}}' 2>/dev/null)\"; } > \"$t/1\" 2>/dev/null & "
     "{ echo \"swarm=$(docker info --format '{{.Swarm.LocalNodeState}}/{{.Swarm.ControlAvailable}}' 2>/dev/null)\"; } "
     "> \"$t/2\" 2>/dev/null & "
     "{ v=$(docker compose version --short 2>/dev/null) && echo \"compose_v2=$v\"; } > \"$t/3\" 2>/dev/null & "
     "{ " + release.postgres_data_fact(APP) + "; } > \"$t/4\" 2>/dev/null & "  # the data's major (tests/test_db.py)
     "echo \"user=$(id -un)\"; echo \"home=$HOME\"; "
     "if command -v docker-compose >/dev/null 2>&1; then echo \"compose_v1=$(command -v docker-compose)\"; fi; "
     "echo \"rsync=$(command -v rsync || true)\"; echo \"mem_total_kb=$(awk '/^MemTotal:/ {print $2}' /proc/meminfo 2>/dev/null)\"; "
     "echo \"current=$(readlink app/current 2>/dev/null || true)\"; "
     "echo \"current_meta=$(cat app/current/RELEASE.json 2>/dev/null | tr -d '\\n' || true)\"; "
     "if [ -e app/.recovering ]; then s=$(head -n 1 app/.recovering); echo \"recovering=${s:-(unnamed)}\"; fi; "
     "wait; cat \"$t/0\" \"$t/1\" \"$t/2\" \"$t/3\" \"$t/4\"; rm -rf \"$t\""),
    ("prepare", release.prepare(APP, "r1", "services: {}\n"),
     f"mkdir -p app/releases/r1 app/shared/nginx/conf.d app/shared/acme {LE}/live {LE}/archive app/backups app/bin && "
     "install -d -m 700 app/env && install -m 600 /dev/null app/env/r1.env && ln -sfn ../../env/r1.env app/releases/r1/.env && "
     "printf %s 'services: {}\n' > app/releases/r1/release.yml"),
    ("read_meta", release.read_meta(APP, "r1"),
     "if [ -f app/releases/r1/RELEASE.json ]; then cat app/releases/r1/RELEASE.json; else echo MISSING; fi"),
    ("write_meta sorted and quoted", release.write_meta(APP, "r1", {"z": 1, "a": "it's"}),
     "printf '%s\\n' '{\"a\": \"it'\"'\"'s\", \"z\": 1}' > app/releases/r1/RELEASE.json"),
    ("list_releases", release.list_releases(APP),
     "for r in $(ls -1 app/releases 2>/dev/null | sort); do printf '%s\\t%s\\n' \"$r\" "
     "\"$(cat app/releases/$r/RELEASE.json 2>/dev/null | tr -d '\\n')\"; done; "
     "echo \"current=$(basename \"$(readlink app/current 2>/dev/null)\")\""),
    ("remove_releases", release.remove_releases(APP, ["r1", "r2"]),
     "rm -rf -- app/releases/r1 app/env/r1.env app/releases/r2 app/env/r2.env; echo 'pruned r1'; echo 'pruned r2'"),
    ("remove_releases none", release.remove_releases(APP, []), "true"),
    ("prune_images", release.prune_images(APP, "tt-backend"),
     "keep=$(cat app/releases/*/RELEASE.json 2>/dev/null | grep -o '\"backend_image\": \"[^\"]*\"' | cut -d'\"' -f4 | sort -u); "
     "for img in $(docker images --format '{{.Repository}}:{{.Tag}}' tt-backend); do printf '%s\\n' \"$keep\" | grep -qxF \"$img\" || "
     "{ docker rmi \"$img\" >/dev/null 2>&1 && echo \"removed image $img\"; }; done; true"),
    ("image_present_or_build", release.image_present_or_build("tt-backend:abc", f"{D2} build api"),
     f"if docker image inspect tt-backend:abc >/dev/null 2>&1; then echo 'image tt-backend:abc already built'; else {D2} build api; fi"),
]

NOTIFY_CONF = notify.conf_text(APP, telegram_api_base_url="https://api.telegram.org/", bot_token="123:tok'en", chat_id="-100123",
                                webhook_url="https://hooks.example.com/T0/B1?token=x&y=1")
SPACE_BIN = "'/srv/my app/bin'"
NOTIFY = [
    ("script_path", notify.script_path(APP), "app/bin/tasktracker-notify"),
    ("conf_path", notify.conf_path(SPACE), "/srv/my app/bin/notify.conf"),
    ("conf_text", NOTIFY_CONF,
     "# tasktracker-notify's channels: written by fab (deploy, backup.schedule, ssl.schedule); mode 0600, do not edit.\n"
     "PROJECT=tt\nTELEGRAM_URL='https://api.telegram.org/bot123:tok'\"'\"'en/sendMessage'\nTELEGRAM_CHAT_ID=-100123\n"
     "WEBHOOK_URL='https://hooks.example.com/T0/B1?token=x&y=1'\nTIMEOUT=10\n"),
    ("conf_text without a chat id: no Telegram",
     notify.conf_text(APP, telegram_api_base_url="https://api.telegram.org", bot_token="123:t", chat_id="", webhook_url="",
                      timeout=3).split("\n", 1)[1],
     "PROJECT=tt\nTELEGRAM_URL=''\nTELEGRAM_CHAT_ID=''\nWEBHOOK_URL=''\nTIMEOUT=3\n"),
    ("prepare_install", notify.prepare_install(SPACE),
     f"mkdir -p {SPACE_BIN} && {{ [ -f '/srv/my app/bin/tasktracker-notify' ] || install -m 700 /dev/null "
     f"'/srv/my app/bin/tasktracker-notify'; }} && {{ [ -f '/srv/my app/bin/notify.conf' ] || install -m 600 /dev/null "
     f"'/srv/my app/bin/notify.conf'; }} && chmod 700 '/srv/my app/bin/tasktracker-notify' && chmod 600 '/srv/my app/bin/notify.conf' "
     f"&& sha256sum '/srv/my app/bin/tasktracker-notify' '/srv/my app/bin/notify.conf'"),
    ("parse_installed", notify.parse_installed(f"{'a' * 64}  /srv/my app/bin/notify.conf\nnoise\n{'b' * 63}  x\n"),
     {"/srv/my app/bin/notify.conf": "a" * 64}),
    ("digest", notify.digest("x\n"), "73cb3858a687a8494ca3323053016282f3dad39d42cf62ca4e79dda2aac7d9ac"),
    ("send", notify.send(SPACE, "deploy ok: it's $HOME"),
     "if [ -x '/srv/my app/bin/tasktracker-notify' ]; then '/srv/my app/bin/tasktracker-notify' 'deploy ok: it'\"'\"'s $HOME'; fi"),
    ("on_failure", notify.on_failure(ABS, "nightly job", "( job )", "/home/deploy/tasktracker/job.log"),
     f"( job ) >> /home/deploy/tasktracker/job.log 2>&1 || {ABS_NOTIFY} 'nightly job FAILED (exit '\"$?\"'); "
     "log: /home/deploy/tasktracker/job.log' >> /home/deploy/tasktracker/job.log 2>&1"),
    ("operation ok", notify.operation_message("deploy", "ok", release="r3", commit="ab12cd3", who="alice@laptop", seconds=41.6),
     "deploy ok: release r3, commit ab12cd3, by alice@laptop, 42s"),
    ("operation unchanged", notify.operation_message("deploy", "unchanged", release="r2", commit="", who="ci@runner", seconds=2),
     "deploy unchanged: release r2, commit ?, by ci@runner, 2s"),
    ("operation failed and put back",
     notify.operation_message("deploy", "failed", release="r3", commit="ab12cd3", who="bob@ci (CI o/r#7)", seconds=30.2,
                              step="health checks", put_back="r2"),
     "deploy FAILED at 'health checks'; r2 was put back and is serving: release r3, commit ab12cd3, by bob@ci (CI o/r#7), 30s"),
    ("operation refused", notify.operation_message("rollback", "failed", release="r1", commit="77aa001", who="a@b", seconds=1,
                                                   reason="refused to protect data"),
     "rollback FAILED (refused to protect data): release r1, commit 77aa001, by a@b, 1s"),
]

TABLE = [(f"context: {i}", b, e) for i, b, e in CONTEXT] + [(f"rollout: {i}", b, e) for i, b, e in ROLLOUT] \
    + [(f"lock: {i}", b, e) for i, b, e in LOCK] + [(f"tls: {i}", b, e) for i, b, e in TLS] \
    + [(f"backup: {i}", b, e) for i, b, e in BACKUP] + [(f"audit: {i}", b, e) for i, b, e in AUDIT] \
    + [(f"release: {i}", b, e) for i, b, e in RELEASE] + [(f"notify: {i}", b, e) for i, b, e in NOTIFY]


@pytest.mark.parametrize("built, expected", [(b, e) for _, b, e in TABLE], ids=[i for i, _, _ in TABLE])
def test_builders(built, expected):
    assert built == expected


@pytest.mark.parametrize("service", ["api", "worker", "postgres", "nats", "nginx"])
@pytest.mark.parametrize("running_only", [True, False])
def test_containers_never_match_one_off_run_containers(service, running_only):
    command = APP.containers(service, running_only=running_only)
    assert command.endswith("--filter label=com.docker.compose.oneoff=False")
    assert f"--filter label=com.docker.compose.service={service} " in command
    assert APP.container(service) == APP.containers(service) + " | head -n 1"


def test_context_is_a_value():
    assert APP.with_variant("v1") == V1 and APP.variant == "v2"
    assert HostContext("app", "tt") == APP and hash(HostContext("app", "tt")) == hash(APP)


# --- the shell, run ------------------------------------------------------------------------------

FAKE_DOCKER = r'''#!/bin/bash
# Stand-in for the docker CLI: no daemon is touched.
echo "docker $*" >> "${FAKE_DOCKER_LOG:-/dev/null}"
case "$1" in
  ps) case "$*" in *service=postgres*) [ -n "${FAKE_PG:-}" ] && echo "$FAKE_PG" ;; esac; exit 0 ;;
  exec) shift; while [ "${1#-}" != "$1" ]; do shift; done; shift
        exec env POSTGRES_USER=postgres POSTGRES_DB=tasktracker "$@" ;;
  images) printf '%s\n' ${FAKE_IMAGES:-} ;;
  rmi) exit 0 ;;
  *) echo "fake docker: unexpected: $*" >&2; exit 99 ;;
esac
'''
FAKE_PG_ISREADY = '#!/bin/sh\nexit "${FAKE_PG_ISREADY_EXIT:-0}"\n'
FAKE_PSQL = r'''#!/bin/bash
# Stand-in for psql in the postgres container: answers schema_state's queries.
sql=""
while [ $# -gt 0 ]; do if [ "$1" = -c ]; then sql=$2; shift; fi; shift; done
case "$sql" in
  *"IS NOT NULL"*)
    if [ -n "${FAKE_PSQL_FIRST_ERROR:-}${FAKE_PSQL_ERROR:-}" ]; then echo "${FAKE_PSQL_FIRST_ERROR:-$FAKE_PSQL_ERROR}" >&2; exit 2; fi
    echo "${FAKE_HAS_VERSION_TABLE:-t}" ;;
  *) if [ -n "${FAKE_PSQL_ERROR:-}" ]; then echo "$FAKE_PSQL_ERROR" >&2; exit 2; fi
     case "$sql" in
       *"<none>"*) printf 'revision=<none>\nschema=%s\n' "${FAKE_SCHEMA:-d41d8cd98f00b204e9800998ecf8427e}" ;;
       *) printf 'revision=%s\nschema=%s\n' "${FAKE_REVISION:-}" "${FAKE_SCHEMA:-d41d8cd98f00b204e9800998ecf8427e}" ;;
     esac ;;
esac
'''


def bash(command: str, cwd: Path, env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(["/bin/bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=60, **kwargs)


@pytest.fixture
def fake_env(tmp_path):
    """PATH with stand-ins for docker, pg_isready and psql first (and without /usr/local/bin, where a
    real docker may live)."""
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir()
    for name, text in (("docker", FAKE_DOCKER), ("pg_isready", FAKE_PG_ISREADY), ("psql", FAKE_PSQL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path), "LANG": "C", "FAKE_DOCKER_LOG": str(tmp_path / "docker.log")}


def wait_for_file(path: Path, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


INFO = {"action": "deploy", "commit": "ab12cd3", "host": "vps", "machine": "laptop", "since": "2026-11-25T21:40:00+00:00",
        "token": "9f86d081884c7d65", "user": "alice"}


def test_lock_owner_token_cycle(tmp_path):
    ctx = HostContext("app", "tt")
    lock_dir = tmp_path / "app/.deploy.lock"
    assert bash(lock.status(ctx), tmp_path).stdout == "FREE\n"
    assert bash(lock.acquire(ctx, INFO), tmp_path).stdout == "ACQUIRED\n"
    assert json.loads((lock_dir / "info.json").read_text()) == INFO
    other = {**INFO, "token": "0123456789abcdef", "user": "bob"}
    assert lock.parse_report(bash(lock.acquire(ctx, other), tmp_path).stdout) == ("HELD", INFO, "STARTING")

    keeper = subprocess.Popen(["/bin/bash", "-c", lock.keeper(ctx, INFO["token"])], cwd=tmp_path, stdin=subprocess.PIPE)
    try:
        wait_for_file(lock_dir / "keeper.pid")
        time.sleep(0.1)  # the pid file is written just before `exec cat`
        assert int((lock_dir / "keeper.pid").read_text()) == keeper.pid
        assert lock.parse_report(bash(lock.status(ctx), tmp_path).stdout) == ("HELD", INFO, "ALIVE")
        assert lock.parse_report(bash(lock.acquire(ctx, other), tmp_path).stdout) == ("HELD", INFO, "ALIVE")

        # a holder whose lock was taken over cannot remove it
        assert bash(lock.release(ctx, other["token"]), tmp_path).stdout == "NOT-OURS\n"
        assert lock_dir.is_dir() and keeper.poll() is None

        assert bash(lock.release(ctx, INFO["token"]), tmp_path).stdout == "RELEASED\n"
        assert keeper.wait(timeout=5) != 0  # the keeper was killed
        assert not lock_dir.exists()
        assert bash(lock.status(ctx), tmp_path).stdout == "FREE\n"
    finally:
        if keeper.poll() is None:
            keeper.kill()
            keeper.wait()


def test_the_lock_is_gone_before_its_keeper_is_stopped(tmp_path):
    """A run waiting for the lock must never see it held by a dead keeper (read as stale, which
    fails closed): `release` renames the lock away first, then stops the keeper. Here `kill` (the
    builtin disabled) notes whether the lock was still there when it ran."""
    ctx = HostContext("app", "tt")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "kill").write_text('#!/bin/sh\n[ -d app/.deploy.lock ] && echo "lock present at kill" >> kill.log\n'
                                  'echo killed >> kill.log\nexec /bin/kill "$@"\n')
    (bin_dir / "kill").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    for remove in (lock.release(ctx, INFO["token"]), lock.force_release(ctx)):
        assert bash(lock.acquire(ctx, INFO), tmp_path).stdout == "ACQUIRED\n"
        keeper = subprocess.Popen(["/bin/bash", "-c", lock.keeper(ctx, INFO["token"])], cwd=tmp_path, stdin=subprocess.PIPE)
        try:
            wait_for_file(tmp_path / "app/.deploy.lock/keeper.pid")
            time.sleep(0.1)
            (tmp_path / "kill.log").unlink(missing_ok=True)
            assert bash(f"enable -n kill; {remove}", tmp_path, env=env).returncode == 0
            assert keeper.wait(timeout=5) != 0
            assert (tmp_path / "kill.log").read_text() == "killed\n"
            assert sorted(p.name for p in (tmp_path / "app").iterdir()) == []  # nothing left behind
        finally:
            if keeper.poll() is None:
                keeper.kill()
                keeper.wait()


def test_lock_is_stale_when_its_keeper_died_or_never_started(tmp_path):
    ctx = HostContext("app", "tt")
    lock_dir = tmp_path / "app/.deploy.lock"
    assert bash(lock.acquire(ctx, INFO), tmp_path).stdout == "ACQUIRED\n"
    dead = subprocess.Popen(["true"])
    dead.wait()
    (lock_dir / "keeper.pid").write_text(f"{dead.pid}\n")
    assert lock.parse_report(bash(lock.status(ctx), tmp_path).stdout) == ("HELD", INFO, "STALE")

    (lock_dir / "keeper.pid").unlink()
    assert lock.parse_report(bash(lock.status(ctx), tmp_path).stdout)[2] == "STARTING"
    ten_minutes_ago = time.time() - 600
    os.utime(lock_dir, (ten_minutes_ago, ten_minutes_ago))
    assert lock.parse_report(bash(lock.status(ctx), tmp_path).stdout)[2] == "STALE"

    (lock_dir / "info.json").unlink()  # a lock directory without its info (a run killed between the two)
    os.utime(lock_dir, (ten_minutes_ago, ten_minutes_ago))
    assert lock.parse_report(bash(lock.status(ctx), tmp_path).stdout) == ("HELD", {}, "STALE")


def test_keeper_with_a_foreign_token_does_not_start(tmp_path):
    ctx = HostContext("app", "tt")
    bash(lock.acquire(ctx, INFO), tmp_path)
    result = bash(lock.keeper(ctx, "0123456789abcdef"), tmp_path, input="")
    assert result.returncode == 1
    assert not (tmp_path / "app/.deploy.lock/keeper.pid").exists()


def test_force_release_kills_the_keeper_and_removes_the_lock(tmp_path):
    ctx = HostContext("app", "tt")
    bash(lock.acquire(ctx, INFO), tmp_path)
    keeper = subprocess.Popen(["/bin/bash", "-c", lock.keeper(ctx, INFO["token"])], cwd=tmp_path, stdin=subprocess.PIPE)
    try:
        wait_for_file(tmp_path / "app/.deploy.lock/keeper.pid")
        time.sleep(0.1)
        assert bash(lock.force_release(ctx), tmp_path).returncode == 0
        assert keeper.wait(timeout=5) != 0
        assert not (tmp_path / "app/.deploy.lock").exists()
        # the old holder's own release now finds nothing of its own
        assert bash(lock.release(ctx, INFO["token"]), tmp_path).stdout == "NOT-OURS\n"
    finally:
        if keeper.poll() is None:
            keeper.kill()
            keeper.wait()


def _release_tree(root: Path, releases: dict[str, dict | None], current: str | None) -> None:
    for name, meta in releases.items():
        d = root / "app/releases" / name
        d.mkdir(parents=True)
        if meta is not None:
            (d / "RELEASE.json").write_text(json.dumps(meta, indent=2) + "\n")
    if current:
        (root / "app/current").symlink_to(f"releases/{current}")


def test_list_releases_against_a_release_tree(tmp_path):
    ctx = HostContext("app", "tt")
    assert release.parse_releases(bash(release.list_releases(ctx), tmp_path).stdout) == ([], "")
    metas = {"20261120T090000Z-a": {"result": "ok", "previous": ""},
             "20261124T101500Z-b": {"result": "ok", "previous": "20261120T090000Z-a"},
             "20261125T080000Z-c": None}
    _release_tree(tmp_path, metas, "20261124T101500Z-b")
    rows, current = release.parse_releases(bash(release.list_releases(ctx), tmp_path).stdout)
    assert rows == [("20261120T090000Z-a", metas["20261120T090000Z-a"]), ("20261124T101500Z-b", metas["20261124T101500Z-b"]),
                    ("20261125T080000Z-c", {})]
    assert current == "20261124T101500Z-b"


def test_prepare_makes_private_settings_and_the_shared_dirs(tmp_path):
    ctx = HostContext("app", "tt")
    result = bash(release.prepare(ctx, "r1", "services:\n  api:\n    image: tt-backend:abc\n"), tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "app/env").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "app/env/r1.env").stat().st_mode & 0o777 == 0o600
    assert os.readlink(tmp_path / "app/releases/r1/.env") == "../../env/r1.env"
    assert (tmp_path / "app/releases/r1/.env").resolve() == (tmp_path / "app/env/r1.env").resolve()
    assert (tmp_path / "app/releases/r1/release.yml").read_text() == "services:\n  api:\n    image: tt-backend:abc\n"
    assert all((tmp_path / d).is_dir() for d in ctx.mounted_dirs)
    # a second release leaves the first one's settings alone
    (tmp_path / "app/env/r1.env").write_text("POSTGRES_PASSWORD=one\n")
    assert bash(release.prepare(ctx, "r2", ""), tmp_path).returncode == 0
    assert (tmp_path / "app/env/r1.env").read_text() == "POSTGRES_PASSWORD=one\n"


def test_write_meta_then_read_meta(tmp_path):
    ctx = HostContext("app", "tt")
    (tmp_path / "app/releases/r1").mkdir(parents=True)
    assert bash(release.read_meta(ctx, "r1"), tmp_path).stdout == "MISSING\n"
    meta = {"release": "r1", "failure": "exit 1: can't \"connect\" $HOME `x`", "assets": ["/assets/a.js"]}
    assert bash(release.write_meta(ctx, "r1", meta), tmp_path).returncode == 0
    assert json.loads(bash(release.read_meta(ctx, "r1"), tmp_path).stdout) == meta


def test_remove_releases_removes_them_and_their_settings(tmp_path):
    ctx = HostContext("app", "tt")
    _release_tree(tmp_path, {"r1": {}, "r2": {}, "r3": {}}, "r3")
    (tmp_path / "app/env").mkdir()
    for r in ("r1", "r2", "r3"):
        (tmp_path / f"app/env/{r}.env").write_text("X=1\n")
    result = bash(release.remove_releases(ctx, ["r1", "r2"]), tmp_path)
    assert result.stdout == "pruned r1\npruned r2\n"
    assert sorted(p.name for p in (tmp_path / "app/releases").iterdir()) == ["r3"]
    assert sorted(p.name for p in (tmp_path / "app/env").iterdir()) == ["r3.env"]
    assert bash(release.remove_releases(ctx, []), tmp_path).returncode == 0


def test_in_current_exits_3_without_a_release_and_runs_in_the_resolved_one(tmp_path):
    ctx = HostContext("app", "tt")
    result = bash(release.in_current(ctx, "pwd"), tmp_path)
    assert (result.returncode, result.stderr) == (release.NO_RELEASE_EXIT, "no release deployed yet\n")
    _release_tree(tmp_path, {"r1": {}}, "r1")
    result = bash(release.in_current(ctx, "pwd"), tmp_path)
    assert result.stdout.strip() == str((tmp_path / "app/releases/r1").resolve())


def test_prune_images_keeps_the_images_kept_releases_name(tmp_path, fake_env):
    ctx = HostContext("app", "tt")
    _release_tree(tmp_path, {"r1": {"backend_image": "tt-backend:aaa"}, "r2": {"backend_image": "tt-backend:bbb"}}, "r2")
    for r, image in (("r1", "tt-backend:aaa"), ("r2", "tt-backend:bbb")):  # as write_meta writes them: one line
        (tmp_path / f"app/releases/{r}/RELEASE.json").write_text(json.dumps({"backend_image": image, "result": "ok"}) + "\n")
    env = {**fake_env, "FAKE_IMAGES": "tt-backend:aaa tt-backend:bbb tt-backend:ccc tt-backend:ddd"}
    result = bash(release.prune_images(ctx, "tt-backend"), tmp_path, env)
    assert result.stdout == "removed image tt-backend:ccc\nremoved image tt-backend:ddd\n"
    assert "docker rmi tt-backend:aaa" not in Path(fake_env["FAKE_DOCKER_LOG"]).read_text()


MIGRATIONS = {"0001_create_tasks.py": 'revision = "0001"\ndown_revision = None\n',
              "0002_add_due_date.py": 'revision = "0002"\ndown_revision = "0001"\n'}


def _schema(tmp_path: Path, env: dict, migrations: dict[str, str] = MIGRATIONS, wait: int = 1) -> schema_commands.SchemaState:
    versions = tmp_path / "app/releases/r2/backend/alembic/versions"
    versions.mkdir(parents=True, exist_ok=True)
    for name, text in migrations.items():
        (versions / name).write_text(text)
    result = bash(schema_commands.schema_state(HostContext("app", "tt"), "r2", wait), tmp_path, env)
    assert result.returncode == 0, result.stderr
    return schema_commands.parse_schema(result.stdout)


PG = {"FAKE_PG": "4f1c2a9e7b3d", "FAKE_SCHEMA": "6c1e0b2f3a4d5e6f708192a3b4c5d6e7"}


@pytest.mark.parametrize("extra, readable, revision, pending, unknown", [
    pytest.param({**PG, "FAKE_REVISION": "0002"}, True, "0002", False, False, id="at head"),
    pytest.param({**PG, "FAKE_REVISION": "0001"}, True, "0001", True, False, id="migration pending"),
    pytest.param({**PG, "FAKE_REVISION": "0003"}, True, "0003", True, True, id="a later release's revision"),
    pytest.param({**PG, "FAKE_HAS_VERSION_TABLE": "f"}, True, "<none>", False, False, id="fresh database"),
    pytest.param({}, False, "", False, False, id="no postgres container"),
    pytest.param({**PG, "FAKE_PG_ISREADY_EXIT": "2"}, False, "", False, False, id="postgres never ready"),
    pytest.param({**PG, "FAKE_PSQL_ERROR": "FATAL:  role \"postgres\" does not exist"}, False, "", False, False, id="psql fails"),
])
def test_schema_state_run(tmp_path, fake_env, extra, readable, revision, pending, unknown):
    state = _schema(tmp_path, {**fake_env, **extra})
    assert (state.readable, state.revision, state.migrations_pending, state.unknown_to_release) == (readable, revision, pending, unknown)
    assert state.known == ("0001", "0002") and state.heads == ("0002",)
    assert bool(state.error) == (not readable)


def test_schema_state_knows_migrations_made_from_the_projects_template(tmp_path, fake_env):
    pytest.importorskip("alembic")
    from alembic import command
    from alembic.config import Config

    root = Path(__file__).resolve().parent.parent
    shutil.copytree(root / "backend/alembic", tmp_path / "alembic", ignore=shutil.ignore_patterns("__pycache__"))
    config = Config()
    config.set_main_option("script_location", str(tmp_path / "alembic"))
    command.revision(config, "add due date", rev_id="a1b2c3d4e5f6")
    migrations = {p.name: p.read_text() for p in (tmp_path / "alembic/versions").glob("*.py")}
    state = _schema(tmp_path, {**fake_env, **PG, "FAKE_REVISION": "a1b2c3d4e5f6"}, migrations)
    assert set(state.known) == set(schema_commands.local_revisions(root / "backend/alembic/versions")) | {"a1b2c3d4e5f6"}
    assert not state.unknown_to_release and not state.migrations_pending


def test_schema_state_fails_closed_when_the_version_check_fails(tmp_path, fake_env):
    env = {**fake_env, **PG, "FAKE_REVISION": "0003", "FAKE_PSQL_FIRST_ERROR": "FATAL:  sorry, too many clients already"}
    state = _schema(tmp_path, env)
    assert not state.readable


def test_schema_state_script_parses():
    for wait in (1, 60):
        assert bash("bash -n", Path("/"), input=schema_commands.schema_state(APP, "r1", wait)).returncode == 0
    script = schema_commands.schema_state(APP, "r1", 5)
    assert f"pg=$({PS.format('postgres')} | head -n 1)" in script
    assert "for _ in $(seq 1 10); do" in script
    assert "app/releases/r1/backend/alembic/versions/*.py" in script


# --- cron ----------------------------------------------------------------------------------------

CRONTAB = """MAILTO=ops@example.com
0 2 * * * /old/bin/tasktracker-backup /old tasktracker 7 >> /old/cron.log 2>&1 # tasktracker-backup:tasktracker
30 2 * * * /home/d/staging/bin/tasktracker-backup /home/d/staging tasktracker-staging 7 >> /x 2>&1 # tasktracker-backup:tasktracker-staging
15 4 * * * ( certbot renew ) >> /y 2>&1 # tasktracker-ssl:tasktracker
# a note about # tasktracker-backup:tasktracker jobs
"""
CRONTAB_FUNCTION = ('crontab() { if [ "$1" = -l ]; then [ -f "$CRONTAB_FILE" ] || { echo "no crontab for $USER" >&2; return 1; }; '
                    'cat "$CRONTAB_FILE"; elif [ "$1" = - ]; then cat > "$CRONTAB_FILE.new" && mv "$CRONTAB_FILE.new" "$CRONTAB_FILE"; '
                    'else return 2; fi; }\n')


def _install(tmp_path: Path, line: str, marker: str) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "CRONTAB_FILE": str(tmp_path / "crontab"), "USER": "deploy"}
    return bash(CRONTAB_FUNCTION + backup.install_cron(line, marker), tmp_path, env)


def test_install_cron_replaces_its_own_line_only(tmp_path):
    (tmp_path / "crontab").write_text(CRONTAB)
    line = backup.cron_line(ABS, 7, "03:30")
    result = _install(tmp_path, line, backup.cron_marker("backup", "tasktracker"))
    assert result.returncode == 0, result.stderr
    assert result.stdout == line + "\n"
    lines = (tmp_path / "crontab").read_text().splitlines()
    old, staging, ssl, note = CRONTAB.splitlines()[1:]
    assert old not in lines
    assert staging in lines and ssl in lines and note in lines and "MAILTO=ops@example.com" in lines
    assert lines[-1] == line
    # idempotent: a second install leaves one line
    assert _install(tmp_path, line, backup.cron_marker("backup", "tasktracker")).returncode == 0
    assert (tmp_path / "crontab").read_text().count("# tasktracker-backup:tasktracker\n") == 1


def test_install_cron_for_staging_leaves_the_other_projects_line(tmp_path):
    (tmp_path / "crontab").write_text(CRONTAB)
    staging_ctx = HostContext("/home/d/staging", "tasktracker-staging")
    line = backup.cron_line(staging_ctx, 7, "02:45")
    assert _install(tmp_path, line, backup.cron_marker("backup", "tasktracker-staging")).returncode == 0
    lines = (tmp_path / "crontab").read_text().splitlines()
    assert CRONTAB.splitlines()[1] in lines  # tasktracker's own job stays
    assert CRONTAB.splitlines()[2] not in lines and lines[-1] == line


def test_install_cron_on_an_empty_crontab(tmp_path):
    line = tls.cron_line(ABS, "03:07", None)
    result = _install(tmp_path, line, backup.cron_marker("ssl", "tasktracker"))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "crontab").read_text() == line + "\n"


def test_the_cron_filter_alone():
    marker = backup.cron_marker("backup", "tasktracker")
    awk = backup.install_cron("x", marker).split("crontab -l 2>/dev/null | ", 1)[1].split(" ; printf", 1)[0]
    assert awk.startswith("awk ")
    result = bash(awk, Path("/"), {"PATH": "/usr/bin:/bin"}, input=CRONTAB)
    assert result.stdout.splitlines() == [line for i, line in enumerate(CRONTAB.splitlines()) if i != 1]


# --- tls -----------------------------------------------------------------------------------------

def _cert(live: Path, name: str, days: int, subject: str, san: str | None) -> None:
    (live / name).mkdir(parents=True)
    argv = ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", str(live / name / "privkey.pem"), "-out", str(live / name / "cert.pem"), "-days", str(days), "-subj", subject]
    subprocess.run(argv + (["-addext", f"subjectAltName={san}"] if san else []), check=True, capture_output=True)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")
def test_tls_status_against_real_certificates(tmp_path):
    ctx = HostContext("app", "tt")
    assert bash(tls.status(ctx), tmp_path).stdout == ""
    now = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(seconds=1)
    live = tmp_path / ctx.letsencrypt_dir / "live"
    _cert(live, "tasks.example.com", 89, "/CN=tasks.example.com", "DNS:tasks.example.com,DNS:www.tasks.example.com")
    _cert(live, "old.example.com", 5, "/O=Test CA, Inc./CN=old.example.com", None)
    (live / "README").write_text("certbot's README\n")
    result = bash(tls.status(ctx), tmp_path)
    assert result.returncode == 0, result.stderr
    certs = tls.parse_status(result.stdout, now=now)
    assert [(c["name"], c["days_left"], c["domains"], c["issuer"]) for c in certs] == [
        ("old.example.com", 5, [], 'O = "Test CA, Inc.", CN = old.example.com'),
        ("tasks.example.com", 89, ["tasks.example.com", "www.tasks.example.com"], "CN = tasks.example.com"),
    ]


def test_tls_config_install_and_restore(tmp_path):
    ctx = HostContext("app", "tt")
    conf = tmp_path / tls.tls_config_path(ctx)
    # first install: nothing to keep; restoring removes it
    conf.parent.mkdir(parents=True)
    Path(f"{conf}.new").write_text("first\n")
    assert bash(tls.install_tls_config(ctx), tmp_path).returncode == 0
    assert conf.read_text() == "first\n" and not Path(f"{conf}.previous").exists()
    assert bash(tls.restore_tls_config(ctx), tmp_path).returncode == 0
    assert not conf.exists()
    # a later install keeps the previous config to restore
    conf.write_text("old\n")
    Path(f"{conf}.new").write_text("new\n")
    assert bash(tls.install_tls_config(ctx), tmp_path).returncode == 0
    assert (conf.read_text(), Path(f"{conf}.previous").read_text()) == ("new\n", "old\n")
    assert bash(tls.restore_tls_config(ctx), tmp_path).returncode == 0
    assert conf.read_text() == "old\n" and not Path(f"{conf}.previous").exists()


@pytest.mark.parametrize("port, redirect", [(443, "return 301 https://$host$request_uri;"),
                                            (8443, "return 301 https://$host:8443$request_uri;")])
def test_tls_server_config(port, redirect):
    text = tls.tls_server_config(["a.example", "www.a.example"], port)
    assert redirect in text
    assert text.count("server_name a.example www.a.example;") == 2
    assert "ssl_certificate /srv/app/shared/letsencrypt/live/a.example/fullchain.pem;" in text
    assert "ssl_certificate_key /srv/app/shared/letsencrypt/live/a.example/privkey.pem;" in text
    assert f"ssl_ciphers {tls.CIPHERS};" in text and "ssl_protocols TLSv1.2 TLSv1.3;" in text
    assert "include /srv/app/current/nginx/app-locations.conf;" in text


# --- backup --------------------------------------------------------------------------------------

def test_list_sets_against_a_backups_dir(tmp_path):
    ctx = HostContext("app", "tt")
    assert backup.parse_sets(bash(backup.list_sets(ctx), tmp_path).stdout) == ([], [])
    root = tmp_path / "app/backups"
    manifest = {"set": "20261124T020000Z", "verification": {"result": "ok", "tables": 2, "rows": 5, "seconds": 0.4}}
    (root / "20261124T020000Z").mkdir(parents=True)
    (root / "20261124T020000Z/manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    (root / "20261124T020000Z/database.dump").write_bytes(b"x" * 5000)
    (root / "20261125T020000Z-predeploy").mkdir()
    (root / ".20261125T030000Z.partial").mkdir()
    (root / "notes.txt").write_text("not a set\n")
    (root / "backup.log").write_text("".join(f'{{"set": "{i}"}}\n' for i in range(27)))
    sets, log = backup.parse_sets(bash(backup.list_sets(ctx), tmp_path).stdout)
    assert [s["name"] for s in sets] == ["20261124T020000Z", "20261125T020000Z-predeploy"]
    assert sets[0]["verification"] == manifest["verification"] and sets[0]["bytes"] >= 5000
    assert "verification" not in sets[1]
    assert backup.verified(sets) == ["20261124T020000Z"]
    assert log == [f'{{"set": "{i}"}}' for i in range(7, 27)]  # the newest 20


def test_backup_script_and_restore_parse():
    assert bash("bash -n", Path("/"), input=backup.BACKUP_SCRIPT).returncode == 0
    script = backup.restore(APP, "20261124T020000Z", "cd \"$HOME\" && docker compose start nats api worker")
    assert bash("bash -n", Path("/"), input=script).returncode == 0
    assert "(cd app/backups/20261124T020000Z && sha256sum --quiet -c SHA256SUMS)" in script
    assert f"for c in $({PS.format('api')}) $({PS.format('worker')}); do docker stop -t 30 $c >/dev/null; done" in script
    assert "< app/backups/20261124T020000Z/database.dump" in script
    assert 'start_services() { cd "$HOME" && docker compose start nats api worker; }' in script


def test_api_rollout_script():
    script = rollout.api_rollout(APP, timeout=30)
    assert bash("bash -n", Path("/"), input=script).returncode == 0
    lines = script.splitlines()
    assert lines[0] == "set -e"
    assert lines[1] == f"old=$({PS.format('api')} | sort)"
    assert f'{D2} up -d --no-deps --no-recreate --scale "api=$((count + 1))" api >/dev/null 2>&1 || ' \
           f'{D2} up -d --no-deps --no-recreate --scale "api=$((count + 1))" api' in lines
    assert "for _ in $(seq 1 120); do" in lines  # 30 s at a quarter of a second
    assert "  state=$(docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' $new)" in lines
    assert f"sleep {rollout.RESOLVER_GRACE_SECONDS}" in lines
    # nginx moves to the new API before the old one stops; the pin goes once the old one is gone.
    order = ["docker kill --signal HUP", f"sleep {rollout.RESOLVER_GRACE_SECONDS}",
             "docker stop -t 30", "\nunpin\ntrap - EXIT\n", "healthy; replaced"]
    assert [script.index(part) for part in order] == sorted(script.index(part) for part in order)


@pytest.mark.parametrize("nginx_running, then", [(True, "ok"), (True, "fails"), (False, "ok")])
def test_pin_new_api_names_the_new_container_and_reloads_nginx(tmp_path, nginx_running, then):
    """The pin, run with a stand-in `docker`: it names the new container (`docker inspect` prints
    `/name`) in conf.d and sends nginx a HUP; should the rollout then fail, its EXIT trap removes
    the pin and reloads nginx again; with no nginx running it does nothing."""
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "docker").write_text(
        "#!/bin/sh\necho \"$*\" >>\"$CALLS\"\n"
        f"case \"$1\" in ps) {'echo ngx1' if nginx_running else 'true'} ;; inspect) echo /tt-api-2 ;; esac\n")
    (tmp_path / "bin" / "docker").chmod(0o755)
    (tmp_path / "app/shared/nginx/conf.d").mkdir(parents=True)
    pin = tmp_path / "app/shared/nginx/conf.d" / rollout.API_PIN
    after = "cp $home/app/shared/nginx/conf.d/* $home/ 2>/dev/null || true\n" + (
        "trap - EXIT\n" if then == "ok" else "false\n")
    script = f"set -e\nhome={tmp_path}\nnew=c0ffee\ncd /\n{rollout.pin_new_api(APP)}\n{after}"
    env = {**os.environ, "PATH": f"{tmp_path}/bin:{os.environ['PATH']}", "CALLS": str(tmp_path / "calls")}
    assert subprocess.run(["bash", "-c", script], env=env).returncode == (0 if then == "ok" else 1)
    calls = (tmp_path / "calls").read_text().splitlines()
    if not nginx_running:
        assert not (tmp_path / rollout.API_PIN).exists() and len(calls) == 1 and calls[0].startswith("ps -q")
        return
    # what the pin said while it was there (copied aside by the script)
    assert (tmp_path / rollout.API_PIN).read_text() == "set $api_upstream http://tt-api-2:8000;\n"
    assert calls[1:3] == ["inspect -f {{.Name}} c0ffee", "kill --signal HUP ngx1"]
    if then == "ok":
        assert pin.exists() and calls[3:] == []  # api_rollout removes it once the old API is gone
    else:
        assert not pin.exists() and calls[3:] == ["kill --signal HUP ngx1"]  # back on the service name



# --- notify: the alert program, run against a local recording endpoint ---------------------------

TOKEN = "123456:tg-Secret-Token_x"
HOOK_PATH = "/hooks/T0/B1/hook-Secret-42"
HOST_NAME = os.uname().nodename


def _notify_host(tmp_path: Path, server_url: str | None, *, chat_id: str = "-1001234", hook: bool = True,
                 timeout: int = 10) -> Path:
    """APP_DIR/bin with the program and its notify.conf, as Host.install_notify leaves them."""
    ctx = HostContext(str(tmp_path / "app"), "tt")
    bin_dir = tmp_path / "app" / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    program = Path(notify.script_path(ctx))
    program.write_text(notify.NOTIFY_SCRIPT)
    program.chmod(0o700)
    conf = Path(notify.conf_path(ctx))
    conf.write_text(notify.conf_text(ctx, telegram_api_base_url=server_url or "https://api.telegram.org", bot_token=TOKEN,
                                     chat_id=chat_id if server_url else "",
                                     webhook_url=f"{server_url}{HOOK_PATH}" if server_url and hook else "", timeout=timeout))
    conf.chmod(0o600)
    return program


def _run(program: Path, *args: str, env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(program), *args], capture_output=True, text=True, timeout=60,
                          env=env or {"PATH": "/usr/bin:/bin"}, **kwargs)


def test_notify_sends_to_telegram_and_the_webhook(tmp_path):
    text = 'backup FAILED: "quotes", back\\slash, tab\there,\nsecond line, ünïcödé ✓'
    with RecordingServer() as server:
        result = _run(_notify_host(tmp_path, server.url), text)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    telegram, hook = server.requests
    expected = f"[{HOST_NAME} tt] " + text.replace("\t", " ")
    assert telegram["path"] == f"/bot{TOKEN}/sendMessage"
    assert telegram["headers"]["Content-Type"] == "application/json"
    assert json.loads(telegram["body"]) == {"chat_id": "-1001234", "text": expected, "disable_web_page_preview": True}
    assert hook["path"] == HOOK_PATH and json.loads(hook["body"]) == {"text": expected}


def test_notify_reads_the_message_on_stdin_and_needs_one(tmp_path):
    with RecordingServer() as server:
        program = _notify_host(tmp_path, server.url, hook=False)
        assert _run(program, input="from a pipe\n").returncode == 0
        empty = _run(program, input="")
    assert [json.loads(r["body"])["text"] for r in server.requests] == [f"[{HOST_NAME} tt] from a pipe"]
    assert empty.returncode == 2 and "usage: tasktracker-notify" in empty.stderr


def test_notify_without_a_channel_sends_nothing(tmp_path):
    program = _notify_host(tmp_path, None)
    with RecordingServer() as server:
        assert _run(program, "deploy ok").returncode == 0
        Path(notify.conf_path(HostContext(str(tmp_path / "app"), "tt"))).unlink()  # never installed: same
        result = _run(program, "deploy ok")
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    assert server.requests == []


@pytest.mark.parametrize("status, why", [(401, "HTTP 401: the bot token (or the webhook's) was refused"),
                                         (400, "HTTP 400: the request was refused (for Telegram: is the chat id right?)"),
                                         (502, "HTTP 502")])
def test_notify_reports_a_refused_message_without_the_url(tmp_path, status, why):
    with RecordingServer(status=status) as server:
        result = _run(_notify_host(tmp_path, server.url), "x")
    assert result.returncode == 1
    assert result.stderr.splitlines() == [f"tasktracker-notify: telegram message not sent: {why}",
                                          f"tasktracker-notify: webhook message not sent: {why}"]
    assert TOKEN not in result.stderr and HOOK_PATH not in result.stderr


def test_notify_gives_up_on_a_dead_or_silent_endpoint(tmp_path):
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        started = time.monotonic()
        result = _run(_notify_host(tmp_path, f"http://127.0.0.1:{silent.getsockname()[1]}", hook=False, timeout=1), "x")
        assert time.monotonic() - started < 5
    assert result.returncode == 1 and result.stderr == "tasktracker-notify: telegram message not sent: no answer within 1s\n"
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    result = _run(_notify_host(tmp_path, f"http://127.0.0.1:{port}", hook=False), "x")
    assert result.returncode == 1 and result.stderr == "tasktracker-notify: telegram message not sent: could not connect\n"


def _tools(tmp_path: Path, *names: str) -> Path:
    """A PATH holding only the tools the program uses (and `names`, each a wrapper that records its
    argv and stdin's absence of secrets before running the real one)."""
    bin_dir = tmp_path / "tools"
    bin_dir.mkdir()
    for tool in ("sh", "dirname", "uname", "head", "iconv", "tr", "sed", "awk", "mktemp", "rm", "cat"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    for name in names:
        (bin_dir / name).write_text(f'#!/bin/sh\nprintf "%s\\n" "$0" "$@" >> "{tmp_path}/argv.log"\nexec {shutil.which(name)} "$@"\n')
        (bin_dir / name).chmod(0o755)
    return bin_dir


@pytest.mark.parametrize("client", ["curl", "wget"])
def test_notify_keeps_the_token_and_the_webhook_off_every_command_line(tmp_path, client):
    if not shutil.which(client):
        pytest.skip(f"needs {client}")
    with RecordingServer() as server:
        result = _run(_notify_host(tmp_path, server.url), "daily backup FAILED (exit 1)",
                      env={"PATH": str(_tools(tmp_path, client))})
    assert result.returncode == 0, result.stderr
    assert [r["path"] for r in server.requests] == [f"/bot{TOKEN}/sendMessage", HOOK_PATH]
    argv = (tmp_path / "argv.log").read_text()
    assert argv.count(f"/tools/{client}\n") == 2  # it ran, once per channel
    assert TOKEN not in argv and "hook-Secret" not in argv and "127.0.0.1" not in argv
    for request in server.requests:
        assert TOKEN.encode() not in request["body"] and b"hook-Secret" not in request["body"]


def test_notify_without_curl_or_wget_says_so(tmp_path):
    with RecordingServer() as server:
        result = _run(_notify_host(tmp_path, server.url, hook=False), "x", env={"PATH": str(_tools(tmp_path))})
    assert result.returncode == 1 and server.requests == []
    assert result.stderr == ("tasktracker-notify: telegram message not sent: neither curl nor wget is installed "
                             "(apt-get install curl)\n")


def test_notify_shortens_a_long_message_to_valid_text(tmp_path):
    with RecordingServer() as server:
        assert _run(_notify_host(tmp_path, server.url, hook=False), "é" * 4000).returncode == 0
    body = server.requests[0]["body"]
    text = json.loads(body.decode("utf-8", errors="strict"))["text"]
    assert len(text.encode()) <= notify.MAX_BYTES and text.endswith("éé") and text.startswith(f"[{HOST_NAME} tt] é")


def test_notify_script_is_posix_sh():
    assert subprocess.run(["sh", "-n"], input=notify.NOTIFY_SCRIPT, text=True).returncode == 0
    if shutil.which("checkbashisms"):
        assert subprocess.run(["checkbashisms", "-"], input=notify.NOTIFY_SCRIPT, text=True).returncode == 0


@pytest.mark.parametrize("job_exit", [0, 3])
def test_the_cron_jobs_alert_only_when_they_fail(tmp_path, job_exit):
    """The installed cron line, run as cron would (sh, in $HOME): a failed job sends one message
    naming the job, its exit code and its log, never the log's content."""
    ctx = HostContext(str(tmp_path / "app"), "tt")
    with RecordingServer() as server:
        _notify_host(tmp_path, server.url, hook=False)
        Path(ctx.backups_dir).mkdir()
        Path(backup.script_path(ctx)).write_text(f"#!/bin/sh\necho 'BACKUP FAILED at step x: token {TOKEN}' >&2\nexit {job_exit}\n")
        Path(backup.script_path(ctx)).chmod(0o700)
        line = backup.cron_line(ctx, 7, "02:00")
        assert "%" not in line and "%" not in tls.cron_line(ctx, "03:00", None)
        job = line[len("0 2 * * * "):].rsplit(" # ", 1)[0]
        result = subprocess.run(["sh", "-c", job], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                                env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    log = f"{ctx.backups_dir}/cron.log"
    if job_exit == 0:
        assert server.requests == []
    else:
        assert [json.loads(r["body"])["text"] for r in server.requests] == [
            f"[{HOST_NAME} tt] daily backup FAILED (exit 3); log: {log}"]
    assert "BACKUP FAILED at step x" in Path(log).read_text()


def test_a_failed_renewal_is_not_hidden_by_the_reload():
    """The renewal job's exit status is certbot's (the reload that follows ends with a sleep)."""
    ctx = HostContext("/nonexistent", "tt")
    line = tls.cron_line(ctx, "03:00", None)
    job = line[len("0 3 * * * "):].split(" >> ", 1)[0]
    fake = job.replace(sh(tls.renew(ctx)), "false")
    assert fake != job and subprocess.run(["sh", "-c", fake], capture_output=True).returncode == 1


def test_a_release_arrives_as_one_tar_through_the_locks_private_inbox(tmp_path):
    """The lock makes a 0700 inbox; the deploy's tar (settings 0600) is unpacked with its modes,
    the release is laid out and its .env linked, and the tar is gone."""
    ctx = HostContext("app", "tt")
    assert bash(lock.acquire(ctx, INFO), tmp_path).stdout == "ACQUIRED\n"
    inbox = tmp_path / ctx.inbox
    assert oct(inbox.stat().st_mode)[-3:] == "700"
    tar = release.files_archive([("env/r1.env", 0o600, "POSTGRES_PASSWORD='x y'\n"), ("releases/r1/release.yml", 0o644, "services: {}\n"),
                                 ("bin/notify.conf", 0o600, "WEBHOOK_URL=''\n")])
    (inbox / release.RELEASE_TAR).write_bytes(tar)
    result = bash(release.unpack_release(ctx, "r1"), tmp_path)
    assert result.returncode == 0, result.stderr
    app = tmp_path / "app"
    assert oct((app / "env/r1.env").stat().st_mode)[-3:] == "600" and oct((app / "env").stat().st_mode)[-3:] == "700"
    assert oct((app / "bin/notify.conf").stat().st_mode)[-3:] == "600"
    assert (app / "releases/r1/.env").read_text() == "POSTGRES_PASSWORD='x y'\n"
    assert (app / "releases/r1/release.yml").read_text() == "services: {}\n"
    assert not (inbox / release.RELEASE_TAR).exists()
    assert all((app / d.removeprefix("app/")).is_dir() for d in ctx.mounted_dirs)


@pytest.mark.parametrize("script", [
    rollout.activation(HostContext("app", "tt"), "r1", backend=True, probe="true", then="true"),
    rollout.activation(HostContext("app", "tt"), "r1", backend=False, probe="true", then="true"),
    rollout.start_backend(HostContext("app", "tt"), "r1", "true", schema_commands.schema_state(HostContext("app", "tt"), "r1", 5)),
], ids=["activation", "dashboard-only activation", "start backend"])
def test_the_deploy_scripts_are_valid_bash(script):
    assert subprocess.run(["bash", "-n"], input=script, text=True, capture_output=True).returncode == 0


def test_activation_steps_in_order():
    script = rollout.activation(HostContext("app", "tt"), "r1", backend=True, probe="PROBE", then="THEN")
    order = ["@@step replace api", "--scale", ".State.Health.Status", "up -d --no-deps worker", "docker stop -t 30",
             "@@step restart worker", "wait $side", "@@step switch current",
             "run --rm --no-deps -T nginx nginx -t", "ln -sfn releases/r1 app/current.tmp", "@@step health checks", "PROBE",
             "@@step record release and prune", 'cd "$home"\nTHEN']
    assert [script.index(part) for part in order] == sorted(script.index(part) for part in order)
    assert script.startswith("set -e\ntrap 'echo \"@@end $(date +%s.%N)\"' EXIT\n")


def test_image_presence_of_no_image_is_a_valid_command():
    assert images.present([]) == "true"
    assert subprocess.run(["bash", "-n", "-c", "x; " + images.present([]) + "; y"]).returncode == 0
