"""Connections: pinned host keys (the jump host's too), no agent forwarding unless asked,
keepalives, clear errors; and rsync with the connection's own user/port/key/known_hosts.

patchwork (Fabric's helper library) pins fabric<3 and fails to import on Invoke 2; the one
helper of it we need, rsync, is built in `tasks/commands/transfer.py`.
"""

from __future__ import annotations

import os
import shlex
import socket
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import paramiko
from fabric import Connection
from invoke import Exit

from .commands import sh
from .commands import transfer
from .exits import ExitCode
from .settings import PROJECT_ROOT

KEEPALIVE_SECONDS = 10
# A link that stops answering fails the operation within about this long instead of hanging
# with the host's lock held (TCP keepalive probes plus a cap on unacknowledged sends).
DEAD_LINK_SECONDS = 45


T = TypeVar("T")
R = TypeVar("R")


def side_by_side(work: Callable[[T], R], items: list[T]) -> list[R]:
    """`work` on each item in a thread of its own (hosts each on a connection of its own: each
    opening or round trip waits on the network and the host), the results in the items' order;
    the first failure, in that order, is raised."""
    if len(items) < 2:
        return [work(item) for item in items]
    with ThreadPoolExecutor(max_workers=len(items)) as pool:
        return list(pool.map(work, items))


def sandbox_dir() -> Path:
    return Path(os.environ.get("TASKTRACKER_SANDBOX_DIR", PROJECT_ROOT / ".sandbox"))


def testhost_dir() -> Path:
    return Path(os.environ.get("TASKTRACKER_TESTHOST_DIR", PROJECT_ROOT / ".testhosts"))


def project_ssh_configs() -> list[Path]:
    """SSH config files the project provides (the sandbox and the VM-like test hosts write one);
    consulted before ~/.ssh/config."""
    return [p for p in (sandbox_dir() / "ssh_config", testhost_dir() / "ssh_config") if p.is_file()]


def require_host(c) -> Connection:
    if not isinstance(c, Connection):
        raise Exit("This task runs on a server: give it one with -H, for example `fab -H vps "
                   "deploy` "
                   "(or `fab -H sandbox deploy` after `invoke sandbox.up`).", code=ExitCode.USAGE)
    return c


def known_hosts_files(conn: Connection) -> list[str]:
    files = conn.ssh_config.get("userknownhostsfile", "~/.ssh/known_hosts").split()
    return [os.path.expanduser(f) for f in files]


def key_files(conn: Connection) -> list[str]:
    keys = conn.connect_kwargs.get("key_filename") or []
    if isinstance(keys, str):
        keys = [keys]
    return [os.path.expanduser(k) for k in keys]


class CountingConnection(Connection):
    """A Connection that counts the remote commands and uploads it performs (deploy reports it)."""

    remote_commands = 0
    rsync_sessions = 0

    def run(self, command, **kwargs):
        CountingConnection.remote_commands += 1
        return super().run(command, **kwargs)

    def put(self, *args, **kwargs):
        CountingConnection.remote_commands += 1
        return super().put(*args, **kwargs)


def connect(c) -> Connection:
    """A connection to the task's host with pinned host keys, opened with clear errors.

    Fabric accepts unknown host keys by default; a deploy tool must not. Host aliases from the
    project's SSH config (the sandbox) are layered in front of the user's own.
    """
    conn = pinned_connection(c)
    open_or_explain(conn)
    keep_alive(conn)
    return conn


def pinned_connection(c) -> Connection:
    """The task's host as a connection not yet open: the project's SSH config layered in front
    of the user's for an alias it defines, host keys pinned."""
    given = require_host(c)
    host = given.original_host
    config = given.config.clone()
    project = paramiko.SSHConfig()
    for path in project_ssh_configs():
        project._config += paramiko.SSHConfig.from_path(str(path))._config
    options = dict(config=config, connect_timeout=given.connect_timeout or 10,
                   connect_kwargs=dict(given.connect_kwargs))
    if set(project.lookup(host)) - {"hostname"}:
        # An alias the project defines (the sandbox): its entry first, then the user's own config.
        layered = paramiko.SSHConfig()
        layered._config = project._config + given.config.base_ssh_config._config
        config.base_ssh_config = layered
        conn = CountingConnection(host, **options)
    else:
        conn = CountingConnection(host, user=given.user, port=given.port, **options)
    conn.forward_agent = forward_agent_wanted()
    pin_host_keys(conn)
    return conn


def open_or_explain(conn: Connection) -> None:
    """Open the connection; each way it fails ends the task with what to do (nothing changed)."""
    target = f"{conn.user}@{conn.host}:{conn.port}"
    alias = conn.original_host
    try:
        conn.open()
    except paramiko.BadHostKeyException:
        raise Exit(f"The host key of {alias} ({conn.host}:{conn.port}) does not match the one "
                   "pinned in "
                   f"{', '.join(known_hosts_files(conn))}. This can mean the server was rebuilt or "
                   "that someone is "
                   "intercepting the connection. Verify the new key with the provider's console, "
                   "replace the old "
                   f"line in known_hosts, and run again. Nothing was changed on the server.",
                   code=ExitCode.HOST_NOT_READY)
    except paramiko.AuthenticationException:
        raise Exit(f"The server {alias} refused the SSH key for {target}. Add your public key to "
                   f"~{conn.user}/.ssh/authorized_keys on the server, or point Fabric at the right "
                   "key "
                   "(IdentityFile in ~/.ssh/config, or `fab -i KEY`). Nothing was changed on the "
                   "server.", code=ExitCode.HOST_NOT_READY)
    except paramiko.SSHException as exc:
        if "known_hosts" in str(exc):
            raise Exit(f"The host key of {alias} ({conn.host}:{conn.port}) is unknown: it is not "
                       "in "
                       f"{', '.join(known_hosts_files(conn))}. Get the key's fingerprint from the "
                       "server itself "
                       "(provider console: `ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub`), "
                       "add the verified "
                       f"line to known_hosts, and run again. Nothing was changed on the server.",
                       code=ExitCode.HOST_NOT_READY)
        raise Exit(f"SSH to {target} failed: {exc}. Check the host and its sshd, then run again. "
                   f"Nothing was changed on the server.", code=ExitCode.HOST_NOT_READY)
    except (OSError, socket.timeout) as exc:
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise Exit(f"Cannot reach {alias} at {conn.host}:{conn.port} ({reason}). Check the host "
                   "name or address "
                   f"and that sshd listens on that port (and, from CI, the DEPLOY_HOST secret). "
                   f"Nothing was changed on the server.", code=ExitCode.HOST_NOT_READY)


def connect_as(conn: Connection, user: str) -> Connection:
    """A second connection to the same host (same address, port, key, pinned host keys) as
    another user: provision proves the deploy user's login with it."""
    other = CountingConnection(conn.host, user=user, port=conn.port, config=conn.config,
                               gateway=conn.gateway,
                               connect_timeout=conn.connect_timeout,
                               connect_kwargs=dict(conn.connect_kwargs))
    pin_host_keys(other, known_hosts_files(conn))
    try:
        other.open()
    except (paramiko.SSHException, OSError) as exc:
        raise Exit(f"Logging in to {conn.original_host} as {user} failed ({exc}). Root and "
                   "password logins were NOT "
                   f"closed. Check {user}'s ~/.ssh/authorized_keys on the host and run provision "
                   "again.",
                   code=ExitCode.FAILED)
    return other


def forward_agent_wanted() -> bool:
    """Agent forwarding lets the host use your keys while connected: off unless asked for
    (TASKTRACKER_FORWARD_AGENT=1), whatever ~/.ssh/config says."""
    return os.environ.get("TASKTRACKER_FORWARD_AGENT", "") in ("1", "yes", "true")


def pin_host_keys(conn: Connection, known_hosts: list[str] | None = None) -> None:
    """Reject unknown host keys on the connection and on every jump host in front of it."""
    files = known_hosts if known_hosts is not None else known_hosts_files(conn)
    hop = conn
    while isinstance(hop, Connection):
        hop.client.set_missing_host_key_policy(paramiko.RejectPolicy())
        for path in files:
            if os.path.isfile(path):
                hop.client.load_host_keys(path)
        hop.forward_agent = forward_agent_wanted()
        hop = hop.gateway


def keep_alive(conn: Connection) -> None:
    """SSH keepalives plus TCP keepalive and a send timeout on the socket, so a half-open link
    ends the task with an error (and the host's lock keeper with it) instead of hanging."""
    transport = conn.transport
    if transport is None:
        return
    transport.set_keepalive(KEEPALIVE_SECONDS)
    sock = transport.sock
    if not isinstance(sock, socket.socket):
        return  # a jump host's channel: its own transport carries the keepalives
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in (("TCP_KEEPIDLE", KEEPALIVE_SECONDS), ("TCP_KEEPINTVL", 5),
                          ("TCP_KEEPCNT", 3),
                          ("TCP_USER_TIMEOUT", DEAD_LINK_SECONDS * 1000)):
        if hasattr(socket, option):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)


def ssh_argv(conn: Connection) -> list[str]:
    """ssh argv for tools (rsync) that must trust and authenticate exactly like this connection."""
    return transfer.ssh_command(port=conn.port, key_files=key_files(conn),
                                     known_hosts=" ".join(known_hosts_files(conn)),
                                config_file="/dev/null")


def rsync_command(conn: Connection, sources: list[str], remote_path: str, *, cwd: str | None = None,
                  **options) -> str:
    """The local shell line that rsyncs `sources` to `remote_path` on the connection's host."""
    destination = f"{conn.user}@{conn.host}:{remote_path}"
    command = sh(transfer.rsync(sources, destination, ssh_command=ssh_argv(conn), **options))
    return f"cd {shlex.quote(cwd)} && {command}" if cwd else command


def rsync(conn: Connection, sources: list[str], remote_path: str, *, cwd: str | None = None,
          **options):
    """rsync local `sources` to `remote_path` on the connection's host; returns the local Result."""
    command = rsync_command(conn, sources, remote_path, cwd=cwd, **options)
    CountingConnection.rsync_sessions += 1
    return conn.local(command, hide=True, warn=True)
