"""Commands that lay out, inspect and prune releases on the host (layout: commands/context.py).

Each release carries its own settings: APP_DIR/env/<id>.env (mode 0600, in a 0700 directory
nginx never sees), linked as the release's `.env`. A deploy writes only its new release's file,
so a failed deploy leaves the live settings untouched and a rollback runs the old code with the
settings it was proven with.
"""

from __future__ import annotations

import ast
import io
import json
import re
import tarfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from . import q, sh
from .context import HostContext

NO_RELEASE_EXIT = 3
PROBE_PATH = "tasks/probe.py"
SCHEMA_WAIT_SECONDS = 60
# `revision = "x"` or `revision = 'x'` (Alembic's template writes repr()); `None` is no revision.
REVISION_SED = "s/^{name}(: *[]A-Za-z_|[, ]+)? *= *['\"]([^'\"]+)['\"].*/\\2/p"


def new_release_id(now: datetime, commit: str) -> str:
    """The one maker of release ids, for both engines: UTC time, then the commit (letters and
    digits only: `ab12cd3-dirty` -> `ab12cd3dirty`), e.g. `20261125T173005Z-ab12cd3dirty`."""
    return f"{now.strftime('%Y%m%dT%H%M%SZ')}-{re.sub(r'[^0-9a-z]+', '', commit.lower())[:12] or 'nogit'}"


def dist_assets(index_html: str) -> list[str]:
    """The hashed asset paths the dashboard's index.html references (what the probe expects)."""
    return sorted(set(re.findall(r'(?:src|href)="(/assets/[^"]+)"', index_html)))


def preflight(ctx: HostContext) -> str:
    """One round trip that reports what every task needs to know about the host. The Docker
    questions (each a CLI call of tens of milliseconds, the Postgres one an exec) run side by side
    and print in a fixed order."""
    docker_facts = [
        "if command -v docker >/dev/null 2>&1; then "
        "echo \"docker=$(docker version --format '{{.Server.Version}}' 2>&1 | tr '\\n' ' ')\"; "
        "else echo 'docker=missing'; fi",
        "echo \"docker_id=$(docker info --format '{{.ID}}' 2>/dev/null)\"",
        # Swarm mode: `active/true` on a manager, `active/false` on a worker, `inactive/false` outside one.
        "echo \"swarm=$(docker info --format '{{.Swarm.LocalNodeState}}/{{.Swarm.ControlAvailable}}' 2>/dev/null)\"",
        "v=$(docker compose version --short 2>/dev/null) && echo \"compose_v2=$v\"",
        postgres_data_fact(ctx),
    ]
    other_facts = [
        "echo \"user=$(id -un)\"",
        "echo \"home=$HOME\"",
        # v1's presence only: `docker-compose version` starts a Python program (about half a second)
        "if command -v docker-compose >/dev/null 2>&1; then echo \"compose_v1=$(command -v docker-compose)\"; fi",
        "echo \"rsync=$(command -v rsync || true)\"",
        # the memory budget (commands/budget.py): MemTotal in kB, empty where there is no /proc/meminfo
        "echo \"mem_total_kb=$(awk '/^MemTotal:/ {print $2}' /proc/meminfo 2>/dev/null)\"",
        f"echo \"current=$(readlink {q(ctx.current_link)} 2>/dev/null || true)\"",
        f"echo \"current_meta=$(cat {q(ctx.current_link)}/RELEASE.json 2>/dev/null | tr -d '\\n' || true)\"",
    ]
    started = " ".join(f"{{ {fact}; }} > \"$t/{n}\" 2>/dev/null &" for n, fact in enumerate(docker_facts))
    collected = " ".join(f'"$t/{n}"' for n in range(len(docker_facts)))
    return f"t=$(mktemp -d) || exit 1; {started} " + "; ".join(other_facts) + f"; wait; cat {collected}; rm -rf \"$t\""


POSTGRES_DATA = "/var/lib/postgresql/data"  # where compose.yml mounts the postgres_data volume


def postgres_data_fact(ctx: HostContext) -> str:
    """`pg_data=`: the PostgreSQL major version of the data in the stack's Postgres volume (`15`,
    `17`), `none` (no such volume), `empty` (not initialised) or `unknown` (no container to read it
    with). Read through the running postgres container, else with the image of a stopped one in a
    throwaway container (read-only mount, no network): the deploy's guard (commands/db.py)."""
    project = q(f"label=com.docker.compose.project={ctx.project}")
    read = f"cat {POSTGRES_DATA}/PG_VERSION 2>/dev/null || echo empty"
    return (f"vol={q(ctx.postgres_volume)}; if docker volume inspect \"$vol\" >/dev/null 2>&1; then "
            f"pg=$({ctx.container('postgres')}); v=''; "
            f"if [ -n \"$pg\" ]; then v=$(docker exec \"$pg\" sh -c {q(read)} 2>/dev/null); "
            f"else img=$(docker ps -a --filter {project} --filter label=com.docker.compose.service=postgres "
            f"--format '{{{{.Image}}}}' | head -n 1); "
            f"if [ -n \"$img\" ]; then v=$(docker run --rm --network none --entrypoint sh -v \"$vol\":/d:ro \"$img\" "
            f"-c 'cat /d/PG_VERSION 2>/dev/null || echo empty' 2>/dev/null); fi; fi; "
            f"echo \"pg_data=${{v:-unknown}}\"; else echo pg_data=none; fi")


def parse_facts(output: str) -> dict[str, str]:
    """`key=value` lines (preflight, schema_state) as a dict."""
    facts: dict[str, str] = {}
    for line in output.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            facts[key.strip()] = value.strip()
    return facts


def prepare(ctx: HostContext, release_id: str, release_yml: str) -> str:
    """Create the release directory and the shared directories, and an empty 0600 file the
    release's .env is then written into (over SFTP): the settings are never readable by anyone
    else, not even for a moment, and the live release's settings are not touched."""
    release = ctx.release_dir(release_id)
    return " && ".join([
        sh(["mkdir", "-p", release, *ctx.mounted_dirs]),
        sh(["install", "-d", "-m", "700", ctx.env_dir]),
        sh(["install", "-m", "600", "/dev/null", ctx.release_env(release_id)]),
        sh(["ln", "-sfn", f"../../env/{release_id}.env", f"{release}/.env"]),
        f"printf %s {q(release_yml)} > {q(release)}/release.yml",
    ])


RELEASE_TAR = "release.tar"


def files_archive(files: list[tuple[str, int, str]]) -> bytes:
    """A tar of (path relative to APP_DIR, mode, text): what a deploy writes besides the rsync'd
    tree (the release's settings, release.yml, RELEASE.json, the alert program), sent in one
    SFTP upload into the lock's 0700 inbox and unpacked by `unpack_release`."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path, mode, text in files:
            data = text.encode()
            info = tarfile.TarInfo(path)
            info.size, info.mode, info.mtime = len(data), mode, int(time.time())
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def unpack_release(ctx: HostContext, release_id: str) -> str:
    """Lay out the release (its directory, the shared directories, the 0700 env directory) and
    unpack the inbox's tar into APP_DIR with its modes (umask 077 while unpacking: no file is
    readable by others even for a moment), then link the release's .env."""
    release = ctx.release_dir(release_id)
    tar = f"{ctx.inbox}/{RELEASE_TAR}"
    return " && ".join([
        sh(["mkdir", "-p", release, *ctx.mounted_dirs]),
        sh(["install", "-d", "-m", "700", ctx.env_dir]),
        f"( umask 077 && tar -xpf {q(tar)} -C {q(ctx.app_dir)} --no-same-owner )",
        sh(["rm", "-f", tar]),
        sh(["ln", "-sfn", f"../../env/{release_id}.env", f"{release}/.env"]),
    ])


def in_release(ctx: HostContext, release_id: str, command: str) -> str:
    return f"cd {q(ctx.release_dir(release_id))} && {command}"


def in_current(ctx: HostContext, command: str) -> str:
    """Run in the resolved current release, or exit 3 when the host has none yet."""
    return (f"if [ ! -e {q(ctx.current_link)} ]; then echo 'no release deployed yet' >&2; exit {NO_RELEASE_EXIT}; fi; "
            f"cd \"$(readlink -f {q(ctx.current_link)})\" && {command}")


def image_present_or_build(image: str, build_command: str) -> str:
    return f"if docker image inspect {q(image)} >/dev/null 2>&1; then echo {q(f'image {image} already built')}; else {build_command}; fi"


def probe(image: str, base_url: str, assets: list[str], timeout: int = 90) -> str:
    """Run the release's stdlib health probe (from the release directory): with the host's own
    python3 when it has one (a tenth of a second), else in a throwaway container of the release's
    image on the host network (no Python needed on the host; about a second)."""
    args = sh([base_url, str(timeout), *assets])
    mount = f"$PWD/{PROBE_PATH}:/probe.py:ro"
    return (f"if command -v python3 >/dev/null 2>&1; then python3 {PROBE_PATH} {args}; "
            f"else docker run --rm --network host -v \"{mount}\" --entrypoint python {q(image)} /probe.py {args}; fi")


def probe_from_entry(ctx: HostContext, image: str, assets: list[str], timeout: int = 90) -> str:
    """The same probe from inside nginx's own network namespace (http://127.0.0.1:80), the one
    client nginx/maintenance.conf lets through while a recovery keeps everyone else out."""
    args = sh(["http://127.0.0.1:80", str(timeout), *assets])
    mount = f"$PWD/{PROBE_PATH}:/probe.py:ro"
    return (f"docker run --rm --network \"container:$({ctx.container('nginx')})\" -v \"{mount}\" "
            f"--entrypoint python {q(image)} /probe.py {args}")


def read_meta(ctx: HostContext, release_id: str) -> str:
    """The release's RELEASE.json, or the line MISSING when it has none."""
    path = q(ctx.release_meta(release_id))
    return f"if [ -f {path} ]; then cat {path}; else echo MISSING; fi"


def write_meta(ctx: HostContext, release_id: str, meta: dict) -> str:
    return f"printf '%s\\n' {q(json.dumps(meta, sort_keys=True))} > {q(ctx.release_meta(release_id))}"


def list_releases(ctx: HostContext) -> str:
    """Each kept release as `name<TAB>RELEASE.json`, then `current=<name>`."""
    releases = q(ctx.releases_dir)
    return (f"for r in $(ls -1 {releases} 2>/dev/null | sort); do printf '%s\\t%s\\n' \"$r\" "
            f"\"$(cat {releases}/$r/RELEASE.json 2>/dev/null | tr -d '\\n')\"; done; "
            f"echo \"current=$(basename \"$(readlink {q(ctx.current_link)} 2>/dev/null)\")\"")


def parse_releases(output: str) -> tuple[list[tuple[str, dict]], str]:
    rows, current = [], ""
    for line in output.splitlines():
        if line.startswith("current="):
            current = line.split("=", 1)[1].strip()
        elif "\t" in line:
            name, _, meta = line.partition("\t")
            try:
                rows.append((name, json.loads(meta) if meta.strip() else {}))
            except ValueError:
                rows.append((name, {}))
    return rows, current


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


def remove_releases(ctx: HostContext, names: list[str]) -> str:
    """Delete these releases and their settings (never called with the current one): the .env, and
    on a swarm the rendered stack files beside it."""
    if not names:
        return "true"
    paths = [p for n in names for p in (ctx.release_dir(n), ctx.release_env(n), *([f"{ctx.env_dir}/{n}.stack"] if ctx.engine == "swarm" else []))]
    return sh(["rm", "-rf", "--", *paths]) + "; " + "; ".join(f"echo {q('pruned ' + n)}" for n in names)


def prune_images(ctx: HostContext, image_repo: str, key: str = "backend_image") -> str:
    """Remove this project's images of `image_repo` that no kept release names under `key` in its
    RELEASE.json (images in use stay)."""
    releases = q(ctx.releases_dir)
    return (f"keep=$(cat {releases}/*/RELEASE.json 2>/dev/null | grep -o '\"{key}\": \"[^\"]*\"' | cut -d'\"' -f4 | sort -u); "
            f"for img in $(docker images --format '{{{{.Repository}}}}:{{{{.Tag}}}}' {q(image_repo)}); do "
            f"printf '%s\\n' \"$keep\" | grep -qxF \"$img\" || {{ docker rmi \"$img\" >/dev/null 2>&1 && echo \"removed image $img\"; }}; done; true")


# --- the database schema (Alembic) ----------------------------------------------------------

SCHEMA_SQL = ("SELECT 'revision=' || coalesce((SELECT string_agg(version_num, ' ') FROM alembic_version), ''); "
              "SELECT 'schema=' || md5(coalesce(string_agg(table_name || '.' || column_name || ':' || data_type, ',' "
              "ORDER BY table_name, column_name), '')) FROM information_schema.columns WHERE table_schema = 'public'")
FRESH_SQL = ("SELECT 'revision=' || CASE WHEN to_regclass('public.alembic_version') IS NULL THEN '<none>' ELSE '' END; "
             "SELECT 'schema=' || md5(coalesce(string_agg(table_name || '.' || column_name || ':' || data_type, ',' "
             "ORDER BY table_name, column_name), '')) FROM information_schema.columns WHERE table_schema = 'public'")


def schema_state(ctx: HostContext, release_id: str, wait_seconds: int = SCHEMA_WAIT_SECONDS) -> str:
    """The database's Alembic revision and a fingerprint of its schema, waiting for Postgres to
    accept connections; plus every revision the release's code knows. Prints `db=ok` only when
    the revision was really read (`db=unreachable`/`db=error` otherwise: callers fail closed)."""
    versions = q(f"{ctx.release_dir(release_id)}/backend/alembic/versions")
    psql = 'psql -X -q -At -v ON_ERROR_STOP=1 -U "$POSTGRES_USER" -d "$POSTGRES_DB"'
    # One query decides whether alembic_version exists; the revision query runs only if it does.
    # (a failing first query is an error, never taken for "no table": that would not fail closed)
    query = (f"has=$({psql} -c \"SELECT to_regclass('public.alembic_version') IS NOT NULL\") || exit 1; "
             f"if [ \"$has\" = t ]; then {psql} -c {q(SCHEMA_SQL)}; else {psql} -c {q(FRESH_SQL)}; fi")
    # Readiness over TCP: while the image initialises a new cluster, a temporary server answers
    # on the socket only and then shuts down. A query error is retried until the deadline.
    return f"""pg=$({ctx.container('postgres')})
if [ -z "$pg" ]; then echo db=unreachable; echo 'db_error=no running postgres container'; else
  state=unreachable; err="postgres did not accept connections within {int(wait_seconds)}s"
  for _ in $(seq 1 {int(wait_seconds) * 2}); do
    if docker exec "$pg" sh -c 'pg_isready -q -h 127.0.0.1 -U "$POSTGRES_USER" -d "$POSTGRES_DB"' 2>/dev/null; then
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
    revision: str  # "" = no alembic_version row; "<none>" = no alembic_version table (fresh database)
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
                       heads=tuple(r for r in known if r not in parents), error=facts.get("db_error", ""))


def local_revisions(versions: Path) -> dict[str, tuple[str, ...]]:
    """The migrations of a checkout (`backend/alembic/versions`): each revision with its parents
    (`down_revision`, a tuple for a merge), read from the files without importing them."""
    revisions: dict[str, tuple[str, ...]] = {}
    for path in sorted(versions.glob("*.py")):
        values: dict[str, object] = {}
        for node in ast.parse(path.read_text()).body:
            target = node.target if isinstance(node, ast.AnnAssign) else node.targets[0] if isinstance(node, ast.Assign) else None
            if isinstance(target, ast.Name) and target.id in ("revision", "down_revision") and node.value is not None:
                try:
                    values[target.id] = ast.literal_eval(node.value)
                except ValueError:
                    pass
        if isinstance(values.get("revision"), str):
            parent = values.get("down_revision")
            revisions[values["revision"]] = tuple(parent) if isinstance(parent, (tuple, list)) else (parent,) if parent else ()
    return revisions


def pending_revisions(revisions: dict[str, tuple[str, ...]], database_revision: str) -> list[str] | None:
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
