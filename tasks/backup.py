"""Backups that are proven restorable: `backup`, `backup.list`, `backup.restore`, `backup.pull`,
`backup.schedule`. The work is done on the host by one script (see tasks/commands/backup.py), the
same one the daily cron job runs, so a laptop is never needed for a backup."""

from __future__ import annotations

import hashlib
import io
import json
import time
from pathlib import Path

from invoke import Collection, Exit, task

from . import remote
from .audit import record
from .commands import backup as commands
from .commands import compose as compose_commands
from .commands import release as release_commands
from .commands import sh
from .deploy import Target, preflight, probe, read_meta
from .settings import PROJECT_ROOT, Settings
from .steps import StepFailed, Steps


def install_script(conn, app_dir: str) -> None:
    conn.run(commands.install_script(app_dir), hide=True, in_stream=False)
    conn.put(io.BytesIO(commands.BACKUP_SCRIPT.encode()), remote=commands.script_path(app_dir) + ".new")
    conn.run(sh(commands.activate_script(app_dir)), hide=True, in_stream=False)


def run_backup(conn, settings: Settings, db_only: bool = False, keep: int | None = None) -> str:
    """Install and run the host's backup script; returns the new set's name."""
    install_script(conn, settings.app_dir)
    result = conn.run(sh(commands.run(settings.app_dir, settings.compose_project, keep or settings.backup_keep, db_only)),
                      warn=True, hide="stdout", in_stream=False)
    for line in result.stdout.splitlines():
        if line.startswith("[backup]"):
            print(f"   {line}")
    if not result.ok:
        raise StepFailed("backup", (result.stderr.strip().splitlines() or ["no output"])[-1])
    name = [line.split()[-1] for line in result.stdout.splitlines() if line.startswith("BACKUP OK")][0]
    manifest = json.loads(result.stdout.split(f"BACKUP OK {name}", 1)[1].strip())
    v = manifest["verification"]
    print(f"   set {name}: verified ({v['tables']} tables, {v['rows']} rows, restore check {v['seconds']}s), "
          f"{sum(manifest['sizes'].values())} bytes, {manifest['duration_s']}s")
    return name


def parse_sets(output: str) -> tuple[list[dict], list[str]]:
    sets = []
    body, _, log_text = output.partition("--log\n")
    for line in body.splitlines():
        name, size, manifest = (line.split("\t") + ["", ""])[:3]
        try:
            meta = json.loads(manifest) if manifest else {}
        except ValueError:
            meta = {}
        sets.append({"name": name, "bytes": int(size or 0), **meta})
    return sets, [line for line in log_text.splitlines() if line.strip()]


@task(name="backup", default=True, help={"keep": "How many sets to keep (default BACKUP_KEEP, 7)."})
def backup_(c, keep=None):
    """Make one verified backup set on the host: database, NATS data, app files."""
    settings = Settings.from_context(c)
    conn = remote.connect(c)
    started = time.monotonic()
    try:
        name = run_backup(conn, settings, keep=int(keep) if keep else None)
    except StepFailed as failure:
        record(conn, settings.app_dir, "backup", "failed", duration=time.monotonic() - started, detail=failure.detail)
        raise Exit(f"Backup on {conn.original_host} FAILED: {failure.detail}. No partial set was left and no older "
                   f"set was deleted; fix the cause and run `fab -H {conn.original_host} backup` again.", code=1)
    record(conn, settings.app_dir, "backup", "ok", duration=time.monotonic() - started, detail=name)
    print(f"Backup {name} is complete and verified on {conn.original_host}.")


@task(name="list")
def list_(c):
    """List backup sets on the host: age, size, verified or not, and the latest runs (cron too)."""
    settings = Settings.from_context(c)
    conn = remote.connect(c)
    sets, log = parse_sets(conn.run(commands.list_sets(settings.app_dir), hide=True, in_stream=False).stdout)
    if not sets:
        print(f"No backup sets on {conn.original_host} yet.")
    for s in sets:
        verified = s.get("verification", {}).get("result") == "ok"
        print(f"  {s['name']:32} {s['bytes'] / 1e6:8.2f} MB  {'verified' if verified else 'NOT VERIFIED'}  "
              f"release {s.get('release', '?')}")
    if log:
        print("latest runs:")
        for line in log:
            try:
                entry = json.loads(line)
                print(f"  {entry.get('time')}  {entry.get('result'):7} {entry.get('set')}"
                      + (f"  (failed at: {entry['step']})" if entry.get("step") else ""))
            except ValueError:
                continue


def latest_set(conn, settings: Settings) -> str:
    sets, _ = parse_sets(conn.run(commands.list_sets(settings.app_dir), hide=True, in_stream=False).stdout)
    verified = [s["name"] for s in sets if s.get("verification", {}).get("result") == "ok"]
    if not verified:
        raise Exit(f"No verified backup set on {conn.original_host} to restore.", code=2)
    return verified[-1]


def restore_set(t: Target, set_name: str) -> None:
    start = release_commands.in_current(t.app_dir, compose_commands.either(
        lambda v: [*compose_commands.base(v, t.project), "start", "api", "worker"]))
    t.run(commands.restore(t.app_dir, t.project, set_name, f'cd "$HOME" && {start}'), "restore", hide=False)


@task(help={
    "latest": "Restore the newest verified set.",
    "name": "Restore this set (see backup.list).",
    "yes": "Do not ask for confirmation.",
})
def restore(c, latest=False, name=None, yes=False):
    """Restore a backup set: stops api and worker, restores database and NATS, starts, checks health."""
    if bool(latest) == bool(name):
        raise Exit("Say which set to restore: --latest or --name SET (see `fab -H HOST backup.list`).", code=2)
    settings = Settings.from_context(c)
    steps = Steps(f"Restore on {c.original_host}", settings.secret_values())
    conn = remote.connect(c)
    facts, variant = preflight(conn, settings, "auto")
    set_name = latest_set(conn, settings) if latest else name
    if not yes:
        answer = input(f"Restore {set_name} on {conn.original_host}? The database and NATS data are replaced, and the "
                       f"API is stopped meanwhile. Type the set name to confirm: ")
        if answer.strip() != set_name:
            raise Exit("Not confirmed; nothing was changed.", code=2)
    t = Target(conn, settings, variant, steps, facts)
    started = time.monotonic()
    current = Path(facts.get("current") or "").name
    try:
        with steps.step("restore database and nats"):
            restore_set(t, set_name)
        meta = read_meta(t, current)
        with steps.step("health checks"):
            probe(t, current, meta.get("backend_image", ""), meta.get("assets", []))
    except StepFailed as failure:
        record(conn, settings.app_dir, "restore", "failed", release=current, duration=time.monotonic() - started, detail=failure.detail)
        steps.fail(f"Restore of {set_name} on {conn.original_host} failed at '{failure.step}': {failure.detail}")
    record(conn, settings.app_dir, "restore", "ok", release=current, duration=time.monotonic() - started, detail=set_name)
    steps.print_table()
    print(f"Backup {set_name} restored on {conn.original_host}; health checks pass.")


@task(help={"name": "The set to copy (default: the newest verified one).",
            "to": "Local directory (default: backups/<host>/)."})
def pull(c, name=None, to=None):
    """Copy a backup set to this machine and check every file against its checksum."""
    settings = Settings.from_context(c)
    conn = remote.connect(c)
    set_name = name or latest_set(conn, settings)
    local = Path(to or PROJECT_ROOT / "backups" / conn.original_host) / set_name
    local.mkdir(parents=True, exist_ok=True)
    local.chmod(0o700)
    remote_dir = f"{settings.app_dir}/backups/{set_name}"
    sums = io.BytesIO()
    conn.get(f"{remote_dir}/SHA256SUMS", local=sums)
    expected = dict(reversed(line.split(maxsplit=1)) for line in sums.getvalue().decode().splitlines())
    for filename, digest in sorted(expected.items()):
        target = local / filename
        conn.get(f"{remote_dir}/{filename}", local=str(target))
        target.chmod(0o600)
        actual = hashlib.sha256(target.read_bytes()).hexdigest()
        if actual != digest:
            raise Exit(f"{filename} of {set_name} does not match its checksum after copying; try again.", code=1)
        print(f"  {filename:20} {target.stat().st_size:>12} bytes  sha256 ok")
    (local / "SHA256SUMS").write_bytes(sums.getvalue())
    print(f"Backup {set_name} copied to {local} and checked.")


@task(help={"at": "Time of day (host time, HH:MM) for the daily backup (default 02:00)."})
def schedule(c, at="02:00"):
    """Install the daily backup job (cron) on the host: backup, verification, retention."""
    settings = Settings.from_context(c)
    conn = remote.connect(c)
    facts, _ = preflight(conn, settings, "auto")
    from .deploy import app_root

    install_script(conn, settings.app_dir)
    line = commands.cron_line(app_root(facts, settings.app_dir), settings.compose_project, settings.backup_keep, at)
    result = conn.run(commands.install_cron(line, f"# tasktracker-backup:{settings.compose_project}"), warn=True, hide=True, in_stream=False)
    if not result.ok:
        raise Exit(f"Could not install the cron job on {conn.original_host}: {result.stderr.strip()[-300:]} "
                   f"(is cron installed? `apt-get install cron`).", code=1)
    record(conn, settings.app_dir, "schedule", "ok", detail=f"daily backup at {at}")
    print(f"Daily backup installed on {conn.original_host}:\n  {result.stdout.strip()}")


ns = Collection("backup")
for t in (backup_, list_, restore, pull, schedule):
    ns.add_task(t)
