"""What a deploy checks before it changes anything: the stack's memory against the host's, and
the PostgreSQL major of the data against the image's. Each refuses (REFUSED), naming the fix."""

from __future__ import annotations

from invoke import Exit

from .commands import budget
from .commands import db as db_commands
from .exits import ExitCode
from .settings import PROJECT_ROOT


def check_memory_budget(host, table: bool = False) -> budget.Budget:
    """The stack's memory reservations and limits against the host's memory (commands/budget.py,
    MemTotal from the preflight): refuses, changing nothing, a stack that cannot fit (REFUSED, like
    the other refusals that protect what runs: an over-committed host OOM-kills Postgres instead of
    failing the deploy); warns when it fits only without headroom."""
    mem_kb = host.facts.get("mem_total_kb", "")
    try:
        settings = host.settings
        traced = budget.traced_processes(bool(settings.logfire_token), settings.api_workers)
        verdict = budget.evaluate(budget.stack_memory(PROJECT_ROOT, traced=traced,
                                                       managed_db=host.ctx.managed_db),
                                  int(mem_kb) * 1024 if mem_kb.isdigit() else 0)
    except ValueError as err:
        raise Exit(f"A memory size in the compose files is not valid ({err}). Nothing was changed "
                   "on the server.",
                   code=ExitCode.USAGE) from None
    print(budget.summary(verdict))
    if table or verdict.level != budget.OK:
        print(budget.table(verdict))
    if verdict.level == budget.REFUSE:
        raise Exit(f"The stack does not fit in the memory of {host.name}: "
                   f"{'; '.join(verdict.reasons)}. Lower the reservations "
                   "in compose.yml / docker-compose.production.yml or move to a larger host. "
                   "Nothing was changed on the server.",
                   code=ExitCode.REFUSED)
    for reason in verdict.reasons:
        print(f"   warning: {reason}")
    return verdict


def check_postgres_major(host, env: str | None = None) -> str:
    """The data in the Postgres volume (its major version, from the preflight) against the major of
    the image this checkout's compose.yml runs: a mismatch is refused (REFUSED) before anything
    changes, naming both versions and `db.upgrade`; returns the guard's verdict."""
    if host.ctx.managed_db:  # no data of its own here: the provider runs the server's version
        return db_commands.UNCHECKED
    image = db_commands.postgres_image(PROJECT_ROOT)
    data = host.facts.get("pg_data", "")
    verdict, wanted = db_commands.guard(data, image)
    if verdict in (db_commands.OLDER, db_commands.NEWER):
        upgrade = f"fab -H {host.name} db.upgrade" + (f" --env {env}" if env else "")
        raise Exit(db_commands.refusal(verdict, data, image, wanted, host.name,
                                       host.ctx.postgres_volume, upgrade),
                   code=ExitCode.REFUSED)
    if verdict == db_commands.UNKNOWN:
        print(f"   note: the PostgreSQL version of the data in {host.ctx.postgres_volume} could "
              "not be read (no postgres "
              "container); Postgres itself refuses a data directory of another major, and the "
              f"deploy stops at reading the schema.")
    elif verdict == db_commands.UNCHECKED:
        print(f"   note: {image} does not name a PostgreSQL major version in its tag, so the "
              f"data's (PostgreSQL {data}) cannot be checked against it before the deploy.")
    return verdict
