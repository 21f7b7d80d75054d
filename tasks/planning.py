"""The read-only side of a deploy, for `deploy --dry-run`: the migrations a release would run
(both engines), and the Compose engine's plan: what each step would run, built by the same
builders the deploy runs (tests/test_executors.py compares the two)."""

from __future__ import annotations

import hashlib
from typing import NamedTuple

from invoke import Exit

from . import localhost, remote
from .commands import backup as backup_commands
from .commands import compose as compose_commands
from .commands import db as db_commands
from .commands import images as image_commands
from .commands import pitr as pitr_commands
from .commands import release as release_commands
from .commands import schema as schema_commands
from .commands import sh
from .commands import transfer as transfer_commands
from .commands.release import releases_to_prune
from .commands.rollout import APP_ROLE_STEP, ARCHIVE_STEP
from .exits import ExitCode
from .settings import PROJECT_ROOT

DRY_RUN_FILES = 60  # files listed by `deploy --dry-run` (all are counted)
DRY_RUN_COMMAND_LINES = 30  # lines shown of one planned command (a script)


class Planned(NamedTuple):
    step: str
    # "host" (a remote command), "sftp" (a file written over SFTP), "here" (this machine)
    where: str
    command: str


def planned_commands(host, plan, *, upload: str, ship: list[str], backup: bool, migrate: bool,
                     prune: list[str], env_keys: int) -> list[Planned]:
    """Every command the deploy of `plan.release` runs that changes the host, in order, when every
    check passes (a failed check puts the previous release back through `activate`). The deploy
    runs the same builders (tests/test_executors.py compares the two)."""
    ctx, release = host.ctx, plan.release
    rid = release.id
    prepare = "prepare release and its settings"
    planned = [
        Planned(prepare, "sftp", f"{ctx.inbox}/{release_commands.RELEASE_TAR} <- the release's "
                                 f"settings ({env_keys} keys, mode 0600), "
                                 f"release.yml, RELEASE.json, the alert program and its channels "
                                 f"(notify.conf, 0600), the app's database role "
                                 f"(env/{db_commands.APP_ROLE_FILE}, 0600); values not shown"),
        Planned(prepare, "host", release_commands.unpack_release(ctx, rid) + "; "
                + image_commands.present(host.images_needed(release, host.build_place())
                                         if plan.backend else [])
                + "; " + release_commands.list_releases(ctx)),
        Planned("upload files (rsync)", "here", upload),
    ]
    if plan.backend:
        if ship:
            planned.append(Planned("images the host needs", "here",
                                   f"{sh(image_commands.save(ship))} | "
                                   f"{sh(image_commands.COMPRESS['zstd'])} | ssh "
                                   f"{host.conn.user}@{host.conn.host} "
                                   f"{sh(['sh', '-c', image_commands.load('zstd')])} (gzip "
                                   "where a host or this machine has no zstd)"))
        planned.append(Planned("build images, start postgres and nats, read the schema", "host",
                               host.start_backend_script(release)))
        if release.postgres_image:
            planned.append(Planned(ARCHIVE_STEP, "host", pitr_commands.ensure_stanza(ctx)))
        if backup:
            step = "back up database before migrating"
            planned += [Planned(step, "host", backup_commands.install_script(ctx)),
                        Planned(step, "sftp", f"{backup_commands.script_path(ctx)}.new <- the "
                                              "backup program"),
                        Planned(step, "host", sh(backup_commands.activate_script(ctx))),
                        Planned(step, "host", sh(backup_commands.run(ctx, host.settings.backup_keep,
                                                                     True)))]
        if migrate:
            planned.append(Planned("migrate database", "host", host.migrate_command(release)))
        planned.append(Planned(APP_ROLE_STEP, "host", host.app_role_command(release)))
    steps = ("replace api, restart worker, " if plan.backend
             else "") + "switch current, reload nginx, health checks, record"
    record = host.record_command(release, prune)
    activation = host.activation_script(release, backend=plan.backend, then=record)
    return planned + [Planned(steps, "host", activation)]


def dry_run_images(host, release) -> tuple[list[str], list[str]]:
    """What the images step would do, building and sending nothing: (lines to print, images
    sent)."""
    local_docker = localhost.ok(["docker", "info"])
    setting, mode = host.settings.build_backend, host.settings.ship_images
    place = host.build_place()
    needed = host.images_needed(release, place)
    on_host = host.images_present(needed)

    def here_has(image: str) -> bool:
        return local_docker and localhost.ok(["docker", "image", "inspect", image])

    lines = []
    for image, context in image_commands.built_images(PROJECT_ROOT, release.image,
                                                      release.postgres_image):
        what = context.name
        build = (compose_commands.build_backend if what == "backend"
                 else compose_commands.build_postgres)
        if image in on_host:
            lines.append(f"{what} {image}: already on the host ({what}/ unchanged): not rebuilt")
        elif place == "local":
            lines.append(f"{what} {image}: "
                         f"{'already built here' if here_has(image) else 'built here'} "
                         f"(BUILD_BACKEND={setting}), "
                         f"then sent unless the host shares this machine's Docker")
        else:
            lines.append(f"{what} {image}: built on the host (BUILD_BACKEND={setting}): "
                         f"{sh(build(host.ctx))}")
        if place == "host":
            needed.remove(image)
    built = {image for image, _ in image_commands.built_images(PROJECT_ROOT, release.image,
                                                               release.postgres_image)}
    here = {i for i in needed if here_has(i) or (i in built and place == "local" and local_docker)}
    ship, lacking = image_commands.image_plan(needed, on_host, here, mode)
    lines.append(f"on the host already: {', '.join(i for i in needed if i in on_host) or 'none'}")
    if ship:
        lines.append(f"sent over SSH (docker save | zstd | docker load, SHIP_IMAGES={mode}): "
                     f"{', '.join(ship)}")
    if lacking:
        lines.append("the deploy would FAIL here: SHIP_IMAGES=always, but this machine does not "
                     f"have {', '.join(lacking)}"
                     if mode == "always" else f"pulled by the host itself: {', '.join(lacking)}")
    return lines, ship


def dry_run_migrations(host, current: str) -> tuple[list[str], bool, bool]:
    """The migrations the deploy would run, with the database's revision read (read-only) through
    the live release: (lines to print, whether a database backup is taken first, whether
    `alembic upgrade head` runs)."""
    local = schema_commands.local_revisions(PROJECT_ROOT / "backend" / "alembic" / "versions")
    if not current:
        return [f"no live release, so a fresh database: all {len(local)} would run "
                f"({', '.join(schema_commands.pending_revisions(local, ''))})"], False, True
    state = host.schema(current)
    if not state.readable:
        return [f"the database's revision could not be read ({state.error or 'no answer'}): the "
                "deploy would stop before "
                f"migrating (fail closed) and {current} would keep serving"], False, False
    pending = schema_commands.pending_revisions(local, state.revision)
    if state.fresh:
        return [f"the database has no migration yet: all {len(pending)} would run "
                f"({', '.join(pending)})"], False, True
    if pending is None:
        return [f"the database is at {state.revision}, which this checkout's migrations do not "
                "know (a later release applied "
                f"it): `alembic upgrade head` would fail and the deploy would stop"], True, True
    if not pending:
        return [f"none pending (the database is at {state.revision}, this checkout's head): no "
                "migration runs"], False, False
    return [f"{len(pending)} pending ({', '.join(pending)}; the database is at {state.revision}): "
            f"a database-only backup is taken first"], True, True


def compose_dry_run(host, plan) -> list[Planned]:
    """The Compose engine's part of `deploy --dry-run`, once a release is planned: its settings,
    files (an rsync --dry-run), images, migrations, pruning and the commands it would run."""
    current = plan.current
    release, ctx = plan.release, host.ctx
    rid = release.id
    if current:
        live = host.probe_run(sh(["sha256sum", ctx.release_env(current)])).stdout.split()
        same = live[:1] == [hashlib.sha256(plan.env_text.encode()).hexdigest()]
        print("settings: "
              f"{'unchanged since' if same else 'changed since' if live else 'not readable for'} "
              f"{current} (values not shown)")
    else:
        print("settings: new (no live release)")

    options = host.upload_options(rid, current)
    result = remote.rsync(host.conn, **options, dry_run=True)
    if not result.ok:
        raise Exit(f"rsync --dry-run to {host.name} failed (exit {result.exited}): "
                   f"{host.redact(result.stderr.strip()[-800:])}. "
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
        unchanged = (f"the backend is unchanged since {plan.backend_release}: its API and worker "
                     "containers keep running")
        image_lines, ship = [f"none needed ({unchanged})"], []
        migration_lines, backup, migrate = [f"none ({unchanged})"], False, False
    print("images:")
    for line in image_lines:
        print(f"   {line}")
    print("migrations:")
    for line in migration_lines:
        print(f"   {line}")
    rows, _ = host.releases()
    prune = releases_to_prune(rows + [(rid, release.recorded("ok"))], rid,
                              host.settings.keep_releases)
    print(f"releases pruned after it: {', '.join(prune) or 'none'}")

    env_keys = sum(1 for line in plan.env_text.splitlines()
                   if "=" in line and not line.lstrip().startswith("#"))
    planned = planned_commands(host, plan, upload=remote.rsync_command(host.conn, **options),
                               ship=ship, backup=backup,
                               migrate=migrate, prune=prune, env_keys=env_keys)
    print_planned(host, planned, f"Commands that would change {host.name}, in order (the deploy "
                  f"also takes the host's lock ({ctx.lock_dir}) and appends one line to "
                  f"{ctx.audit_log}; when a check fails it puts {current or 'nothing'} back):")
    return planned


def print_planned(host, planned: list[Planned], heading: str) -> None:
    """The planned commands, numbered, grouped by step, secrets redacted, long scripts cut."""
    print(heading)
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
