"""The host-side backup program and the commands around it.

`fab backup` and the daily cron job run the same script, `APP_DIR/bin/tasktracker-backup`,
written from BACKUP_SCRIPT below. One run makes one set under APP_DIR/backups/<UTC time>/:

    database.dump    pg_dump custom format, streamed from the container to the file
    rowcounts.txt    rows per table, counted in the very snapshot pg_dump used
    nats.tar.gz      the JetStream store, copied while nats-server is paused (frozen, consistent)
    app-files.tar.gz env/ (each release's settings), shared/nginx (TLS config),
                     shared/letsencrypt (certificates)
    SHA256SUMS, manifest.json

It is built in APP_DIR/backups/.<name>.partial and renamed when complete and verified; a failed
run leaves no partial set and deletes nothing. Verification restores the dump into a scratch
database on the same server and compares the row counts. Retention keeps the newest KEEP full
sets and, separately, the newest KEEP pre-deploy (database-only) sets, so pre-deploy sets never
evict the last full one. When APP_DIR/shared/offsite.conf exists, a full set is then copied
off-site (commands/offsite.py); if that fails the set stays and the script exits 3.
One run at a time (flock on backups/.lock, cron included). While NATS is
paused for its copy, a watchdog unpauses it if the script dies in any way (even SIGKILL).
"""

from __future__ import annotations

import json

from . import notify, q, rollout, sh
from .pitr import BACKUP_SHELL
from .context import HostContext
from .programs import program

SCRIPT_NAME = "tasktracker-backup"

BACKUP_SCRIPT = program("backup.sh")

BACKUP_SCRIPT = BACKUP_SCRIPT.replace("@PITR_BACKUP@", BACKUP_SHELL)

# The only files a backup set holds (backup.pull writes no other name on the operator's machine).
SET_FILES = ("database.dump", "rowcounts.txt", "nats.tar.gz", "app-files.tar.gz", "manifest.json")
SET_NAME_RE = r"^[0-9]{8}T[0-9]{6}Z(-predeploy)?$"


def script_path(ctx: HostContext) -> str:
    return f"{ctx.bin_dir}/{SCRIPT_NAME}"


def install_script(ctx: HostContext) -> str:
    """mkdir bin, then the script arrives over SFTP into the 0700 file this makes."""
    return " && ".join([sh(["mkdir", "-p", ctx.bin_dir, ctx.backups_dir]),
                        sh(["install", "-m", "700", "/dev/null", script_path(ctx) + ".new"])])


def activate_script(ctx: HostContext) -> list[str]:
    return ["mv", "-f", script_path(ctx) + ".new", script_path(ctx)]


def run(ctx: HostContext, keep: int, db_only: bool = False) -> list[str]:
    return [script_path(ctx), ctx.app_dir, ctx.project, str(keep),
            *(["--db-only"] if db_only else [])]


def list_sets(ctx: HostContext) -> str:
    root = q(ctx.backups_dir)
    return (f"for d in $(ls -1 {root} 2>/dev/null | grep -E '^[0-9]{{8}}T' | sort); do "
            f"printf '%s\\t%s\\t%s\\n' \"$d\" \"$(du -sb {root}/$d | cut -f1)\" \"$(tr -d '\\n' < "
            f"{root}/$d/manifest.json 2>/dev/null)\"; done; "
            f"echo '--log'; tail -n 20 {root}/backup.log 2>/dev/null || true")


def cron_marker(kind: str, project: str) -> str:
    return f"# tasktracker-{kind}:{project}"


def cron_line(ctx_abs: HostContext, keep: int, at: str) -> str:
    """The daily job; when it fails, tasktracker-notify says so (commands/notify.py)."""
    hour, minute = at.split(":")
    job = notify.on_failure(ctx_abs, "daily backup", sh(run(ctx_abs, keep)),
                            f"{ctx_abs.backups_dir}/cron.log")
    return f"{int(minute)} {int(hour)} * * * {job} {cron_marker('backup', ctx_abs.project)}"


def install_cron(line: str, marker: str) -> str:
    """Install `line` in the user's crontab, replacing the earlier line that ends with exactly
    this marker (so `tasktracker` never replaces `tasktracker-staging`'s job)."""
    keep_others = (f"awk -v m={q(' ' + marker)} 'length($0) < length(m) || substr($0, length($0) - "
                   "length(m) + 1) != m'")
    return (f"( crontab -l 2>/dev/null | {keep_others} ; printf '%s\\n' {q(line)} ) | crontab - "
            f"&& crontab -l | grep -F -- {q(marker)} | grep -F -- {q(line)}")


# `docker service scale` waits for each service in turn to converge and then to stay so for its
# update `monitor` (15 s in swarm.yml): four such waits were a minute of a restore's downtime, and
# a scale to 0 counts as converged before its tasks have stopped. A restore scales detached and
# waits for exactly what it needs: the tasks stopped (on the nodes that are up), or N running
# (running means healthy: each service has a health check).
SWARM_SCALE = r"""swarm_scale() { docker service scale --detach "$@" >/dev/null; }
swarm_settled() {
  local down ls spec
  down=" $(docker node ls --format '{{.Hostname}}={{.Status}}' | sed -n 's/=Down$//p' | tr '\n' ' ')"
  ls=$(docker service ls --format '{{.Name}} {{.Replicas}}')
  for spec in "$@"; do
    if [ "${spec#*=}" = 0 ]; then
      docker service ps --format '{{.Node}} {{.CurrentState}}' "${spec%=*}" | awk -v down="$down" '
        index(down, " " $1 " ") == 0 && $2 !~ /^(Complete|Shutdown|Failed|Rejected|Orphaned|Remove)$/ {
          busy = 1 } END { exit busy }' || return 1
    else
      printf '%s\n' "$ls" | grep -qxF "${spec%=*} ${spec#*=}/${spec#*=}" || return 1
    fi
  done
}
swarm_wait() {
  local left=$1; shift
  until swarm_settled "$@"; do
    [ "$left" -gt 0 ] || { echo "[restore] not settled within the time allowed: $*" >&2; return 1; }
    sleep 1; left=$((left - 1))
  done
}
"""


def swarm_restore_steps(ctx: HostContext) -> dict[str, str]:
    """The swarm's way to stop and start api, worker and nats around a restore (`restore`)."""
    api, worker, nats = (q(ctx.service_name(s)) for s in ("api", "worker", "nats"))
    replicas = "docker service inspect -f '{{.Spec.Mode.Replicated.Replicas}}'"
    # Scaled back to what they were, and only once they were scaled down (the trap runs
    # start_services on any failure).
    return {
        "remember": f"n_api=$({replicas} {api})\nn_worker=$({replicas} {worker})\nscaled=1\n",
        "start_app": (f"if [ -n \"${{scaled:-}}\" ]; then swarm_scale {api}=$n_api "
                      f"{worker}=$n_worker; fi"),
        # stop_grace_period: the worker's 30 s, the API's 20 s of graceful shutdown
        "stop_app": f"swarm_scale {api}=0 {worker}=0\nswarm_wait 120 {api}=0 {worker}=0",
        "stop_nats": f"swarm_scale {nats}=0\n  swarm_wait 60 {nats}=0",
        "start_nats": f"swarm_scale {nats}=1", "wait_nats": f"  swarm_wait 300 {nats}=1\n",
        "wait_api": f"swarm_wait 300 {api}=$n_api {worker}=$n_worker\n"}


def restore(ctx: HostContext, set_name: str, compose_start: str, *, fresh_database: bool = False,
            before_start: str = "") -> str:
    """Stop api and worker, restore the database and NATS data of a set, start them again. Any
    failure starts NATS, api and worker again before the script exits. `fresh_database` (a
    recovery onto a new host): the database is dropped and made again, so the set's schema is
    all there is; `before_start`: a command run before api and worker start (the migration)."""
    d = q(f"{ctx.backups_dir}/{set_name}")
    load = restore_database(d, fresh_database)
    # Swarm would start a stopped task's container again: scale the services instead
    if ctx.engine == "swarm":
        step = swarm_restore_steps(ctx)
    else:
        step = {"remember": "", "start_app": compose_start, "wait_nats": "",
                "stop_app": (f"for c in $({ctx.containers('api')}) $({ctx.containers('worker')}); "
                             "do docker stop -t 30 $c >/dev/null; done"),
                "stop_nats": 'docker stop -t 10 "$nats" >/dev/null',
                "start_nats": 'docker start "$nats" >/dev/null',
                "wait_api": rollout.wait_healthy(ctx, 'api') + "\n"}
    return f"""set -eEuo pipefail
{SWARM_SCALE if ctx.engine == "swarm" else ""}start_services() {{ {step["start_app"]}; }}
trap 'echo "[restore] FAILED; starting nats, api and worker again" >&2; [ -n "${{nats:-}}" ] && {step["start_nats"]} 2>&1; start_services >/dev/null 2>&1 || true' ERR
(cd {d} && sha256sum --quiet -c SHA256SUMS)
echo "[restore] checksums ok"
pg=$({ctx.container('postgres')})
nats=$({ctx.container('nats')})
[ -n "$pg" ] || {{ echo "[restore] no running postgres container" >&2; false; }}
{step["remember"]}{step["stop_app"]}
echo "[restore] api and worker stopped"
{load}
echo "[restore] database restored"
if [ -f {d}/nats.tar.gz ] && [ -n "$nats" ]; then
  image=$(docker inspect -f '{{{{.Config.Image}}}}' "$nats")
  volume=$(docker inspect -f '{{{{range .Mounts}}}}{{{{if eq .Destination "/data"}}}}{{{{.Name}}}}{{{{end}}}}{{{{end}}}}' "$nats")
  {step["stop_nats"]}
  docker run --rm -i --entrypoint sh -v "$volume:/data" "$image" -c 'find /data -mindepth 1 -delete && tar -C /data -xzf -' < {d}/nats.tar.gz
  {step["start_nats"]}
{step["wait_nats"]}  echo "[restore] nats data restored"
fi
{before_start + chr(10) if before_start else ""}start_services
{step["wait_api"]}echo "[restore] api and worker started"
"""


def restore_database(d: str, fresh_database: bool) -> str:
    """The set's dump (`d`: its quoted directory) loaded into the database in one transaction:
    over the existing one, or into a fresh one (`fresh_database`)."""
    if fresh_database:
        load = ("docker exec \"$pg\" sh -c 'dropdb -U \"$POSTGRES_USER\" --force \"$POSTGRES_DB\" "
                "&& createdb -U \"$POSTGRES_USER\" \"$POSTGRES_DB\"'\n"
                "docker exec -i \"$pg\" sh -c 'pg_restore -U \"$POSTGRES_USER\" -d "
                "\"$POSTGRES_DB\" "
                "--no-owner --no-privileges --single-transaction --exit-on-error' < "
                f"{d}/database.dump")
    else:
        load = ("docker exec -i \"$pg\" sh -c 'pg_restore -U \"$POSTGRES_USER\" -d "
                f"\"$POSTGRES_DB\" --clean --if-exists --no-owner --no-privileges "
                f"--single-transaction --exit-on-error' < {d}/database.dump")
    return load


def parse_run(output: str) -> tuple[str, dict]:
    """(set name, manifest) from what a successful run printed (`BACKUP OK <name>` + manifest)."""
    name = [line.split()[-1] for line in output.splitlines() if line.startswith("BACKUP OK")][0]
    return name, json.loads(output.split(f"BACKUP OK {name}", 1)[1].strip())


def parse_sets(output: str) -> tuple[list[dict], list[str]]:
    """(sets with their manifests, the latest backup.log lines) from list_sets."""
    sets = []
    body, _, log_text = output.partition("--log\n")
    for line in body.splitlines():
        name, size, manifest = (line.split("\t") + ["", ""])[:3]
        try:
            meta = json.loads(manifest) if manifest else {}
        except ValueError:
            meta = {}
        sets.append({"name": name, "bytes": int(size or 0), **meta})
    return sets, [line for line in log_text.splitlines() if line.strip()]


def verified(sets: list[dict]) -> list[str]:
    return [s["name"] for s in sets if s.get("verification", {}).get("result") == "ok"]
