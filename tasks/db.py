"""`fab -H HOST db.upgrade`: move the database to the PostgreSQL major version this checkout's
compose.yml runs (verified dump, a new cluster, restore, row counts compared; the old data kept in
a volume of its own). The deploy refuses a data directory of another major and names this task.
The work is one script on the host (tasks/commands/db.py), which puts everything back on failure.
`fab -H HOST db.move-to-managed`: the database moved to a managed PostgreSQL (commands/move.py)."""

from __future__ import annotations

import io
import sys
import tarfile
from datetime import datetime, timezone
from pathlib import Path

from invoke import Collection, Exit, task

from . import localhost, pipeline, remote
from .commands import compose as compose_commands
from .commands import db as commands
from .commands import images as image_commands
from .commands import managed
from .commands import move as move_commands
from .commands import q
from .commands import release as release_commands
from .engines import open_host
from .exits import ExitCode
from .host import WAIT_HELP, Host
from .settings import ENV_HELP, PROJECT_ROOT, choose_env, env_file_path
from .settings_managed import ca_text
from .steps import StepFailed, Steps


def build_context(directory: Path) -> bytes:
    """`directory` as a gzipped tar archive: a build context `docker build -` reads on stdin."""
    packed = io.BytesIO()
    with tarfile.open(fileobj=packed, mode="w:gz", format=tarfile.USTAR_FORMAT) as tar:
        for path in sorted(directory.iterdir()):
            tar.add(path, arcname=path.name)
    return packed.getvalue()


def provide_image(host: Host, image: str, built: bool) -> None:
    """The new Postgres image on the host: there already, sent from here over SSH, built by the host
    from postgres/ (`built`: compose.yml builds it), or pulled by it."""
    if host.images_present([image]):
        print(f"   the host has {image}")
        return
    if host.settings.ship_images != "never" and localhost.ok(["docker", "image", "inspect", image]):
        host.ship_images([image])
        return
    if built:  # postgres/ sent as a tar into the lock's inbox: the build context
        context = f"{host.ctx.inbox}/postgres-context.tar.gz"
        host.conn.put(io.BytesIO(build_context(PROJECT_ROOT / "postgres")), remote=context)
        host.run(f"docker build -q -t {q(image)} - < {q(context)}; s=$?; rm -f {q(context)}; "
                 "exit $s", "build the new Postgres image", hide=False)
        return
    host.run(f"docker pull -q {q(image)}", "pull the new Postgres image", hide=False)


@task(help={
    "yes": ("Do not ask for confirmation (the API is stopped while the data is dumped and "
            "restored)."),
    "wait": WAIT_HELP,
    "env": ENV_HELP,
})
def upgrade(c, yes=False, wait=False, env=None):
    """Upgrade the database to compose.yml's Postgres major: dump, new cluster, restore, compare."""
    remote.require_host(c)
    choose_env(c, env)
    steps = Steps(f"Upgrade PostgreSQL on {c.original_host}")
    host = open_host(c, steps=steps)
    steps.secrets = host.settings.secret_values()
    # "" when compose.yml pulls its image
    built = image_commands.postgres_image(PROJECT_ROOT, host.ctx.project)
    image = built or commands.postgres_image(PROJECT_ROOT)
    data = host.facts.get("pg_data", "")
    verdict, wanted = commands.guard(data, image)
    if nothing_to_upgrade(host, verdict, data, image, wanted):
        return
    current = host.current_id
    facts = ready_facts(host, verdict, current)
    keep = commands.keep_volume(host.ctx, data,
                                datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ"))
    print(f"PostgreSQL {data} -> {wanted} on {host.name}: {facts.get('image')} -> {image}; the old "
          f"data will be kept in volume {keep}.")
    if not yes:
        confirm(host, wanted)
    result = run_upgrade(host, steps, wait=wait, data=data, wanted=wanted, image=image,
                         built=bool(built),
                         keep=keep, current=current)
    steps.print_table()
    print(f"The database on {host.name} is PostgreSQL {wanted} now: {result.get('tables')} tables "
          f"and {result.get('rows')} "
          f"rows restored from the verified backup set {result.get('set')}, every table's row "
          "count equal to the dump's; "
          f"release {current} serves and passes its health checks. The old PostgreSQL {data} data "
          "is kept in volume "
          f"{keep} until you remove it (on the host: `docker volume rm {keep}`). Deploy as usual "
          "now.")


def nothing_to_upgrade(host: Host, verdict: str, data: str, image: str, wanted: str) -> bool:
    """True (said) when there is nothing to upgrade; refuses an image without a major or data of
    a newer one."""
    volume = host.ctx.postgres_volume
    if verdict == commands.UNCHECKED:
        raise Exit(f"compose.yml runs {image}, whose tag does not name a PostgreSQL major version; "
                   "name one (e.g. "
                   f"pgvector/pgvector:pg17) so the upgrade knows its target. Nothing was changed.",
                   code=ExitCode.USAGE)
    if verdict == commands.FRESH:
        print(f"{host.name} has no PostgreSQL data yet (volume {volume}: {data or 'none'}): "
              "nothing to upgrade; deploy.")
        return True
    if verdict == commands.MATCH:
        print(f"The database on {host.name} is already PostgreSQL {data}, the major {image} runs: "
              "nothing to do.")
        return True
    if verdict == commands.NEWER:
        raise Exit(commands.refusal(verdict, data, image, wanted, host.name, volume, ""),
                   code=ExitCode.REFUSED)
    return False


def ready_facts(host: Host, verdict: str, current: str | None) -> dict:
    """The live Postgres's facts; refuses (changing nothing) without a live release, its Postgres
    running, or the disk space the dump and the new cluster need."""
    facts = release_commands.parse_facts(host.run(commands.upgrade_facts(host.ctx),
                                                  "read postgres").stdout)
    if verdict == commands.UNKNOWN or not current or facts.get("running") != "yes":
        raise Exit("The upgrade dumps the database with the PostgreSQL that wrote it, so it needs "
                   "the live release and its "
                   f"postgres container running on {host.name} (release: {current or 'none'}; "
                   "postgres: "
                   f"{'running' if facts.get('running') == 'yes' else 'not running'}). Start it "
                   f"with `fab -H {host.name} compose.up` and run the upgrade again. Nothing was "
                   "changed.",
                   code=ExitCode.HOST_NOT_READY)
    problem = commands.space_problem(int(facts.get("data_kb") or 0), int(facts.get("free_kb") or 0))
    if problem:
        raise Exit(f"Not enough disk space on {host.name} for the upgrade: {problem}. Free some "
                   "(`docker system prune`, "
                   f"old backups) and run it again. Nothing was changed.", code=ExitCode.REFUSED)
    return facts


def confirm(host: Host, wanted: str) -> None:
    """The Compose project's name typed back, or nothing changes."""
    answer = input("The API and worker stop while the database is dumped, restored into a new "
                   f"PostgreSQL {wanted} cluster "
                   f"and checked. Type the Compose project name ({host.ctx.project}) to confirm: ")
    if answer.strip() != host.ctx.project:
        raise Exit("Not confirmed; nothing was changed.", code=ExitCode.USAGE)


def run_upgrade(host: Host, steps: Steps, *, wait: bool, data: str, wanted: str, image: str,
                built: bool,
                keep: str, current: str) -> dict:
    """Inside the lock and one audit line: the image, the backup program, then the host-side
    script (dump, new cluster, restore, compare, start); its parsed result."""
    try:
        with host.locked("db.upgrade", wait=wait), host.audited("db.upgrade",
                                                                release=current) as outcome:
            outcome["detail"] = f"PostgreSQL {data} -> {wanted} ({image})"
            with steps.step("images the host needs"):
                provide_image(host, image, built)
            with steps.step("install the backup program"):
                host.install_backup_script()
            rows, _ = host.releases()
            pins = {rid: compose_commands.release_override(meta["backend_image"], rid,
                                                           postgres_image=image,
                                                           variant=host.variant)
                    for rid, meta in rows if meta.get("backend_image")}
            live = host.release(current)
            probe = release_commands.probe(live.image, host.base_url, list(live.assets))
            script = commands.upgrade(host.ctx, old_major=data, new_image=image, keep=keep,
                                      backup_keep=host.settings.backup_keep, pins=pins, probe=probe)
            with steps.step(f"dump, new PostgreSQL {wanted} cluster, restore, compare, start"):
                result = commands.parse_upgrade(host.run(script, "upgrade", hide=False).stdout)
            outcome["detail"] += f"; set {result.get('set')}; old data kept in {keep}"
    except StepFailed as failure:
        state = (f"PostgreSQL {data} was put back with its data and api and worker were started "
                 "again (the lines above "
                 "say each step of putting it back); nothing was lost. Backup sets: `fab -H "
                 f"{host.name} backup.list`"
                 if failure.step == "upgrade" else "Nothing was changed on the server")
        steps.fail(f"The upgrade on {host.name} failed at '{failure.step}': {failure.detail}. "
                   f"{state}.")
    return result


MOVE = "db.move-to-managed"


@task(name="move-to-managed", help={
    "yes": "Do not ask for confirmation (writes are refused while the data is copied).",
    "env": ENV_HELP,
})
def move_to_managed(c, yes=False, env=None):
    """Move the database to the managed PostgreSQL (DATABASE_HOST): freeze, copy, count, deploy."""
    remote.require_host(c)
    choose_env(c, env)
    steps = Steps(f"Move the database of {c.original_host} to a managed PostgreSQL")
    host = open_host(c, steps=steps)
    s = host.settings
    steps.secrets = s.secret_values()
    if not s.managed_db:
        raise Exit("DATABASE_HOST is empty, so there is no managed database to move to. Set "
                   "DATABASE_HOST, DATABASE_CA_FILE and the managed server's POSTGRES_USER, "
                   "POSTGRES_PASSWORD and POSTGRES_DB in the settings (docs/managed-services.md), "
                   "then run this again. Nothing was changed on the server.", code=ExitCode.USAGE)
    try:
        client = move_commands.client_env(s.database_host, s.database_port, s.database_sslmode,
                                          s.postgres_user, s.postgres_password.reveal(),
                                          s.postgres_db)
    except ValueError as err:
        raise Exit(f"{err} Nothing was changed on the server.", code=ExitCode.USAGE) from None
    if not yes:
        confirm_move(host)
    ctx = host.absolute_ctx
    try:
        host.preflight_checks(env)  # the budget and the rest refuse before the freeze
        with host.locked(MOVE), host.audited(MOVE) as outcome:
            with steps.step("copy under a write freeze"):
                host.put_text(client, f"{ctx.inbox}/{move_commands.ENV_NAME}")
                host.put_text(ca_text(s.database_ca_file), f"{ctx.app_dir}/{managed.CA_FILE}")
                out = host.run(move_commands.move_script(ctx), "copy under a write freeze").stdout
            moved = move_commands.parse_moved(out)
            outcome["detail"] = f"{moved.get('rows')} rows in {moved.get('tables')} tables copied"
        switch_to_managed(host, ctx, moved, env_file_path(c))
    except StepFailed as failure:
        steps.fail(f"Moving the database of {host.name} failed at step '{failure.step}': "
                   f"{failure.detail}")
    steps.print_table()


def confirm_move(host: Host) -> None:
    answer = input("Writes are refused from the freeze until the app runs on the managed "
                   "database (reads go on). Type the Compose project name "
                   f"({host.ctx.project}) to confirm: ")
    if answer.strip() != host.ctx.project:
        raise Exit("Not confirmed; nothing was changed.", code=ExitCode.USAGE)


def switch_to_managed(host: Host, ctx, moved: dict, env_file) -> None:
    """The deploy onto the managed database; if it fails, the local database takes writes again
    and serves on. Then the local postgres container goes (its volumes stay)."""
    try:
        pipeline.deploy(host, env_file)
    except BaseException:
        host.conn.run(move_commands.unfreeze(ctx), warn=True, hide=True)
        print(f"The switch failed: the app serves on from the local database, which takes writes "
              f"again. The managed database holds the copy; empty it before `fab -H {host.name} "
              f"{MOVE}` again.", file=sys.stderr)
        raise
    host.conn.run(move_commands.retire_local(ctx), warn=True, hide=True)
    print(f"Moved: {moved.get('rows')} rows in {moved.get('tables')} tables, the same counts on "
          f"both sides; writes were refused for {moved.get('seconds')} s of copying plus the "
          f"switch. The app runs on the managed database. The local postgres container is "
          f"removed; its volume {ctx.postgres_volume} keeps the data as of the freeze.")


ns = Collection("db")
ns.add_task(upgrade)
ns.add_task(move_to_managed)
