"""The stack file for `docker stack deploy` (commands/cluster.py runs it), rendered from the same
compose.yml + docker-compose.production.yml the single host runs, plus swarm.yml. Nothing here
opens a connection.

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
import re
from collections.abc import Mapping

import yaml

from .compose import PIDS_LIMITS

# Compose file format 3.9: every key the stack uses; its `deploy.resources.limits.pids` (the
# services' `pids_limit`, which format 3 does not know) needs Docker Engine 20.10 (API 1.41).
STACK_FORMAT = "3.9"
DROPPED_KEYS = ("build", "restart", "container_name", "security_opt", "depends_on", "profiles")
VAR_RE = re.compile(r"\$(?:(\$)|\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}"
                    r"|([A-Za-z_][A-Za-z0-9_]*))")


def interpolate(text: str, values: Mapping[str, str]) -> str:
    """Compose's `${VAR}`, `${VAR:-default}`, `${VAR-default}`, `${VAR:?error}`, `${VAR?error}`,
    `$VAR` from `values`; `$$` stays `$$` and a `$` inside a value becomes `$$` (the CLI reads both
    as `$`). ValueError for a required variable that is missing."""
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
    keeps both mounts at one target): interpolated, Compose-only keys dropped, `env_file` replaced
    by the values; without the routing mesh (`mesh`: the kernel has IPVS) every service resolves by
    DNS round robin (`endpoint_mode: dnsrr`) and publishes in host mode."""
    profiled = {name for doc in docs for name, s in (doc.get("services") or {}).items()
                if (s or {}).get("profiles")}
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
        service = with_limits(name, {k: v for k, v in service.items() if k not in DROPPED_KEYS})
        if "ports" in service:
            ports = [p for p in (_port(e, "ingress" if mesh else "host") for e in service["ports"])
                     if p]
            service["ports"] = ports
            if not ports:
                service.pop("ports")
        if not mesh:
            service["deploy"] = {**service.get("deploy", {}), "endpoint_mode": "dnsrr"}
        services[name] = service
    return {"version": STACK_FORMAT, **{k: v for k, v in merged.items() if k != "services"},
            "services": services}


def with_limits(name: str, service: dict) -> dict:
    """The service with its pids limit, and its `tmpfs:` (a stack ignores it) as tmpfs volumes."""
    if "tmpfs" in service:
        tmpfs = [_tmpfs_volume(entry) for entry in service.pop("tmpfs")]
        service["volumes"] = [*service.get("volumes", []), *tmpfs]
    if name in PIDS_LIMITS:
        deploy = service["deploy"] = dict(service.get("deploy") or {})
        resources = deploy["resources"] = dict(deploy.get("resources") or {})
        resources["limits"] = {**(resources.get("limits") or {}), "pids": PIDS_LIMITS[name]}
    return service


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
    """The same stack with only `names` (the data services, deployed and awaited before
    migrating)."""
    return {**rendered, "services": {k: v for k, v in rendered["services"].items() if k in names}}


def docker_env_file(env: Mapping[str, str]) -> str:
    """`docker run --env-file` text: KEY=value, taken literally (no quoting: the values hold no line
    breaks, envfile.quote refuses them)."""
    return "".join(f"{k}={v}\n" for k, v in env.items())
