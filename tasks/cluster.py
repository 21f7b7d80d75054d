"""Several hosts as one Docker Swarm (README, "Several hosts: Docker Swarm"):

    fab -H vps1,vps2,vps3 cluster.init     first host: manager (data + entry node); the others join
    fab -H vps1 cluster.deploy             the release as a stack: images to every node, migrate once,
                                           `docker stack deploy` (rolling, start-first, auto-rollback)
    fab -H vps1 cluster.status             nodes, roles, availability, labels, services, tasks per node
    fab -H vps1 cluster.drain vps2         move its tasks away (maintenance); `cluster.activate vps2`

Commands and parsers: tasks/commands/cluster.py. The stack is compose.yml +
docker-compose.production.yml + swarm.yml, rendered for `docker stack deploy`.
"""

from __future__ import annotations

import re
import time
from dataclasses import fields
from datetime import datetime, timezone
from pathlib import Path

import yaml
from dotenv import dotenv_values
from fabric import Connection
from invoke import Collection, Exit, task

from . import machine, remote
from .build import FRONTEND, git_commit, tree_hash
from .commands import cluster as commands
from .commands import compose as compose_commands
from .commands import images as image_commands
from .commands import pitr as pitr_commands
from .commands import release as release_commands
from .commands import rollout, sh
from .exits import ExitCode
from .host import WAIT_HELP, Host, Release, absolute_app_dir
from .identity import identity, now_iso
from .settings import ENV_HELP, PROJECT_ROOT, Settings, choose_env, env_file_path
from .steps import StepFailed, Steps, redact

STACK_SOURCES = ("compose.yml", "docker-compose.production.yml", "swarm.yml")
SENT_PATHS = (*STACK_SOURCES, "nginx", "backend", "frontend/dist", release_commands.PROBE_PATH)
RSYNC_EXCLUDES = ("__pycache__", "*.pyc", ".pytest_cache", ".gitkeep")
DATA_SERVICES = {"postgres", "nats"}

# `fab -H a,b,c cluster.init` runs the task once per host, in order, in one process: the first host
# becomes (or already is) the manager, and what the others need to join is kept here between calls.
_joining: dict = {}


def read_facts(conn) -> dict:
    result = conn.run(commands.facts(), hide=True, warn=True)
    return commands.parse_facts(result.stdout)


def swarm_ready(conn, name: str, host_facts: dict) -> dict:
    """Live-restore off (swarm mode refuses it), waiting for Docker to take the reload; the new facts."""
    if not host_facts["live_restore"] or host_facts["state"] == "active":
        return host_facts
    result = conn.run(commands.live_restore_off(), hide=True, warn=True)
    if not result.ok:
        raise Exit(f"{name}: could not turn Docker's live-restore off (swarm mode refuses it): {result.stderr.strip()[-300:]}. "
                   f"Set \"live-restore\": false in /etc/docker/daemon.json and `systemctl reload docker`, then run again.",
                   code=ExitCode.HOST_NOT_READY)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        host_facts = read_facts(conn)
        if not host_facts["live_restore"]:
            print(f"{name}: Docker's live-restore turned off (swarm mode needs it off)")
            return host_facts
        time.sleep(0.5)
    raise Exit(f"{name}: Docker still reports live-restore on after a reload.", code=ExitCode.HOST_NOT_READY)


def firewall(conn, name: str, peers: list[str]) -> None:
    result = conn.run(commands.open_firewall(peers), hide=True, warn=True)
    if not result.ok:
        raise Exit(f"{name}: could not open Swarm's ports to the other nodes in the host firewall: "
                   f"{result.stderr.strip()[-300:]}", code=ExitCode.HOST_NOT_READY)


def manager_status(conn, stack: str) -> dict:
    return commands.parse_status(conn.run(commands.status(stack), hide=True, warn=True).stdout)


@task(help={
    "address": "Advertise this address instead of the host's own on the shared network (its default route's source).",
    "data": "The -H name of the data node (Postgres, NATS and their volumes; labelled tasktracker.data): default, the manager.",
})
def init(c, address=None, data=None):
    """Form the swarm: the first -H host becomes the manager, the others join as workers (idempotent)."""
    conn = remote.connect(c)
    name = conn.original_host
    host_facts = swarm_ready(conn, name, read_facts(conn))
    own = address if (address and not _joining) else host_facts["address"]
    if not own:
        raise Exit(f"Could not find {name}'s address on the network the hosts share (no default route, `hostname -I` "
                   f"empty). Pass --address. Nothing was changed.", code=ExitCode.HOST_NOT_READY)
    if not _joining:  # the manager
        if host_facts["state"] == "active":
            if not host_facts["manager"]:
                raise Exit(f"{name} is already a worker in a swarm: run cluster.init with its manager first in -H. "
                           f"Nothing was changed.", code=ExitCode.USAGE)
            print(f"{name}: already in the swarm (manager, {host_facts['node_addr']})")
            manager_address = host_facts["node_addr"] or own
        else:
            conn.run(sh(commands.init(own)), hide=True)
            print(f"{name}: swarm initialised, manager at {own}")
            manager_address = own
        node = host_facts["hostname"]
        peers = [n["address"] for n in manager_status(conn, "")["nodes"] if n["address"]] or [manager_address]
        firewall(conn, name, peers)
        labels = {commands.LABEL_ALIAS: name, commands.LABEL_ENTRY: "true"}
        if data in (None, name):
            labels[commands.LABEL_DATA] = "true"
        conn.run(sh(commands.label(node, labels)), hide=True)
        token = conn.run(sh(commands.join_token("worker")), hide=True).stdout.strip()
        _joining.update(manager=conn, manager_address=manager_address, token=token, data=data, peers=peers,
                        members=[(name, conn)])
        return
    manager = _joining["manager"]
    # Every node accepts Swarm's ports from every other one: this one's address joins the set everywhere.
    _joining["peers"] = sorted(set(_joining["peers"]) | {own, _joining["manager_address"]})
    for member_name, member in [*_joining["members"], (name, conn)]:
        firewall(member, member_name, _joining["peers"])
    _joining["members"].append((name, conn))
    if host_facts["state"] not in ("active", "inactive"):  # pending, error: a join that did not finish
        conn.run(sh(commands.leave()), hide=True, warn=True)
        host_facts["state"] = "inactive"
    if host_facts["state"] == "active":
        print(f"{name}: already in the swarm ({'manager' if host_facts['manager'] else 'worker'}, {host_facts['node_addr']})")
    else:
        command = commands.join(_joining["token"], _joining["manager_address"], own)
        result = conn.run(sh(command), hide=True, warn=True)
        if not result.ok:
            raise Exit(f"{name} could not join the swarm at {_joining['manager_address']}: {result.stderr.strip()[-300:]} "
                       f"(ran: {commands.describe(command, [_joining['token']])}). The nodes before it are in the swarm.",
                       code=ExitCode.FAILED)
        print(f"{name}: joined the swarm as a worker ({own})")
    labels = {commands.LABEL_ALIAS: name}
    if _joining.get("data") == name:
        labels[commands.LABEL_DATA] = "true"
    node = read_facts(conn)["node_id"] or host_facts["hostname"]
    manager.run(sh(commands.label(node, labels)), hide=True)


@task(help={"env": ENV_HELP})
def status(c, env=None):
    """The swarm: nodes (role, availability, state, labels), the stack's services and tasks per node."""
    choose_env(c, env)
    settings = Settings.from_context(c)
    conn = remote.connect(c)
    state = manager_status(conn, settings.compose_project)
    if not state["nodes"]:
        raise Exit(f"{conn.original_host} is not a swarm manager (`docker node ls` answered nothing). Run "
                   f"`fab -H MANAGER,WORKER... cluster.init` first, or ask the manager.", code=ExitCode.HOST_NOT_READY)
    print(f"Swarm seen from {conn.original_host}: {len(state['nodes'])} node(s)")
    per_node = commands.tasks_per_node(state["tasks"])
    for n in state["nodes"]:
        labels = ",".join(f"{k.split('.', 1)[-1]}" for k, v in sorted(n["labels"].items()) if v == "true")
        print(f"  {n['alias'] or n['hostname']:14} {n['role']:8} {n['availability']:7} {n['state']:6} {n['address']:15} "
              f"{labels or '-':11} {' '.join(per_node.get(n['hostname'], [])) or '(no tasks)'}")
    print(f"Stack {settings.compose_project}: {len(state['services'])} service(s)")
    for name, s in sorted(state["services"].items()):
        print(f"  {name:32} {s['replicas']:8} {s['update'] or '-':20} {s['image']}")
    verdict, reasons = commands.convergence(state["services"])
    print(f"state: {verdict}" + (f" ({'; '.join(reasons)})" if reasons else ""))


def _set_availability(c, node_name: str, wanted: str) -> None:
    conn = remote.connect(c)
    state = manager_status(conn, "")
    node = commands.find_node(state["nodes"], node_name)
    if node is None:
        known = ", ".join(n["alias"] or n["hostname"] for n in state["nodes"]) or "none (not a manager?)"
        raise Exit(f"No node {node_name!r} in the swarm seen from {conn.original_host} (nodes: {known}). Nothing was changed.",
                   code=ExitCode.USAGE)
    conn.run(sh(commands.availability(node["id"], wanted)), hide=True)
    print(f"{node['alias'] or node['hostname']}: availability {node['availability']} -> {wanted}"
          + (" (its tasks move to the other nodes; `cluster.activate` takes it back)" if wanted == "drain" else ""))


@task(help={"node": "The node: its SSH alias (as given to cluster.init), hostname or ID."})
def drain(c, node):
    """Move every task off a node (maintenance, a node to remove): run on the manager."""
    _set_availability(c, node, "drain")


@task(help={"node": "The node: its SSH alias (as given to cluster.init), hostname or ID."})
def activate(c, node):
    """Let the scheduler use a drained or paused node again."""
    _set_availability(c, node, "active")


# --- cluster.deploy ---------------------------------------------------------------------------------

def release_values(settings: Settings, env_file: Path | None, app_root: str) -> dict[str, str]:
    """The release's settings (the same keys the single-host deploy writes into .env)."""
    values: dict[str, str] = {}
    if env_file and env_file.is_file():
        values.update({k: v for k, v in dotenv_values(env_file).items() if v is not None})
    for f in fields(Settings):
        value = getattr(settings, f.name)
        values[Settings.env_key(f.name)] = value.reveal() if hasattr(value, "reveal") else str(value)
    values["APP_ROOT"] = app_root
    return values


def backend_image(project: str) -> str:
    return f"{project}-backend:{tree_hash(PROJECT_ROOT / 'backend', {'__pycache__', '.pytest_cache'})[:12]}"


def node_hosts(manager: Host, nodes: list[dict]) -> list[tuple[dict, Host]]:
    """Every node, opened over SSH by the alias it joined with (the manager's own connection for it)."""
    out = []
    for node in nodes:
        alias = node["alias"]
        if alias == manager.name:
            out.append((node, manager))
            continue
        if not alias:
            raise StepFailed("images on every node", f"node {node['hostname']} has no {commands.LABEL_ALIAS} label, so it "
                                                     f"cannot be reached to ship images: join it with cluster.init")
        if node["state"] != "ready" or node["availability"] == "drain":
            print(f"   {alias}: {node['state']}/{node['availability']}: skipped (gets images when it is back: deploy again)")
            continue
        out.append((node, Host.open(Connection(alias, config=manager.conn.config), manager.settings)))
    return out


def ship_to_nodes(manager: Host, nodes: list[dict], images: list[str], built: list[tuple[str, Path]]) -> None:
    """Every node that lacks an image gets it over SSH (no registry): `docker save | docker load`;
    `built` (image, build directory) are built here first when this machine lacks them."""
    for image, context in built:
        if not machine.ok(["docker", "image", "inspect", image]):
            print(f"   building {image} here", flush=True)
            result = machine.run(image_commands.local_build(image, context), check=False)
            if result.returncode:
                raise StepFailed(f"build {context.name} image here", result.stderr.strip()[-800:])
    for _node, host in node_hosts(manager, nodes):
        missing = [i for i in images if i not in host.images_present(images)]
        if missing:
            host.ship_images(missing)
        else:
            print(f"   {host.name}: has all {len(images)} images")


def ensure_archive(manager: Host, nodes: list[dict], stack: str) -> None:
    """pgBackRest's stanza (and first full backup) on the data node, where Postgres runs."""
    data = [(node, host) for node, host in node_hosts(manager, nodes) if node["labels"].get(commands.LABEL_DATA) == "true"]
    if not data:
        raise StepFailed("WAL archive", f"no reachable node has the label {commands.LABEL_DATA}=true")
    node, host = data[0]
    container = f"docker ps -q --filter label=com.docker.swarm.service.name={commands.q(stack + '_postgres')} | head -n 1"
    out = host.run(pitr_commands.ensure_stanza(host.ctx, container), "WAL archive", hide=True).stdout
    state = release_commands.parse_facts("\n".join(line[len("@@fact "):] for line in out.splitlines() if line.startswith("@@fact ")))
    print(f"   {node['alias'] or node['hostname']}: WAL archive {state.get('pitr', 'unknown')}")


def wait_converged(host: Host, stack: str, services: list[str] | None, timeout: float, what: str) -> float:
    started = time.monotonic()
    reasons: list[str] = []
    while time.monotonic() - started < timeout:
        verdict, reasons = commands.convergence(manager_status(host.conn, stack)["services"],
                                                [f"{stack}_{s}" for s in services] if services else None)
        if verdict == "done":
            return time.monotonic() - started
        if verdict == "failed":
            raise StepFailed(what, f"Swarm rolled the update back: {'; '.join(reasons)}. The previous release's tasks "
                                   f"keep serving; see `docker service ps {stack}_api --no-trunc` on {host.name}.")
        time.sleep(2)
    raise StepFailed(what, f"not converged after {timeout:.0f}s: {'; '.join(reasons)}")


def load_sources(root: Path) -> list[dict]:
    return [yaml.safe_load((root / name).read_text()) or {} for name in STACK_SOURCES]


@task(help={
    "mesh": "Publish through Swarm's routing mesh (auto: when the manager's kernel has IPVS; yes; no: dnsrr + host mode).",
    "wait": WAIT_HELP,
    "env": ENV_HELP,
    "timeout": "Seconds to wait for the services to converge.",
})
def deploy(c, mesh="auto", wait=False, env=None, timeout=300):
    """Deploy the release to the swarm as a stack: rolling, health-checked, rolled back by Swarm on failure.

    Deploys the frontend/dist already built (`invoke build` first) and builds the backend image here."""
    if mesh not in ("auto", "yes", "no"):
        raise Exit(f"--mesh must be auto, yes or no (got {mesh!r}).", code=ExitCode.USAGE)
    remote.require_host(c)
    choose_env(c, env)
    settings = Settings.from_context(c)
    env_file = env_file_path(c)
    if not (FRONTEND / "dist" / "index.html").is_file():
        raise Exit("frontend/dist/index.html is missing: run `invoke build` first. Nothing was changed.", code=ExitCode.USAGE)
    steps = Steps(f"Cluster deploy via {c.original_host}", settings.secret_values())
    try:
        with steps.step("connect to the manager"):
            host = Host.open(c, settings, steps=steps)
            swarm = read_facts(host.conn)
            if not swarm["manager"]:
                raise Exit(f"{host.name} is not a swarm manager: run `fab -H {host.name},... cluster.init` first. "
                           f"Nothing was changed.", code=ExitCode.HOST_NOT_READY)
        with host.locked("cluster.deploy", wait=wait), host.audited("cluster.deploy") as outcome:
            run_cluster_deploy(host, env_file, outcome, swarm["ipvs"] if mesh == "auto" else mesh == "yes", timeout)
    except StepFailed as failure:
        print_rows(steps)
        raise Exit(redact(f"Cluster deploy via {c.original_host} failed at step '{failure.step}': {failure.detail}",
                          settings.secret_values()), code=ExitCode.FAILED) from None
    print_rows(steps)


def print_rows(steps: Steps) -> None:
    print("\n" + "\n".join(f"  {name:40} {seconds:6.1f}s  {result}" for name, seconds, result in steps.rows), flush=True)


def run_cluster_deploy(host: Host, env_file: Path | None, outcome: dict, mesh: bool, timeout: float) -> None:
    ctx, stack, steps = host.ctx, host.ctx.project, host.steps
    image = backend_image(stack)
    postgres = image_commands.postgres_image(PROJECT_ROOT, stack)
    current = host.current_id
    rid = f"{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%SZ')}-{(git_commit() or 'nogit')[:12]}"
    outcome["release"] = rid
    assets = tuple(sorted(set(re.findall(r'(?:src|href)="(/assets/[^"]+)"', (FRONTEND / "dist" / "index.html").read_text()))))
    values = {**release_values(host.settings, env_file, absolute_app_dir(host.facts, ctx.app_dir)),
              "BACKEND_IMAGE": image, **({"POSTGRES_IMAGE": postgres} if postgres else {}), "RELEASE_ID": rid}
    try:
        rendered = commands.render_stack(load_sources(PROJECT_ROOT), values, mesh=mesh)
    except ValueError as err:
        raise Exit(f"The stack files need a setting: {err}. Nothing was changed.", code=ExitCode.USAGE) from None
    release = Release(rid, image, assets, previous=current, result="deploying",
                      meta={"release": rid, "deployed_at": now_iso(), "commit": identity()["commit"], "engine": "swarm"})
    print(f"Release {rid} -> stack {stack} via {host.name} ({'routing mesh' if mesh else 'dnsrr + host-mode ports: no IPVS'})")
    with steps.step("prepare release"):
        host.run(release_commands.prepare(ctx, rid, compose_commands.release_override(image, rid)) + " && "
                 + sh(commands.prepare_stack_dir(ctx, rid)), "prepare release")
        stack_file, data_file = commands.stack_file(ctx, rid), commands.stack_file(ctx, rid, "data")
        host.put_text(commands.dump_stack(rendered), stack_file)
        host.put_text(commands.dump_stack(commands.only_services(rendered, DATA_SERVICES)), data_file)
        host.put_text(commands.docker_env_file(commands.service_environment(rendered, "api")),
                      f"{commands.stack_dir(ctx, rid)}/migrate.env")
        host.run(f"chmod 600 {commands.q(commands.stack_dir(ctx, rid))}/*", "protect stack files")
        host.run(release_commands.write_meta(ctx, rid, release.recorded("deploying")), "record release")
    with steps.step("upload files (rsync)"):
        result = remote.rsync(host.conn, sources=list(SENT_PATHS), remote_path=f"{ctx.release_dir(rid)}/", cwd=str(PROJECT_ROOT),
                              relative=True, excludes=RSYNC_EXCLUDES, link_dest=f"../{current}" if current else None, delete=False)
        if not result.ok:
            raise StepFailed("upload files", f"rsync exit {result.exited}: {result.stderr.strip()[-800:]}")
    nodes = manager_status(host.conn, stack)["nodes"]
    with steps.step("images on every node"):
        built = image_commands.built_images(PROJECT_ROOT, image, postgres)
        ship_to_nodes(host, nodes, [*image_commands.stack_images(PROJECT_ROOT), *(i for i, _ in built)], built)
    with steps.step("start postgres and nats"):
        host.run(sh(commands.stack_deploy(stack, [data_file])), "deploy data services")
        print(f"   ready in {wait_converged(host, stack, sorted(DATA_SERVICES), timeout, 'start postgres and nats'):.1f}s")
    if postgres:
        with steps.step("WAL archive (point-in-time recovery)"):
            ensure_archive(host, nodes, stack)
    with steps.step("migrate database (once)"):
        host.run(sh(commands.migrate(ctx, rid, stack, image)), "migrate database", hide=False)
    if not current:
        host.run(rollout.switch_current(ctx, rid), "switch current")  # nginx's config lives in the release
    with steps.step("rolling update (docker stack deploy)"):
        out = host.run(sh(commands.stack_deploy(stack, [stack_file])), "stack deploy")
        for line in out.stdout.splitlines():
            print(f"   {line}")
        print(f"   converged in {wait_converged(host, stack, None, timeout, 'rolling update'):.1f}s")
    with steps.step("switch current and reload nginx"):
        host.run(rollout.switch_current(ctx, rid) + " && " + commands.nginx_reload(stack), "switch current")
    with steps.step("health checks"):
        host.probe(release)
    host.run(release_commands.write_meta(ctx, rid, release.recorded("ok")), "record release")
    print(f"Release {rid} is live on the swarm ({len(nodes)} nodes).")


ns = Collection("cluster")
for t in (init, status, drain, activate, deploy):
    ns.add_task(t)
