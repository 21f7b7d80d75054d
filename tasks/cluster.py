"""Several hosts as one Docker Swarm (docs/several-hosts.md):

    fab -H vps1,vps2,vps3 cluster.init     first host: manager (data + entry node); the others join
    fab -H vps1 deploy                     on a swarm manager: the release as a stack
    (tasks/swarm.py):
                                           images to every node, migrate once, `docker stack deploy`
                                           (rolling, start-first, auto-rollback); so do rollback and
                                           status
    fab -H vps1 cluster.deploy             the same, with --mesh and --timeout
    fab -H vps1 cluster.status             nodes, roles, availability, labels, services, tasks per
    node fab -H vps1 cluster.drain vps2         move its tasks away (maintenance); `cluster.activate
    vps2`

Commands and parsers: tasks/commands/cluster.py; the stack operations: tasks/swarm.py.
"""

from __future__ import annotations

import io

import time

from invoke import Collection, Exit, task

from . import remote
from .build import FRONTEND
from .commands import cluster as commands
from .commands import sh
from .exits import ExitCode
from .host import WAIT_HELP
from . import pipeline
from .engines import open_host
from .swarm import manager_status, summary_lines
from .settings import ENV_HELP, Settings, choose_env, env_file_path
from .steps import StepFailed, Steps

# `fab -H a,b,c cluster.init` runs the task once per host, in order, in one process: the first host
# becomes (or already is) the manager, and what the others need to join is kept here between calls.
_joining: dict = {}


def read_facts(conn, data_path: str = "") -> dict:
    result = conn.run(commands.facts(data_path), hide=True, warn=True)
    return commands.parse_facts(result.stdout)


def swarm_ready(conn, name: str, host_facts: dict) -> dict:
    """Live-restore off (swarm mode refuses it), waiting for Docker to take the reload; the new
    facts."""
    if not host_facts["live_restore"] or host_facts["state"] == "active":
        return host_facts
    result = conn.run(commands.live_restore_off(), hide=True, warn=True)
    if not result.ok:
        raise Exit(f"{name}: could not turn Docker's live-restore off (swarm mode refuses it): "
                   f"{result.stderr.strip()[-300:]}. "
                   "Set \"live-restore\": false in /etc/docker/daemon.json and `systemctl reload "
                   "docker`, then run again.",
                   code=ExitCode.HOST_NOT_READY)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        host_facts = read_facts(conn)
        if not host_facts["live_restore"]:
            print(f"{name}: Docker's live-restore turned off (swarm mode needs it off)")
            return host_facts
        time.sleep(0.5)
    raise Exit(f"{name}: Docker still reports live-restore on after a reload.",
               code=ExitCode.HOST_NOT_READY)


def firewall(conn, name: str, peers: list[str]) -> None:
    result = conn.run(commands.open_firewall(peers), hide=True, warn=True)
    if not result.ok:
        raise Exit(f"{name}: could not open Swarm's ports to the other nodes in the host firewall: "
                   f"{result.stderr.strip()[-300:]}", code=ExitCode.HOST_NOT_READY)


@task(help={
    "address": "Advertise this address instead of the host's own on the shared network (its "
               "default route's source).",
    "data": "The -H name of the data node (Postgres, NATS and their volumes; labelled "
            "tasktracker.data): default, the manager.",
})
def init(c, address=None, data=None):
    """Form the swarm: the first -H host is the manager, the others join as workers (idempotent)."""
    conn = remote.connect(c)
    name = conn.original_host
    data_path = Settings.from_context(c).swarm_data_path
    host_facts = read_facts(conn, data_path)
    if data_path and not host_facts["data_address"]:
        raise Exit(f"{name} has no IPv4 address on {data_path!r} (SWARM_DATA_PATH: the interface "
                   "of the private network the overlay should use, the same name on every node). "
                   "Fix the setting, or empty it to use the advertised address. Nothing was "
                   "changed.", code=ExitCode.USAGE)
    host_facts = {**swarm_ready(conn, name, host_facts),  # which re-reads them
                  "data_address": host_facts["data_address"]}
    own = address if (address and not _joining) else host_facts["address"]
    if not own:
        raise Exit(f"Could not find {name}'s address on the network the hosts share (no default "
                   "route, `hostname -I` "
                   f"empty). Pass --address. Nothing was changed.", code=ExitCode.HOST_NOT_READY)
    if not _joining:  # the manager
        init_manager(conn, name, host_facts, own, data)
    else:
        join_worker(conn, name, host_facts, own)


def init_manager(conn, name: str, host_facts: dict, own: str, data: str | None) -> None:
    """The first -H host: the swarm formed (or found), its firewall, labels, the join token."""
    if host_facts["state"] == "active":
        if not host_facts["manager"]:
            raise Exit(f"{name} is already a worker in a swarm: run cluster.init with its "
                       f"manager first in -H. Nothing was changed.", code=ExitCode.USAGE)
        print(f"{name}: already in the swarm (manager, {host_facts['node_addr']})")
        manager_address = host_facts["node_addr"] or own
    else:
        data_address = host_facts.get("data_address", "")
        conn.run(sh(commands.init(own, data_address)), hide=True)
        print(f"{name}: swarm initialised, manager at {own}"
              + (f", data path {data_address}" if data_address else ""))
        manager_address = own
    node = host_facts["hostname"]
    peers = [n["address"] for n in manager_status(conn, "")["nodes"]
             if n["address"]] or [manager_address]
    peers += [host_facts["data_address"]] if host_facts.get("data_address") else []  # its VXLAN
    firewall(conn, name, peers)
    labels = {commands.LABEL_ALIAS: name, commands.LABEL_ENTRY: "true"}
    if data in (None, name):
        labels[commands.LABEL_DATA] = "true"
    conn.run(sh(commands.label(node, labels)), hide=True)
    token = conn.run(sh(commands.join_token("worker")), hide=True).stdout.strip()
    _joining.update(manager=conn, manager_address=manager_address, token=token, data=data,
                    peers=peers,
                    members=[(name, conn)])


def join_worker(conn, name: str, host_facts: dict, own: str) -> None:
    """Each next -H host: every member's firewall opened to it, joined as a worker, labelled."""
    manager = _joining["manager"]
    # Every node accepts Swarm's ports from every other one: this one's address joins the set
    # everywhere.
    _joining["peers"] = sorted(set(_joining["peers"]) | {own, _joining["manager_address"]}
                               | ({host_facts.get("data_address", "")} - {""}))
    for member_name, member in [*_joining["members"], (name, conn)]:
        firewall(member, member_name, _joining["peers"])
    _joining["members"].append((name, conn))
    # pending, error: a join that did not finish
    if host_facts["state"] not in ("active", "inactive"):
        conn.run(sh(commands.leave()), hide=True, warn=True)
        host_facts["state"] = "inactive"
    if host_facts["state"] == "active":
        print(f"{name}: already in the swarm ({'manager' if host_facts['manager'] else 'worker'}, "
              f"{host_facts['node_addr']})")
    else:
        body = commands.join_body(_joining["token"], _joining["manager_address"], own,
                                  host_facts.get("data_address", ""))
        try:
            result = conn.run(commands.JOIN, in_stream=io.StringIO(body), hide=True, warn=True)
        finally:  # whatever happened, the token that was sent is retired (the next node's is new)
            rotated = manager.run(sh(commands.rotate_join_token("worker")), hide=True, warn=True)
            _joining["token"] = rotated.stdout.strip() if rotated.ok else _joining["token"]
        if not result.ok:
            said = " ".join(f"{result.stdout} {result.stderr}".split())[-300:]
            raise Exit(f"{name} could not join the swarm at {_joining['manager_address']}: {said} "
                       "(the Engine API's swarm join, through curl on its Docker socket; the join "
                       "token was rotated). The nodes before it are in the swarm; run "
                       "cluster.init again.", code=ExitCode.FAILED)
        print(f"{name}: joined the swarm as a worker ({own}); the join token was rotated")
    labels = {commands.LABEL_ALIAS: name}
    if _joining.get("data") == name:
        labels[commands.LABEL_DATA] = "true"
    node = read_facts(conn)["node_id"] or host_facts["hostname"]
    manager.run(sh(commands.label(node, labels)), hide=True)


@task(help={"env": ENV_HELP})
def status(c, env=None):
    """The swarm: nodes (role, availability, state, labels), the stack's services and tasks."""
    choose_env(c, env)
    settings = Settings.from_context(c)
    conn = remote.connect(c)
    state = manager_status(conn, settings.compose_project)
    if not state["nodes"]:
        raise Exit(f"{conn.original_host} is not a swarm manager (`docker node ls` answered "
                   "nothing). Run "
                   f"`fab -H MANAGER,WORKER... cluster.init` first, or ask the manager.",
                   code=ExitCode.HOST_NOT_READY)
    print(f"Seen from {conn.original_host}:")
    print("\n".join(summary_lines(state, settings.compose_project)))


def _set_availability(c, node_name: str, wanted: str) -> None:
    conn = remote.connect(c)
    state = manager_status(conn, "")
    node = commands.find_node(state["nodes"], node_name)
    if node is None:
        known = ", ".join(n["alias"] or n["hostname"]
                          for n in state["nodes"]) or "none (not a manager?)"
        raise Exit(f"No node {node_name!r} in the swarm seen from {conn.original_host} (nodes: "
                   f"{known}). Nothing was changed.",
                   code=ExitCode.USAGE)
    conn.run(sh(commands.availability(node["id"], wanted)), hide=True)
    print(f"{node['alias'] or node['hostname']}: availability {node['availability']} -> {wanted}"
          + (" (its tasks move to the other nodes; `cluster.activate` takes it back)"
             if wanted == "drain" else ""))


@task(help={"node": "The node: its SSH alias (as given to cluster.init), hostname or ID."})
def drain(c, node):
    """Move every task off a node (maintenance, a node to remove): run on the manager."""
    _set_availability(c, node, "drain")


@task(help={"node": "The node: its SSH alias (as given to cluster.init), hostname or ID."})
def activate(c, node):
    """Let the scheduler use a drained or paused node again."""
    _set_availability(c, node, "active")


# --- cluster.deploy -------------------------------------------------------------------------------

@task(help={
    "mesh": "Publish through Swarm's routing mesh (auto: when the manager's kernel has IPVS; yes; "
            "no: dnsrr + host-mode ports).",
    "wait": WAIT_HELP,
    "env": ENV_HELP,
    "timeout": "Seconds to wait for the services to converge.",
    "rotate_tls": "Issue Postgres's and NATS's TLS certificates anew (the swarm's CA stays); the "
                  "services roll onto them.",
})
def deploy(c, mesh="auto", wait=False, env=None, timeout=300, rotate_tls=False):
    """`deploy` on the swarm, with its own flags: the routing mesh, how long to await convergence.

    Deploys the frontend/dist already built (`invoke build` first) and builds the images here."""
    if mesh not in ("auto", "yes", "no"):
        raise Exit(f"--mesh must be auto, yes or no (got {mesh!r}).", code=ExitCode.USAGE)
    remote.require_host(c)
    choose_env(c, env)
    settings = Settings.from_context(c)
    env_file = env_file_path(c)
    if not (FRONTEND / "dist" / "index.html").is_file():
        raise Exit("frontend/dist/index.html is missing: run `invoke build` first. Nothing was "
                   "changed.", code=ExitCode.USAGE)
    steps = Steps(f"Cluster deploy via {c.original_host}", settings.secret_values())
    try:
        with steps.step("connect to the manager"):
            host = open_host(c, settings, steps=steps)
            if host.cluster_state() is None:
                raise Exit((host.engine_problem or f"{host.name} is not a swarm manager "
                                                   f"(ENGINE={settings.engine})") +
                           f" Run `fab -H {host.name},... cluster.init` first. "
                           "Nothing was changed.",
                           code=ExitCode.HOST_NOT_READY)
        host.converge_seconds = float(timeout)
        host.mesh = None if mesh == "auto" else mesh == "yes"
        host.rotate_tls = rotate_tls
        pipeline.deploy(host, env_file, wait=wait, action="cluster.deploy")
    except StepFailed as failure:
        steps.fail(f"Cluster deploy via {c.original_host} failed at step '{failure.step}': "
                   f"{failure.detail}")
    steps.print_table()


ns = Collection("cluster")
for t in (init, status, drain, activate, deploy):
    ns.add_task(t)
