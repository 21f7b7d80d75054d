"""The WAL archive off-site: pgBackRest's second repository (repo2) on the off-site SFTP server,
beside restic's directory: its settings, its set-up in the Postgres volume, and `recover`'s
restore of the lost host's WAL from it (commands/pitr.py has the archive on the host)."""

from __future__ import annotations

from . import q, rollout
from .context import HostContext
from .offsite import key_path, known_host_name, sftp_path, sftp_target
from .pitr import BR, CONF_DIR, CONTAINER_SETTINGS, CREATE_STANZA, SQL_FUNCTION, WAIT_PROMOTED

NO_OFFSITE_ARCHIVE_EXIT = 3  # recover: the off-site WAL archive has no backup yet
PUT_BACK_FAILED_EXIT = 6  # recover: the set's data could not be put back after a failed WAL restore
OFFSITE_DIR = "/var/lib/pgbackrest/offsite"
OFFSITE_SUFFIX = "-pgbackrest"  # the WAL archive's directory beside the restic repository


def offsite_repo_path(repository: str, append_only: bool = False) -> str:
    """Where the second repository lives on the SFTP server: beside restic's directory; '' when
    the off-site repository is not SFTP with an absolute path, or is an append-only account (its
    forced command serves restic only, and pgBackRest must delete and rename): the WAL then stays
    on the host."""
    path = sftp_path(repository) if sftp_target(repository) and not append_only else ""
    return path.rstrip("/") + OFFSITE_SUFFIX if path.startswith("/") else ""


def offsite_conf(repository: str, password: str) -> str:
    """pgBackRest's settings for repo2 (an ini file, 0600, in the volume; it holds the cipher pass,
    so it travels over SFTP and stdin, never a command line). Encrypted with OFFSITE_PASSWORD."""
    user, host, port = sftp_target(repository)
    return "\n".join([
        "# Written by tasktracker (backup.offsite.init, backup, recover); do not edit.", "[global]",
        "repo2-type=sftp", f"repo2-path={offsite_repo_path(repository)}", f"repo2-sftp-host={host}",
        f"repo2-sftp-host-port={port}", f"repo2-sftp-host-user={user or 'root'}",
        f"repo2-sftp-private-key-file={OFFSITE_DIR}/key", "repo2-sftp-host-key-check-type=strict",
        "repo2-sftp-host-key-hash-type=sha256", f"repo2-sftp-known-host={OFFSITE_DIR}/known_hosts",
        "repo2-cipher-type=aes-256-cbc", f"repo2-cipher-pass={password}", "repo2-retention-full=2",
        ""])


def install_offsite(repository: str, conf_file: str, container: str, stanza: bool = True) -> str:
    """Shell (on the host, as the deploy user): copy the host's SFTP key, the server's known host
    key (remembered by `backup.offsite.init`) and `conf_file` into the volume (through stdin),
    create the stanza on both repositories and take repo2's first full backup when it has none
    (not `stanza` for `recover`: the cluster running is the new host's empty one, and repo2 holds
    the lost host's). Prints `pitr-offsite=ok|unavailable`; exits 1 with the reason otherwise."""
    def into(path: str, mode: str) -> str:
        inside = (f"umask 077 && cat > {path}.new && chown postgres:postgres {path}.new && chmod "
                  f"{mode} {path}.new && mv -f {path}.new {path}")
        return f"docker exec -u root -i \"$pg\" sh -c {q(inside)}"
    return f"""set -o pipefail
pg=$({container})
if [ -z "$pg" ] || ! docker exec "$pg" sh -c 'command -v pgbackrest' >/dev/null 2>&1; then echo "pitr-offsite=unavailable"; exit 0; fi
known=$(ssh-keygen -F {q(known_host_name(repository))} -f ~/.ssh/known_hosts 2>/dev/null | grep -v '^#')
[ -n "$known" ] || {{ echo "the SFTP server's host key is not known yet: run backup.offsite.init first" >&2; exit 1; }}
docker exec -u root "$pg" install -d -o postgres -g postgres -m 700 {CONF_DIR} {OFFSITE_DIR} || exit 1
{into(OFFSITE_DIR + '/key', '600')} < {q(key_path())} || exit 1
printf '%s\n' "$known" | {into(OFFSITE_DIR + '/known_hosts', '600')} || exit 1
{into(CONF_DIR + '/offsite.conf', '600')} < {q(conf_file)} || exit 1
{"" if stanza else 'echo "pitr-offsite=ok"; exit 0'}
{CREATE_STANZA}
create_stanza || {{ echo "pgBackRest could not reach the off-site repository: $out" >&2; exit 1; }}
if ! {BR} info --repo=2 --output=json 2>/dev/null | grep -q '"label"'; then
  echo "first pgBackRest full backup off-site"
  out=$({BR} backup --repo=2 --type=full 2>&1) || {{ echo "the first off-site pgBackRest backup failed: $out" >&2; exit 1; }}
fi
echo "pitr-offsite=ok"
"""


def restore_from_offsite(ctx: HostContext, target: str, before_start: str,
                         compose_start: str) -> str:
    """For `recover` on a new host, after the newest set was restored: replace the database with
    the lost host's latest archived WAL (or `target`, UTC) from repo2. The set's data directory is
    first copied aside in the volume (complete, or not at all); if anything fails, the migration
    included, that copy is put back (the service then holds the set's data, as without this
    step). This host's own repo1 held only the stanza of the cluster the deploy made, so it is
    emptied for the restored cluster's. `before_start`: the migration, run before api and worker
    start. Exits 0 (restored), NO_OFFSITE_ARCHIVE_EXIT (no backup there: nothing changed),
    1 (could not read it, or put back: the set's data) or PUT_BACK_FAILED_EXIT. On every path but
    0, repo2's settings leave the volume, so this host does not archive into the lost host's
    stanza (`backup.offsite.init` sets it up again)."""
    return offsite_restore_functions(ctx, compose_start) + offsite_restore_stages(ctx, target,
                                                                                  before_start)


PG_DATA = "/var/lib/postgresql/data"
DATA_ASIDE = "/var/lib/pgbackrest/.before-wal-restore"  # the set's data, while the WAL is restored


def offsite_restore_functions(ctx: HostContext, compose_start: str) -> str:
    """`restore_from_offsite`'s start: the Postgres container, its image and settings, and the
    functions its stages call (`leave`, `undo`: the set's data put back)."""
    data, aside = PG_DATA, DATA_ASIDE
    return f"""set -uo pipefail
trap '' PIPE  # a dropped connection must not kill the script between two steps
say() {{ echo "[recover] $*"; }}
start_services() {{ {compose_start}; }}
pg=$({ctx.container('postgres')})
[ -n "$pg" ] || {{ echo "[recover] no running postgres container" >&2; exit 1; }}
{SQL_FUNCTION}
{CONTAINER_SETTINGS}
one_off() {{ docker run --rm --volumes-from "$pg" --env-file "$envfile" "$@"; }}
forget_offsite() {{ one_off --user root --entrypoint rm "$image" -f {CONF_DIR}/offsite.conf >/dev/null 2>&1; }}
leave() {{ forget_offsite; rm -f "$envfile"; exit "$1"; }}
if [ -z "$image" ] || [ ! -s "$envfile" ]; then echo "[recover] could not read the postgres container's settings" >&2; leave 1; fi
{WAIT_PROMOTED}
aside_ready=""
undo() {{
  trap - HUP INT TERM
  echo "[recover] the off-site WAL could not be restored (at '$stage'); putting the set's database back" >&2
  forget_offsite
  docker stop -t 60 "$pg" >/dev/null 2>&1
  if [ -n "$aside_ready" ]; then
    one_off --user root --entrypoint sh "$image" -c {q(f'find {data} -mindepth 1 -delete && cp -a {aside}/. {data}/ && rm -rf {aside}')} >&2 \\
      || {{ echo "[recover] PUTTING THE SET'S DATABASE BACK FAILED: its copy is in the pgbackrest_repo volume at {aside}; run recover again" >&2; rm -f "$envfile"; exit {PUT_BACK_FAILED_EXIT}; }}
  fi
  if docker start "$pg" >/dev/null && wait_promoted; then
    {BR} stanza-create >/dev/null 2>&1
    start_services >/dev/null 2>&1
    echo "[recover] the database holds the set's data; run backup.offsite.init to archive this host's WAL off-site" >&2
    rm -f "$envfile"; exit 1
  fi
  echo "[recover] POSTGRES DID NOT START on the set's data: see compose.logs --service postgres; run recover again" >&2
  rm -f "$envfile"; exit {PUT_BACK_FAILED_EXIT}
}}
"""


def offsite_restore_stages(ctx: HostContext, target: str, before_start: str) -> str:
    """`restore_from_offsite`'s stages, each named in `$stage` for `undo`. This host's own WAL
    archive starts again afterwards, once it serves (`recover`: its first full backup would
    otherwise keep the service in maintenance for as long as the database takes to copy)."""
    data, aside = PG_DATA, DATA_ASIDE
    kind = f"--type=time --target={q(target + '+00')} --target-action=promote" if target else ""
    return f"""stage="read the off-site archive"
if ! info=$({BR} info --repo=2 --output=json 2>&1); then
  echo "[recover] could not read the off-site WAL archive: $(printf '%s' "$info" | tail -n 2 | tr '\\n' ' ')" >&2; leave 1
fi
printf '%s' "$info" | grep -q '"label"' || {{ echo "[recover] the off-site WAL archive has no backup yet" >&2; leave {NO_OFFSITE_ARCHIVE_EXIT}; }}
trap undo HUP INT TERM
stage="stop api, worker and postgres"
for c in $({ctx.containers('api')}) $({ctx.containers('worker')}); do docker stop -t 30 "$c" >/dev/null || undo; done
docker stop -t 60 "$pg" >/dev/null || undo
stage="copy the set's data aside"
one_off --user root --entrypoint sh "$image" -c {q(f'rm -rf {aside} {aside}.tmp && cp -a {data} {aside}.tmp && mv {aside}.tmp {aside} && rm -rf /var/lib/pgbackrest/archive /var/lib/pgbackrest/backup')} || undo
aside_ready=1
stage="restore from the off-site archive"
one_off --user postgres --entrypoint pgbackrest "$image" restore --repo=2 --delta {kind} || undo
say "data directory restored from the off-site pgBackRest repository; replaying its WAL{' to ' + target + ' UTC' if target else ''}"
stage="replay the archived WAL"
docker start "$pg" >/dev/null && wait_promoted || undo
say "the database is back to {"%s UTC" % target if target else "the last archived WAL"}"
stage="migrate"
{(before_start + " || undo") if before_start else ":"}
stage="start nats, api and worker"
start_services || undo
trap - HUP INT TERM
one_off --user root --entrypoint rm "$image" -rf {aside}
rm -f "$envfile"
{rollout.wait_healthy(ctx, 'api')}
say "api and worker started"
"""
