"""Docker Swarm across several hosts (`fab -H a,b,c cluster.init`, `cluster.deploy`,
`cluster.status`, `cluster.drain`/`activate`): the commands, the parsers of what the hosts print,
and the stack files `docker stack deploy` reads, rendered from the same compose.yml +
docker-compose.production.yml the single host runs, plus swarm.yml (the one swarm-only stack
definition). Nothing here opens a connection. The stack file itself is rendered by
commands/swarm_stack.py.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping


from . import q, sh
from .context import HostContext

# Postgres and NATS (and their volumes) live on the node with this label
LABEL_DATA = "tasktracker.data"
LABEL_ENTRY = "tasktracker.entry"  # nginx (the release files, TLS, the published ports) on this one
# the SSH alias the node was joined with: how tasks reach it again
LABEL_ALIAS = "tasktracker.alias"
SWARM_PORT = 2377
SETTLED_UPDATE_STATES = ("", "completed")
FAILED_UPDATE_STATES = ("rollback_started", "rollback_completed", "rollback_paused", "paused")


# --- facts of one host: one round trip ----------------------------------------------------------

def facts(data_path: str = "") -> str:
    """The host's swarm state, its address on the network the hosts share (the source address of
    its default route: the interface a VPS's peers reach it on), its hostname, whether the
    kernel has IPVS (the routing mesh and service VIPs need it) and ESP (an encrypted overlay
    needs it), and its IPv4 address on the
    `data_path` interface (SWARM_DATA_PATH)."""
    return "; ".join([
        *([f"printf 'data_address=%s\\n' \"$(ip -4 -o addr show dev {q(data_path)} 2>/dev/null "
           "| awk '{split($4, a, \"/\"); print a[1]; exit}')\""] if data_path else []),
        "printf 'swarm=%s\\n' \"$(docker info --format '{{json .Swarm}}' 2>/dev/null)\"",
        "printf 'address=%s\\n' \"$(ip -4 route get 1.1.1.1 2>/dev/null | awk '{for (i = 1; i < "
        "NF; i++) if ($i == \"src\") {print $(i + 1); exit}}')\"",
        "printf 'first_address=%s\\n' \"$(hostname -I 2>/dev/null | awk '{print $1}')\"",
        "printf 'hostname=%s\\n' \"$(hostname)\"",
        "printf 'ipvs=%s\\n' \"$([ -e /proc/net/ip_vs ] && echo yes || echo no)\"",
        "printf 'esp=%s\\n' \"$({ [ -d /sys/module/esp4 ] || modprobe -n -q esp4; } 2>/dev/null "
        "&& echo yes || echo no)\"",
        "printf 'live_restore=%s\\n' \"$(docker info --format '{{.LiveRestoreEnabled}}' "
        "2>/dev/null)\"",
    ])


def parse_facts(output: str) -> dict:
    """{'state': inactive|active|pending|..., 'manager': bool, 'node_id', 'node_addr', 'managers':
    [addr...], 'address', 'hostname', 'ipvs': bool}."""
    raw = dict(line.split("=", 1) for line in output.splitlines() if "=" in line)
    try:
        swarm = json.loads(raw.get("swarm") or "{}") or {}
    except ValueError:
        swarm = {}
    managers = [m.get("Addr", "") for m in (swarm.get("RemoteManagers") or [])]
    return {"state": swarm.get("LocalNodeState", "unknown") or "unknown",
            "manager": bool(swarm.get("ControlAvailable")),
            "node_id": swarm.get("NodeID", ""), "node_addr": swarm.get("NodeAddr", ""),
            "managers": managers,
            "address": raw.get("address", "").strip() or raw.get("first_address", "").strip(),
            "hostname": raw.get("hostname", "").strip(),
            "ipvs": raw.get("ipvs", "").strip() == "yes",
            "esp": raw.get("esp", "").strip() == "yes",
            "live_restore": raw.get("live_restore", "").strip() == "true",
            "data_address": raw.get("data_address", "").strip()}


# --- forming the swarm ----------------------------------------------------------------------------

# Swarm mode refuses to start with live-restore on (provision turns it on for a single host:
# containers
# survive a Docker upgrade). Off in daemon.json, then a reload (SIGHUP: live-restore is reloadable,
# no
# container restarts). Runs as root through the deploy user's sudo.
LIVE_RESTORE_OFF = ("python3 -c 'import json, os; p = \"/etc/docker/daemon.json\"; "
                    "d = json.load(open(p)) if os.path.exists(p) else {}; d[\"live-restore\"] = "
                    "False; open(p, \"w\").write(json.dumps(d, indent=2) + \"\\n\")' && "
                    "(systemctl reload docker || kill -HUP \"$(pidof dockerd)\")")


# provision's (commands/provision.py): SSH, HTTP, HTTPS in; nothing routed to the containers
FIREWALL_FILE = "/etc/tasktracker-firewall.nft"
SWARM_FIREWALL_FILE = "/etc/tasktracker-swarm.nft"


def swarm_firewall(peers: list[str]) -> str:
    """Rules appended to provision's `inet tasktracker` input chain (its policy drops the rest):
    Swarm's ports (2377 management, 7946 gossip, 4789 VXLAN overlay; ESP, an encrypted overlay's
    IPsec) from the swarm's nodes only."""
    elements = ", ".join(sorted(set(peers)))
    return f"""# Written by `fab cluster.init`: the Swarm ports, from the nodes of the swarm only.
table inet tasktracker {{
    set swarm_peers {{ type ipv4_addr; elements = {{ {elements} }} }}
    chain input {{
        ip saddr @swarm_peers tcp dport {{ 2377, 7946 }} accept
        ip saddr @swarm_peers udp dport {{ 7946, 4789 }} accept
        ip saddr @swarm_peers ip protocol esp accept
    }}
}}
"""


def open_firewall(peers: list[str], uid: str = "1000") -> str:
    """Write the swarm rules, include them in provision's firewall file (once: it is what the boot
    unit loads, so they survive a reboot) and reload that file; as root. No-op without the file."""
    include = f'include "{SWARM_FIREWALL_FILE}"'
    script = (f"if [ -f {FIREWALL_FILE} ]; then printf %s {q(swarm_firewall(peers))} > "
              f"{SWARM_FIREWALL_FILE} && "
              f"(grep -qxF {q(include)} {FIREWALL_FILE} || echo {q(include)} >> {FIREWALL_FILE}) "
              f"&& nft -f {FIREWALL_FILE}; fi")
    return script if uid == "0" else f"sudo -n sh -c {q(script)}"


def leave() -> list[str]:
    """A node stuck joining (`pending`) starts over."""
    return ["docker", "swarm", "leave", "--force"]


def live_restore_off(uid: str = "1000") -> str:
    return LIVE_RESTORE_OFF if uid == "0" else f"sudo -n sh -c {q(LIVE_RESTORE_OFF)}"


def init(address: str, data_address: str = "") -> list[str]:
    """The overlay's VXLAN from `data_address` when given (a private network), else `address`."""
    return ["docker", "swarm", "init", "--advertise-addr", address,
            *(["--data-path-addr", data_address] if data_address else [])]


def join_token(role: str = "worker") -> list[str]:
    return ["docker", "swarm", "join-token", "-q", role]


def join_body(token: str, manager: str, address: str, data_address: str = "") -> str:
    """What `join` reads on stdin: the Engine API's swarm join request, token included (what
    `docker swarm join --token T --advertise-addr A [--data-path-addr D] MANAGER:2377` sends, minus
    the argv)."""
    return json.dumps({"ListenAddr": f"0.0.0.0:{SWARM_PORT}", "AdvertiseAddr": address,
                       **({"DataPathAddr": data_address} if data_address else {}),
                       "RemoteAddrs": [f"{manager}:{SWARM_PORT}"], "JoinToken": token})


# The join goes to the Engine API with its request on stdin: the token is in no process's argv on
# the node (`docker swarm join --token` would show it in /proc/PID/cmdline to every local user).
JOIN = ("curl -sS --fail-with-body --unix-socket /var/run/docker.sock -H 'Content-Type: "
        "application/json' --data-binary @- http://localhost/swarm/join")


def rotate_join_token(role: str = "worker") -> list[str]:
    """A new join token for `role` (the one a node used is worthless after it); prints it."""
    return ["docker", "swarm", "join-token", "--rotate", "-q", role]


def label(node: str, labels: Mapping[str, str]) -> list[str]:
    argv = ["docker", "node", "update"]
    for key, value in labels.items():
        argv += ["--label-add", f"{key}={value}"]
    return [*argv, node]


def availability(node: str, state: str) -> list[str]:
    if state not in ("active", "pause", "drain"):
        raise ValueError(f"availability must be active, pause or drain (got {state!r})")
    return ["docker", "node", "update", "--availability", state, node]


# --- what the swarm runs --------------------------------------------------------------------------

NODE_FORMAT = ("{{.ID}}\t{{.Description.Hostname}}\t{{.Spec.Role}}\t{{.Spec.Availability}}\t"
               "{{.Status.State}}\t{{.Status.Addr}}\t{{json .Spec.Labels}}")


def status(stack: str) -> str:
    """Nodes (with labels), the stack's services and their update state, and its running tasks, in
    `@@ section` blocks: one round trip, read by `parse_status`."""
    filt = q(f"label=com.docker.stack.namespace={stack}")
    return "; ".join([
        "echo '@@ nodes'",
        f"docker node inspect --format {q(NODE_FORMAT)} $(docker node ls -q)",
        "echo '@@ services'",
        f"docker service ls --filter {filt} --format '{{{{json .}}}}'",
        "echo '@@ updates'",
        f"for s in $(docker service ls -q --filter {filt}); do docker service inspect --format "
        + q("{{.Spec.Name}}\t{{if "
            ".UpdateStatus}}{{.UpdateStatus.State}}\t{{.UpdateStatus.StartedAt}}{{end}}")
        + " \"$s\"; done",
        "echo '@@ tasks'",
        f"docker stack ps {q(stack)} --filter desired-state=running --format '{{{{json .}}}}' "
        "2>/dev/null",
        "true",
    ])


def _sections(output: str) -> dict[str, list[str]]:
    sections: dict[str, list[str]] = {}
    name = ""
    for line in output.splitlines():
        if line.startswith("@@ "):
            name = line[3:].strip()
            sections[name] = []
        elif name and line.strip():
            sections[name].append(line)
    return sections


def parse_replicas(text: str) -> tuple[int, int]:
    """`2/3` or `1/1 (max 1 per node)` -> (running, desired)."""
    match = re.match(r"\s*(\d+)/(\d+)", text or "")
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


def parse_status(output: str) -> dict:
    """{'nodes': [...], 'services': {name: {...}}, 'tasks': [...]} from `status`'s output."""
    sections = _sections(output)
    nodes = []
    for line in sections.get("nodes", []):
        parts = line.split("\t")
        if len(parts) < 7:
            continue
        try:
            labels = json.loads(parts[6]) or {}
        except ValueError:
            labels = {}
        nodes.append({"id": parts[0], "hostname": parts[1], "role": parts[2],
                      "availability": parts[3], "state": parts[4],
                      "address": parts[5], "labels": labels, "alias": labels.get(LABEL_ALIAS, "")})
    services: dict[str, dict] = {}
    for line in sections.get("services", []):
        try:
            row = json.loads(line)
        except ValueError:
            continue
        running, desired = parse_replicas(row.get("Replicas", ""))
        services[row.get("Name", "")] = {"mode": row.get("Mode", ""),
                                         "replicas": row.get("Replicas", ""),
                                         "running": running, "desired": desired,
                                         "image": row.get("Image", ""), "update": "",
                                         "update_started": ""}
    for line in sections.get("updates", []):
        name, _, rest = line.partition("\t")
        state, _, started = rest.partition("\t")
        if name in services:
            services[name]["update"], services[name]["update_started"] = (state.strip(),
                                                                          started.strip())
    tasks = []
    for line in sections.get("tasks", []):
        try:
            row = json.loads(line)
        except ValueError:
            continue
        tasks.append({"name": row.get("Name", ""), "node": row.get("Node", ""),
                      "state": row.get("CurrentState", ""),
                      "image": row.get("Image", ""), "error": row.get("Error", "")})
    return {"nodes": nodes, "services": services, "tasks": tasks}


def convergence(services: dict, wanted: list[str] | None = None,
                before: dict | None = None) -> tuple[str, list[str]]:
    """('done' | 'failed' | 'waiting', reasons) for the stack's services (or the `wanted` ones):
    done when every one runs all its replicas and no update is in progress; failed when Swarm rolled
    an update back (update_config's failure_action) or paused it. An update already over in `before`
    (the services as they were when this deploy began; a service whose spec did not change keeps
    its old update state) is history, not this deploy's failure."""
    reasons, failed = [], []
    names = wanted if wanted is not None else sorted(services)
    for name in names:
        s = services.get(name)
        if s is None:
            reasons.append(f"{name}: not created yet")
            continue
        old = (before or {}).get(name, {})
        stale = (s["update"] in FAILED_UPDATE_STATES and bool(s.get("update_started"))
                 and (old.get("update"), old.get("update_started")) == (s["update"],
                                                                        s["update_started"]))
        if s["update"] in FAILED_UPDATE_STATES and not stale:
            failed.append(f"{name}: update {s['update'].replace('_', ' ')}")
        elif s["update"] not in SETTLED_UPDATE_STATES and not stale:
            reasons.append(f"{name}: update {s['update']}")
        elif s["desired"] == 0 or s["running"] < s["desired"]:
            reasons.append(f"{name}: {s['replicas'] or '0/?'} running")
    if failed:
        return "failed", failed
    return ("waiting", reasons) if reasons else ("done", [])


def tasks_per_node(tasks: list[dict]) -> dict[str, list[str]]:
    """{node hostname: ['api.1', ...]} of the running tasks (`stack_api.1` -> `api.1`)."""
    per: dict[str, list[str]] = {}
    for t in tasks:
        if not t["state"].lower().startswith("running"):
            continue
        short = t["name"].split("_", 1)[-1]
        per.setdefault(t["node"], []).append(short)
    return {node: sorted(names) for node, names in sorted(per.items())}


def find_node(nodes: list[dict], name: str) -> dict | None:
    """A node by its SSH alias (label), hostname or ID (a prefix of 6+ characters)."""
    for key in ("alias", "hostname", "id"):
        for node in nodes:
            if node[key] == name:
                return node
    matches = [n for n in nodes if len(name) >= 6 and n["id"].startswith(name)]
    return matches[0] if len(matches) == 1 else None


def stack_dir(ctx: HostContext, release_id: str) -> str:
    """The rendered stack files of a release: beside its settings (0700 directory, 0600 files)."""
    return f"{ctx.env_dir}/{release_id}.stack"


def stack_file(ctx: HostContext, release_id: str, name: str = "stack") -> str:
    return f"{stack_dir(ctx, release_id)}/{name}.yml"


def prepare_stack_dir(ctx: HostContext, release_id: str) -> list[str]:
    return ["install", "-d", "-m", "700", stack_dir(ctx, release_id)]


def network(stack: str) -> str:
    """The stack's default overlay network (attachable in swarm.yml, so one-off containers join
    it)."""
    return f"{stack}_default"


def stack_deploy(stack: str, files: list[str], registry: bool = False) -> list[str]:
    """Images are never resolved to a digest: their tags name their content. Shipped images are on
    every node; with a registry, the nodes pull the built ones, with the manager's login
    (`--with-registry-auth`)."""
    argv = ["docker", "stack", "deploy", "--resolve-image", "never",
            *(["--with-registry-auth"] if registry else [])]
    for f in files:
        argv += ["-c", f]
    return [*argv, stack]


def migrate(ctx: HostContext, release_id: str, stack: str, image: str,
            extra: tuple[str, ...] = ()) -> list[str]:
    """Alembic once, in a one-off container of the release's image on the stack's network (on the
    manager; Postgres answers by its service name wherever it runs); `extra` docker run arguments
    (the CA's mount: commands/swarm_tls.py)."""
    return ["docker", "run", "--rm", "--network", network(stack), *extra, "--env-file",
            f"{stack_dir(ctx, release_id)}/migrate.env",
            image, "alembic", "upgrade", "head"]


APP_ROLE_FILE = "app-role.sql"  # beside migrate.env in the release's stack directory (0600)


def ensure_app_role(ctx: HostContext, release_id: str, stack: str, postgres_image: str,
                    extra: tuple[str, ...] = ()) -> str:
    """The app role and its grants (commands/db.app_role_sql, the release's APP_ROLE_FILE), applied
    once as the owner from a one-off container of the Postgres image on the stack's network, with
    the migration's environment (the owner's login; psql reads its password from the
    environment)."""
    d = stack_dir(ctx, release_id)
    psql = ('PGPASSWORD="$POSTGRES_PASSWORD" exec psql -X -q -v ON_ERROR_STOP=1 '
            '-h "$POSTGRES_HOST" -U "$POSTGRES_USER" -d "$POSTGRES_DB"')
    argv = ["docker", "run", "--rm", "-i", "--network", network(stack), *extra,
            "--env-file", f"{d}/migrate.env", "--entrypoint", "sh", postgres_image, "-c", psql]
    return f"{sh(argv)} < {q(f'{d}/{APP_ROLE_FILE}')} >/dev/null"


def nginx_reload(stack: str) -> str:
    """HUP nginx's master in the entry node's nginx task (this host: nginx is placed on it)."""
    container = (f"docker ps -q --filter label=com.docker.swarm.service.name={q(stack + '_nginx')} "
                 "| head -n 1")
    return (f"c=$({container}); if [ -n \"$c\" ]; then docker exec \"$c\" kill -HUP 1; else echo "
            "'no nginx task here' >&2; exit 1; fi")


def remove_stack(stack: str) -> list[str]:
    return ["docker", "stack", "rm", stack]
