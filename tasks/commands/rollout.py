"""Zero-downtime activation of a release on the host.

The API is replaced by starting the new container beside the old one (Compose `--scale` with
`--no-recreate`), waiting for Docker to report it healthy, giving nginx's resolver time to see
it, then stopping the old one gracefully. nginx serves `APP_DIR/current` (mounted at /srv/app),
so the dashboard switches when `current` is flipped, and nginx reloads gracefully.
"""

from __future__ import annotations

from . import sh
from .context import HostContext

RESOLVER_GRACE_SECONDS = 1.5  # nginx resolver `valid=1s`: time for it to see a new container


def api_rollout(ctx: HostContext, timeout: int = 90) -> str:
    """Start the release's API beside the running one, wait until healthy, stop the old one."""
    scale = sh(ctx.compose("up", "-d", "--no-deps", "--no-recreate", "--scale"))
    return f"""set -e
old=$({ctx.containers('api')} | sort)
count=$(printf '%s\\n' "$old" | grep -c . || true)
{scale} "api=$((count + 1))" api >/dev/null 2>&1 || {scale} "api=$((count + 1))" api
new=$({ctx.containers('api')} | sort | grep -vxF "$old" || true)
if [ -z "$new" ]; then echo "no new api container was started" >&2; exit 1; fi
state=starting
for _ in $(seq 1 {timeout * 2}); do
  state=$(docker inspect -f '{{{{if .State.Health}}}}{{{{.State.Health.Status}}}}{{{{else}}}}{{{{.State.Status}}}}{{{{end}}}}' $new)
  case "$state" in healthy|running) break ;; unhealthy|exited|dead) break ;; esac
  sleep 0.5
done
if [ "$state" != healthy ] && [ "$state" != running ]; then
  echo "last log lines of the new api container:" >&2
  docker logs --tail 8 $new 2>&1 | cut -c1-200 >&2 || true
  echo "its last health check: $(docker inspect -f '{{{{range .State.Health.Log}}}}{{{{.Output}}}}{{{{end}}}}' $new 2>/dev/null | tail -n 3 | cut -c1-300)" >&2
  docker rm -f $new >/dev/null
  echo "the new api container did not become healthy ($state); the old one kept serving" >&2
  exit 1
fi
sleep {RESOLVER_GRACE_SECONDS}
for c in $old; do docker stop -t 30 $c >/dev/null; docker rm $c >/dev/null; done
echo "api: $(echo $new | cut -c1-12) healthy; replaced $(echo $old | wc -w) old container(s)"
"""


def worker_restart(ctx: HostContext) -> list[str]:
    """Recreate the worker with the release's image; Compose stops the old one gracefully
    (SIGTERM, stop_grace_period): it finishes its job, and unacknowledged JetStream messages are
    delivered again to the new worker."""
    return ctx.compose("up", "-d", "--no-deps", "worker")


def data_services_up(ctx: HostContext) -> list[str]:
    return ctx.compose("up", "-d", "--no-deps", "postgres", "nats")


def nginx_check(ctx: HostContext, release_id: str) -> list[str]:
    """`nginx -t` on the release's config in a throwaway nginx container with the release's mounts
    (the running nginx is not touched)."""
    return ctx.compose("run", "--rm", "--no-deps", "-T", "nginx",
                       "nginx", "-t", "-q", "-c", f"/srv/app/releases/{release_id}/nginx/nginx.conf")


def switch_current(ctx: HostContext, release_id: str) -> str:
    return " && ".join([
        sh(["ln", "-sfn", f"releases/{release_id}", f"{ctx.current_link}.tmp"]),
        sh(["mv", "-T", f"{ctx.current_link}.tmp", ctx.current_link]),
    ])


def remove_current(ctx: HostContext) -> list[str]:
    """After a first deploy failed: no release is live."""
    return ["rm", "-f", ctx.current_link]


def nginx_up_and_reload(ctx: HostContext) -> str:
    """Create nginx if needed (a no-op when its container is current), then reload gracefully."""
    up = sh(ctx.compose("up", "-d", "--no-deps", "nginx"))
    # HUP to nginx's master (PID 1): it re-reads the config it was started with, gracefully.
    reload = sh(ctx.compose("exec", "-T", "nginx", "kill", "-HUP", "1"))
    return f"{up} 2>&1 | grep -v -e '^ *Container .* Running$' -e 'is up-to-date' || true; {reload}"
