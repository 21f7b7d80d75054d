"""Backups that are proven restorable: `backup`, `backup.list`, `backup.restore`, `backup.pull`,
`backup.schedule`, `backup.drill` and `backup.offsite.*` (tasks/offsite.py). The work is done on the
host by one script (see tasks/commands/backup.py), the same one the daily cron job runs, so a laptop
is never needed for a backup."""

from __future__ import annotations

import hashlib
import io
import json
import re
from datetime import datetime, timezone
from pathlib import Path

from invoke import Collection, Exit, task

from .commands import backup as commands
from .commands.managed import PITR_SKIPPED
from .commands import offsite as offsite_commands
from .commands import pitr as pitr_commands
from .engines import open_host
from .exits import ExitCode
from .host import WAIT_HELP, Host
from .settings import PROJECT_ROOT
from .steps import StepFailed, Steps

@task(name="backup", default=True, help={"keep": "How many sets to keep (default BACKUP_KEEP, 7).",
                                         "wait": WAIT_HELP})
def backup_(c, keep=None, wait=False):
    """Make one verified backup set on the host: database, NATS data, app files."""
    host = open_host(c)
    host.refuse_while_recovering("backup")
    try:
        with host.locked("backup", wait=wait), host.audited("backup") as outcome:
            name = host.backup(keep=int(keep) if keep else None)
            outcome["detail"] = name
    except StepFailed as failure:
        if failure.step == "off-site copy":
            raise Exit(f"Backup on {host.name}: the set is made and verified, but its OFF-SITE "
                       f"COPY FAILED: {failure.detail}. "
                       f"The set is kept on the host. Fix the cause, then `fab -H {host.name} "
                       "backup.offsite.push`.",
                       code=ExitCode.FAILED)
        raise Exit(f"Backup on {host.name} FAILED: {failure.detail}. No partial set was left and "
                   "no older set was "
                   f"deleted; fix the cause and run `fab -H {host.name} backup` again.",
                   code=ExitCode.FAILED)
    print(f"Backup {name} is complete and verified on {host.name}.")


@task(name="list")
def list_(c):
    """List backup sets on the host: age, size, verified or not, and the latest runs (cron too)."""
    host = open_host(c)
    sets, log = host.backup_sets()
    remote = None
    # read only: what `backup` or `backup.offsite.init` installed
    if host.settings.offsite_repository:
        result = host.offsite("list")
        remote = [row["set"]
                  for row in offsite_commands.parse_snapshots(result.stdout)] if result.ok else None
        if not result.ok:
            print("(the off-site repository did not answer: "
                  f"{host.redact(result.stderr.strip()[-200:])})")
    where = offsite_commands.locations([s["name"] for s in sets], remote)
    if not where:
        print(f"No backup sets on {host.name} yet.")
    by_name = {s["name"]: s for s in sets}
    for name, place in where.items():
        s = by_name.get(name)
        if s is None:
            print(f"  {name:32} {'':>11}  {'':12}  on: {place}")
            continue
        verified = s.get("verification", {}).get("result") == "ok"
        print(f"  {name:32} {s['bytes'] / 1e6:8.2f} MB  "
              f"{'verified' if verified else 'NOT VERIFIED'}  "
              f"release {s.get('release', '?')}  on: {place}")
    print(pitr_commands.window_line(host.pitr_state()))
    if log:
        print("latest runs:")
        for line in log[-5:]:
            try:
                entry = json.loads(line)
                print(f"  {entry.get('time')}  {entry.get('result'):7} {entry.get('set')}"
                      + (f"  (failed at: {entry['step']})" if entry.get("step") else ""))
            except ValueError:
                continue


def chosen_set(host: Host, name: str | None) -> str:
    """`name` if the host has that verified set, else the newest verified one; clear errors."""
    verified = commands.verified(host.backup_sets()[0])
    if name is None:
        if not verified:
            raise Exit(f"No verified backup set on {host.name}. Nothing was changed.",
                       code=ExitCode.USAGE)
        return verified[-1]
    if not re.match(commands.SET_NAME_RE, name) or name not in verified:
        raise Exit(f"{name!r} is not a verified backup set on {host.name} (have: "
                   f"{', '.join(verified) or 'none'}; "
                   f"see `fab -H {host.name} backup.list`). Nothing was changed.",
                   code=ExitCode.USAGE)
    return name


@task(help={
    "latest": "Restore the newest verified set.",
    "name": "Restore this set (see backup.list).",
    "to_time": "Restore the database to this moment, \"YYYY-MM-DD HH:MM:SS\" in UTC, from the WAL "
               "archive (pgBackRest): "
               "any moment since the oldest kept pgBackRest backup (backup.list shows the window). "
               "NATS is not touched.",
    "yes": "Do not ask for confirmation.",
    "wait": WAIT_HELP,
})
def restore(c, latest=False, name=None, to_time=None, yes=False, wait=False):
    """Restore a backup set (database, NATS) or the database to a moment (--to-time), checked."""
    if sum(map(bool, (latest, name, to_time))) != 1:
        raise Exit("Say what to restore, one of: --latest, --name SET (see `fab -H HOST "
                   "backup.list`), or --to-time "
                   "\"YYYY-MM-DD HH:MM:SS\" (UTC) for the database at that moment. Nothing was "
                   "changed.", code=ExitCode.USAGE)
    if to_time:
        return restore_to_time(c, to_time, yes, wait)
    steps = Steps(f"Restore on {c.original_host}")
    host = open_host(c, steps=steps)
    steps.secrets = host.settings.secret_values()
    host.refuse_while_recovering("backup.restore")
    set_name = chosen_set(host, None if latest else name)
    if not yes:
        answer = input(f"Restore {set_name} on {host.name}? The database and NATS data are "
                       "replaced, and the "
                       f"API is stopped meanwhile. Type the set name to confirm: ")
        if answer.strip() != set_name:
            raise Exit("Not confirmed; nothing was changed.", code=ExitCode.USAGE)
    current = host.current_id
    try:
        with host.locked("restore", wait=wait), host.audited("restore", release=current) as outcome:
            outcome["detail"] = set_name
            with steps.step("restore database and nats"):
                host.restore_backup(set_name)
            with steps.step("health checks"):
                host.probe(host.release(current))
    except StepFailed as failure:
        steps.fail(f"Restore of {set_name} on {host.name} failed at '{failure.step}': "
                   f"{failure.detail}")
    steps.print_table()
    print(f"Backup {set_name} restored on {host.name}; health checks pass.")


def restore_to_time(c, text: str, yes: bool, wait: bool) -> None:
    """backup.restore --to-time: the database at a moment, from pgBackRest's WAL archive."""
    try:
        target = pitr_commands.parse_target(text, datetime.now(timezone.utc))
    except ValueError as err:
        raise Exit(f"{err} Nothing was changed.", code=ExitCode.USAGE) from None
    steps = Steps(f"Restore to a time on {c.original_host}")
    host = open_host(c, steps=steps)
    steps.secrets = host.settings.secret_values()
    if host.ctx.managed_db:
        raise Exit(f"Cannot restore {host.name}'s database to {text} UTC here: "
                   f"{PITR_SKIPPED}. Restore to that moment in the provider's console (into a "
                   "new instance, then point DATABASE_HOST at it and deploy). Nothing was "
                   "changed.", code=ExitCode.USAGE)
    state = host.pitr_state()
    problem = pitr_commands.window_problem(state, target)
    if not problem and state.get("now") and target.timestamp() >= state["now"]:
        problem = (f"{text} is not in the past on {host.name} (its clock says "
                   f"{datetime.fromtimestamp(state['now'], timezone.utc):%Y-%m-%d %H:%M:%S} UTC)")
    if problem:
        raise Exit(f"Cannot restore {host.name}'s database to {text} UTC: {problem}. Nothing was "
                   "changed.", code=ExitCode.USAGE)
    when = target.strftime(pitr_commands.TIME_FORMAT)
    current = host.current_id
    host.refuse_while_recovering("backup.restore --to-time")
    if not yes:
        answer = input(f"Restore the database on {host.name} to {when} UTC? Every change after "
                       "that moment leaves the live "
                       "database (it stays in the WAL archive), and the API is stopped meanwhile. "
                       f"Type the Compose project name ({host.ctx.project}) to confirm: ")
        if answer.strip() != host.ctx.project:
            raise Exit("Not confirmed; nothing was changed.", code=ExitCode.USAGE)
    try:
        with host.locked("restore", wait=wait), host.audited("restore", release=current) as outcome:
            outcome["detail"] = f"database to {when} UTC (point in time)"
            with steps.step(f"restore database to {when} UTC"):
                host.restore_to_time(when)
            with steps.step("health checks"):
                host.probe(host.release(current))
    except StepFailed as failure:
        steps.fail(f"Restore of the database to {when} UTC on {host.name} failed at "
                   f"'{failure.step}': {failure.detail}")
    steps.print_table()
    print(f"The database on {host.name} is back at {when} UTC; health checks pass. What came after "
          f"that moment is still in the WAL archive (the timeline the restore printed).")


@task(help={"name": "The set to copy (default: the newest verified one).",
            "to": "Local directory (default: backups/<host>/)."})
def pull(c, name=None, to=None):
    """Copy a backup set to this machine and check every file against its checksum."""
    host = open_host(c)
    set_name = chosen_set(host, name)
    local = Path(to or PROJECT_ROOT / "backups" / host.name) / set_name
    remote_dir = f"{host.ctx.backups_dir}/{set_name}"
    sums = io.BytesIO()
    host.conn.get(f"{remote_dir}/SHA256SUMS", local=sums)
    expected: dict[str, str] = {}
    for line in sums.getvalue().decode(errors="replace").splitlines():
        digest, _, filename = line.partition("  ")
        if filename not in commands.SET_FILES or not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise Exit(f"SHA256SUMS of {set_name} on {host.name} names {filename or line!r}, which "
                       "is not a file a "
                       f"backup set holds ({', '.join(commands.SET_FILES)}); nothing was written "
                       "here. The set may have "
                       f"been tampered with: check it on the host.", code=ExitCode.REFUSED)
        expected[filename] = digest
    local.mkdir(parents=True, exist_ok=True)
    local.chmod(0o700)
    for filename, digest in sorted(expected.items()):
        target = local / filename
        host.conn.get(f"{remote_dir}/{filename}", local=str(target))
        target.chmod(0o600)
        if hashlib.sha256(target.read_bytes()).hexdigest() != digest:
            raise Exit(f"{filename} of {set_name} does not match its checksum after copying; try "
                       "again.", code=ExitCode.FAILED)
        print(f"  {filename:20} {target.stat().st_size:>12} bytes  sha256 ok")
    # written after SHA256SUMS
    host.conn.get(f"{remote_dir}/manifest.json", local=str(local / "manifest.json"))
    (local / "manifest.json").chmod(0o600)
    (local / "SHA256SUMS").write_bytes(sums.getvalue())
    print(f"Backup {set_name} copied to {local} and checked.")


@task(help={"at": "Time of day (host time, HH:MM) for the daily backup (default 02:00)."})
def schedule(c, at="02:00"):
    """Install the daily backup job (cron) on the host: backup, verification, retention; with
    off-site copies set up, also the monthly restore drill and the weekly off-site check."""
    if not re.fullmatch(r"([01]?\d|2[0-3]):[0-5]\d", at):
        raise Exit(f"--at {at!r} is not a time of day like 02:00.", code=ExitCode.USAGE)
    host = open_host(c)
    host.install_backup_script()
    host.install_notify()  # the job alerts when it fails
    ctx = host.absolute_ctx
    line = commands.cron_line(ctx, host.settings.backup_keep, at)
    result = host.probe_run(commands.install_cron(line, commands.cron_marker("backup",
                                                                             ctx.project)))
    if not result.ok:
        raise Exit(f"Could not install the cron job on {host.name}: {result.stderr.strip()[-300:]} "
                   f"(is cron installed? `apt-get install cron`).", code=ExitCode.FAILED)
    installed = [result.stdout.strip()]
    if host.settings.offsite_repository:
        host.install_offsite()
        for kind, job in offsite_commands.cron_lines(ctx, at).items():
            result = host.probe_run(commands.install_cron(job, commands.cron_marker(kind,
                                                                                    ctx.project)))
            if not result.ok:
                raise Exit(f"Could not install the off-site {kind} job on {host.name}: "
                           f"{result.stderr.strip()[-300:]}.",
                           code=ExitCode.FAILED)
            installed.append(result.stdout.strip())
    host.record("schedule", "ok", detail=f"daily backup at {at}" + (", off-site drill and check"
                                                                    if len(installed) > 1 else ""))
    print(f"Daily backup installed on {host.name}"
          + (" (each full set is copied off-site; a restore drill runs monthly "
          "and an off-site check weekly)" if len(installed) > 1 else "") + ":\n  "
          + "\n  ".join(installed))


ns = Collection("backup")
for t in (backup_, list_, restore, pull, schedule):
    ns.add_task(t)  # tasks/__init__.py adds backup.drill and backup.offsite (tasks/offsite.py)
