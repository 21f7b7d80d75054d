"""`fab -H HOST deploy`: build, ship a release, migrate, replace the API without downtime,
prove health, switch `current`; roll back automatically when a check fails. And `fab -H NEWHOST
recover --from-offsite`: the same deploy onto a new host, with the data of the newest off-site set."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import NamedTuple
from datetime import datetime, timezone
from pathlib import Path

from invoke import Collection, Context, Exit, task

from . import botapi, machine, remote
from .build import FRONTEND, build_frontend, git_commit, is_up_to_date
from .commands import backup as backup_commands
from .commands import budget
from .commands.build import paths_digest
from .commands import compose as compose_commands
from .commands import db as db_commands
from .commands import envfile
from .commands import images as image_commands
from .commands import notify as notify_commands
from .commands import offsite as offsite_commands
from .commands import pitr as pitr_commands
from .commands import release as release_commands
from .commands.release import dist_assets, migration_failure_detail, new_release_id, releases_to_prune
from .commands import sh
from .commands import transfer as transfer_commands
from .commands import status as status_commands
from .exits import ExitCode
from .host import WAIT_HELP, Host, Release, absolute_app_dir
from .swarm import SwarmHost, open_host
from .identity import identity, now_iso
from .settings import ENV_HELP, PROJECT_ROOT, Settings, choose_env, env_file_path, env_values
from .steps import StepFailed, Steps

SENT_PATHS = ("compose.yml", "docker-compose.production.yml", compose_commands.MIGRATE_FILE, "nginx", "backend",
              "postgres", "frontend/dist", release_commands.PROBE_PATH)
RSYNC_EXCLUDES = ("__pycache__", "*.pyc", ".pytest_cache", ".gitkeep")
COMPOSE_CHOICES = ("auto", "v1", "v2")
DRY_RUN_FILES = 60  # files listed by `deploy --dry-run` (all are counted)
DRY_RUN_COMMAND_LINES = 30  # lines shown of one planned command (a script)


def release_fingerprint(root: Path, env_text: str, variant: str) -> str:
    return paths_digest(root, SENT_PATHS, hashlib.sha256(variant.encode() + b"\0" + env_text.encode()))


BACKEND_PATHS = ("compose.yml", "docker-compose.production.yml", "backend", "postgres")
STACK_PATHS = ("compose.yml", "docker-compose.production.yml")


def backend_fingerprint(root: Path, env_text: str, variant: str, paths: tuple[str, ...] = BACKEND_PATHS) -> str:
    """What the API, worker, Postgres and NATS containers depend on: the compose files, backend/,
    postgres/ and the settings. A release whose backend fingerprint is the live one's changes only the
    dashboard (frontend/dist) or nginx's config: its deploy leaves those containers untouched.
    With `paths=STACK_PATHS`: what nginx's container depends on (its definition and settings)."""
    return paths_digest(root, paths, hashlib.sha256(b"backend\0" + variant.encode() + b"\0" + env_text.encode()))


def image_repo(project: str, service: str = "backend") -> str:
    return f"{project}-{service}"


def backend_image(root: Path, project: str) -> str:
    return image_commands.backend_image(root, project)


def parse_rsync_sent(output: str) -> int:
    match = re.search(r"Total bytes sent: ([\d,.]+)", output)
    return int(match.group(1).replace(",", "").replace(".", "")) if match else 0


@task(help={
    "skip_build": "Deploy the frontend/dist already built (CI builds once, then deploys with this).",
    "compose": "Which Docker Compose to use on the host: auto (v2 when present, else v1), v1 or v2.",
    "wait": WAIT_HELP,
    "env": ENV_HELP,
    "dry_run": "Print what the deploy would do (release, files and their size, images, migrations, every command that "
               "would change the host, the memory budget) and change nothing: no build, no lock, no audit line.",
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
        raise Exit("--skip-build was given but frontend/dist/index.html is missing: run `invoke build` first "
                   "(or deploy without --skip-build). Nothing was changed on the server.", code=ExitCode.USAGE)
    steps = Steps(f"Deploy to {c.original_host}", settings.secret_values())
    try:
        with steps.step("connect and check host"):
            host = open_host(c, settings, compose=compose, steps=steps)
        if isinstance(host, SwarmHost):
            deploy_to_swarm(c, host, env_file, skip_build=skip_build, wait=wait, dry_run=dry_run)
            if not dry_run:
                steps.print_table()
                botapi.after_change(host)
            return
        check_memory_budget(host, table=dry_run)
        check_postgres_major(host, env)
        if dry_run:
            print_dry_run(host, env_file, skip_build)
            print(f"  read-only remote commands: {remote.CountingConnection.remote_commands}"
                  + (f" (+{remote.CountingConnection.rsync_sessions} rsync --dry-run)" if remote.CountingConnection.rsync_sessions else ""))
            return
        if skip_build:
            steps.skip("build frontend", "--skip-build")
        else:
            with steps.step("build frontend"):
                build_frontend(Context(config=c.config), FRONTEND)
        plan = plan_deploy(host, env_file)
        if plan.release is None and not unchanged_but_down(host, plan):
            # Nothing to change: two round trips after the facts (Docker's view, the audit line), no lock.
            with host.audited("deploy", release=plan.current) as outcome:
                outcome["result"] = "unchanged"
        else:
            with host.locked("deploy", wait=wait), host.audited("deploy") as outcome:
                if host.current_id != plan.current:  # another deploy went first while we waited
                    plan = plan_deploy(host, env_file)
                run_deploy(host, plan, outcome)
    except StepFailed as failure:
        steps.fail(f"Deploy to {c.original_host} failed at step '{failure.step}': {failure.detail}")
    steps.print_table()
    print(f"  remote commands: {remote.CountingConnection.remote_commands}"
          + (f" (+{remote.CountingConnection.rsync_sessions} rsync session)" if remote.CountingConnection.rsync_sessions else ""))
    botapi.after_change(host)  # the bot's updates reach the live release (after the count: not the deploy's)


def deploy_to_swarm(c, host: SwarmHost, env_file: Path | None, *, skip_build: bool, wait: bool, dry_run: bool) -> None:
    """`deploy` on a swarm manager (docs/several-hosts.md): the same settings, lock and audit line;
    the release goes out as a stack (tasks/swarm.py)."""
    host.require_manager()
    check_postgres_major(host)
    if dry_run:
        if not (FRONTEND / "dist" / "index.html").is_file():
            raise Exit("frontend/dist has not been built, so what a deploy would send is unknown: run `invoke build` (a dry "
                       "run builds nothing) and try again. Nothing was changed on the server.", code=ExitCode.USAGE)
        host.dry_run(env_file, dry_run_migrations(host, host.current_id)[0])
        return
    if skip_build:
        host.steps.skip("build frontend", "--skip-build")
    else:
        with host.steps.step("build frontend"):
            build_frontend(Context(config=c.config), FRONTEND)
    host.deploy(env_file, wait=wait)


@task(help={
    "from_offsite": "Recover from the off-site repository (OFFSITE_REPOSITORY): the only source so far; required.",
    "name": "The off-site set to recover (default: the newest; see `backup.offsite.list`).",
    "to_time": "With the WAL archive off-site (an SFTP repository): bring the database to this moment, \"YYYY-MM-DD "
               "HH:MM:SS\" in UTC, instead of to the last archived WAL.",
    "skip_build": "Deploy the frontend/dist already built.",
    "compose": "Which Docker Compose to use on the host: auto (v2 when present, else v1), v1 or v2.",
    "wait": WAIT_HELP,
    "env": ENV_HELP,
})
def recover(c, from_offsite=False, name=None, to_time=None, skip_build=False, compose="auto", wait=False, env=None):
    """Rebuild the service on a NEW host (provisioned, no release yet) from the off-site copies:
    the newest set's certificates, this checkout's release, then the set's database and JetStream
    data; the same health checks as a deploy. Then point DNS at the new host (docs/operations.md, "The bad day")."""
    if not from_offsite:
        raise Exit("Say where to recover from: `fab -H NEWHOST recover --from-offsite` (the off-site repository in "
                   "OFFSITE_REPOSITORY). Nothing was changed.", code=ExitCode.USAGE)
    if compose not in COMPOSE_CHOICES:
        raise Exit(f"--compose must be auto, v1 or v2 (got {compose!r}).", code=ExitCode.USAGE)
    if name is not None and not re.fullmatch(r"[0-9]{8}T[0-9]{6}Z", name):
        raise Exit(f"--name {name!r} is not a full set's name like 20261126T020000Z (see `backup.offsite.list`). "
                   f"Nothing was changed.", code=ExitCode.USAGE)
    remote.require_host(c)
    choose_env(c, env)
    settings = Settings.from_context(c)
    if not settings.offsite_repository:
        raise Exit("OFFSITE_REPOSITORY is not set: there is nothing to recover from. Use the settings file of the lost host "
                   "(OFFSITE_REPOSITORY and OFFSITE_PASSWORD). Nothing was changed.", code=ExitCode.USAGE)
    if skip_build and not (FRONTEND / "dist" / "index.html").is_file():
        raise Exit("--skip-build was given but frontend/dist/index.html is missing: run `invoke build` first. "
                   "Nothing was changed on the server.", code=ExitCode.USAGE)
    wal_offsite = bool(pitr_commands.offsite_repo_path(settings.offsite_repository))
    target = ""
    if to_time:
        try:
            target = pitr_commands.parse_target(to_time, datetime.now(timezone.utc)).strftime(pitr_commands.TIME_FORMAT)
        except ValueError as err:
            raise Exit(f"{err} Nothing was changed.", code=ExitCode.USAGE) from None
        if not wal_offsite:
            raise Exit("--to-time needs the WAL archive off-site, which is kept only for an SFTP repository with an absolute "
                       "path (OFFSITE_REPOSITORY=sftp:user@host:/path). Without it `recover` brings back the newest set. "
                       "Nothing was changed.", code=ExitCode.USAGE)
    env_file = env_file_path(c)
    wal_note = ""
    steps = Steps(f"Recover on {c.original_host}", settings.secret_values())
    try:
        with steps.step("connect and check host"):
            host = Host.open(c, settings, compose=compose, steps=steps)
            if host.engine == "swarm":
                raise Exit(f"{host.name} is in a Docker Swarm: `recover` rebuilds one Compose host. Recover onto a fresh "
                           f"VPS (not yet in a swarm), then `cluster.init` with it first (docs/several-hosts.md, \"From one VPS to a "
                           f"cluster\"). Nothing was changed.", code=ExitCode.HOST_NOT_READY)
        marker = offsite_commands.recovering_marker(host.ctx)
        resuming = host.probe_run(f"cat {marker}").stdout.strip() if host.current_id else ""
        if host.current_id and not resuming:
            raise Exit(f"{host.name} already serves release {host.current_id}: `recover` builds a NEW host, and would replace "
                       f"this one's database. To bring data back here use `fab -H {host.name} backup.restore`. Nothing was "
                       f"changed.", code=ExitCode.REFUSED)
        if resuming:
            print(f"Resuming the recovery of {resuming} that did not finish on {host.name}.")
        check_memory_budget(host)
        check_postgres_major(host, env)
        if skip_build:
            steps.skip("build frontend", "--skip-build")
        else:
            with steps.step("build frontend"):
                build_frontend(Context(config=c.config), FRONTEND)
        with host.locked("recover", wait=wait), host.audited("recover") as outcome:
            with steps.step("fetch the off-site set"):
                set_name = fetch_offsite_set(host, name or resuming or None)
                # Until the data is back, the host is a recovery in progress: `recover` may run again.
                host.run(offsite_commands.mark_recovering(host.ctx, set_name), "fetch the off-site set")
            outcome["detail"] = f"from off-site set {set_name}"
            with steps.step("certificates and TLS settings"):
                print(f"   {host.run(offsite_commands.unpack_certificates(host.ctx, set_name), 'certificates').stdout.strip()}")
            plan = plan_deploy(host, env_file)
            run_deploy(host, plan, outcome)
            live = plan.release.id if plan.release else plan.current
            outcome["release"] = live
            with steps.step("restore database and nats, then migrate"):
                # Into a fresh database (the set's schema is all there is), migrated to this
                # release's head before api and worker start on it.
                host.restore_backup(set_name, fresh_database=True, migrate=True)
            if wal_offsite:
                with steps.step(f"database to {target + ' UTC' if target else 'the last archived WAL'} (off-site)"):
                    wal_note = host.restore_wal_offsite(target, migrate=True)
                outcome["detail"] += f"; {wal_note}"
            with steps.step("health checks"):
                host.probe(host.release(live))
            host.run(f"rm -f {marker}", "health checks")
    except StepFailed as failure:
        steps.fail(f"Recover on {c.original_host} failed at step '{failure.step}': {failure.detail}. Fix the cause and run "
                   f"`fab -H {c.original_host} recover --from-offsite` again: it resumes (the host keeps the fetched set).")
    steps.print_table()
    print(f"{host.name} serves release {live} with the data of off-site set {set_name}" + (f" and {wal_note}" if wal_note else "")
          + f". Now point DNS at it (docs/operations.md, \"The bad day\"), then `fab -H {host.name} backup.schedule`.")


def fetch_offsite_set(host: Host, name: str | None) -> str:
    """Bring an off-site set (the newest, or `name`) into the host's backups/, checksums checked."""
    pubkey = host.install_offsite()
    result = host.offsite("fetch", name or "latest")
    set_name = offsite_commands.parse_fetched(result.stdout)
    if not result.ok or not set_name:
        hint = (f" If the repository is on SFTP, authorize this host's key there first: {pubkey}" if pubkey else "")
        raise StepFailed("fetch the off-site set", host.redact(result.stderr.strip()[-400:]) + hint)
    made = backup_commands.parse_sets(host.probe_run(backup_commands.list_sets(host.ctx)).stdout)[0]
    release = next((s.get("release", "") for s in made if s["name"] == set_name), "")
    print(f"   off-site set {set_name}" + (f" (made under release {release}; deploying this checkout, {git_commit()[:12]})"
                                           if release else ""))
    return set_name


@dataclass(frozen=True)
class DeployPlan:
    """What a deploy would do, decided before anything changes: `run_deploy` carries it out,
    `--dry-run` prints it."""

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
    try:
        env_text = envfile.render(env_values(host.settings, env_file, absolute_app_dir(host.facts, host.ctx.app_dir)))
    except ValueError as err:
        raise Exit(f"{err} Nothing was changed on the server.", code=ExitCode.USAGE) from None
    fingerprint = release_fingerprint(PROJECT_ROOT, env_text, host.variant)
    image = backend_image(PROJECT_ROOT, host.ctx.project)
    postgres = image_commands.postgres_image(PROJECT_ROOT, host.ctx.project)
    assets = tuple(dist_assets((FRONTEND / "dist" / "index.html").read_text()))
    current = host.current_id
    if current and host.current_meta.get("fingerprint") == fingerprint:
        return DeployPlan(env_text, image, assets, current, None)
    release_id = new_release_id(datetime.now(timezone.utc), git_commit())
    who = identity()
    backend_fp = backend_fingerprint(PROJECT_ROOT, env_text, host.variant)
    live = host.current_meta
    # The live backend serves on when nothing it depends on changed (and it is known which
    # release it came from); otherwise this release brings its own.
    backend = not (current and live.get("backend_fingerprint") == backend_fp and live.get("backend_image") == image)
    meta = {"release": release_id, "deployed_at": now_iso(), "deployed_user": who["user"], "deployed_machine": who["machine"],
            "commit": who["commit"], **({"ci_run": who["ci_run"]} if "ci_run" in who else {}),
            "fingerprint": fingerprint, "compose": host.variant, "backend_fingerprint": backend_fp,
            "stack_fingerprint": backend_fingerprint(PROJECT_ROOT, env_text, host.variant, STACK_PATHS),
            "backend_release": release_id if backend else (live.get("backend_release") or current),
            **({"postgres_image": postgres} if postgres else {})}
    return DeployPlan(env_text, image, assets, current, Release(release_id, image, assets, previous=current, result="deploying", meta=meta),
                      backend)


def unchanged_but_down(host: Host, plan: DeployPlan) -> bool:
    """For a deploy with nothing to change: True when the live stack is not all running and
    healthy as Docker sees it (the deploy then brings the live release up again)."""
    with host.steps.step("check the live stack"):
        problems = host.check_running()
    if problems:
        print(f"Nothing changed since release {plan.current}, but {'; '.join(problems)}: bringing it up again.")
        return True
    print(f"Nothing changed since release {plan.current} (same files, same settings); every service is running and "
          f"healthy on {host.name}.")
    return False


def release_files(host: Host, plan: DeployPlan) -> list[tuple[str, int, str]]:
    """The files a release writes besides its rsync'd tree, relative to APP_DIR, with modes: its
    settings (0600), release.yml, RELEASE.json and the alert program with its channels (0600)."""
    rid, s = plan.release.id, host.settings
    rel = f"releases/{rid}"
    conf = notify_commands.conf_text(host.ctx, telegram_api_base_url=s.telegram_api_base_url, bot_token=s.telegram_bot_token.reveal(),
                                     chat_id=s.alert_telegram_chat_id, webhook_url=s.alert_webhook_url.reveal())
    return [(f"env/{rid}.env", 0o600, plan.env_text),
            (f"{rel}/release.yml", 0o644, compose_commands.release_override(plan.image, plan.backend_release,
                                                                                     postgres_image=plan.release.postgres_image)),
            (f"{rel}/RELEASE.json", 0o644, json.dumps(plan.release.recorded("deploying"), sort_keys=True) + "\n"),
            (f"bin/{notify_commands.SCRIPT_NAME}", 0o700, notify_commands.NOTIFY_SCRIPT),
            (f"bin/{notify_commands.CONF_NAME}", 0o600, conf),
            (f"env/{db_commands.APP_ROLE_FILE}", 0o600,
             db_commands.app_role_script(s.app_db_user, s.postgres_user, s.postgres_password.reveal(),
                                         s.postgres_db))]


def run_deploy(host: Host, plan: DeployPlan, outcome: dict) -> None:
    current = plan.current
    if plan.release is None:  # unchanged, but not all running: bring the live release up again
        outcome.update(release=current, result="restarted")
        release = host.release(current)
        host.activate(release, backend=True)
        print(f"Release {current} is serving again on {host.name}.")
        return
    release = plan.release
    release_id = release.id
    outcome["release"] = release_id
    if not plan.backend:
        outcome["detail"] = f"dashboard only; API and worker of {plan.backend_release}"
    print(f"Release {release_id} -> {host.name}:{host.ctx.release_dir(release_id)} (Compose {host.variant})"
          + ("" if plan.backend else f"; dashboard only: the API and worker of {plan.backend_release} serve on"))
    with host.steps.step("prepare release and its settings"):
        place = backend_build_place(host.settings.build_backend, machine.ok(["docker", "info"]))
        on_host, rows = host.prepare_release(release, release_files(host, plan), images_needed(place, release) if plan.backend else [])
    try:
        ship_release(host, plan, place, on_host, rows)
    except StepFailed as failure:
        detail = failure.detail
        host.probe_run(release_commands.write_meta(host.ctx, release_id, release.recorded("failed", failure=detail[:300])))
        outcome["detail"] = detail
        raise


def backend_build_place(setting: str, local_docker: bool) -> str:
    """Where the backend image is built: `local` spares the VPS's CPUs when this machine has Docker."""
    if setting == "auto":
        return "local" if local_docker else "host"
    return setting


def image_plan(needed: list[str], on_host: set[str], here: set[str], mode: str) -> tuple[list[str], list[str]]:
    """(images to ship, images the host lacks that this machine cannot send)."""
    missing = [i for i in needed if i not in on_host]
    if mode == "never":
        return [], []
    return [i for i in missing if i in here], [i for i in missing if i not in here]


def built_images(release: Release) -> list[tuple[str, Path]]:
    """(image, build directory) of the images a release builds: the backend, and Postgres when
    compose.yml builds it (postgres/)."""
    return image_commands.built_images(PROJECT_ROOT, release.image, release.postgres_image)


def images_needed(place: str, release: Release) -> list[str]:
    """The images a release needs on the host (with the base images of what it builds, when it is
    built there)."""
    built = built_images(release)
    needed = image_commands.stack_images(PROJECT_ROOT) + [image for image, _ in built]
    if place == "host":
        needed += [base for _, context in built for base in image_commands.build_base_images(context / "Dockerfile")
                   if base not in needed]
    return needed


def provide_images(host: Host, release: Release, place: str, on_host: set[str]) -> None:
    """Make sure the host has every image the release needs (`on_host`: what it has, read while
    preparing the release): build the backend (and Postgres) here when that is the setting, and
    ship what the host lacks (only that), compressed, with progress."""
    local_docker = machine.ok(["docker", "info"])
    needed = images_needed(place, release)
    for image, context in built_images(release):
        if place == "local" and image not in on_host:
            if not machine.ok(["docker", "image", "inspect", image]):
                print(f"   building {image} here (BUILD_BACKEND={host.settings.build_backend})", flush=True)
                built = machine.run(image_commands.local_build(image, context), check=False)
                if built.returncode:
                    raise StepFailed(f"build {context.name} image here", built.stderr.strip()[-800:])
            if host.facts.get("docker_id") and host.facts.get("docker_id") == machine.docker_id():
                on_host = on_host | {image}  # the host's Docker is this machine's: it has it now
        if place == "host":
            needed.remove(image)  # built on the host in the next step
    here = {i for i in needed if local_docker and machine.ok(["docker", "image", "inspect", i])}
    ship, lacking = image_plan(needed, on_host, here, host.settings.ship_images)
    if lacking and host.settings.ship_images == "always":
        raise StepFailed("images the host needs", f"SHIP_IMAGES=always, but this machine does not have {', '.join(lacking)} "
                                                  f"to send; pull or build them here first.")
    if ship:
        host.ship_images(ship)
    else:
        print(f"   the host has {len(needed) - len(lacking)} of {len(needed)} images"
              + (f"; it pulls {', '.join(lacking)} itself" if lacking else ""))


def upload_options(host: Host, release_id: str, current: str) -> dict:
    """rsync of a release's files (the deploy, and its dry run): unchanged files become hard links
    to the current release's copies."""
    return dict(sources=list(SENT_PATHS), remote_path=f"{host.ctx.release_dir(release_id)}/", cwd=str(PROJECT_ROOT),
                relative=True, excludes=RSYNC_EXCLUDES, link_dest=f"../{current}" if current else None, delete=False)


def record_command(host: Host, release: Release, prune: list[str]) -> str:
    """Run once every check passed: the release recorded `ok`, pruning, the sampler."""
    return release_commands.write_meta(host.ctx, release.id, release.recorded("ok")) + "; " + prune_command(host, prune)


def prune_command(host: Host, prune: list[str]) -> str:
    """The last step's command: remove pruned releases and unused backend images."""
    return (release_commands.remove_releases(host.ctx, prune) + "; "
            + release_commands.prune_images(host.ctx, image_repo(host.ctx.project)) + "; "
            + release_commands.prune_images(host.ctx, image_repo(host.ctx.project, "postgres"), "postgres_image") + "; "
            + status_commands.install_sampler(host.absolute_ctx))


BACKEND_STEPS = "images, backend build, database, migrations, api and worker"
ARCHIVE_STEP = "WAL archive (point-in-time recovery)"
APP_ROLE_STEP = "the app's database role and its grants"
RECORD_STEP = "record release and prune"  # the last step of rollout.activation's `then`


def ship_release(host: Host, plan: DeployPlan, place: str, on_host: set[str], rows: list[tuple[str, dict]]) -> None:
    steps, release, current = host.steps, plan.release, plan.current
    rid = release.id
    with steps.step("upload files (rsync)"):
        result = remote.rsync(host.conn, **upload_options(host, rid, current))
        if not result.ok:
            raise StepFailed("upload files", f"rsync exit {result.exited}: {result.stderr.strip()[-800:]}")
        sent = parse_rsync_sent(result.stdout)
        print(f"   sent {sent} bytes{' (unchanged files hard-linked from ' + current + ')' if current else ''}")
    if plan.backend:
        with steps.step("images the host needs"):
            provide_images(host, release, place, on_host)
        before = host.start_backend(release)
        if not before.readable:
            raise StepFailed("read database schema",
                             f"the database's migration revision could not be read ({before.error or 'no answer'}), so "
                             f"whether migrations are pending is unknown. Nothing was migrated"
                             + (f" and release {current} keeps serving" if current else "")
                             + f". Check Postgres (`fab -H {host.name} compose.logs --service postgres`) and deploy again.")
        if release.postgres_image:
            with steps.step(ARCHIVE_STEP):
                host.ensure_archive()
        migrate_database(host, release, before, current)
        with steps.step(APP_ROLE_STEP):
            host.run(db_commands.ensure_app_role(host.ctx), APP_ROLE_STEP)
    else:
        steps.skip(BACKEND_STEPS, f"unchanged since {plan.backend_release}: its containers keep running")
    prune = releases_to_prune(rows + [(rid, release.recorded("ok"))], rid, host.settings.keep_releases)
    record = record_command(host, release, prune)
    try:
        host.activate(release, backend=plan.backend, then=record)
    except StepFailed as failure:
        if failure.step == RECORD_STEP:  # every check passed: the release serves, only its record failed
            raise StepFailed(failure.step, f"release {rid} is live and healthy, but recording it failed "
                                           f"({failure.detail}); `fab -H {host.name} releases` shows what the host knows.") from None
        raise StepFailed(failure.step, failure.detail + host.put_back(current, rid, backend=plan.backend)) from None
    print(f"Release {rid} is live on {host.name}" + ("." if plan.backend else f" (API and worker: {plan.backend_release})."))


def migrate_database(host: Host, release: Release, before: release_commands.SchemaState, current: str) -> None:
    """Back up and migrate when the release has migrations the database has not run; nothing
    when the database is at the release's head."""
    steps, rid = host.steps, release.id
    if not (before.fresh or before.migrations_pending or before.unknown_to_release):
        steps.skip("back up database before migrating", "no pending migration")
        steps.skip("migrate database", f"the database is at the release's head ({before.revision})")
        return
    backup_set = ""
    if before.migrations_pending:
        with steps.step("back up database before migrating"):
            backup_set = host.backup(db_only=True)
    else:
        steps.skip("back up database before migrating", "fresh database" if before.fresh else "no pending migration")
    with steps.step("migrate database"):
        try:
            host.run(host.in_release(rid, compose_commands.migrate(host.ctx)), "migrate database",
                     hide=False)
        except StepFailed as failure:
            after = host.schema(rid)
            raise StepFailed(failure.step, f"{failure.detail} "
                             + migration_failure_detail(before, after, backup_set, current, host.name)) from None


# --- before a deploy changes anything: the memory budget, and `deploy --dry-run` ----------------


def check_memory_budget(host: Host, table: bool = False) -> budget.Budget:
    """The stack's memory reservations and limits against the host's memory (commands/budget.py,
    MemTotal from the preflight): refuses, changing nothing, a stack that cannot fit (REFUSED, like
    the other refusals that protect what runs: an over-committed host OOM-kills Postgres instead of
    failing the deploy); warns when it fits only without headroom."""
    mem_kb = host.facts.get("mem_total_kb", "")
    try:
        verdict = budget.evaluate(budget.stack_memory(PROJECT_ROOT), int(mem_kb) * 1024 if mem_kb.isdigit() else 0)
    except ValueError as err:
        raise Exit(f"A memory size in the compose files is not valid ({err}). Nothing was changed on the server.",
                   code=ExitCode.USAGE) from None
    print(budget.summary(verdict))
    if table or verdict.level != budget.OK:
        print(budget.table(verdict))
    if verdict.level == budget.REFUSE:
        raise Exit(f"The stack does not fit in the memory of {host.name}: {'; '.join(verdict.reasons)}. Lower the reservations "
                   f"in compose.yml / docker-compose.production.yml or move to a larger host. Nothing was changed on the server.",
                   code=ExitCode.REFUSED)
    for reason in verdict.reasons:
        print(f"   warning: {reason}")
    return verdict


def check_postgres_major(host: Host, env: str | None = None) -> str:
    """The data in the Postgres volume (its major version, from the preflight) against the major of
    the image this checkout's compose.yml runs: a mismatch is refused (REFUSED) before anything
    changes, naming both versions and `db.upgrade`; returns the guard's verdict."""
    image = db_commands.postgres_image(PROJECT_ROOT)
    data = host.facts.get("pg_data", "")
    verdict, wanted = db_commands.guard(data, image)
    if verdict in (db_commands.OLDER, db_commands.NEWER):
        upgrade = f"fab -H {host.name} db.upgrade" + (f" --env {env}" if env else "")
        raise Exit(db_commands.refusal(verdict, data, image, wanted, host.name, host.ctx.postgres_volume, upgrade),
                   code=ExitCode.REFUSED)
    if verdict == db_commands.UNKNOWN:
        print(f"   note: the PostgreSQL version of the data in {host.ctx.postgres_volume} could not be read (no postgres "
              f"container); Postgres itself refuses a data directory of another major, and the deploy stops at reading "
              f"the schema.")
    elif verdict == db_commands.UNCHECKED:
        print(f"   note: {image} does not name a PostgreSQL major version in its tag, so the data's (PostgreSQL {data}) "
              f"cannot be checked against it before the deploy.")
    return verdict


class Planned(NamedTuple):
    step: str
    where: str  # "host" (a remote command), "sftp" (a file written over SFTP), "here" (run on this machine)
    command: str


def planned_commands(host: Host, plan: DeployPlan, *, upload: str, ship: list[str], backup: bool, migrate: bool,
                     prune: list[str], env_keys: int) -> list[Planned]:
    """Every command the deploy of `plan.release` runs that changes the host, in order, when every
    check passes (a failed check puts the previous release back through `activate`). The deploy
    runs the same builders (tests/test_executors.py compares the two)."""
    ctx, release = host.ctx, plan.release
    rid = release.id
    prepare = "prepare release and its settings"
    planned = [
        Planned(prepare, "sftp", f"{ctx.inbox}/{release_commands.RELEASE_TAR} <- the release's settings ({env_keys} keys, mode 0600), "
                                 f"release.yml, RELEASE.json, the alert program and its channels "
                                 f"(notify.conf, 0600), the app's database role "
                                 f"(env/{db_commands.APP_ROLE_FILE}, 0600); values not shown"),
        Planned(prepare, "host", release_commands.unpack_release(ctx, rid) + "; "
                + image_commands.present(images_needed(backend_build_place(host.settings.build_backend, machine.ok(["docker", "info"])),
                                                       release) if plan.backend else [])
                + "; " + release_commands.list_releases(ctx)),
        Planned("upload files (rsync)", "here", upload),
    ]
    if plan.backend:
        if ship:
            planned.append(Planned("images the host needs", "here", f"{sh(image_commands.save(ship))} | gzip -1 | ssh {host.conn.user}@"
                                                                    f"{host.conn.host} {sh(['sh', '-c', image_commands.load()])}"))
        planned.append(Planned("build images, start postgres and nats, read the schema", "host", host.start_backend_script(release)))
        if release.postgres_image:
            planned.append(Planned(ARCHIVE_STEP, "host", pitr_commands.ensure_stanza(ctx)))
        if backup:
            step = "back up database before migrating"
            planned += [Planned(step, "host", backup_commands.install_script(ctx)),
                        Planned(step, "sftp", f"{backup_commands.script_path(ctx)}.new <- the backup program"),
                        Planned(step, "host", sh(backup_commands.activate_script(ctx))),
                        Planned(step, "host", sh(backup_commands.run(ctx, host.settings.backup_keep, True)))]
        if migrate:
            planned.append(Planned("migrate database", "host",
                                   host.in_release(rid, compose_commands.migrate(ctx))))
        planned.append(Planned(APP_ROLE_STEP, "host", db_commands.ensure_app_role(ctx)))
    steps = ("replace api, restart worker, " if plan.backend else "") + "switch current, reload nginx, health checks, record"
    return planned + [Planned(steps, "host", host.activation_script(release, backend=plan.backend,
                                                                     then=record_command(host, release, prune)))]


def dry_run_images(host: Host, release: Release) -> tuple[list[str], list[str]]:
    """What the images step would do, building and sending nothing: (lines to print, images sent)."""
    local_docker = machine.ok(["docker", "info"])
    setting, mode = host.settings.build_backend, host.settings.ship_images
    place = backend_build_place(setting, local_docker)
    needed = images_needed(place, release)
    on_host = host.images_present(needed)

    def here_has(image: str) -> bool:
        return local_docker and machine.ok(["docker", "image", "inspect", image])

    lines = []
    for image, context in built_images(release):
        what = context.name
        build = compose_commands.build_backend if what == "backend" else compose_commands.build_postgres
        if image in on_host:
            lines.append(f"{what} {image}: already on the host ({what}/ unchanged): not rebuilt")
        elif place == "local":
            lines.append(f"{what} {image}: {'already built here' if here_has(image) else 'built here'} (BUILD_BACKEND={setting}), "
                         f"then sent unless the host shares this machine's Docker")
        else:
            lines.append(f"{what} {image}: built on the host (BUILD_BACKEND={setting}): {sh(build(host.ctx))}")
        if place == "host":
            needed.remove(image)
    built = {image for image, _ in built_images(release)}
    here = {i for i in needed if here_has(i) or (i in built and place == "local" and local_docker)}
    ship, lacking = image_plan(needed, on_host, here, mode)
    lines.append(f"on the host already: {', '.join(i for i in needed if i in on_host) or 'none'}")
    if ship:
        lines.append(f"sent over SSH (docker save | gzip | docker load, SHIP_IMAGES={mode}): {', '.join(ship)}")
    if lacking:
        lines.append(f"the deploy would FAIL here: SHIP_IMAGES=always, but this machine does not have {', '.join(lacking)}"
                     if mode == "always" else f"pulled by the host itself: {', '.join(lacking)}")
    return lines, ship


def dry_run_migrations(host: Host, current: str) -> tuple[list[str], bool, bool]:
    """The migrations the deploy would run, with the database's revision read (read-only) through
    the live release: (lines to print, whether a database backup is taken first, whether
    `alembic upgrade head` runs)."""
    local = release_commands.local_revisions(PROJECT_ROOT / "backend" / "alembic" / "versions")
    if not current:
        return [f"no live release, so a fresh database: all {len(local)} would run ({', '.join(release_commands.pending_revisions(local, ''))})"], False, True
    state = host.schema(current)
    if not state.readable:
        return [f"the database's revision could not be read ({state.error or 'no answer'}): the deploy would stop before "
                f"migrating (fail closed) and {current} would keep serving"], False, False
    pending = release_commands.pending_revisions(local, state.revision)
    if state.fresh:
        return [f"the database has no migration yet: all {len(pending)} would run ({', '.join(pending)})"], False, True
    if pending is None:
        return [f"the database is at {state.revision}, which this checkout's migrations do not know (a later release applied "
                f"it): `alembic upgrade head` would fail and the deploy would stop"], True, True
    if not pending:
        return [f"none pending (the database is at {state.revision}, this checkout's head): no migration runs"], False, False
    return [f"{len(pending)} pending ({', '.join(pending)}; the database is at {state.revision}): a database-only backup is "
            f"taken first"], True, True


def print_dry_run(host: Host, env_file: Path | None, skip_build: bool) -> list[Planned]:
    """`deploy --dry-run`: the deploy's plan, read from the host without changing it (facts, an
    rsync --dry-run, image presence, the database's revision, the release list); returns the
    planned commands (none when nothing changed)."""
    if not (FRONTEND / "dist" / "index.html").is_file():
        raise Exit("frontend/dist has not been built, so what a deploy would send is unknown: run `invoke build` (a dry run "
                   "builds nothing) and try again. Nothing was changed on the server.", code=ExitCode.USAGE)
    print(f"Dry run on {host.name}: nothing is changed (no build, no lock, no audit line).")
    fresh, why = is_up_to_date(FRONTEND)
    if skip_build:
        print(f"frontend: --skip-build: frontend/dist is sent as it is{'' if fresh else f' (stale: {why})'}")
    else:
        print(f"frontend: {f'up to date ({why})' if fresh else f'stale ({why}): the deploy would build it first, so its files and the release below would change'}")
    plan = plan_deploy(host, env_file)
    current = plan.current
    if plan.release is None:
        print(f"Nothing changed since release {current} (same files, same settings): the deploy would only run the health "
              f"checks and change nothing.")
        return []
    release, ctx = plan.release, host.ctx
    rid = release.id
    print(f"release: {rid} -> {host.name}:{ctx.release_dir(rid)} (Compose {host.variant})"
          + (f", replacing {current}" if current else ", the host's first release"))
    if current:
        live = host.probe_run(sh(["sha256sum", ctx.release_env(current)])).stdout.split()
        same = live[:1] == [hashlib.sha256(plan.env_text.encode()).hexdigest()]
        print(f"settings: {'unchanged since' if same else 'changed since' if live else 'not readable for'} {current} (values not shown)")
    else:
        print("settings: new (no live release)")

    options = upload_options(host, rid, current)
    result = remote.rsync(host.conn, **options, dry_run=True)
    if not result.ok:
        raise Exit(f"rsync --dry-run to {host.name} failed (exit {result.exited}): {host.redact(result.stderr.strip()[-800:])}. "
                   f"Nothing was changed on the server.", code=ExitCode.FAILED)
    files, size = transfer_commands.parse_itemized(result.stdout)
    print(f"files: {len(files)} would be sent, {size} bytes"
          + (f" (the rest hard-linked from {current})" if current else ""))
    for name in files[:DRY_RUN_FILES]:
        print(f"   {name}")
    if len(files) > DRY_RUN_FILES:
        print(f"   ... and {len(files) - DRY_RUN_FILES} more")

    if plan.backend:
        image_lines, ship = dry_run_images(host, release)
        migration_lines, backup, migrate = dry_run_migrations(host, current)
    else:
        unchanged = f"the backend is unchanged since {plan.backend_release}: its API and worker containers keep running"
        image_lines, ship = [f"none needed ({unchanged})"], []
        migration_lines, backup, migrate = [f"none ({unchanged})"], False, False
    print("images:")
    for line in image_lines:
        print(f"   {line}")
    print("migrations:")
    for line in migration_lines:
        print(f"   {line}")
    rows, _ = host.releases()
    prune = releases_to_prune(rows + [(rid, release.recorded("ok"))], rid, host.settings.keep_releases)
    print(f"releases pruned after it: {', '.join(prune) or 'none'}")

    env_keys = sum(1 for line in plan.env_text.splitlines() if "=" in line and not line.lstrip().startswith("#"))
    planned = planned_commands(host, plan, upload=remote.rsync_command(host.conn, **options), ship=ship, backup=backup,
                               migrate=migrate, prune=prune, env_keys=env_keys)
    print(f"Commands that would change {host.name}, in order (the deploy also takes the host's lock ({ctx.lock_dir}) and "
          f"appends one line to {ctx.audit_log}; when a check fails it puts {current or 'nothing'} back):")
    step = ""
    for n, (name, where, command) in enumerate(planned, 1):
        if name != step:
            print(f"  {name}")
            step = name
        lines = host.redact(command).strip().splitlines()
        print(f"    {n:>2}. [{where}] {lines[0]}")
        for line in lines[1:DRY_RUN_COMMAND_LINES]:
            print(f"               {line}")
        if len(lines) > DRY_RUN_COMMAND_LINES:
            print(f"               ... ({len(lines) - DRY_RUN_COMMAND_LINES} more lines)")
    return planned


ns = Collection("deploy")
ns.add_task(deploy, default=True)
