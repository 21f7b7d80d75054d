"""`fab -H HOST rollback [--to RELEASE]` and `fab -H HOST releases`."""

from __future__ import annotations

from invoke import Collection, Exit, task

from . import remote
from .audit import audited
from .commands import release as release_commands
from .deploy import Target, activate, ensure_image, preflight, read_meta
from .lock import held
from .settings import Settings
from .steps import StepFailed, Steps


def choose_target(rows: list[tuple[str, dict]], current: str, to: str | None) -> tuple[str | None, str]:
    """The release to roll back to (and a reason when there is none)."""
    names = [name for name, _ in rows]
    if to:
        if to not in names:
            return None, f"release {to!r} is not kept on the host (kept: {', '.join(names) or 'none'})"
        if to == current:
            return None, f"release {to} is already current"
        return to, ""
    older = [name for name, meta in rows if name < current and meta.get("result") == "ok"]
    if not older:
        return None, f"there is no earlier successful release than {current or 'nothing'} to go back to"
    return older[-1], ""


def schema_problem(db_revision: str, known: list[str], target: str) -> str | None:
    if db_revision and db_revision not in known:
        return (f"release {target} predates the database schema: the database is at migration {db_revision}, "
                f"which a later release applied and {target}'s code does not know. Its code may not work on this "
                f"schema. Restore the database backup taken before that migration, or, if the migration only "
                f"added things (expand-then-contract, see README), pass --force.")
    return None


def format_releases(rows: list[tuple[str, dict]], current: str) -> list[str]:
    lines = [f"  {'release':32} {'commit':14} {'deployed at':26} {'by':28} result"]
    for name, meta in rows:
        mark = "*" if name == current else " "
        lines.append(f"{mark} {name:32} {meta.get('commit', '?'):14} {meta.get('deployed_at', '?'):26} "
                     f"{meta.get('deployed_user', '?') + '@' + meta.get('deployed_machine', '?'):28} {meta.get('result', '?')}")
    return lines


def kept_releases(conn, settings: Settings) -> tuple[list[tuple[str, dict]], str]:
    out = conn.run(release_commands.list_releases(settings.app_dir), hide=True, in_stream=False).stdout
    return release_commands.parse_releases(out)


@task
def releases(c):
    """List the releases kept on the host (* marks current): commit, time, who deployed, result."""
    settings = Settings.from_context(c)
    conn = remote.connect(c)
    rows, current = kept_releases(conn, settings)
    if not rows:
        print(f"No releases on {conn.original_host} yet.")
        return
    print("\n".join(format_releases(rows, current)))


@task(help={
    "to": "Roll back to this kept release (see `releases`); default: the previous successful one.",
    "force": "Roll back even though the database schema is newer than the release's code.",
    "wait": "If another deploy or rollback holds the host's lock, wait for it instead of failing.",
})
def rollback(c, to=None, force=False, wait=False):
    """Return to the previous release (or --to RELEASE): its dashboard, config and exact images."""
    settings = Settings.from_context(c)
    steps = Steps(f"Rollback on {c.original_host}", settings.secret_values())
    try:
        with steps.step("connect and check host"):
            conn = remote.connect(c)
            facts, variant = preflight(conn, settings, "auto")
        t = Target(conn, settings, variant, steps, facts)
        with held(conn, settings.app_dir, "rollback", wait=wait):
            rows, current = kept_releases(conn, settings)
            target, reason = choose_target(rows, current, to)
            if target is None:
                raise Exit(f"Cannot roll back on {conn.original_host}: {reason}. Nothing was changed.", code=2)
            outcome = {"release": target, "detail": f"from {current}"}
            with audited(conn, settings.app_dir, "rollback", outcome):
                revisions = release_commands.parse_preflight(
                    conn.run(release_commands.schema_revisions(settings.app_dir, target, settings.compose_project),
                             hide=True, warn=True, in_stream=False).stdout)
                problem = schema_problem(revisions.get("db", "").strip(), revisions.get("known", "").split(), target)
                if problem and not force:
                    outcome["detail"] = problem
                    raise Exit(f"Refusing to roll back on {conn.original_host}: {problem} Nothing was changed.", code=5)
                meta = read_meta(t, target)
                print(f"Rolling back {conn.original_host} from {current} to {target} (commit {meta.get('commit', '?')})")
                with steps.step("backend image of the release"):
                    ensure_image(t, target, meta["backend_image"], "backend image")
                try:
                    activate(t, target, meta["backend_image"], meta.get("assets", []))
                except StepFailed as failure:
                    outcome["detail"] = failure.detail
                    from .deploy import restore

                    raise StepFailed(failure.step, failure.detail + restore(t, current, target, marked=False)) from None
        print(f"Release {target} is current again on {conn.original_host}.")
    except StepFailed as failure:
        steps.fail(f"Rollback on {c.original_host} failed at step '{failure.step}': {failure.detail}")
    steps.print_table()


ns = Collection("rollback")
ns.add_task(rollback, default=True)
ns.add_task(releases)
