"""Off-site copies (restic): `backup.offsite.init`, `.status`, `.list`, `.check`, `.push`,
`.unkeep`, and `backup.drill`. The host does the work (APP_DIR/bin/tasktracker-offsite,
commands/offsite.py); the nightly backup job pushes each full set by itself."""

from __future__ import annotations

import io
import json
import re
from datetime import datetime, timezone
from pathlib import Path

from invoke import Collection, Exit, task

from . import remote
from .commands import backup as backup_commands
from .commands import offsite as commands
from .commands import offsite_account, pitr_offsite
from .commands.provision import as_root
from .engines import open_host
from .exits import ExitCode
from .host import WAIT_HELP, Host
from .settings import Settings
from .steps import StepFailed


def offsite_host(c) -> Host:
    """The host, after checking OFFSITE_REPOSITORY is set (before any connection opens)."""
    settings = Settings.from_context(c)
    if not settings.offsite_repository:
        raise Exit("OFFSITE_REPOSITORY is not set, so there are no off-site copies to work with. "
                   "Set OFFSITE_REPOSITORY and "
                   "OFFSITE_PASSWORD in the settings file (see .env.example, \"Off-site copies\"), "
                   "then run "
                   "`fab -H HOST backup.offsite.init`. Nothing was changed.", code=ExitCode.USAGE)
    return open_host(c)


def configured_host(c) -> tuple[Host, str]:
    """The host with off-site copies installed (`offsite_host`), and the host's public key for an
    SFTP repository ('' otherwise)."""
    host = offsite_host(c)
    return host, host.install_offsite()


def offsite_sets(host: Host) -> list[dict]:
    result = host.offsite("list")
    if not result.ok:
        raise Exit(f"Could not read the off-site repository from {host.name}: "
                   f"{host.redact(result.stderr.strip()[-400:])}. "
                   f"Check that the host reaches it (`fab -H {host.name} backup.offsite.init` says "
                   "what is missing).",
                   code=ExitCode.FAILED)
    return commands.parse_snapshots(result.stdout)


def unauthorized_key_message(host_name: str, repository: str, pubkey: str,
                             stderr: str) -> str | None:
    """The one paragraph `init` ends with when the SFTP server refused the host's key (ssh's
    "Permission denied (publickey"), the usual first run on a new host; None for anything else."""
    if not pubkey or "Permission denied (publickey" not in stderr:
        return None
    user, server, _ = commands.sftp_target(repository)
    return (f"The SFTP server {server} does not accept {host_name}'s key yet, so the off-site "
            f"repository could not be opened. Authorize this key: add the line\n  {pubkey}\nto "
            f"~{user or 'USER'}/.ssh/authorized_keys on {server}, then run `fab -H {host_name} "
            "backup.offsite.init` again. Nothing was lost or changed: the host's backups and WAL "
            "archive are as they were, and nothing was written off-site.")


@task
def init(c):
    """Set up off-site copies: install them on the host and create the repository (idempotent).
    For an SFTP repository it first pins the server's key (OFFSITE_HOST_KEY), then prints the
    host's public key to authorize on the SFTP server."""
    host = offsite_host(c)
    host.pin_offsite_host_key()
    pubkey = host.install_offsite()
    if pubkey:
        user, server, _ = commands.sftp_target(host.settings.offsite_repository)
        where = (f"authorize it with `fab -H {server} backup.offsite.account --append-only --user "
                 f"{user} --path {commands.sftp_path(host.settings.offsite_repository)} --key "
                 "LINE`" if host.settings.offsite_append_only else
                 f"add it to ~{user or 'USER'}/.ssh/authorized_keys on {server}")
        print(f"The host's key for the SFTP repository ({where}):\n  {pubkey}")
    result = host.offsite("init")
    said = result.stderr
    if not result.ok and pubkey and "Permission denied (publickey" not in said:
        # restic may report only that the sftp session ended ("file already closed"), not why:
        # ask the server once, with the same ssh command and key, for ssh's own reason.
        sftp = commands.sftp_command(host.settings.offsite_repository,
                                     host.facts.get("home", "").rstrip("/"))
        said += host.probe_run(f"timeout 30 {sftp} </dev/null").stderr
    refused = unauthorized_key_message(host.name, host.settings.offsite_repository, pubkey, said)
    if not result.ok and refused:
        raise Exit(refused, code=ExitCode.FAILED)
    if not result.ok:
        raise Exit(f"The off-site repository could not be opened or created from {host.name}: "
                   f"{host.redact(result.stderr.strip()[-400:])}. "
                   + ("Is the key above authorized on the SFTP server, and does the repository's "
                      "directory exist and "
                      "belong to that user? " if pubkey else "Check the repository URL and "
                                                             "credentials. ")
                   + "Then run this again. The host's backups were not changed.",
                   code=ExitCode.FAILED)
    host.record("offsite-init", "ok", detail=result.stdout.strip())
    try:
        wal = host.install_wal_offsite()
    except StepFailed as failure:
        raise Exit("The restic repository is ready, but the WAL archive could not be set up "
                   f"off-site: {failure.detail}. "
                   f"Check the SFTP server, then run this again.", code=ExitCode.FAILED) from None
    if wal == "pitr-offsite=ok":
        print("The WAL archive is copied off-site too (pgBackRest, "
              f"{pitr_offsite.offsite_repo_path(host.settings.offsite_repository)} "
              "on the SFTP server): `recover` brings the database back to the last archived "
              "minute.")
    print(f"{result.stdout.strip()} ({host.redact(host.settings.offsite_repository)}). Every full "
          "backup set is now also copied there; "
          f"`fab -H {host.name} backup` makes and copies one now.")


@task(name="list")
def list_(c):
    """List the sets in the off-site repository (this app's only)."""
    host, _ = configured_host(c)
    rows = offsite_sets(host)
    if not rows:
        print(f"The off-site repository has no set of {host.ctx.project} yet (`fab -H {host.name} "
              "backup` pushes one).")
    for row in rows:
        copied = row["time"][:19].replace("T", " ")
        kept = "  KEPT (retention leaves it until backup.offsite.unkeep)" if row.get("kept") else ""
        print(f"  {row['set']:32} snapshot {row['id']}  copied {copied}{kept}")


@task
def status(c):
    """Off-site copies at a glance: the repository, the newest set and its age, the last push."""
    host, _ = configured_host(c)
    rows = offsite_sets(host)
    print(f"repository  {host.redact(host.settings.offsite_repository)}")
    retention = (" on the off-site server (append-only: `backup.offsite.prune`)"
                 if host.settings.offsite_append_only else "")
    print(f"sets        {len(rows)} (keep {host.settings.offsite_keep_daily} daily, "
          f"{host.settings.offsite_keep_weekly} weekly, "
          f"{host.settings.offsite_keep_monthly} monthly{retention})")
    if rows:
        newest = rows[-1]["set"]
        made = datetime.strptime(newest, "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
        hours = (datetime.now(timezone.utc) - made).total_seconds() / 3600
        print(f"newest      {newest} ({hours:.1f} h old)")
    pushes = [entry for entry in map(_json_line, host.backup_sets()[1])
              if entry.get("result", "").startswith("offsite-")]
    if pushes:
        last = pushes[-1]
        print(f"last push   {last.get('time')}  {last.get('set')}  "
              f"{'ok' if last['result'] == 'offsite-ok' else 'FAILED'}")
        if last["result"] != "offsite-ok":
            raise Exit(f"The last off-site copy ({last.get('set')}) failed; the set is kept on the "
                       "host. Fix the cause "
                       f"and run `fab -H {host.name} backup.offsite.push`.", code=ExitCode.FAILED)


def _json_line(line: str) -> dict:
    try:
        value = json.loads(line)
        return value if isinstance(value, dict) else {}
    except ValueError:
        return {}


def valid_subset(subset: str) -> bool:
    """A share restic's --read-data-subset takes: 1% to 100%, or n/t with 1 <= n <= t."""
    percent = re.fullmatch(r"([0-9]{1,3})%", subset)
    part = re.fullmatch(r"([0-9]{1,4})/([0-9]{1,4})", subset)
    return bool(percent and 1 <= int(percent.group(1)) <= 100 or part
                and 1 <= int(part.group(1)) <= int(part.group(2)))


@task(help={"subset": "Read only this share of the data, like 10% (default: read all of it)."})
def check(c, subset=None):
    """Check the off-site repository's structure and every file (`restic check --read-data`)."""
    if subset is not None and not valid_subset(subset):
        raise Exit(f"--subset {subset!r} is not a share like 10% or 1/5. Nothing was run.",
                   code=ExitCode.USAGE)
    host, _ = configured_host(c)
    result = host.offsite("check", *([subset] if subset else []))
    if not result.ok:
        host.record("offsite-check", "failed",
                    detail=host.redact(result.stdout.strip().splitlines()[-1:][0][:200]
                                                                   if result.stdout.strip()
                                       else "check failed"))
        raise Exit("The off-site repository FAILED its "
                   f"check:\n{host.redact((result.stdout + result.stderr).strip()[-1500:])}\n"
                   f"The host's own sets are not affected. Make a fresh copy (`fab -H {host.name} "
                   f"backup`) and see restic's docs on `repair`.", code=ExitCode.FAILED)
    host.record("offsite-check", "ok", detail=subset or "all data")
    print("The off-site repository is sound "
          f"({'data read: ' + subset if subset else 'all data read'}).")


@task(help={"name": "The set to copy (default: the newest verified full set on the host).",
            "wait": WAIT_HELP})
def push(c, name=None, wait=False):
    """Copy a set on the host to the off-site repository (after a failed copy, say)."""
    host, _ = configured_host(c)
    full = [s for s in backup_commands.verified(host.backup_sets()[0])
            if not s.endswith("-predeploy")]
    set_name = name or (full[-1] if full else None)
    if set_name not in full:
        raise Exit(f"{set_name!r} is not a verified full set on {host.name} (have: "
                   f"{', '.join(full) or 'none'}). Nothing was copied.", code=ExitCode.USAGE)
    with host.locked("offsite-push", wait=wait), host.audited("offsite-push") as outcome:
        outcome["detail"] = set_name
        result = host.offsite("push", set_name, show=True)
        if not result.ok:
            raise Exit(f"The off-site copy of {set_name} FAILED: "
                       f"{host.redact(result.stderr.strip()[-400:])}. The set is kept "
                       f"on {host.name}.", code=ExitCode.FAILED)
    print(f"{set_name} is copied off-site.")


@task(help={"name": "The kept set to hand back to retention (default: every kept set; see "
                    "`backup.offsite.list`).",
            "wait": WAIT_HELP})
def unkeep(c, name=None, wait=False):
    """Hand the sets `recover` kept (the one it came from, the newest before the disaster) back to
    retention, off-site and on the host: the next backup's retention may then remove them."""
    if name is not None and not re.fullmatch(r"[0-9]{8}T[0-9]{6}Z", name):
        raise Exit(f"--name {name!r} is not a full set's name like 20261126T020000Z (see "
                   "`backup.offsite.list`). Nothing was changed.", code=ExitCode.USAGE)
    if Settings.from_context(c).offsite_append_only:
        raise Exit("The off-site repository is append-only (OFFSITE_APPEND_ONLY=true): this host "
                   "can add sets there and remove none, so it cannot hand kept sets back to "
                   "retention. Run it on the off-site server: `fab -H SERVER backup.offsite.prune "
                   f"--unkeep {name or 'all'}`. Nothing was changed.", code=ExitCode.USAGE)
    host, _ = configured_host(c)
    kept = [row["set"] for row in offsite_sets(host) if row.get("kept")]
    if name is not None and name not in kept:
        raise Exit(f"{name} is not a kept set (kept: {', '.join(kept) or 'none'}). Nothing was "
                   "changed.", code=ExitCode.USAGE)
    with host.locked("offsite-unkeep", wait=wait), host.audited("offsite-unkeep") as outcome:
        outcome["detail"] = name or "all"
        result = host.offsite("unkeep", name or "all")
        if not result.ok:
            why = host.redact(result.stderr.strip()[-400:])
            raise Exit(f"The kept sets could not be handed back to retention: {why}. They stay "
                       "kept.", code=ExitCode.FAILED)
    handed = [name] if name else kept
    verb = "is" if len(handed) == 1 else "are"
    print(f"{', '.join(handed)} {verb} handed back to retention (the next backup applies it)."
          if handed else "No set was kept: nothing to hand back to retention.")


@task
def drill(c):
    """Prove the off-site copies restore: fetch the newest set from the repository, check its
    checksums, restore its dump into a scratch database and compare row counts. The live stack is
    not touched. `backup.schedule` runs it monthly when off-site copies are set up."""
    host, _ = configured_host(c)
    result = host.offsite("drill")
    set_name, counts = commands.parse_drill(result.stdout)
    if not result.ok or not set_name:
        host.record("drill", "failed", detail=host.redact(result.stderr.strip()[-200:]))
        raise Exit(f"The restore drill FAILED on {host.name}: "
                   f"{host.redact(result.stderr.strip()[-600:]) or 'no output'}. "
                   "The live stack was not touched. "
                   f"Run `fab -H {host.name} backup.offsite.check`.",
                   code=ExitCode.FAILED)
    host.record("drill", "ok", detail=f"{set_name}: {sum(counts.values())} rows in {len(counts)} "
                                      "tables")
    print(f"Restore drill of off-site set {set_name} on {host.name}: checksums ok, dump restored "
          f"into a scratch database, row counts match the backup's:")
    for table, rows in sorted(counts.items()):
        print(f"  {table:30} {rows:>10}")


def read_key_file(path: str) -> str:
    """The public key line in the file `path` ('' when there is none: the input check says so)."""
    try:
        return Path(path).expanduser().read_text().strip()
    except (OSError, UnicodeDecodeError):
        return ""


@task(help={
    "key": "The VPS's public key line as `backup.offsite.init` prints it, or a file holding it.",
    "user": "The account to create or keep (default: tasktracker-offsite).",
    "path": "The restic repository's directory; pgBackRest's is PATH-pgbackrest (default: "
            "/srv/tasktracker-offsite).",
    "address": "The server's name or address as the VPS reaches it (default: the one connected "
               "to).",
    "append_only": "The VPS can add sets and delete or overwrite none (restic over rclone's "
                   "append-only server; retention: `backup.offsite.prune` here; no off-site WAL).",
})
def account(c, key, user="tasktracker-offsite", path="/srv/tasktracker-offsite", address=None,
            append_only=False):
    """On a server you own (root or sudo): the SFTP-only (or append-only) account that holds a
    VPS's off-site copies; prints the VPS's OFFSITE_REPOSITORY and OFFSITE_HOST_KEY."""
    key_text = key if key.startswith(("ssh-", "ecdsa-", "sk-")) else read_key_file(key)
    problems = offsite_account.input_problems(user, path, key_text)
    if problems:
        raise Exit("Cannot prepare the off-site account: " + "; ".join(problems) + ". Nothing "
                   "was changed.", code=ExitCode.USAGE)
    conn = remote.connect(remote.require_host(c))
    uid = conn.run("id -u", hide=True).stdout.strip()
    result = conn.run(as_root(offsite_account.prepare(user, path, key_text, append_only), uid),
                      hide=True, warn=True)
    if not result.ok:
        said = " ".join(result.stderr.split())[-300:]
        reason = "; ".join(r for r in (offsite_account.EXIT_REASONS.get(result.exited), said) if r)
        raise Exit(f"Preparing the off-site account on {c.original_host} failed: {reason}. "
                   "What was done before it stays; fix the cause and run this again (it changes "
                   "only what is missing).", code=ExitCode.FAILED)
    changes, fingerprint = offsite_account.parse(result.stdout)
    print("\n".join(f"  changed: {change}" for change in changes)
          or f"  {user} on {c.original_host} was already as wanted: nothing changed")
    print("Put these in the VPS's settings file, then run `fab -H VPS backup.offsite.init`:")
    for line in offsite_account.settings_lines(user, address or conn.host, conn.port, path,
                                               fingerprint, append_only):
        print(f"  {line}")
    if append_only:
        print(f"Retention runs here, not on the VPS: `fab -H {c.original_host} "
              "backup.offsite.prune` with the VPS's settings file (say, weekly).")


@task(help={
    "user": "The append-only account that holds the repository (default: tasktracker-offsite).",
    "dry_run": "Show which sets retention would remove; remove nothing.",
    "unkeep": "First hand this kept set (or `all`) back to retention.",
})
def prune(c, user="tasktracker-offsite", dry_run=False, unkeep=None):
    """On the off-site server (root or sudo), with the VPS's settings file: apply the VPS's
    off-site retention (OFFSITE_KEEP_*) to its append-only repository, which the VPS cannot."""
    settings = Settings.from_context(c)
    directory = commands.sftp_path(settings.offsite_repository)
    problems = offsite_account.input_problems(user, "/x", "ssh-ed25519 A")
    if not offsite_account.REPOSITORY_DIR.fullmatch(directory) or "/../" in f"{directory}/":
        problems.append(f"OFFSITE_REPOSITORY {settings.offsite_repository!r} does not name an "
                        "SFTP account's directory (sftp:USER@HOST:/PATH, as "
                        "`backup.offsite.account` printed it)")
    if unkeep is not None and unkeep != "all" and not offsite_account.SET_NAME.fullmatch(unkeep):
        problems.append(f"--unkeep {unkeep!r} is not a set's name like 20261126T020000Z, or all")
    if problems:
        raise Exit("Cannot prune the off-site repository: " + "; ".join(problems) + ". Run it "
                   "with the VPS's settings (`fab --env NAME` reads .env.NAME, or set "
                   "TASKTRACKER_ENV_FILE) and the account `backup.offsite.account` made. Nothing "
                   "was changed.", code=ExitCode.USAGE)
    conn = remote.connect(remote.require_host(c))
    uid = conn.run("id -u", hide=True).stdout.strip()
    keep = (settings.offsite_keep_daily, settings.offsite_keep_weekly,
            settings.offsite_keep_monthly)
    command = offsite_account.prune(user, directory, settings.compose_project, keep,
                                    dry_run=dry_run, unkeep=unkeep or "")
    result = conn.run(as_root(command, uid), hide=True, warn=True,
                      in_stream=io.StringIO(settings.offsite_password.reveal() + "\n"))
    said = "\n".join(line for line in result.stdout.splitlines()
                     if not line.startswith(("SNAPSHOTS ", "reading repository password")))
    if not result.ok:
        reason = offsite_account.PRUNE_EXIT_REASONS.get(result.exited) or " ".join(
            result.stderr.split())[-400:]
        raise Exit(f"Off-site retention on {c.original_host} failed: {reason}. Nothing more was "
                   "removed than restic reported; fix the cause and run this again.",
                   code=ExitCode.FAILED)
    print(said.strip())
    left = offsite_account.parse_pruned(result.stdout)
    print(f"The repository holds {len(left)} set(s) of {settings.compose_project}"
          + (f", {left[0]} to {left[-1]}" if left else "")
          + (" (a dry run: nothing was removed)." if dry_run else "."))


ns = Collection("offsite")
for t in (init, status, list_, check, push, unkeep, account, prune):
    ns.add_task(t)
