"""`fab -H HOST deploy`: build, ship a release, migrate, replace the API without downtime,
prove health, switch `current`; roll back automatically when a check fails."""

from __future__ import annotations

import hashlib
import re
from dataclasses import fields
from datetime import datetime, timezone
from pathlib import Path

from dotenv import dotenv_values
from invoke import Collection, Context, Exit, task

from . import machine, remote
from .build import FRONTEND, build_frontend, git_commit, tree_hash
from .commands import compose as compose_commands
from .commands import envfile
from .commands import images as image_commands
from .commands import release as release_commands
from .commands import rollout, sh
from .exits import ExitCode
from .host import WAIT_HELP, Host, Release, absolute_app_dir
from .identity import identity, now_iso
from .settings import PROJECT_ROOT, Settings, env_file_path
from .steps import StepFailed, Steps

SENT_PATHS = ("compose.yml", "docker-compose.production.yml", "nginx", "backend", "frontend/dist", release_commands.PROBE_PATH)
RSYNC_EXCLUDES = ("__pycache__", "*.pyc", ".pytest_cache", ".gitkeep")
COMPOSE_CHOICES = ("auto", "v1", "v2")


def new_release_id(now: datetime, commit: str) -> str:
    return f"{now.strftime('%Y%m%dT%H%M%SZ')}-{re.sub(r'[^0-9a-z]+', '', commit.lower())[:12] or 'nogit'}"


def dist_assets(dist: Path) -> list[str]:
    """The hashed asset paths index.html references (what the probe expects to be served)."""
    return sorted(set(re.findall(r'(?:src|href)="(/assets/[^"]+)"', (dist / "index.html").read_text())))


def env_values(settings: Settings, env_file: Path | None, app_root: str) -> dict[str, str]:
    """The release's settings: the local file's keys with every validated setting applied."""
    values: dict[str, str] = {}
    if env_file and env_file.is_file():
        values.update({k: v for k, v in dotenv_values(env_file).items() if v is not None})
    for f in fields(Settings):
        value = getattr(settings, f.name)
        values[Settings.env_key(f.name)] = value.reveal() if hasattr(value, "reveal") else str(value)
    values["APP_ROOT"] = app_root  # absolute APP_DIR on the host: nginx's mounts (docker-compose.production.yml)
    return values


def release_fingerprint(root: Path, env_text: str, variant: str) -> str:
    digest = hashlib.sha256(variant.encode() + b"\0" + env_text.encode())
    for rel in SENT_PATHS:
        path = root / rel
        digest.update(rel.encode() + b"\0")
        digest.update((tree_hash(path, {"__pycache__", ".pytest_cache"}) if path.is_dir() else
                       hashlib.sha256(path.read_bytes()).hexdigest()).encode())
    return digest.hexdigest()


def image_repo(project: str) -> str:
    return f"{project}-backend"


def backend_image(root: Path, project: str) -> str:
    """Backend images are tagged by the content of backend/: an unchanged backend is not rebuilt."""
    return f"{image_repo(project)}:{tree_hash(root / 'backend', {'__pycache__', '.pytest_cache'})[:12]}"


def parse_rsync_sent(output: str) -> int:
    match = re.search(r"Total bytes sent: ([\d,.]+)", output)
    return int(match.group(1).replace(",", "").replace(".", "")) if match else 0


def releases_to_prune(rows: list[tuple[str, dict]], current: str, keep: int, keep_failed: int = 2) -> list[str]:
    """Releases to delete: all but the newest `keep` successful ones (failed releases never count
    toward `keep`), the current one and its recorded predecessor, and the newest `keep_failed`
    failed ones (kept for inspection)."""
    meta = dict(rows)
    names = sorted(meta, reverse=True)
    kept = set([n for n in names if meta[n].get("result") == "ok"][:keep])
    kept |= set([n for n in names if meta[n].get("result") != "ok"][:keep_failed])
    if current:
        kept |= {current, meta.get(current, {}).get("previous", "")}
    return sorted(n for n in names if n not in kept)


def migration_failure_detail(before: release_commands.SchemaState, after: release_commands.SchemaState,
                             backup_set: str, serving: str, host: str) -> str:
    """What a failed migration did to the database, and what (if anything) to do about it."""
    keeps = f"release {serving} keeps serving" if serving else "no release was serving"
    kept = f" Backup {backup_set}, taken just before the migration, is kept." if backup_set else ""
    if not after.readable:
        return (f"The database could not be read after the failure ({after.error or 'no answer'}), so whether the "
                f"migration changed it is unknown; nothing was restored and {keeps}.{kept} Check with "
                f"`fab -H {host} compose.logs --service postgres`.")
    if (after.revision, after.fingerprint) == (before.revision, before.fingerprint):
        return (f"Postgres rolled the migration back: the database is unchanged (revision {before.revision or 'none'}), "
                f"nothing needed restoring, no write was lost, and {keeps}.{kept}")
    restore = (f"`fab -H {host} backup.restore --name {backup_set}` restores the pre-migration state (the API is "
               f"stopped meanwhile, and writes since the backup are lost)" if backup_set else "no backup was taken")
    return (f"The migration changed the database before it failed (revision {before.revision or 'none'} -> "
            f"{after.revision or 'none'}, schema {'changed' if after.fingerprint != before.fingerprint else 'unchanged'}). "
            f"It was NOT restored automatically, because that would discard writes users made since the backup; "
            f"{keeps}. Fix the migration and deploy again, or {restore}.")


@task(help={
    "skip_build": "Deploy the frontend/dist already built (CI builds once, then deploys with this).",
    "compose": "Which Docker Compose to use on the host: auto (v2 when present, else v1), v1 or v2.",
    "wait": WAIT_HELP,
})
def deploy(c, skip_build=False, compose="auto", wait=False):
    """Deploy the stack as a new release: build, upload, migrate, start, check health, switch."""
    if compose not in COMPOSE_CHOICES:
        raise Exit(f"--compose must be auto, v1 or v2 (got {compose!r}).", code=ExitCode.USAGE)
    remote.require_host(c)
    settings = Settings.from_context(c)  # validated before any connection opens
    env_file = env_file_path(c)
    if skip_build and not (FRONTEND / "dist" / "index.html").is_file():
        raise Exit("--skip-build was given but frontend/dist/index.html is missing: run `invoke build` first "
                   "(or deploy without --skip-build). Nothing was changed on the server.", code=ExitCode.USAGE)
    steps = Steps(f"Deploy to {c.original_host}", settings.secret_values())
    try:
        with steps.step("connect and check host"):
            host = Host.open(c, settings, compose=compose, steps=steps)
        if skip_build:
            steps.skip("build frontend", "--skip-build")
        else:
            with steps.step("build frontend"):
                build_frontend(Context(config=c.config), FRONTEND)
        with host.locked("deploy", wait=wait), host.audited("deploy") as outcome:
            run_deploy(host, env_file, outcome)
    except StepFailed as failure:
        steps.fail(f"Deploy to {c.original_host} failed at step '{failure.step}': {failure.detail}")
    steps.print_table()
    print(f"  remote commands: {remote.CountingConnection.remote_commands}"
          + (f" (+{remote.CountingConnection.rsync_sessions} rsync session)" if remote.CountingConnection.rsync_sessions else ""))


def run_deploy(host: Host, env_file: Path | None, outcome: dict) -> None:
    dist = FRONTEND / "dist"
    try:
        env_text = envfile.render(env_values(host.settings, env_file, absolute_app_dir(host.facts, host.ctx.app_dir)))
    except ValueError as err:
        raise Exit(f"{err} Nothing was changed on the server.", code=ExitCode.USAGE) from None
    fingerprint = release_fingerprint(PROJECT_ROOT, env_text, host.variant)
    image = backend_image(PROJECT_ROOT, host.ctx.project)
    assets = tuple(dist_assets(dist))
    current = host.current_id

    if current and host.current_meta.get("fingerprint") == fingerprint:
        outcome.update(release=current, result="unchanged")
        print(f"Nothing changed since release {current}: checking that it still serves.")
        with host.steps.step("health checks"):
            host.probe(Release(current, image, assets))
        print(f"Release {current} is current and healthy on {host.name}.")
        return

    release_id = new_release_id(datetime.now(timezone.utc), git_commit())
    outcome["release"] = release_id
    who = identity()
    meta = {"release": release_id, "deployed_at": now_iso(), "deployed_user": who["user"], "deployed_machine": who["machine"],
            "commit": who["commit"], **({"ci_run": who["ci_run"]} if "ci_run" in who else {}),
            "fingerprint": fingerprint, "compose": host.variant}
    release = Release(release_id, image, assets, previous=current, result="deploying", meta=meta)
    print(f"Release {release_id} -> {host.name}:{host.ctx.release_dir(release_id)} (Compose {host.variant})")
    with host.steps.step("prepare release and its settings"):
        host.run(release_commands.prepare(host.ctx, release_id, compose_commands.release_override(image, release_id)),
                 "prepare release")
        host.put_text(env_text, host.ctx.release_env(release_id))
        host.run(release_commands.write_meta(host.ctx, release_id, release.recorded("deploying")), "record release")
    try:
        ship_release(host, release)
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


def provide_images(host: Host, backend: str) -> None:
    """Make sure the host has every image the release needs: build the backend here when that is
    the setting, and ship what the host lacks (only that), compressed, with progress."""
    local_docker = machine.ok(["docker", "info"])
    place = backend_build_place(host.settings.build_backend, local_docker)
    needed = image_commands.stack_images(PROJECT_ROOT) + [backend]
    if place == "host":
        needed += image_commands.build_base_images(PROJECT_ROOT / "backend" / "Dockerfile")
    on_host = host.images_present(needed)
    if place == "local" and backend not in on_host:
        if not machine.ok(["docker", "image", "inspect", backend]):
            print(f"   building {backend} here (BUILD_BACKEND={host.settings.build_backend})", flush=True)
            built = machine.run(image_commands.local_build(backend, PROJECT_ROOT / "backend"), check=False)
            if built.returncode:
                raise StepFailed("build backend image here", built.stderr.strip()[-800:])
        on_host = host.images_present(needed)  # a host that shares this Docker has it now
    if place == "host":
        needed.remove(backend)  # built on the host in the next step
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


def ship_release(host: Host, release: Release) -> None:
    steps, current, rid = host.steps, release.previous, release.id
    with steps.step("upload files (rsync)"):
        result = remote.rsync(host.conn, list(SENT_PATHS), f"{host.ctx.release_dir(rid)}/", cwd=str(PROJECT_ROOT), relative=True,
                              excludes=RSYNC_EXCLUDES, link_dest=f"../{current}" if current else None, delete=False)
        if not result.ok:
            raise StepFailed("upload files", f"rsync exit {result.exited}: {result.stderr.strip()[-800:]}")
        sent = parse_rsync_sent(result.stdout)
        print(f"   sent {sent} bytes{' (unchanged files hard-linked from ' + current + ')' if current else ''}")
    with steps.step("images the host needs"):
        provide_images(host, release.image)
    with steps.step("build backend image"):
        host.ensure_image(release)
    with steps.step("start postgres and nats"):
        host.run(host.in_release(rid, sh(rollout.data_services_up(host.ctx))), "start postgres and nats")
    with steps.step("read database schema"):
        before = host.schema(rid)
        if not before.readable:
            raise StepFailed("read database schema",
                             f"the database's migration revision could not be read ({before.error or 'no answer'}), so "
                             f"whether migrations are pending is unknown. Nothing was migrated"
                             + (f" and release {current} keeps serving" if current else "")
                             + f". Check Postgres (`fab -H {host.name} compose.logs --service postgres`) and deploy again.")
    backup_set = ""
    if before.migrations_pending:
        with steps.step("back up database before migrating"):
            backup_set = host.backup(db_only=True)
    else:
        steps.skip("back up database before migrating", "fresh database" if before.fresh else "no pending migration")
    with steps.step("migrate database"):
        try:
            host.run(host.in_release(rid, sh(compose_commands.migrate(host.ctx))), "migrate database", hide=False)
        except StepFailed as failure:
            after = host.schema(rid)
            raise StepFailed(failure.step, f"{failure.detail} "
                             + migration_failure_detail(before, after, backup_set, current, host.name)) from None
    try:
        host.activate(release)
    except StepFailed as failure:
        raise StepFailed(failure.step, failure.detail + host.put_back(current, rid)) from None
    with steps.step("record release and prune"):
        host.run(release_commands.write_meta(host.ctx, rid, release.recorded("ok")), "record release")
        rows, live = host.releases()
        prune = releases_to_prune(rows, live, host.settings.keep_releases)
        out = host.run(release_commands.remove_releases(host.ctx, prune) + "; "
                       + release_commands.prune_images(host.ctx, image_repo(host.ctx.project)), "prune")
        for line in out.stdout.splitlines():
            print(f"   {line}")
    print(f"Release {rid} is live on {host.name}.")


ns = Collection("deploy")
ns.add_task(deploy, default=True)
