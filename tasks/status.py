"""Day 2: `fab -H HOST status` (is it healthy, how close to its limits, time to upgrade?) and
`fab -H HOST doctor` (the plan's troubleshooting list, each finding with what to do).

Both read one snapshot of the host in one round trip (commands/status.py), then evaluate it
with pure functions (health_checks.py, schedule_checks.py; the screen: status_screen.py), so
every threshold is testable without a host.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict

from invoke import Collection, Exit, task

from . import botapi
from .commands import backup as backup_commands
from .commands import lock as lock_commands
from .commands import status as status_commands
from .commands import tls as tls_commands
from .exits import ExitCode
from .health_checks import (Finding, clock_findings, database_findings, disk_findings,
                            jetstream_findings, job_findings, maintenance_findings,
                            managed_findings, memory_findings, service_findings, swarm_findings)
from .host import Host
from .engines import open_host
from .schedule_checks import schedule_findings
from .status_screen import status_lines
from .swarm import summary_lines


def evaluate(snap: dict, now: float, sent_at: float | None = None,
             received_at: float | None = None) -> list[Finding]:
    """Every check, in the plan's troubleshooting order, from one snapshot."""
    return [*maintenance_findings(snap), *service_findings(snap), *memory_findings(snap),
            *database_findings(snap), *managed_findings(snap), *jetstream_findings(snap),
            *job_findings(snap),
            *disk_findings(snap), *clock_findings(snap, sent_at, received_at),
            *schedule_findings(snap, now)]


def telegram_check(host: Host, snap: dict) -> tuple[str | None, list[Finding]]:
    """The bot's webhook (issue 27): a status line and findings, read from Telegram when the host
    serves HTTPS for DOMAIN (its certificate is in the snapshot); nothing when it is not in use."""
    certified = any(host.settings.domain in c["domains"]
                    for c in tls_commands.parse_status(snap["certs"]))
    reason = botapi.not_ready_reason(host.settings, host.name, certified)
    if reason:
        return (None if host.settings.telegram_webhook == "off"
                else f"telegram not set: {reason}"), []
    state, problems = botapi.webhook_state(host.settings)
    fix = (f"`fab -H {host.name} telegram.webhook` points it here again; `telegram.status` shows "
           "Telegram's view")
    return (f"telegram {state.line()}" if state else "telegram unknown"), [Finding("telegram",
                                                                                   False, p, fix)
                                                                           for p in problems]


def read_snapshot(host: Host) -> tuple[dict, float, float]:
    sent = time.time()
    out = host.conn.run(status_commands.snapshot(host.ctx), hide=True, warn=True).stdout
    received = time.time()
    # the host's facts (read on connecting) say whether a recover is unfinished
    return ({**status_commands.parse_snapshot(out), "recovering": host.facts.get("recovering", "")},
            sent, received)


def jsonable(snap: dict, findings: list[Finding]) -> dict:
    return {**{k: v for k, v in snap.items() if k not in ("backups", "certs", "lock")},
            "lock": dict(zip(("state", "holder", "liveness"),
                             lock_commands.parse_report(snap["lock"]), strict=True)),
            "backups": backup_commands.parse_sets(snap["backups"])[0],
            "certs": [{**c, "expires": c["expires"].isoformat()}
                      for c in tls_commands.parse_status(snap["certs"])],
            "findings": [asdict(f) for f in findings]}


@task(name="status", default=True, help={"json_": "Print one JSON document (for scripts) instead "
                                                  "of the screen."})
def status(c, json_=False):
    """One screen: release, lock, services against their limits, host, database, JetStream,
    backup, certificates, the plan's scaling triggers, and warnings."""
    as_json = json_
    host = open_host(c)
    snap, sent, received = read_snapshot(host)
    now = time.time()
    findings = evaluate(snap, now, sent, received)
    bot_line, bot_findings = telegram_check(host, snap)
    findings += bot_findings
    swarm = host.cluster_state()
    if swarm is not None:
        findings += swarm_findings(swarm)
    if as_json:
        print(json.dumps({**jsonable(snap, findings), **({"swarm": swarm} if swarm is not None
                                                         else {})}, indent=2, default=str))
        return
    print("\n".join(status_lines(snap, findings, now, host.name)))
    if bot_line:
        print(bot_line)
    if swarm is not None:
        print("\n".join(summary_lines(swarm, host.ctx.project)))


@task(help={"json_": "Print the findings as JSON (for scripts)."})
def doctor(c, json_=False):
    """Run the plan's troubleshooting checks and say what to do for each finding (exit 1 when
    something needs attention)."""
    as_json = json_
    host = open_host(c)
    snap, sent, received = read_snapshot(host)
    findings = evaluate(snap, time.time(), sent, received) + telegram_check(host, snap)[1]
    if (swarm := host.cluster_state()) is not None:
        findings += swarm_findings(swarm)
    if as_json:
        print(json.dumps([asdict(f) for f in findings], indent=2))
    else:
        if not findings:
            print(f"{host.name}: every check passed (services, memory, connection pool, JetStream, "
                  f"disk, clock, certificates, backup and sampler jobs, WAL archive).")
        for f in findings:
            print(f"[{f.check}] {f.summary}\n    -> {f.advice.replace('HOST', host.name)}")
    if findings:
        raise Exit(code=ExitCode.FAILED)


ns = Collection("status")
ns.add_task(status, default=True)
