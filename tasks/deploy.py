"""`fab -H HOST deploy`: build, ship a release, migrate, replace the API without downtime,
prove health, switch `current`; roll back automatically when a check fails (tasks/pipeline.py,
for both engines). And `fab -H NEWHOST recover --from-offsite`: the same deploy onto a new host,
with the data of the newest off-site set."""

from __future__ import annotations

import re
from datetime import datetime, timezone

from invoke import Collection, Context, Exit, task

from . import botapi, pipeline, remote
from .build import FRONTEND, build_frontend, git_head
from .commands import offsite as offsite_commands
from .commands import pitr as pitr_commands
from .commands import pitr_offsite
from .engines import open_host
from .exits import ExitCode
from .host import WAIT_HELP, Host
from .settings import ENV_HELP, Settings, choose_env, env_file_path
from .steps import StepFailed, Steps

COMPOSE_CHOICES = ("auto", "v1", "v2")


@task(help={
    "skip_build": ("Deploy the frontend/dist already built (CI builds once, then deploys with "
                   "this)."),
    "compose": ("Which Docker Compose to use on the host: auto (v2 when present, else v1), v1 "
                "or v2."),
    "wait": WAIT_HELP,
    "env": ENV_HELP,
    "dry_run": "Print what the deploy would do (release, files and their size, images, migrations, "
               "every command that would change the host, the memory budget) and change nothing: "
               "no build, no lock, no audit line.",
})
def deploy(c, skip_build=False, compose="auto", wait=False, env=None, dry_run=False):
    """Deploy the stack as a new release: build, upload, migrate, start, check health, switch."""
    if compose not in COMPOSE_CHOICES:
        raise Exit(f"--compose must be auto, v1 or v2 (got {compose!r}).", code=ExitCode.USAGE)
    remote.require_host(c)
    choose_env(c, env)
    settings = Settings.from_context(c)  # validated before any connection opens
    env_file = env_file_path(c)
    if skip_build and not (FRONTEND / "dist" / "index.html").is_file():
        raise Exit("--skip-build was given but frontend/dist/index.html is missing: run `invoke "
                   "build` "
                   "first (or deploy without --skip-build). Nothing was changed on the server.",
                   code=ExitCode.USAGE)
    steps = Steps(f"Deploy to {c.original_host}", settings.secret_values())
    try:
        with steps.step("connect and check host"):
            host = open_host(c, settings, compose=compose, steps=steps)
        host.refuse_while_recovering("deploy")
        host.preflight_checks(env, table=dry_run)
        if dry_run:
            pipeline.dry_run(host, env_file, skip_build)
            print_remote_commands("read-only remote commands", "rsync --dry-run")
            return
        if skip_build:
            steps.skip("build frontend", "--skip-build")
        else:
            with steps.step("build frontend"):
                build_frontend(Context(config=c.config), FRONTEND)
        pipeline.deploy(host, env_file, wait=wait)
    except StepFailed as failure:
        steps.fail(f"Deploy to {c.original_host} failed at step '{failure.step}': {failure.detail}")
    steps.print_table()
    print_remote_commands("remote commands", "rsync session")
    botapi.after_change(host)  # the bot's updates reach the live release (after the count)


def print_remote_commands(what: str, rsync: str) -> None:
    counted = remote.CountingConnection
    print(f"  {what}: {counted.remote_commands}"
          + (f" (+{counted.rsync_sessions} {rsync})" if counted.rsync_sessions else ""))


@task(help={
    "from_offsite": "Recover from the off-site repository (OFFSITE_REPOSITORY): the only source so "
                    "far; required.",
    "name": "The off-site set to recover (default: the newest; see `backup.offsite.list`).",
    "to_time": "With the WAL archive off-site (an SFTP repository): bring the database to this "
               "moment, \"YYYY-MM-DD HH:MM:SS\" in UTC, instead of to the last archived WAL.",
    "skip_build": "Deploy the frontend/dist already built.",
    "compose": ("Which Docker Compose to use on the host: auto (v2 when present, else v1), v1 "
                "or v2."),
    "wait": WAIT_HELP,
    "env": ENV_HELP,
    "any_checkout": "Deploy this checkout even when it is not the commit the set's release was "
                    "deployed from (by default `recover` refuses, naming the `git checkout` to "
                    "run).",
})
def recover(c, from_offsite=False, name=None, to_time=None, skip_build=False, compose="auto",
            wait=False, env=None, any_checkout=False):
    """Rebuild the service on a NEW host (provisioned, no release yet) from the off-site copies:
    the newest set's certificates, the commit its release ran, then the set's database and
    JetStream data; the same health checks as a deploy. Until then the host answers 503
    "recovering". Then point DNS at the new host (docs/operations.md, "The bad day")."""
    refuse_recover_flags(from_offsite, compose, name)
    remote.require_host(c)
    choose_env(c, env)
    settings = Settings.from_context(c)
    if not settings.offsite_repository:
        raise Exit("OFFSITE_REPOSITORY is not set: there is nothing to recover from. Use the "
                   "settings file of the lost host "
                   "(OFFSITE_REPOSITORY and OFFSITE_PASSWORD). Nothing was changed.",
                   code=ExitCode.USAGE)
    if skip_build and not (FRONTEND / "dist" / "index.html").is_file():
        raise Exit("--skip-build was given but frontend/dist/index.html is missing: run `invoke "
                   "build` first. Nothing was changed on the server.", code=ExitCode.USAGE)
    wal_offsite, target = recovery_target(settings, to_time)
    env_file = env_file_path(c)
    steps = Steps(f"Recover on {c.original_host}", settings.secret_values())
    try:
        with steps.step("connect and check host"):
            host = open_host(c, settings, compose=compose, steps=steps)
            host.require_one_host("recover")
        described = what_recover_deploys(host, name or resuming_recovery(host) or None,
                                         any_checkout)
        host.preflight_checks(env)
        if skip_build:
            steps.skip("build frontend", "--skip-build")
        else:
            with steps.step("build frontend"):
                build_frontend(Context(config=c.config), FRONTEND)
        with host.locked("recover", wait=wait), host.audited("recover") as outcome:
            live, set_name, wal_note = recover_onto(host, env_file, described, wal_offsite,
                                                    target, outcome, any_checkout=any_checkout)
    except StepFailed as failure:
        steps.fail(f"Recover on {c.original_host} failed at step '{failure.step}': "
                   f"{failure.detail}. The host stays in maintenance (every client gets 503 "
                   "\"recovering\") until a recover finishes. Fix the cause and run "
                   f"`fab -H {c.original_host} recover --from-offsite` again: it resumes (the host "
                   "keeps the fetched set).")
    steps.print_table()
    print(f"{host.name} serves release {live} with the data of off-site set {set_name}"
          + (f" and {wal_note}" if wal_note else "")
          + f". Retention keeps {kept_sets(described, set_name)} until `fab -H {host.name} "
            "backup.offsite.unkeep`. Now point DNS at it (docs/operations.md, \"The bad day\"), "
            f"then `fab -H {host.name} backup.schedule`.")


def refuse_recover_flags(from_offsite: bool, compose: str, name: str | None) -> None:
    """Refuses (changing nothing) flags `recover` cannot work with."""
    if not from_offsite:
        raise Exit("Say where to recover from: `fab -H NEWHOST recover --from-offsite` (the "
                   "off-site repository in "
                   "OFFSITE_REPOSITORY). Nothing was changed.", code=ExitCode.USAGE)
    if compose not in COMPOSE_CHOICES:
        raise Exit(f"--compose must be auto, v1 or v2 (got {compose!r}).", code=ExitCode.USAGE)
    if name is not None and not re.fullmatch(r"[0-9]{8}T[0-9]{6}Z", name):
        raise Exit(f"--name {name!r} is not a full set's name like 20261126T020000Z (see "
                   f"`backup.offsite.list`). Nothing was changed.", code=ExitCode.USAGE)


def resuming_recovery(host: Host) -> str:
    """The set of a recovery that did not finish on this host, or ''; refuses a host that already
    serves a release of its own."""
    marker = offsite_commands.recovering_marker(host.ctx)
    resuming = host.probe_run(f"cat {marker}").stdout.strip() if host.current_id else ""
    if host.current_id and not resuming:
        raise Exit(f"{host.name} already serves release {host.current_id}: `recover` builds a "
                   "NEW host, and would replace "
                   f"this one's database. To bring data back here use `fab -H {host.name} "
                   f"backup.restore`. Nothing was changed.", code=ExitCode.REFUSED)
    if resuming:
        print(f"Resuming the recovery of {resuming} that did not finish on {host.name}.")
    return resuming


def what_recover_deploys(host: Host, name: str | None, any_checkout: bool) -> dict[str, str]:
    """The set `recover` brings back and the commit it deploys, printed first; refuses, changing
    nothing, a checkout that is not that commit (unless `any_checkout`)."""
    described = describe_recovery(host, name)
    refusal = checkout_refusal(described, host.name, any_checkout)
    if refusal:
        raise Exit(f"{refusal} Nothing was changed on {host.name}.", code=ExitCode.REFUSED)
    return described


def describe_recovery(host: Host, name: str | None) -> dict[str, str]:
    """Read-only: the set `recover` will bring back (the newest, or `name`) and the release and
    commit it was made under, printed first (set, newest, release, commit). An SFTP server's key
    is pinned first (OFFSITE_HOST_KEY), as `backup.offsite.init` does."""
    host.pin_offsite_host_key()
    pubkey = host.install_offsite()
    result = host.offsite("describe", name or "latest")
    described = offsite_commands.parse_described(result.stdout)
    if not result.ok or not described:
        hint = (f" If the repository is on SFTP, authorize this host's key there first (`fab -H "
                f"{host.name} backup.offsite.init` shows it): {pubkey}" if pubkey else "")
        raise Exit(f"Could not read the off-site set to recover on {host.name}: "
                   f"{host.redact(result.stderr.strip()[-400:]) or 'no output'}.{hint} Nothing "
                   "was changed.", code=ExitCode.FAILED)
    head, dirty = git_head()
    print(f"recover deploys commit {described['commit'] or 'UNKNOWN'}: the release "
          f"{described['release'] or 'UNKNOWN'} of off-site set {described['set']} ran it; this "
          f"checkout is {head[:12] or 'not a git checkout'}"
          + (" with uncommitted changes" if dirty else "") + ".", flush=True)
    return described


def checkout_refusal(described: dict[str, str], host_name: str, any_checkout: bool) -> str:
    """Why `recover` refuses this checkout for the set (a paragraph naming the `git checkout` to
    run), or '' when it is the set's commit, or `any_checkout` says deploy it anyway."""
    head, dirty = git_head()
    commit = described["commit"]
    problem = offsite_commands.checkout_problem(commit, head, dirty)
    if not problem:
        return ""
    if any_checkout:
        print(f"   WARNING: {problem}; deploying this checkout anyway (--any-checkout).",
              flush=True)
        return ""
    sha = commit.removesuffix("-dirty")
    fix = (f"Check out that commit, `git checkout {sha}`, and run this again"
           if re.fullmatch(r"[0-9a-f]{4,40}", sha)
           else "Check out the commit the lost host ran and run this again")
    return (f"recover refuses to deploy this checkout onto {host_name}: off-site set "
            f"{described['set']} was made under release {described['release'] or '(unknown)'}, "
            f"deployed from commit {commit or '(unknown)'}, but {problem}. The set's data belongs "
            f"to that code (its schema, its migrations). {fix}, or pass --any-checkout to deploy "
            "this checkout anyway.")


def kept_sets(described: dict[str, str], set_name: str) -> str:
    """The sets a recovery keeps from retention, in words."""
    newest = described.get("newest", "")
    return f"set {set_name}" if newest in ("", set_name) else f"sets {set_name} and {newest}"


def recovery_target(settings: Settings, to_time: str | None) -> tuple[bool, str]:
    """(whether the WAL archive is off-site, the moment to recover to: "" for the last WAL);
    a usage error, changing nothing, for a moment that cannot be reached."""
    wal_offsite = bool(pitr_offsite.offsite_repo_path(settings.offsite_repository,
                                                      settings.offsite_append_only))
    if not to_time:
        return wal_offsite, ""
    try:
        target = pitr_commands.parse_target(to_time, datetime.now(timezone.utc))
    except ValueError as err:
        raise Exit(f"{err} Nothing was changed.", code=ExitCode.USAGE) from None
    if not wal_offsite:
        raise Exit("--to-time needs the WAL archive off-site, which is kept only for an SFTP "
                   "repository "
                   "with an absolute path (OFFSITE_REPOSITORY=sftp:user@host:/path). Without it "
                   "`recover` brings back the newest set. Nothing was changed.",
                   code=ExitCode.USAGE)
    return wal_offsite, target.strftime(pitr_commands.TIME_FORMAT)


def recover_onto(host: Host, env_file, described: dict[str, str], wal_offsite: bool, target: str,
                 outcome: dict, *, any_checkout: bool = False) -> tuple[str, str, str]:
    """Inside the lock: the entry in maintenance first (APP_DIR/.recovering: nginx answers 503
    "recovering" while it exists; the probes go from inside nginx), the set fetched and kept from
    retention with the newest set, its certificates, this checkout deployed, the set's data
    restored into a fresh database and migrated, the off-site WAL replayed, the health checks;
    then the maintenance ends, all at once. A failure leaves it on. (live release, set, note)"""
    steps, marker = host.steps, offsite_commands.recovering_marker(host.ctx)
    host.recovering = True
    with steps.step("maintenance on (503 \"recovering\")"):
        host.run(offsite_commands.mark_recovering(host.ctx, described["set"]), "maintenance on")
    set_name, described = fetch_and_keep(host, described, any_checkout)
    outcome["detail"] = f"from off-site set {set_name}"
    with steps.step("certificates and TLS settings"):
        unpacked = host.run(offsite_commands.unpack_certificates(host.ctx, set_name),
                            "certificates")
        print(f"   {unpacked.stdout.strip()}")
    plan = pipeline.plan_deploy(host, env_file)
    pipeline.run_deploy(host, plan, outcome)
    live = plan.release.id if plan.release else plan.current
    outcome["release"] = live
    with steps.step("restore database and nats, then migrate"):
        # Into a fresh database (the set's schema is all there is), migrated to this release's
        # head before api and worker start on it.
        host.restore_backup(set_name, fresh_database=True, migrate=True)
    wal_note = ""
    if wal_offsite:
        with steps.step(f"database to {target + ' UTC' if target else 'the last archived WAL'} "
                        "(off-site)"):
            wal_note = host.restore_wal_offsite(target, migrate=True)
        outcome["detail"] += f"; {wal_note}"
    with steps.step("health checks"):
        host.probe(host.release(live))
    with steps.step("maintenance off: serving"):
        host.run(f"rm -f {marker}", "maintenance off")
    host.recovering = False
    if wal_offsite:  # the restore emptied this host's repository for the restored cluster's
        with steps.step("this host's WAL archive (a full backup, while serving)"):
            host.ensure_archive()
    return live, set_name, wal_note


def fetch_and_keep(host: Host, described: dict[str, str],
                   any_checkout: bool) -> tuple[str, dict[str, str]]:
    """The set fetched (an older one when the newest came back damaged: then its commit checked
    again) and kept from retention with the newest set. (set, what it was made under)"""
    with host.steps.step("fetch the off-site set"):
        wanted = described["set"] if described["set"] != described["newest"] else None
        set_name = fetch_offsite_set(host, wanted)
        host.run(offsite_commands.mark_recovering(host.ctx, set_name), "fetch the off-site set")
        if set_name != described["set"]:  # the newest came back damaged: an older set, other code?
            try:
                described = dict(describe_recovery(host, set_name), newest=described["newest"])
            except Exit as unread:
                why = str(unread.message).removesuffix(" Nothing was changed.")
                raise StepFailed("fetch the off-site set", why) from None
            refusal = checkout_refusal(described, host.name, any_checkout)
            if refusal:
                raise StepFailed("fetch the off-site set",
                                 f"{refusal} (set {described['set']} is fetched and kept)")
    with host.steps.step("keep the sets from retention"):
        kept = host.offsite("keep", *dict.fromkeys([set_name, described["newest"]]))
        if not kept.ok:
            raise StepFailed("keep the sets from retention",
                             host.redact(kept.stderr.strip()[-400:]) or "no output")
    return set_name, described


def fetch_offsite_set(host: Host, name: str | None) -> str:
    """Bring an off-site set (the newest, or `name`) into the host's backups/, checksums checked."""
    pubkey = host.install_offsite()
    result = host.offsite("fetch", name or "latest")
    set_name = offsite_commands.parse_fetched(result.stdout)
    if not result.ok or not set_name:
        hint = (f" If the repository is on SFTP, authorize this host's key there first: {pubkey}"
                if pubkey else "")
        raise StepFailed("fetch the off-site set", host.redact(result.stderr.strip()[-400:]) + hint)
    print(f"   off-site set {set_name}")
    return set_name


ns = Collection("deploy")
ns.add_task(deploy, default=True)
