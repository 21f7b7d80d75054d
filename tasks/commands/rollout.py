"""Zero-downtime activation of a release on the host.

The API is replaced by starting the new container beside the old one (Compose `--scale` with
`--no-recreate`) and waiting for Docker to report it healthy; then nginx is pinned to the new
container (`API_PIN`, reloaded gracefully) before the old one is stopped, so no new request can
reach a container that is closing. nginx serves `APP_DIR/current` (mounted at /srv/app), so the
dashboard switches when `current` is flipped, and nginx reloads gracefully.
"""

from __future__ import annotations

from . import q, sh
from .context import HostContext
from .definitions import DATA_SERVICES, up_kept

RESOLVER_GRACE_SECONDS = 1.5  # nginx resolver `valid=1s`: time for it to see a new container
# In APP_DIR/shared/nginx/conf.d (nginx's /etc/nginx/conf.d), included by app-locations.conf after
# its own `set $api_upstream`: while the API is replaced it names the new container alone. Without
# it, nginx keeps choosing the old container until Docker drops it from `api`, and a POST that
# reaches it as it closes its socket is reset, never retried (not idempotent): a 502.
API_PIN = "api-upstream.inc"


READY_POLL_SECONDS = 0.25


def api_rollout(ctx: HostContext, timeout: int = 90, alongside: str = "",
                alongside_mark: str = "") -> str:
    """Start the release's API beside the running one, wait until it is ready, stop the old one.

    Ready: Docker reports it healthy (polled every quarter second). One answer from one uvicorn
    worker is not enough with API_WORKERS > 1 (another may still be connecting: a 503), so
    Docker's health check decides. Unhealthy (or the container exiting) fails the rollout, and
    the old API keeps serving. `alongside` (the worker's restart) starts once the new API is proven,
    while nginx moves to the new API (`pin_new_api`) and the old one drains; `alongside_mark` is
    printed when the script then waits for it. Runs in `activation` (`$home`: the login directory)."""
    scale = sh(ctx.compose("up", "-d", "--no-deps", "--no-recreate", "--scale"))
    side_start = f"( {alongside} ) & side=$!" if alongside else ""
    side_wait = f"{alongside_mark}\nwait $side" if alongside else ""
    return f"""set -e
old=$({ctx.containers('api')} | sort)
count=$(printf '%s\\n' "$old" | grep -c . || true)
{scale} "api=$((count + 1))" api >/dev/null 2>&1 || {scale} "api=$((count + 1))" api
new=$({ctx.containers('api')} | sort | grep -vxF "$old" || true)
if [ -z "$new" ]; then echo "no new api container was started" >&2; exit 1; fi
state=starting
for _ in $(seq 1 {int(timeout / READY_POLL_SECONDS)}); do
  state=$(docker inspect -f '{{{{if .State.Health}}}}{{{{.State.Health.Status}}}}{{{{else}}}}{{{{.State.Status}}}}{{{{end}}}}' $new)
  case "$state" in healthy|running) break ;; unhealthy|exited|dead) break ;; esac
  sleep {READY_POLL_SECONDS}
done
if [ "$state" != healthy ] && [ "$state" != running ]; then
  echo "last log lines of the new api container:" >&2
  docker logs --tail 8 $new 2>&1 | cut -c1-200 >&2 || true
  echo "its last health check: $(docker inspect -f '{{{{range .State.Health.Log}}}}{{{{.Output}}}}{{{{end}}}}' $new 2>/dev/null | tail -n 3 | cut -c1-300)" >&2
  docker rm -f $new >/dev/null
  echo "the new api container did not become healthy ($state); the old one kept serving" >&2
  exit 1
fi
{side_start}
{pin_new_api(ctx)}
sleep {RESOLVER_GRACE_SECONDS}
for c in $old; do docker stop -t 30 $c >/dev/null; docker rm $c >/dev/null; done
unpin
trap - EXIT
echo "api: $(echo $new | cut -c1-12) healthy; replaced $(echo $old | wc -w) old container(s)"
{side_wait}
"""


def pin_new_api(ctx: HostContext) -> str:
    """Shell for `api_rollout` (`$new` the new API container, `$home` the login directory): when
    nginx runs, name the new container in API_PIN and reload nginx gracefully, so every new request
    goes to it while the old one finishes what it has (the next reload, after `current` switches,
    is back on the service name: the pin is removed once the old container is gone). Should the
    rollout fail after the pin, its EXIT trap removes it and reloads nginx; a HUP that fails
    removes it at once."""
    pin = q(f"{ctx.conf_d}/{API_PIN}")
    return f"""unpin() {{ {unpin_api(ctx)}; }}
ngx=$({ctx.container('nginx')})
if [ -n "$ngx" ]; then
  trap 'unpin; docker kill --signal HUP "$ngx" >/dev/null 2>&1' EXIT
  name=$(docker inspect -f '{{{{.Name}}}}' $new | tr -d /)
  ( cd "$home" && printf 'set $api_upstream http://%s:8000;\\n' "$name" >{pin}.tmp && mv {pin}.tmp {pin} )
  docker kill --signal HUP "$ngx" >/dev/null 2>&1 || unpin
fi"""


def unpin_api(ctx: HostContext) -> str:
    """Shell: API_PIN removed (`$home`: the login directory); nginx's next reload is back on the
    service name. A pin left by a run that died is removed by the next activation too."""
    return f"( cd \"$home\" && rm -f {q(f'{ctx.conf_d}/{API_PIN}')} )"


def worker_restart(ctx: HostContext) -> list[str]:
    """Recreate the worker with the release's image; Compose stops the old one gracefully
    (SIGTERM, stop_grace_period): it finishes its job, and unacknowledged JetStream messages are
    delivered again to the new worker."""
    return ctx.compose("up", "-d", "--no-deps", "worker")


def data_services_up(ctx: HostContext) -> list[str]:
    """Postgres and NATS started when missing; running ones are never recreated by a deploy
    (commands/definitions.py: a changed definition waits for `compose.recreate`)."""
    return up_kept(ctx, ctx.services(DATA_SERVICES))


def nginx_check(ctx: HostContext, release_id: str) -> list[str]:
    """`nginx -t` on the release's config in a throwaway nginx container with the release's mounts
    (the running nginx is not touched)."""
    return ctx.compose("run", "--rm", "--no-deps", "-T", "nginx",
                       "nginx", "-t", "-q", "-c",
                       f"/srv/app/releases/{release_id}/nginx/nginx.conf")


def switch_current(ctx: HostContext, release_id: str) -> str:
    return " && ".join([
        sh(["ln", "-sfn", f"releases/{release_id}", f"{ctx.current_link}.tmp"]),
        sh(["mv", "-T", f"{ctx.current_link}.tmp", ctx.current_link]),
    ])


def remove_current(ctx: HostContext) -> list[str]:
    """After a first deploy failed: no release is live."""
    return ["rm", "-f", ctx.current_link]


def nginx_up_and_reload(ctx: HostContext) -> str:
    """Create nginx if missing (a running nginx is never recreated, whatever its definition:
    commands/definitions.py), then reload it gracefully."""
    up = sh(up_kept(ctx, ("nginx",)))
    # HUP to nginx's master (PID 1): it re-reads the config it was started with, gracefully.
    reload = sh(ctx.compose("exec", "-T", "nginx", "kill", "-HUP", "1"))
    return f"{up} 2>&1 | grep -v -e '^ *Container .* Running$' -e 'is up-to-date' || true; {reload}"


STACK_SERVICES = ("postgres", "nats", "api", "worker", "nginx")
BACKEND_STEPS = "images, backend build, database, migrations, api and worker"
ARCHIVE_STEP = "WAL archive (point-in-time recovery)"
APP_ROLE_STEP = "the app's database role and its grants"
RECORD_STEP = "record release and prune"  # the last step of `activation`'s `then`
END_MARK = 'echo "@@end $(date +%s.%N)"'


def mark(step: str) -> str:
    """Shell: announce a step of a remote script (steps.RemoteSteps reads these lines)."""
    return f'echo "@@step {step} $(date +%s.%N)"'


def activation(ctx: HostContext, release_id: str, *, backend: bool, probe: str, then: str = "",
               nginx_same: bool = False) -> str:
    """One script that moves traffic to the release and proves it, each step marked:

    - backend: replace the API (new beside old); once the new API is proven, restart the worker
      while the old API drains;
    - dashboard only (the API's image, settings and compose files are the live ones): the API and
      worker containers are not touched;
    - nginx: when its definition is unchanged (`nginx_same`, always for dashboard-only releases)
      the release's config is checked inside the running nginx and nginx reloads with a HUP;
      otherwise the config is checked in a throwaway container and nginx is (re)created if needed
      and reloaded; `current` switches in between;

    then the health probe, then `then` (run from the login directory: recording the release)."""
    nginx_conf = f"/srv/app/releases/{release_id}/nginx/nginx.conf"
    lines = ["set -e", f"trap {q(END_MARK)} EXIT", "home=$PWD", unpin_api(ctx),
             f"cd {q(ctx.release_dir(release_id))}"]
    if backend:
        worker = f"{sh(worker_restart(ctx))} >/dev/null"
        lines += [mark("replace api (new beside old)"), "(",
                  api_rollout(ctx, alongside=worker,
                              alongside_mark=mark("restart worker (graceful)")), ")"]
    lines += [mark("switch current and reload nginx")]
    switch = f"( cd \"$home\" && {switch_current(ctx, release_id)} )"
    if backend and not nginx_same:
        lines += [sh(nginx_check(ctx, release_id)), switch, nginx_up_and_reload(ctx)]
    else:
        lines += [f"ngx=$({ctx.container('nginx')})",
                  f"if [ -n \"$ngx\" ]; then docker exec \"$ngx\" nginx -t -q -c {q(nginx_conf)}; "
                  f"else {sh(nginx_check(ctx, release_id))}; fi",
                  switch,
                  "if [ -n \"$ngx\" ]; then docker kill --signal HUP \"$ngx\" >/dev/null; else "
                  f"{nginx_up_and_reload(ctx)}; fi"]
    lines += [mark("health checks"), probe]
    if then:
        lines += [mark(RECORD_STEP), 'cd "$home"', then]
    return "\n".join(lines) + "\n"


def running_services(ctx: HostContext) -> str:
    """Each of the project's long-running containers: `service|state|status` (status carries
    Docker's health: `Up 3 minutes (healthy)`)."""
    return (f"docker ps -a --filter label=com.docker.compose.project={q(ctx.project)} "
            f"--filter label=com.docker.compose.oneoff=False --format '{{{{.Label "
            "\"com.docker.compose.service\"}}|{{.State}}|{{.Status}}'")


def stack_problems(output: str, services: tuple[str, ...] = STACK_SERVICES) -> list[str]:
    """What `running_services` shows wrong: a service without a running container, or unhealthy."""
    running: dict[str, list[str]] = {}
    for line in output.splitlines():
        service, state, status = (line.split("|") + ["", ""])[:3]
        if state == "running":
            running.setdefault(service, []).append(status)
    problems = [f"{name} is not running" for name in services if name not in running]
    problems += [f"{name} is unhealthy" for name, statuses in running.items()
                 if name in services and all("(unhealthy)" in st for st in statuses)]
    return problems


def start_backend(ctx: HostContext, release_id: str, build: str, schema: str) -> str:
    """One script: build the release's images on the host when missing (`build`), start Postgres
    and NATS, then read the schema state (`schema`, run from the login directory; its lines are
    marked `@@fact` for the caller to parse)."""
    return "\n".join([
        "set -e", f"cd {q(ctx.release_dir(release_id))}",
        mark("build images"), build,
        mark("start postgres and nats"), sh(data_services_up(ctx)),
        mark("read database schema"), 'cd "$OLDPWD"',
        "{ " + schema.strip().rstrip(";") + "\n} | sed 's/^/@@fact /'", END_MARK]) + "\n"


def wait_healthy(ctx: HostContext, service: str, tries: int = 120) -> str:
    """Shell: wait (up to `tries` half-seconds) until the service's container reports healthy."""
    return (f"for _ in $(seq 1 {tries}); do\n  cid=$({ctx.container(service)})\n"
            "  [ -n \"$cid\" ] && [ \"$(docker inspect -f '{{.State.Health.Status}}' "
            f"\"$cid\")\" = healthy ] && break\n  sleep 0.5\ndone")
