"""`fab -H HOST rollback [--to RELEASE]` and `fab -H HOST releases`."""

from __future__ import annotations

from invoke import Collection, Exit, task

from .commands.schema import SchemaState
from .exits import ExitCode
from .host import WAIT_HELP
from .settings import ENV_HELP, choose_env
from .steps import StepFailed, Steps
from .engines import open_host


def choose_target(rows: list[tuple[str, dict]], current: str, to: str | None) -> tuple[str | None,
                                                                                       str]:
    """The release to roll back to (and a reason when there is none): --to, else the release
    that was live before the current one (its recorded predecessor, skipping any that failed or
    are no longer kept)."""
    meta = dict(rows)
    if to:
        if to not in meta:
            return (None, f"release {to!r} is not kept on the host (kept: "
                          f"{', '.join(meta) or 'none'})")
        if to == current:
            return None, f"release {to} is already current"
        return to, ""
    seen = {current}
    candidate = meta.get(current, {}).get("previous", "")
    while candidate and candidate not in seen:
        if candidate in meta and meta[candidate].get("result") == "ok":
            return candidate, ""
        seen.add(candidate)
        candidate = meta.get(candidate, {}).get("previous", "")
    return None, (f"the release that was live before {current or 'nothing'} is no longer kept (or "
                  f"never succeeded); pick one with --to (see `releases`)")


def schema_problem(schema: SchemaState, target: str) -> str | None:
    """Why rolling back to `target` would be unsafe for the database, or None (fails closed)."""
    if not schema.readable:
        return ("the database's migration revision could not be read "
                f"({schema.error or 'no answer'}), so it is unknown "
                f"whether {target}'s code works on its schema. Check Postgres "
                f"(`compose.logs --service postgres`) and try again.")
    if schema.unknown_to_release:
        return (f"release {target} predates the database schema: the database is at migration "
                f"{schema.revision}, "
                f"which a later release applied and {target}'s code does not know. Its code may "
                "not work on this "
                "schema. Restore the database backup taken before that migration, or, if the "
                "migration only "
                f"added things (expand-then-contract, see docs/deploying.md), pass --force.")
    return None


def backend_differs(rows: list[tuple[str, dict]], current: str, target: str) -> bool:
    """Whether going from `current` to `target` changes the API and worker (their image, settings or
    compose files); False only when both releases record the same backend."""
    meta = dict(rows)
    now, then = meta.get(current, {}), meta.get(target, {})
    same = (now.get("backend_fingerprint")
            and now.get("backend_fingerprint") == then.get("backend_fingerprint")
            and now.get("backend_image") == then.get("backend_image"))
    return not same


def format_releases(rows: list[tuple[str, dict]], current: str) -> list[str]:
    """One line per release; `api from` names the release whose API and worker it runs (itself,
    or the earlier release a dashboard-only deploy kept)."""
    lines = [f"  {'release':32} {'commit':14} {'deployed at':26} {'by':28} {'result':8} api from"]
    for name, meta in rows:
        mark = "*" if name == current else " "
        api_from = meta.get("backend_release", "")
        by = meta.get("deployed_user", "?") + "@" + meta.get("deployed_machine", "?")
        lines.append(f"{mark} {name:32} {meta.get('commit', '?'):14} "
                     f"{meta.get('deployed_at', '?'):26} {by:28} {meta.get('result', '?'):8} "
                     f"{'itself' if api_from in ('', name) else api_from}")
    return lines


@task
def releases(c):
    """List the releases kept on the host (* marks current): commit, time, who deployed, result."""
    host = open_host(c)
    rows, current = host.releases()
    if not rows:
        print(f"No releases on {host.name} yet.")
        return
    print("\n".join(format_releases(rows, current)))


@task(help={
    "to": "Roll back to this kept release (see `releases`); default: the release that was live "
          "before the current one.",
    "force": "Roll back even though the database schema is newer than the release's code (or "
             "cannot be read).",
    "wait": WAIT_HELP,
    "env": ENV_HELP,
})
def rollback(c, to=None, force=False, wait=False, env=None):
    """Return to the previous release (or --to RELEASE): its dashboard, settings, exact images."""
    choose_env(c, env)
    steps = Steps(f"Rollback on {c.original_host}")
    try:
        with steps.step("connect and check host"):
            host = open_host(c, steps=steps)
        steps.secrets = host.settings.secret_values()
        host.refuse_while_recovering("rollback")
        with host.locked("rollback", wait=wait):
            rows, current = host.releases()
            target, reason = choose_target(rows, current, to)
            if target is None:
                raise Exit(f"Cannot roll back on {host.name}: {reason}. Nothing was changed.",
                           code=ExitCode.USAGE)
            with host.audited("rollback", release=target) as outcome:
                outcome["detail"] = f"from {current}"
                problem = schema_problem(host.schema(target), target)
                if problem and not force:
                    outcome["detail"] = problem
                    raise Exit(f"Refusing to roll back on {host.name}: {problem} Nothing was "
                               "changed.", code=ExitCode.REFUSED)
                release = host.release(target)
                outcome["commit"] = release.commit
                print(f"Rolling back {host.name} from {current} to {target} (commit "
                      f"{release.commit})")
                backend = backend_differs(rows, current, target)
                if backend:
                    with steps.step("backend image of the release"):
                        host.ensure_image(release, "backend image")
                else:
                    steps.skip("backend image, api and worker", f"{target} runs the same backend "
                                                                f"as {current}")
                try:
                    host.activate(release, backend=backend)
                except StepFailed as failure:
                    outcome["detail"] = failure.detail
                    put_back = host.put_back(current, target, marked=False, backend=backend)
                    raise StepFailed(failure.step, failure.detail + put_back) from None
        print(f"Release {target} is current again on {host.name}.")
        host.report_pending(target, "rollback")
    except StepFailed as failure:
        steps.fail(f"Rollback on {c.original_host} failed at step '{failure.step}': "
                   f"{failure.detail}")
    steps.print_table()


ns = Collection("rollback")
ns.add_task(rollback, default=True)
