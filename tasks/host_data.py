"""The data on a host: backups and restores (the host-side backup program), off-site copies
(restic, the SFTP key) and point-in-time recovery (pgBackRest's WAL archive, restore to a time,
the off-site WAL). Mixed into `Host` (tasks/host.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from invoke import Exit

from .commands import backup as backup_commands
from .commands import compose as compose_commands
from .commands import db as db_commands
from .commands import offsite as offsite_commands
from .commands import pitr as pitr_commands
from .commands import pitr_offsite
from .commands import release as release_commands
from .commands import sh
from .exits import ExitCode
from .steps import StepFailed

if TYPE_CHECKING:
    pass


class DataOperations:
    """Mixed into `Host`, whose connection, settings, context and steps it uses."""

    # --- backups ---------------------------------------------------------------------------
    def install_backup_script(self) -> None:
        self.conn.run(backup_commands.install_script(self.ctx), hide=True)
        self.put_text(backup_commands.BACKUP_SCRIPT, backup_commands.script_path(self.ctx) + ".new")
        self.conn.run(sh(backup_commands.activate_script(self.ctx)), hide=True)

    def backup(self, db_only: bool = False, keep: int | None = None) -> str:
        """Install and run the host's backup script (a full set is then copied off-site when
        OFFSITE_REPOSITORY is set); returns the new set's name."""
        self.install_backup_script()
        if not db_only:
            self.install_offsite()
            try:
                self.install_wal_offsite()
            # the set is still made; the WAL archive stays on the host
            except StepFailed as failure:
                print(f"   WARNING: the WAL archive is not copied off-site: {failure.detail}",
                      flush=True)
        result = self.conn.run(sh(backup_commands.run(self.ctx, keep or self.settings.backup_keep,
                                                      db_only)),
                               warn=True, hide="stdout")
        for line in result.stdout.splitlines():
            if line.startswith("[backup]"):
                print(f"   {line}", flush=True)
        if result.exited == offsite_commands.PUSH_FAILED_EXIT:
            raise StepFailed("off-site copy",
                             self.redact(" ".join(result.stderr.strip().splitlines()[-3:])
                                         or "no output"))
        if not result.ok:
            raise StepFailed("backup",
                             self.redact((result.stderr.strip().splitlines() or ["no output"])[-1]))
        name, manifest = backup_commands.parse_run(result.stdout)
        v = manifest["verification"]
        print(f"   set {name}: verified ({v['tables']} tables, {v['rows']} rows, restore check "
              f"{v['seconds']}s), "
              f"{sum(manifest['sizes'].values())} bytes, {manifest['duration_s']}s")
        return name

    # --- off-site copies (restic) -------------------------------------------------------------
    def pin_offsite_host_key(self) -> None:
        """For an SFTP repository: trust the server key whose fingerprint is OFFSITE_HOST_KEY and
        no other (never on first use); stop, having changed nothing, with the keys the server
        offers when the setting is empty or none of them matches."""
        repository = self.settings.offsite_repository
        if offsite_commands.sftp_target(repository) is None:
            return
        pin = self.settings.offsite_host_key
        result = self.probe_run(offsite_commands.pin_host_key(repository, pin))
        offered, pinned = offsite_commands.parse_host_keys(result.stdout)
        if result.ok and pinned:
            print(f"The SFTP server's host key {pinned} (OFFSITE_HOST_KEY) is the one it offers: "
                  "the host trusts it and no other.")
            return
        raise Exit(offsite_commands.host_key_message(self.name, repository, pin, offered,
                                                     result.exited),
                   code=ExitCode.USAGE if result.exited == 4 else ExitCode.FAILED)

    def install_offsite(self) -> str:
        """When OFFSITE_REPOSITORY is set: install tasktracker-offsite and its offsite.conf (only a
        file that differs is sent, over SFTP: the password never reaches a command line) and, for an
        SFTP repository, the host's own key. Returns that key's public half ('' otherwise)."""
        s = self.settings
        if not s.offsite_repository:
            return ""
        with_key = offsite_commands.sftp_target(s.offsite_repository) is not None
        pubkey, have = offsite_commands.parse_prepare(
            self.run(offsite_commands.prepare(self.ctx, with_key),
                     "install off-site copies").stdout)
        conf = offsite_commands.conf_text(
            repository=s.offsite_repository, password=s.offsite_password.reveal(),
            aws_access_key_id=s.offsite_aws_access_key_id.reveal(),
            aws_secret_access_key=s.offsite_aws_secret_access_key.reveal(),
            keep=(s.offsite_keep_daily, s.offsite_keep_weekly, s.offsite_keep_monthly),
            home=self.facts.get("home", "").rstrip("/"), append_only=s.offsite_append_only)
        sent = []
        for path, text in ((offsite_commands.script_path(self.ctx),
                            offsite_commands.OFFSITE_SCRIPT),
                           (offsite_commands.conf_path(self.ctx), conf)):
            if have.get(path) != offsite_commands.digest(text):
                self.put_text(text, path + ".new")
                sent.append(path)
        self.run(offsite_commands.finish(self.ctx, sent), "install off-site copies")
        return pubkey

    def offsite(self, action: str, *args: str, show: bool = False):
        """Run one action of the host's tasktracker-offsite; the result whatever its exit code
        (`show`: its output streams here as it comes; restic never prints the password)."""
        return self.conn.run(sh(offsite_commands.run(self.ctx, action, *args)), warn=True,
                             hide=not show)

    def backup_sets(self) -> tuple[list[dict], list[str]]:
        return backup_commands.parse_sets(self.conn.run(backup_commands.list_sets(self.ctx),
                                                        hide=True).stdout)

    def restore_backup(self, set_name: str, *, fresh_database: bool = False,
                       migrate: bool = False) -> None:
        """Restore a set's database and NATS data (backup.restore); a recovery restores into a
        fresh database and migrates it before api and worker start again. On a swarm it scales api
        and worker down and up (`docker service scale`), so it runs on a manager that is the data
        node."""
        start = release_commands.in_current(self.ctx, compose_commands.either(
            self.ctx, lambda ctx: compose_commands.start(ctx, ["nats", "api", "worker"])))
        before = self.before_start(migrate)
        self.run(backup_commands.restore(self.ctx, set_name, f'cd "$HOME" && {start}',
                                         fresh_database=fresh_database,
                                         before_start=before), "restore", hide=False)

    def before_start(self, migrate: bool) -> str:
        """What a restore runs before api and worker start on the restored database: the migration
        (`migrate`), then the app role and its grants (a dump holds neither the role, a cluster's
        object, nor its grants: restores leave privileges out, commands/db.py puts them back)."""
        role = f'(cd "$HOME" && {db_commands.ensure_app_role(self.ctx)})'
        if not migrate:
            return role
        migration = release_commands.in_current(self.ctx, compose_commands.migrate(self.ctx))
        return f'(cd "$HOME" && {migration}) && {role}'

    # --- point-in-time recovery (pgBackRest) ----------------------------------------------------
    def pitr_state(self) -> dict:
        """The WAL archive as pgBackRest and Postgres report it (commands/pitr.parse_info)."""
        return pitr_commands.parse_info(self.probe_run(pitr_commands.info(self.ctx)).stdout)

    def restore_to_time(self, target: str) -> None:
        """Restore the database to `target` (UTC) from the WAL archive (backup.restore --to-time);
        on failure the database is put back as it was and StepFailed says so."""
        self.require_pitr()
        start = release_commands.in_current(self.ctx, compose_commands.either(
            self.ctx, lambda ctx: compose_commands.start(ctx, ["nats", "api", "worker"])))
        script = pitr_commands.restore_to_time(self.ctx, target, f'cd "$HOME" && {start}',
                                               self.before_start(migrate=False))
        result = self.conn.run(script, warn=True)
        if result.exited == pitr_commands.NO_PGBACKREST_EXIT:
            raise StepFailed("restore to a time", "the live release's Postgres image has no "
                                                  "pgBackRest; nothing was changed")
        if not result.ok:
            raise StepFailed("restore to a time",
                             self.redact((result.stderr.strip().splitlines() or ["no output"])[-1]))

    def require_pitr(self) -> None:
        """Restoring to a moment works on this engine (a swarm refuses it)."""

    def install_wal_offsite(self, stanza: bool = True) -> str:
        """With an SFTP off-site repository: pgBackRest's second repository there (settings, key and
        known host into the volume; stanza; first full backup), so every WAL segment is archived
        off-site too. Returns pitr-offsite=ok|unavailable, or '' when the repository is not SFTP
        (or is append-only: pgBackRest deletes and renames in its repository);
        StepFailed says why it could not."""
        s = self.settings
        if not pitr_offsite.offsite_repo_path(s.offsite_repository, s.offsite_append_only):
            return ""
        conf = f"{self.ctx.app_dir}/shared/pgbackrest-offsite.conf"
        self.run(sh(["install", "-m", "600", "/dev/null", conf + ".new"]), "off-site WAL archive")
        self.put_text(pitr_offsite.offsite_conf(s.offsite_repository, s.offsite_password.reveal()),
                      conf + ".new")
        self.run(sh(["mv", "-f", conf + ".new", conf]), "off-site WAL archive")
        result = self.conn.run(pitr_offsite.install_offsite(s.offsite_repository, conf,
                                                            self.ctx.container("postgres"), stanza),
                               warn=True, hide=True)
        if not result.ok:
            raise StepFailed("off-site WAL archive",
                             self.redact((result.stderr.strip().splitlines() or ["no output"])[-1]))
        return [line for line in result.stdout.splitlines() if line.startswith("pitr-offsite=")][-1]

    def restore_wal_offsite(self, target: str, *, migrate: bool) -> str:
        """recover: the database to the last WAL archived off-site (or `target`, UTC), after the
        set was restored; says what the database now holds. With no off-site archive yet, the set's
        data stays; a failed restore puts the set's data back and, unless `target` was asked for,
        only warns (StepFailed when it was)."""
        self.require_pitr()
        self.install_wal_offsite(stanza=False)  # the stanza follows the restored cluster
        start = release_commands.in_current(self.ctx, compose_commands.either(
            self.ctx, lambda ctx: compose_commands.start(ctx, ["nats", "api", "worker"])))
        before = self.before_start(migrate)
        result = self.conn.run(pitr_offsite.restore_from_offsite(self.ctx, target, before,
                                                                 f'cd "$HOME" && {start}'),
                               warn=True, hide="stderr")
        said = [line[len("[recover] "):] for line in result.stderr.splitlines()
                if line.startswith("[recover] ")]
        reason = self.redact("; ".join(said) or (result.stderr.strip().splitlines()
                                                 or ["no output"])[-1])
        if result.exited == pitr_offsite.NO_OFFSITE_ARCHIVE_EXIT and not target:
            print("   the off-site WAL archive has no backup yet: the database holds the set's "
                  "data; "
                  f"`fab -H {self.name} backup.offsite.init` archives this host's WAL off-site "
                  "from now on")
            return "no off-site WAL archive yet"
        if result.exited == pitr_offsite.PUT_BACK_FAILED_EXIT or (not result.ok and target):
            raise StepFailed("off-site WAL archive", reason)
        if not result.ok:
            print(f"   WARNING: the off-site WAL could not be restored ({reason}); the database "
                  "holds the set's data")
            return "the off-site WAL could NOT be restored (the set's data)"
        return f"the database at {target + ' UTC' if target else 'the last WAL archived off-site'}"
