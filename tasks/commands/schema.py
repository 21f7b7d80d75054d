"""The database schema as the host has it (Alembic): one read of the live revision and the
schema's fingerprint, and the migrations a release would run (commands/release.py lays out the
releases themselves)."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

from . import q
from .release import parse_facts
from .context import HostContext

SCHEMA_WAIT_SECONDS = 60
REVISION_SED = "s/^{name}(: *[]A-Za-z_|[, ]+)? *= *['\"]([^'\"]+)['\"].*/\\2/p"

SCHEMA_SQL = ("SELECT 'revision=' || coalesce((SELECT string_agg(version_num, ' ') FROM "
              "alembic_version), ''); "
              "SELECT 'schema=' || md5(coalesce(string_agg(table_name || '.' || column_name || ':' "
              "|| data_type, ',' "
              "ORDER BY table_name, column_name), '')) FROM information_schema.columns WHERE "
              "table_schema = 'public'")
FRESH_SQL = ("SELECT 'revision=' || CASE WHEN to_regclass('public.alembic_version') IS NULL THEN "
             "'<none>' ELSE '' END; "
             "SELECT 'schema=' || md5(coalesce(string_agg(table_name || '.' || column_name || ':' "
             "|| data_type, ',' "
             "ORDER BY table_name, column_name), '')) FROM information_schema.columns WHERE "
             "table_schema = 'public'")


def schema_state(ctx: HostContext, release_id: str, wait_seconds: int = SCHEMA_WAIT_SECONDS) -> str:
    """The database's Alembic revision and a fingerprint of its schema, waiting for Postgres to
    accept connections; plus every revision the release's code knows. Prints `db=ok` only when
    the revision was really read (`db=unreachable`/`db=error` otherwise: callers fail closed)."""
    versions = q(f"{ctx.release_dir(release_id)}/backend/alembic/versions")
    psql = 'psql -X -q -At -v ON_ERROR_STOP=1 -U "$POSTGRES_USER" -d "$POSTGRES_DB"'
    # One query decides whether alembic_version exists; the revision query runs only if it does.
    # (a failing first query is an error, never taken for "no table": that would not fail closed)
    query = (f"has=$({psql} -c \"SELECT to_regclass('public.alembic_version') IS NOT NULL\") || "
             "exit 1; "
             f"if [ \"$has\" = t ]; then {psql} -c {q(SCHEMA_SQL)}; else {psql} -c {q(FRESH_SQL)}; "
             "fi")
    # Readiness over TCP: while the image initialises a new cluster, a temporary server answers
    # on the socket only and then shuts down. A query error is retried until the deadline. With a
    # managed database the client container's PGHOST is the server (commands/managed.py).
    return f"""pg=$({ctx.container('postgres')})
if [ -z "$pg" ]; then echo db=unreachable; echo 'db_error=no running postgres container'; else
  state=unreachable; err="postgres did not accept connections within {int(wait_seconds)}s"
  for _ in $(seq 1 {int(wait_seconds) * 2}); do
    if docker exec "$pg" sh -c 'pg_isready -q -h "${{PGHOST:-127.0.0.1}}" -U "$POSTGRES_USER" -d "$POSTGRES_DB"' 2>/dev/null; then
      if out=$(docker exec "$pg" sh -c {q(query)} 2>&1); then state=ok; break; fi
      state=error; err=$(printf '%s' "$out" | tr '\n' ' ' | cut -c1-300)
    fi
    sleep 0.5
  done
  echo "db=$state"
  if [ "$state" = ok ]; then printf '%s\n' "$out"; else printf 'db_error=%s\n' "$err"; fi
fi
echo "known=$(sed -nE {q(REVISION_SED.format(name="revision"))} {versions}/*.py 2>/dev/null | tr '\\n' ' ')"
echo "parents=$(sed -nE {q(REVISION_SED.format(name="down_revision"))} {versions}/*.py 2>/dev/null | tr '\\n' ' ')"
"""


@dataclass(frozen=True)
class SchemaState:
    """What schema_state printed: whether the database answered, its revision, the schema's
    fingerprint, and the revisions a release knows."""

    readable: bool
    # "" = no alembic_version row; "<none>" = no alembic_version table (fresh database)
    revision: str
    fingerprint: str
    known: tuple[str, ...]
    heads: tuple[str, ...]
    error: str = ""

    @property
    def fresh(self) -> bool:
        return self.revision in ("", "<none>")

    @property
    def migrations_pending(self) -> bool:
        """Whether the release's newest migration is ahead of the database."""
        return self.readable and not self.fresh and self.revision not in self.heads

    @property
    def unknown_to_release(self) -> bool:
        """The database is at a revision the release's code does not know (a later release's)."""
        return self.readable and not self.fresh and self.revision not in self.known


def parse_schema(output: str) -> SchemaState:
    facts = parse_facts(output)
    known = tuple(facts.get("known", "").split())
    parents = set(facts.get("parents", "").split())
    return SchemaState(readable=facts.get("db") == "ok", revision=facts.get("revision", "").strip(),
                       fingerprint=facts.get("schema", "").strip(), known=known,
                       heads=tuple(r for r in known if r not in parents),
                       error=facts.get("db_error", ""))


def local_revisions(versions: Path) -> dict[str, tuple[str, ...]]:
    """The migrations of a checkout (`backend/alembic/versions`): each revision with its parents
    (`down_revision`, a tuple for a merge), read from the files without importing them."""
    revisions: dict[str, tuple[str, ...]] = {}
    for path in sorted(versions.glob("*.py")):
        values: dict[str, object] = {}
        for node in ast.parse(path.read_text()).body:
            target = (node.target if isinstance(node, ast.AnnAssign)
                      else node.targets[0] if isinstance(node, ast.Assign) else None)
            if (isinstance(target, ast.Name) and target.id in ("revision", "down_revision")
                    and node.value is not None):
                try:
                    values[target.id] = ast.literal_eval(node.value)
                except ValueError:
                    pass
        if isinstance(values.get("revision"), str):
            parent = values.get("down_revision")
            parents = (tuple(parent) if isinstance(parent, (tuple, list))
                       else (parent,) if parent else ())
            revisions[values["revision"]] = parents
    return revisions


def pending_revisions(revisions: dict[str, tuple[str, ...]],
                      database_revision: str) -> list[str] | None:
    """The migrations `alembic upgrade head` would run on a database at `database_revision`
    ("" or "<none>": a fresh database, all of them), oldest first; None when the database is at
    a revision these migrations do not know (a later release's)."""
    applied: set[str] = set()
    if database_revision not in ("", "<none>"):
        if any(r not in revisions for r in database_revision.split()):
            return None
        stack = database_revision.split()
        while stack:
            rev = stack.pop()
            if rev not in applied:
                applied.add(rev)
                stack.extend(p for p in revisions.get(rev, ()) if p in revisions)
    ordered: list[str] = []
    seen: set[str] = set()

    def visit(rev: str) -> None:  # parents first
        if rev in seen or rev not in revisions:
            return
        seen.add(rev)
        for parent in revisions[rev]:
            visit(parent)
        ordered.append(rev)

    for rev in sorted(revisions):
        visit(rev)
    return [r for r in ordered if r not in applied]


def migration_failure_detail(before: SchemaState, after: SchemaState,
                             backup_set: str, serving: str, host: str) -> str:
    """What a failed migration did to the database, and what (if anything) to do about it."""
    keeps = f"release {serving} keeps serving" if serving else "no release was serving"
    kept = f" Backup {backup_set}, taken just before the migration, is kept." if backup_set else ""
    if not after.readable:
        return (f"The database could not be read after the failure ({after.error or 'no answer'}), "
                "so whether the "
                f"migration changed it is unknown; nothing was restored and {keeps}.{kept} Check "
                f"with `fab -H {host} compose.logs --service postgres`.")
    if (after.revision, after.fingerprint) == (before.revision, before.fingerprint):
        return ("Postgres rolled the migration back: the database is unchanged (revision "
                f"{before.revision or 'none'}), "
                f"nothing needed restoring, no write was lost, and {keeps}.{kept}")
    restore = (f"`fab -H {host} backup.restore --name {backup_set}` restores the pre-migration "
               "state (the API is "
               f"stopped meanwhile, and writes since the backup are lost)" if backup_set
               else "no backup was taken")
    return ("The migration changed the database before it failed (revision "
            f"{before.revision or 'none'} -> {after.revision or 'none'}, schema "
            f"{'changed' if after.fingerprint != before.fingerprint else 'unchanged'}). "
            "It was NOT restored automatically, because that would discard writes users made "
            f"since the backup; {keeps}. Fix the migration and deploy again, or {restore}.")
