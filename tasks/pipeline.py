"""The one release pipeline, for both engines: a release is planned, its files and images sent,
its data services started, the database migrated, the release activated, checked, recorded and
older ones pruned, here. The engine (`Host`: Compose on one host; `SwarmHost`: a stack on a swarm
manager) supplies only what differs, through these methods:

    release_images()        the backend and Postgres images the release runs
    fingerprint(plan)       what the release is, whatever its id (unchanged -> nothing to do)
    describe(plan)          the line that says where the release goes
    prepare(plan)           lay the release out; (images the host has, the kept releases)
    provide_images(plan, on_host)   the release's images where they run
    start_data(plan)        Postgres and NATS up; (the schema state, the host where the data is)
    ensure_archive()        pgBackRest's stanza (the WAL archive) where Postgres runs
    migrate_command(plan)   the one migration command, as the schema's owner
    app_role_command(release)   the app's own database role and its grants (after migrations)
    activate / put_back / check_running   traffic to a release, back, and the live stack's state
    describe(plan), serving_on()   where the release goes, and where it then serves
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

from invoke import Exit

from . import remote
from .build import FRONTEND, git_commit, is_up_to_date
from .commands import envfile
from .commands import release as release_commands
from .commands import schema as schema_commands
from .commands.fingerprint import backend_fingerprint
from .commands.managed import PITR_SKIPPED
from .commands.release import new_release_id, releases_to_prune
from .commands.rollout import APP_ROLE_STEP, ARCHIVE_STEP, BACKEND_STEPS, RECORD_STEP
from .exits import ExitCode
from .host import Host, Release
from .preflight import absolute_app_dir
from .identity import identity, now_iso
from .release_env import env_values
from .settings import PROJECT_ROOT
from .steps import StepFailed

def parse_rsync_sent(output: str) -> int:
    match = re.search(r"Total bytes sent: ([\d,.]+)", output)
    return int(match.group(1).replace(",", "").replace(".", "")) if match else 0


@dataclass(frozen=True)
class DeployPlan:
    """What a deploy would do, decided before anything changes: `run_deploy` carries it out,
    `--dry-run` prints it."""

    env_file: Path | None
    env_text: str  # the release's settings file (never printed)
    image: str  # the backend image, tagged by backend/'s content
    assets: tuple[str, ...]
    current: str  # the live release ("" on a host without one)
    release: Release | None  # the new release; None when nothing changed since `current`
    backend: bool = True  # the API/worker must be replaced (False: the live backend serves on)

    @property
    def backend_release(self) -> str:
        """The release whose API and worker serve once this one is live (what the API reports)."""
        return self.release.meta.get("backend_release", "") if self.release else ""


def plan_deploy(host: Host, env_file: Path | None) -> DeployPlan:
    """The release a deploy would make (one id maker, for both engines), or none when the checkout
    and settings are the live release's; read-only."""
    app_dir = absolute_app_dir(host.facts, host.ctx.app_dir)
    try:
        env_text = envfile.render(env_values(host.settings, env_file, app_dir))
    except ValueError as err:
        raise Exit(f"{err} Nothing was changed on the server.", code=ExitCode.USAGE) from None
    image, postgres = host.release_images()
    assets = tuple(release_commands.dist_assets((FRONTEND / "dist" / "index.html").read_text()))
    current, live = host.current_id, host.current_meta
    draft = DeployPlan(env_file, env_text, image, assets, current, None)
    fingerprint, engine_meta = host.fingerprint(draft)
    if current and live.get("fingerprint") == fingerprint:
        return draft
    release_id = new_release_id(datetime.now(timezone.utc), git_commit())
    who = identity()
    backend_fp = backend_fingerprint(PROJECT_ROOT, env_text, host.variant)
    # The live backend serves on when nothing it depends on changed (and it is known which
    # release it came from); otherwise this release brings its own.
    backend = not (current and live.get("backend_fingerprint") == backend_fp
                   and live.get("backend_image") == image)
    meta = {"release": release_id, "deployed_at": now_iso(), "deployed_user": who["user"],
            "deployed_machine": who["machine"], "commit": who["commit"],
            **({"ci_run": who["ci_run"]} if "ci_run" in who else {}),
            "fingerprint": fingerprint, **engine_meta,
            "backend_release": release_id if backend else (live.get("backend_release") or current),
            **({"postgres_image": postgres} if postgres else {})}
    release = Release(release_id, image, assets, previous=current, result="deploying", meta=meta)
    return replace(draft, release=release, backend=backend)


def unchanged_but_down(host: Host, plan: DeployPlan) -> bool:
    """For a deploy with nothing to change: True when the live stack is not all running and
    healthy as its engine sees it (the deploy then brings the live release up again)."""
    with host.steps.step("check the live stack"):
        problems = host.check_running()
    if problems:
        print(f"Nothing changed since release {plan.current}, but {'; '.join(problems)}: "
              f"bringing it up again.")
        return True
    print(f"Nothing changed since release {plan.current} (same files, same settings); every "
          f"service is running and healthy on {host.name}.")
    return False


def run_deploy(host: Host, plan: DeployPlan, outcome: dict) -> None:
    """Carry out `plan` on either engine, inside the caller's lock and audit line. A failed step
    records the release as failed; a failed activation puts the previous release back."""
    if plan.release is None:  # unchanged, but not all running: bring the live release up again
        outcome.update(release=plan.current, result="restarted")
        host.activate(host.release(plan.current), backend=True)
        print(f"Release {plan.current} is serving again on {host.name}.")
        return
    release = plan.release
    outcome["release"] = release.id
    if not plan.backend:
        outcome["detail"] = f"dashboard only; API and worker of {plan.backend_release}"
    print(f"Release {host.describe(plan)}")
    try:
        record = ship_and_migrate(host, plan)
        activate_or_put_back(host, plan, record)
    except StepFailed as failure:
        host.probe_run(release_commands.write_meta(
            host.ctx, release.id, release.recorded("failed", failure=failure.detail[:300])))
        outcome["detail"] = failure.detail
        raise
    print(f"Release {release.id} is live on {host.serving_on()}"
          + ("." if plan.backend else f" (API and worker: {plan.backend_release})."))
    if plan.backend:  # a dashboard-only release has the live compose files and settings
        host.report_pending(release.id)


def ship_and_migrate(host: Host, plan: DeployPlan) -> str:
    """Everything before traffic moves: the release laid out, files and images sent, the data
    services started, the archive ensured, the database migrated. Returns the record command."""
    steps, release, current = host.steps, plan.release, plan.current
    with steps.step("prepare release and its settings"):
        on_host, rows = host.prepare(plan)
    with steps.step("upload files (rsync)"):
        result = remote.rsync(host.conn, **host.upload_options(release.id, current))
        if not result.ok:
            raise StepFailed("upload files", f"rsync exit {result.exited}: "
                                             f"{result.stderr.strip()[-800:]}")
        print(f"   sent {parse_rsync_sent(result.stdout)} bytes"
              + (f" (unchanged files hard-linked from {current})" if current else ""))
    if plan.backend:
        with steps.step(host.images_step):
            host.provide_images(plan, on_host)
        before, data = host.start_data(plan)
        if not before.readable:
            raise StepFailed("read database schema",
                             f"the database's migration revision could not be read on {data.name} "
                             f"({before.error or 'no answer'}), so whether migrations are pending "
                             f"is unknown. Nothing was migrated"
                             + (f" and release {current} keeps serving" if current else "")
                             + f". Check Postgres (`fab -H {host.name} status`) and deploy again.")
        if release.postgres_image and host.ctx.managed_db:
            steps.skip(ARCHIVE_STEP, PITR_SKIPPED)
        elif release.postgres_image:
            with steps.step(ARCHIVE_STEP):
                host.ensure_archive()
        migrate_database(host, data, plan, before)
        with steps.step(APP_ROLE_STEP):
            host.run(host.app_role_command(release), APP_ROLE_STEP)
    else:
        steps.skip(BACKEND_STEPS, f"unchanged since {plan.backend_release}: its containers keep "
                                  f"running")
    prune = releases_to_prune(rows + [(release.id, release.recorded("ok"))], release.id,
                              host.settings.keep_releases)
    return host.record_command(release, prune)


def activate_or_put_back(host: Host, plan: DeployPlan, record: str) -> None:
    rid = plan.release.id
    try:
        host.activate(plan.release, backend=plan.backend, then=record)
    except StepFailed as failure:
        if failure.step == RECORD_STEP:  # every check passed: it serves, only its record failed
            raise StepFailed(failure.step, f"release {rid} is live and healthy, but recording it "
                                           f"failed ({failure.detail}); `fab -H {host.name} "
                                           f"releases` shows what the host knows.") from None
        raise StepFailed(failure.step, failure.detail
                         + host.put_back(plan.current, rid, backend=plan.backend)) from None


def migrate_database(host: Host, data: Host, plan: DeployPlan,
                     before: schema_commands.SchemaState) -> None:
    """Back up (where the data is) and migrate, once, when the release has migrations the database
    has not run; nothing when the database is at the release's head. On a data node other than
    the one deploying, the release's migrations are not there to compare: the backup is then
    taken whenever the database is not fresh, and the migration always runs (a no-op at head)."""
    steps, release, current = host.steps, plan.release, plan.current
    elsewhere = data is not host
    if not elsewhere and not (before.fresh or before.migrations_pending
                              or before.unknown_to_release):
        steps.skip("back up database before migrating", "no pending migration")
        steps.skip("migrate database", f"the database is at the release's head ({before.revision})")
        return
    backup_set = ""
    if before.migrations_pending or (elsewhere and not before.fresh):
        with steps.step("back up database before migrating"):
            backup_set = data.backup(db_only=True)
    else:
        steps.skip("back up database before migrating",
                   "fresh database" if before.fresh else "no pending migration")
    with steps.step("migrate database"):
        try:
            host.run(host.migrate_command(release), "migrate database", hide=False)
        except StepFailed as failure:
            detail = schema_commands.migration_failure_detail(before, data.schema(release.id),
                                                               backup_set, current, data.name)
            raise StepFailed(failure.step, f"{failure.detail} {detail}") from None


def deploy(host: Host, env_file: Path | None, *, wait: bool = False,
           action: str = "deploy") -> None:
    """A deploy on either engine: nothing but an `unchanged` audit line (no lock) when the checkout
    and settings are the live release's and it all runs; else the lock, one audit line, and the
    release carried out (planned again when another deploy went first while this one waited)."""
    plan = plan_deploy(host, env_file)
    if plan.release is None and not unchanged_but_down(host, plan):
        with host.audited(action, release=plan.current) as outcome:
            outcome["result"] = "unchanged"
        return
    with host.locked(action, wait=wait), host.audited(action) as outcome:
        if host.current_id != plan.current:  # another deploy went first while we waited
            plan = plan_deploy(host, env_file)
        run_deploy(host, plan, outcome)


def dry_run(host: Host, env_file: Path | None, skip_build: bool) -> list:
    """`deploy --dry-run` on either engine: the release the deploy would make, then the engine's
    plan of it (`host.dry_run_plan`); returns the planned commands (none when nothing changed).
    Read-only: no build, no lock, no audit line."""
    if not (FRONTEND / "dist" / "index.html").is_file():
        raise Exit("frontend/dist has not been built, so what a deploy would send is unknown: run "
                   "`invoke build` (a dry run builds nothing) and try again. Nothing was changed "
                   "on the server.", code=ExitCode.USAGE)
    print(f"Dry run on {host.name}: nothing is changed (no build, no lock, no audit line).")
    fresh, why = is_up_to_date(FRONTEND)
    if skip_build:
        print("frontend: --skip-build: frontend/dist is sent as it is"
              + ("" if fresh else f" (stale: {why})"))
    else:
        print(f"frontend: up to date ({why})" if fresh else
              f"frontend: stale ({why}): the deploy would build it first, so its files and the "
              f"release below would change")
    plan = plan_deploy(host, env_file)
    if plan.release is None:
        print(f"Nothing changed since release {plan.current} (same files, same settings): the "
              f"deploy would only run the health checks and change nothing.")
        return []
    print(f"release: {host.describe(plan)}"
          + (f", replacing {plan.current}" if plan.current else ", the host's first release"))
    return host.dry_run_plan(plan)
