"""Docker Swarm across several hosts (`fab -H a,b,c cluster.init`, `cluster.deploy`, `cluster.status`,
`cluster.drain`/`activate`): the commands, the parsers of what the hosts print, and the stack files
`docker stack deploy` reads, rendered from the same compose.yml + docker-compose.production.yml the
single host runs, plus swarm.yml (the one swarm-only stack definition). Nothing here opens a connection.

`docker stack deploy` reads Compose file format 3, not the Compose spec: it rejects `depends_on`
conditions and `profiles`, ignores `build`, `restart`, `container_name` and `security_opt`, does not
read `.env` for `${VAR}`, and its env_file reader knows no quoting. So `render_stack` drops those
keys (and the services a profile keeps out of production), adds each service's pids limit
(`PIDS_LIMITS`) as format 3.9's `deploy.resources.limits.pids` (`cap_drop`/`cap_add`, `read_only`
and tmpfs mounts it applies as Compose does: docs/security.md), interpolates `${VAR}` here from the
release's settings (a `$` in a value becomes `$$`, which the CLI turns back into `$`), and replaces
`env_file: .env` by the same values under `environment:`. The result holds secrets: it lives in the
release's 0600 settings directory, never in the release directory nginx can see.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping

import yaml

from . import q, sh
from .compose import PIDS_LIMITS
from .context import HostContext

LABEL_DATA = "tasktracker.data"  # Postgres and NATS (and their volumes) live on the node with this label
LABEL_ENTRY = "tasktracker.entry"  # nginx (the release files, TLS, the published ports) on this one
LABEL_ALIAS = "tasktracker.alias"  # the SSH alias the node was joined with: how tasks reach it again
# Compose file format 3.9: every key the stack uses; its `deploy.resources.limits.pids` (the
# services' `pids_limit`, which format 3 does not know) needs Docker Engine 20.10 (API 1.41).
STACK_FORMAT = "3.9"
DROPPED_KEYS = ("build", "restart", "container_name", "security_opt", "depends_on", "profiles")
SWARM_PORT = 2377
SETTLED_UPDATE_STATES = ("", "completed")
FAILED_UPDATE_STATES = ("rollback_started", "rollback_completed", "rollback_paused", "paused")

VAR_RE = re.compile(r"\$(?:(\$)|\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|([A-Za-z_][A-Za-z0-9_]*))")


# --- facts of one host: one round trip ----------------------------------------------------------

def facts() -> str:
    """The host's swarm state, its address on the network the hosts share (the source address of
    its default route: the interface a VPS's peers reach it on), its hostname, and whether the kernel
    has IPVS (the routing mesh and service VIPs need it)."""
    return "; ".join([
        "printf 'swarm=%s\\n' \"$(docker info --format '{{json .Swarm}}' 2>/dev/null)\"",
        "printf 'address=%s\\n' \"$(ip -4 route get 1.1.1.1 2>/dev/null | awk '{for (i = 1; i < NF; i++) if ($i == \"src\") "
        "{print $(i + 1); exit}}')\"",
        "printf 'first_address=%s\\n' \"$(hostname -I 2>/dev/null | awk '{print $1}')\"",
        "printf 'hostname=%s\\n' \"$(hostname)\"",
        "printf 'ipvs=%s\\n' \"$([ -e /proc/net/ip_vs ] && echo yes || echo no)\"",
        "printf 'live_restore=%s\\n' \"$(docker info --format '{{.LiveRestoreEnabled}}' 2>/dev/null)\"",
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
    return {"state": swarm.get("LocalNodeState", "unknown") or "unknown", "manager": bool(swarm.get("ControlAvailable")),
            "node_id": swarm.get("NodeID", ""), "node_addr": swarm.get("NodeAddr", ""), "managers": managers,
            "address": raw.get("address", "").strip() or raw.get("first_address", "").strip(),
            "hostname": raw.get("hostname", "").strip(), "ipvs": raw.get("ipvs", "").strip() == "yes",
            "live_restore": raw.get("live_restore", "").strip() == "true"}


# --- forming the swarm ------------------------------------------------------------------------------

# Swarm mode refuses to start with live-restore on (provision turns it on for a single host: containers
# survive a Docker upgrade). Off in daemon.json, then a reload (SIGHUP: live-restore is reloadable, no
# container restarts). Runs as root through the deploy user's sudo.
LIVE_RESTORE_OFF = ("python3 -c 'import json, os; p = \"/etc/docker/daemon.json\"; "
                    "d = json.load(open(p)) if os.path.exists(p) else {}; d[\"live-restore\"] = False; "
                    "open(p, \"w\").write(json.dumps(d, indent=2) + \"\\n\")' && "
                    "(systemctl reload docker || kill -HUP \"$(pidof dockerd)\")")


FIREWALL_FILE = "/etc/tasktracker-firewall.nft"  # provision's (commands/provision.py): SSH, HTTP, HTTPS only
SWARM_FIREWALL_FILE = "/etc/tasktracker-swarm.nft"


def swarm_firewall(peers: list[str]) -> str:
    """Rules appended to provision's `inet tasktracker` input chain (its policy drops the rest):
    Swarm's ports (2377 management, 7946 gossip, 4789 VXLAN overlay) from the swarm's nodes only."""
    elements = ", ".join(sorted(set(peers)))
    return f"""# Written by `fab cluster.init`: the Swarm ports, from the nodes of the swarm only.
table inet tasktracker {{
    set swarm_peers {{ type ipv4_addr; elements = {{ {elements} }} }}
    chain input {{
        ip saddr @swarm_peers tcp dport {{ 2377, 7946 }} accept
        ip saddr @swarm_peers udp dport {{ 7946, 4789 }} accept
    }}
}}
"""


def open_firewall(peers: list[str], uid: str = "1000") -> str:
    """Write the swarm rules, include them in provision's firewall file (once: it is what the boot
    unit loads, so they survive a reboot) and reload that file; as root. No-op without the file."""
    include = f'include "{SWARM_FIREWALL_FILE}"'
    script = (f"if [ -f {FIREWALL_FILE} ]; then printf %s {q(swarm_firewall(peers))} > {SWARM_FIREWALL_FILE} && "
              f"(grep -qxF {q(include)} {FIREWALL_FILE} || echo {q(include)} >> {FIREWALL_FILE}) && nft -f {FIREWALL_FILE}; fi")
    return script if uid == "0" else f"sudo -n sh -c {q(script)}"


def leave() -> list[str]:
    """A node stuck joining (`pending`) starts over."""
    return ["docker", "swarm", "leave", "--force"]


def live_restore_off(uid: str = "1000") -> str:
    return LIVE_RESTORE_OFF if uid == "0" else f"sudo -n sh -c {q(LIVE_RESTORE_OFF)}"


def init(address: str) -> list[str]:
    return ["docker", "swarm", "init", "--advertise-addr", address]


def join_token(role: str = "worker") -> list[str]:
    return ["docker", "swarm", "join-token", "-q", role]


def join(token: str, manager: str, address: str) -> list[str]:
    return ["docker", "swarm", "join", "--token", token, "--advertise-addr", address, f"{manager}:{SWARM_PORT}"]


def label(node: str, labels: Mapping[str, str]) -> list[str]:
    argv = ["docker", "node", "update"]
    for key, value in labels.items():
        argv += ["--label-add", f"{key}={value}"]
    return [*argv, node]


def availability(node: str, state: str) -> list[str]:
    if state not in ("active", "pause", "drain"):
        raise ValueError(f"availability must be active, pause or drain (got {state!r})")
    return ["docker", "node", "update", "--availability", state, node]


# --- what the swarm runs ---------------------------------------------------------------------------

NODE_FORMAT = "{{.ID}}\t{{.Description.Hostname}}\t{{.Spec.Role}}\t{{.Spec.Availability}}\t{{.Status.State}}\t{{.Status.Addr}}\t{{json .Spec.Labels}}"


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
        + q("{{.Spec.Name}}\t{{if .UpdateStatus}}{{.UpdateStatus.State}}\t{{.UpdateStatus.StartedAt}}{{end}}") + " \"$s\"; done",
        "echo '@@ tasks'",
        f"docker stack ps {q(stack)} --filter desired-state=running --format '{{{{json .}}}}' 2>/dev/null",
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
        nodes.append({"id": parts[0], "hostname": parts[1], "role": parts[2], "availability": parts[3], "state": parts[4],
                      "address": parts[5], "labels": labels, "alias": labels.get(LABEL_ALIAS, "")})
    services: dict[str, dict] = {}
    for line in sections.get("services", []):
        try:
            row = json.loads(line)
        except ValueError:
            continue
        running, desired = parse_replicas(row.get("Replicas", ""))
        services[row.get("Name", "")] = {"mode": row.get("Mode", ""), "replicas": row.get("Replicas", ""),
                                         "running": running, "desired": desired, "image": row.get("Image", ""), "update": "",
                                         "update_started": ""}
    for line in sections.get("updates", []):
        name, _, rest = line.partition("\t")
        state, _, started = rest.partition("\t")
        if name in services:
            services[name]["update"], services[name]["update_started"] = state.strip(), started.strip()
    tasks = []
    for line in sections.get("tasks", []):
        try:
            row = json.loads(line)
        except ValueError:
            continue
        tasks.append({"name": row.get("Name", ""), "node": row.get("Node", ""), "state": row.get("CurrentState", ""),
                      "image": row.get("Image", ""), "error": row.get("Error", "")})
    return {"nodes": nodes, "services": services, "tasks": tasks}


def convergence(services: dict, wanted: list[str] | None = None, before: dict | None = None) -> tuple[str, list[str]]:
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
                 and (old.get("update"), old.get("update_started")) == (s["update"], s["update_started"]))
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


# --- the stack ----------------------------------------------------------------------------------------

def interpolate(text: str, values: Mapping[str, str]) -> str:
    """Compose's `${VAR}`, `${VAR:-default}`, `${VAR-default}`, `${VAR:?error}`, `${VAR?error}`, `$VAR`
    from `values`; `$$` stays `$$` and a `$` inside a value becomes `$$` (the CLI reads both as `$`).
    ValueError for a required variable that is missing."""
    def sub(m: re.Match) -> str:
        if m.group(1):
            return "$$"
        name = m.group(2) or m.group(5)
        op, arg = m.group(3) or "", m.group(4) or ""
        value = values.get(name)
        if op == ":-" and not value or op == "-" and value is None:
            value = arg
        elif op in (":?", "?") and (value is None or op == ":?" and not value):
            raise ValueError(f"{name}: {arg or 'must be set'}")
        return (value or "").replace("$", "$$")

    return VAR_RE.sub(sub, text)


def _interpolated(node, values: Mapping[str, str]):
    if isinstance(node, str):
        return interpolate(node, values)
    if isinstance(node, list):
        return [_interpolated(v, values) for v in node]
    if isinstance(node, dict):
        return {k: _interpolated(v, values) for k, v in node.items()}
    return node


def _environment(env) -> dict:
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return dict(env or {})


def _port(entry, mode: str) -> dict | None:
    """One published port in the long form with its mode; None for a port bound to an address (a
    loopback port for the host's own tools has no meaning in a swarm: reach the service over the
    overlay network instead)."""
    if isinstance(entry, dict):
        if entry.get("host_ip"):
            return None
        return {**{k: v for k, v in entry.items() if k != "host_ip"}, "mode": mode}
    parts = str(entry).split(":")
    if len(parts) > 2:
        return None
    target, _, protocol = parts[-1].partition("/")
    port = {"target": int(target), "protocol": protocol or "tcp", "mode": mode}
    if len(parts) == 2:
        port["published"] = int(parts[0])
    return port


def _merge(base, override, path: str = ""):
    """Compose's merge of one value by a later file's: mappings merge key by key, `ports` add up,
    service `volumes` replace by target, `environment` merges by name, any other list or value
    (command, entrypoint, healthcheck.test, constraints ...) is replaced."""
    if isinstance(base, dict) and isinstance(override, dict):
        out = dict(base)
        for key, value in override.items():
            sub = f"{path}.{key}" if path else key
            if key not in out:
                out[key] = value
            elif key == "environment" and path.count(".") == 1:
                out[key] = {**_environment(out[key]), **_environment(value)}
            elif key == "ports" and path.count(".") == 1:
                out[key] = [*out[key], *[p for p in value if p not in out[key]]]
            elif key == "volumes" and path.count(".") == 1:
                targets = {_mount_target(v) for v in value}
                out[key] = [v for v in out[key] if _mount_target(v) not in targets] + list(value)
            else:
                out[key] = _merge(out[key], value, sub)
        return out
    return override


def _mount_target(entry) -> str:
    if isinstance(entry, dict):
        return str(entry.get("target", ""))
    parts = str(entry).split(":")
    return parts[1] if len(parts) > 1 else parts[0]


def render_stack(docs: list[dict], values: Mapping[str, str], *, mesh: bool) -> dict:
    """The one stack file for `docker stack deploy`, from the compose files in order (swarm.yml
    last), merged here as Compose merges them (the stack CLI's own merge appends `command` lists and
    keeps both mounts at one target): interpolated, Compose-only keys dropped, `env_file` replaced by
    the values; without the routing mesh (`mesh`: the kernel has IPVS) every service resolves by DNS
    round robin (`endpoint_mode: dnsrr`) and publishes in host mode."""
    profiled = {name for doc in docs for name, s in (doc.get("services") or {}).items() if (s or {}).get("profiles")}
    merged: dict = {}
    for doc in docs:
        doc = {k: v for k, v in _interpolated(copy.deepcopy(doc), values).items()
               if k not in ("version", "name") and not k.startswith("x-")}
        for name, service in (doc.get("services") or {}).items():
            service = dict(service or {})
            if "env_file" in service:  # before this file's own environment, which wins over it
                service.pop("env_file")
                escaped = {k: str(v).replace("$", "$$") for k, v in values.items()}
                service["environment"] = {**escaped, **_environment(service.get("environment"))}
            doc["services"][name] = service
        merged = _merge(merged, doc)
    services = {}
    for name, service in (merged.get("services") or {}).items():
        if name in profiled:
            continue
        service = {k: v for k, v in service.items() if k not in DROPPED_KEYS}
        if "tmpfs" in service:  # the stack ignores the key: tmpfs volumes instead
            tmpfs = [_tmpfs_volume(entry) for entry in service.pop("tmpfs")]
            service["volumes"] = [*service.get("volumes", []), *tmpfs]
        if name in PIDS_LIMITS:
            deploy = service["deploy"] = dict(service.get("deploy") or {})
            resources = deploy["resources"] = dict(deploy.get("resources") or {})
            resources["limits"] = {**(resources.get("limits") or {}), "pids": PIDS_LIMITS[name]}
        if "ports" in service:
            ports = [p for p in (_port(e, "ingress" if mesh else "host") for e in service["ports"]) if p]
            service["ports"] = ports
            if not ports:
                service.pop("ports")
        if not mesh:
            service["deploy"] = {**service.get("deploy", {}), "endpoint_mode": "dnsrr"}
        services[name] = service
    return {"version": STACK_FORMAT, **{k: v for k, v in merged.items() if k != "services"}, "services": services}


def _tmpfs_volume(entry: str) -> dict:
    """A `tmpfs:` entry (`/path` or `/path:size=BYTES`) as the long-syntax tmpfs volume a stack
    applies."""
    target, _, options = str(entry).partition(":")
    sizes = [o.removeprefix("size=") for o in options.split(",") if o.startswith("size=")]
    size = {"tmpfs": {"size": int(sizes[0])}} if sizes else {}
    return {"type": "tmpfs", "target": target, **size}


class _StackDumper(yaml.SafeDumper):
    """Quotes the strings YAML 1.1 reads as booleans (`y`, `n`, ...), which PyYAML (YAML 1.2's
    booleans) leaves bare but the Docker CLI's parser turns into true/false."""


def _str(dumper: yaml.SafeDumper, value: str):
    style = "'" if value.lower() in ("y", "n", "yes", "no", "on", "off", "true", "false") else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_StackDumper.add_representer(str, _str)


def dump_stack(rendered: dict) -> str:
    """The stack file's text, for `docker stack deploy`."""
    return yaml.dump(rendered, Dumper=_StackDumper, sort_keys=False)


def service_environment(rendered: dict, service: str) -> dict:
    """The service's environment as its containers see it (`$$` read as `$`, as the CLI does): what
    the one-off migration container gets."""
    env = _environment(((rendered.get("services") or {}).get(service) or {}).get("environment"))
    return {k: "" if v is None else str(v).replace("$$", "$") for k, v in env.items()}


def migration_environment(rendered: dict) -> dict:
    """The one-off migration container's environment: the API's, but logged in as the schema's owner
    (POSTGRES_USER and its password, as the postgres service has them), not as the app role the API
    and the worker connect as."""
    owner = service_environment(rendered, "postgres")
    return {**service_environment(rendered, "api"),
            **{key: owner[key] for key in ("POSTGRES_USER", "POSTGRES_PASSWORD") if key in owner}}


def only_services(rendered: dict, names: set[str]) -> dict:
    """The same stack with only `names` (the data services, deployed and awaited before migrating)."""
    return {**rendered, "services": {k: v for k, v in rendered["services"].items() if k in names}}


def docker_env_file(env: Mapping[str, str]) -> str:
    """`docker run --env-file` text: KEY=value, taken literally (no quoting: the values hold no line
    breaks, envfile.quote refuses them)."""
    return "".join(f"{k}={v}\n" for k, v in env.items())


def stack_dir(ctx: HostContext, release_id: str) -> str:
    """The rendered stack files of a release: beside its settings (0700 directory, 0600 files)."""
    return f"{ctx.env_dir}/{release_id}.stack"


def stack_file(ctx: HostContext, release_id: str, name: str = "stack") -> str:
    return f"{stack_dir(ctx, release_id)}/{name}.yml"


def prepare_stack_dir(ctx: HostContext, release_id: str) -> list[str]:
    return ["install", "-d", "-m", "700", stack_dir(ctx, release_id)]


def network(stack: str) -> str:
    """The stack's default overlay network (attachable in swarm.yml, so one-off containers join it)."""
    return f"{stack}_default"


def stack_deploy(stack: str, files: list[str], registry: bool = False) -> list[str]:
    """Images are never resolved to a digest: their tags name their content. Shipped images are on every
    node; with a registry, the nodes pull the built ones, with the manager's login (`--with-registry-auth`)."""
    argv = ["docker", "stack", "deploy", "--resolve-image", "never", *(["--with-registry-auth"] if registry else [])]
    for f in files:
        argv += ["-c", f]
    return [*argv, stack]


def migrate(ctx: HostContext, release_id: str, stack: str, image: str) -> list[str]:
    """Alembic once, in a one-off container of the release's image on the stack's network (on the
    manager; Postgres answers by its service name wherever it runs)."""
    return ["docker", "run", "--rm", "--network", network(stack), "--env-file", f"{stack_dir(ctx, release_id)}/migrate.env",
            image, "alembic", "upgrade", "head"]


APP_ROLE_FILE = "app-role.sql"  # beside migrate.env in the release's stack directory (0600)


def ensure_app_role(ctx: HostContext, release_id: str, stack: str, postgres_image: str) -> str:
    """The app role and its grants (commands/db.app_role_sql, the release's APP_ROLE_FILE), applied
    once as the owner from a one-off container of the Postgres image on the stack's network, with
    the migration's environment (the owner's login; psql reads its password from the
    environment)."""
    d = stack_dir(ctx, release_id)
    psql = ('PGPASSWORD="$POSTGRES_PASSWORD" exec psql -X -q -v ON_ERROR_STOP=1 '
            '-h "$POSTGRES_HOST" -U "$POSTGRES_USER" -d "$POSTGRES_DB"')
    argv = ["docker", "run", "--rm", "-i", "--network", network(stack),
            "--env-file", f"{d}/migrate.env", "--entrypoint", "sh", postgres_image, "-c", psql]
    return f"{sh(argv)} < {q(f'{d}/{APP_ROLE_FILE}')} >/dev/null"


def nginx_reload(stack: str) -> str:
    """HUP nginx's master in the entry node's nginx task (this host: nginx is placed on it)."""
    container = f"docker ps -q --filter label=com.docker.swarm.service.name={q(stack + '_nginx')} | head -n 1"
    return f"c=$({container}); if [ -n \"$c\" ]; then docker exec \"$c\" kill -HUP 1; else echo 'no nginx task here' >&2; exit 1; fi"


def remove_stack(stack: str) -> list[str]:
    return ["docker", "stack", "rm", stack]


def describe(command: list[str], secrets: list[str]) -> str:
    """A command line for messages, with the join token and other secrets shown as [REDACTED]."""
    line = sh(command)
    for s in secrets:
        if s:
            line = line.replace(s, "[REDACTED]")
    return line
