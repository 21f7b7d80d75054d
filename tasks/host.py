"""The host layer: what every operation on a host needs, below the task modules.

`Host.open(c)` connects (pinned host keys, clear errors), reads the host's facts in one round trip
and refuses a host that cannot take the operation; the `Host` then runs commands built by
`tasks/commands/` against one `HostContext`, and holds the shared operations: the lock, the audit
record, release metadata, image presence, activation, the post-deploy probe, putting the previous
release back, the schema state, and backups. Task modules (deploy, rollback, backup, tls, ...)
import from here and never from each other.
"""

from __future__ import annotations

import io
import json
import secrets as token_source
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from invoke import Exit

from . import remote
from .commands import audit as audit_commands
from .commands import backup as backup_commands
from .commands import compose as compose_commands
from .commands import db as db_commands
from .commands import images as image_commands
from .commands import lock as lock_commands
from .commands import notify as notify_commands
from .commands import offsite as offsite_commands
from .commands import pitr as pitr_commands
from .commands import release as release_commands
from .commands import rollout, sh
from .commands.context import HostContext
from .exits import ExitCode
from .identity import identity, now_iso
from .settings import Settings
from .steps import StepFailed, Steps, redact, run_checked


@dataclass(frozen=True)
class Release:
    """One release on the host, as its RELEASE.json records it."""

    id: str
    image: str = ""
    assets: tuple[str, ...] = ()
    previous: str = ""
    result: str = ""
    meta: dict = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_meta(cls, release_id: str, meta: dict) -> "Release":
        return cls(id=release_id, image=meta.get("backend_image", ""), assets=tuple(meta.get("assets", [])),
                   previous=meta.get("previous", ""), result=meta.get("result", ""), meta=dict(meta))

    @property
    def commit(self) -> str:
        return self.meta.get("commit", "?")

    @property
    def postgres_image(self) -> str:
        """The Postgres image the release built and pins ("" for one that pulls compose.yml's)."""
        return self.meta.get("postgres_image", "")

    def recorded(self, result: str, **extra) -> dict:
        """The metadata to write for this release with a new result."""
        return {**self.meta, "release": self.id, "backend_image": self.image, "assets": list(self.assets),
                "previous": self.previous, "result": result, **extra}


def choose_compose(facts: dict[str, str], wanted: str) -> str | None:
    if wanted in ("auto", "v2") and facts.get("compose_v2"):
        return "v2"
    if wanted in ("auto", "v1") and facts.get("compose_v1"):
        return "v1"
    return None


def choose_engine(facts: dict[str, str], wanted: str, alias: str) -> tuple[str, str | None]:
    """(`compose` or `swarm`, a problem or None) from ENGINE and the host's `swarm` fact: auto is Swarm on a
    swarm manager and Compose outside a swarm; a swarm worker takes no stack operation."""
    state, _, manager = facts.get("swarm", "").partition("/")
    if wanted == "compose":
        return "compose", None
    if state == "active" and manager == "true":
        return "swarm", None
    if state == "active":
        return "swarm", (f"{alias} is a worker in a Docker Swarm: stack operations run on a manager (`fab -H MANAGER ...`; "
                         f"`cluster.status` lists the nodes), or set ENGINE=compose to run Compose on this host alone.")
    if wanted == "swarm":
        return "swarm", (f"ENGINE=swarm, but {alias} is not in a Docker Swarm (`docker info` reports {state or 'nothing'}): "
                         f"form one with `fab -H {alias},OTHER... cluster.init`, or set ENGINE=compose.")
    return "compose", None


def host_problem(facts: dict[str, str], alias: str, wanted: str) -> str | None:
    """A clear message when the host cannot take a deploy, else None."""
    user = facts.get("user", "the deploy user")
    docker = facts.get("docker", "missing")
    if docker == "missing":
        return (f"Docker is not installed on {alias}. Install Docker Engine with the Compose plugin "
                f"(`curl -fsSL https://get.docker.com | sh`), add {user} to the docker group "
                f"(`usermod -aG docker {user}`), and run the deploy again.")
    if not docker[:1].isdigit():
        return (f"{user} cannot use Docker on {alias} ({docker.strip()[:160]}). Start the Docker daemon "
                f"(`systemctl start docker`) and add {user} to the docker group (`usermod -aG docker {user}`, "
                f"then log in again), and run the deploy again.")
    if choose_compose(facts, wanted) is None:
        which = "Docker Compose" if wanted == "auto" else f"Docker Compose {wanted}"
        return (f"{which} is not available on {alias}. Install the Compose plugin "
                f"(`apt-get install docker-compose-plugin`) and run the deploy again.")
    if not facts.get("rsync"):
        return f"rsync is not installed on {alias}. Install it (`apt-get install rsync`) and run the deploy again."
    return None


def absolute_app_dir(facts: dict[str, str], app_dir: str) -> str:
    return app_dir if app_dir.startswith("/") else f"{facts.get('home', '').rstrip('/')}/{app_dir}"


def _json(text: str | None) -> dict:
    try:
        value = json.loads(text) if text else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


ALERT_FAILED = "@@alert-failed"  # printed by a deferred audit + alert command whose alert failed

# The help of every task's --wait flag (Host.locked's `wait`).
WAIT_HELP = "If another operation holds the host's lock, wait for it instead of failing."
# Audited operations that also send an alert (tasktracker-notify) when they end.
NOTIFIED_ACTIONS = ("deploy", "rollback")
# How a refusal reads in an alert (the exit code of the Exit that ended the operation).
EXIT_REASONS = {ExitCode.FAILED: "", ExitCode.USAGE: "bad input or settings", ExitCode.HOST_NOT_READY: "host not ready",
                ExitCode.LOCKED: "locked", ExitCode.REFUSED: "refused to protect data"}


def failure_kind(exc: BaseException) -> tuple[str, str]:
    """(step, reason) an operation stopped at, for its alert: a step name or a kind of refusal,
    never the failure's detail (that can quote command output)."""
    if isinstance(exc, StepFailed):
        return exc.step, ""
    if isinstance(exc, Exit):
        return "", EXIT_REASONS.get(exc.code, f"exit {exc.code}")
    return "", "interrupted" if isinstance(exc, KeyboardInterrupt) else type(exc).__name__


class Host:
    """A connected host, its facts, and the operations every task shares."""

    def __init__(self, conn, settings: Settings, variant: str, facts: dict[str, str], steps: Steps | None = None):
        self.conn = conn
        self.settings = settings
        self.facts = facts
        self.ctx = HostContext(settings.app_dir, settings.compose_project, variant)
        self.steps = steps or Steps(f"{conn.original_host}", settings.secret_values())
        self.engine, self.engine_problem = "compose", None  # refresh_facts: choose_engine
        self.put_back_release = ""  # set by put_back when it succeeded (the alert says so)
        self._deferred: list[tuple[str, str]] | None = None  # audit lines waiting for the lock's release

    # --- connecting ----------------------------------------------------------------------
    @classmethod
    def open(cls, c, settings: Settings | None = None, *, compose: str = "auto", steps: Steps | None = None) -> "Host":
        """Connect, read the host's facts, and refuse (changing nothing) a host that cannot
        take the operation."""
        settings = settings or Settings.from_context(c)
        conn = remote.connect(c)
        host = cls(conn, settings, "v2", {}, steps)
        host.refresh_facts(compose)
        return host

    def refresh_facts(self, compose: str = "auto") -> None:
        result = run_checked(self.conn, release_commands.preflight(self.ctx), "preflight")
        facts = release_commands.parse_facts(result.stdout)
        problem = host_problem(facts, self.name, compose)
        if problem:
            raise Exit(problem + " Nothing was changed on the server.", code=ExitCode.HOST_NOT_READY)
        self.facts = facts
        self.engine, self.engine_problem = choose_engine(facts, self.settings.engine, self.name)
        self.ctx = self.ctx.with_variant(choose_compose(facts, compose)).with_engine(self.engine)

    @property
    def name(self) -> str:
        return self.conn.original_host

    @property
    def variant(self) -> str:
        return self.ctx.variant

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.http_port}"

    @property
    def absolute_ctx(self) -> HostContext:
        """The context with APP_DIR made absolute (for cron lines and mounts)."""
        return replace(self.ctx, app_dir=absolute_app_dir(self.facts, self.ctx.app_dir))

    @property
    def current_id(self) -> str:
        return Path(self.facts.get("current") or "").name

    @property
    def current_meta(self) -> dict:
        return _json(self.facts.get("current_meta"))

    # --- running commands ----------------------------------------------------------------
    def run(self, command: str, step: str, **kwargs):
        """Run; on failure raise StepFailed with the (redacted) output."""
        return run_checked(self.conn, command, step, secrets=self.settings.secret_values(), **kwargs)

    def probe_run(self, command: str, **kwargs):
        """Run and return the result whatever its exit code (output hidden)."""
        return self.conn.run(command, warn=True, hide=True, **kwargs)

    def in_release(self, release_id: str, command: str) -> str:
        return release_commands.in_release(self.ctx, release_id, command)

    def put_text(self, text: str, remote_path: str) -> None:
        self.conn.put(io.BytesIO(text.encode()), remote=remote_path)

    def redact(self, text: str) -> str:
        return redact(text, self.settings.secret_values())

    # --- audit and lock ------------------------------------------------------------------
    def record(self, action: str, result: str, *, release: str = "", duration: float = 0.0, detail: str = "",
               step: str = "", reason: str = "", commit: str = "") -> None:
        """One audit line; for a deploy or rollback also the operator's alert, in the same round
        trip (`step`/`reason`: where it failed; `commit`: the release's, when not this checkout's).
        A failed alert is a warning, never an error."""
        entry = {"time": now_iso(), **identity(), "host": self.name, "action": action, "result": result,
                 "release": release, "duration_s": round(duration, 1)}
        if detail:
            entry["detail"] = " ".join(self.redact(detail).split())[-300:]
        command = audit_commands.append(self.ctx, entry)
        if action in NOTIFIED_ACTIONS:
            who = f"{entry['user']}@{entry['machine']}" + (f" (CI {entry['ci_run']})" if entry.get("ci_run") else "")
            message = notify_commands.operation_message(
                action, result, release=release, commit=commit or entry.get("commit", ""), who=who, seconds=duration,
                step=step, reason=reason, put_back=self.put_back_release)
            command += "; " + notify_commands.send(self.ctx, self.redact(message))
        if self._deferred is not None:  # inside `locked`: sent with the lock's release (one round trip)
            self._deferred.append((action, command))
            return
        ran = self.conn.run(command, hide=True, warn=True)
        if action in NOTIFIED_ACTIONS and not ran.ok:
            self._alert_not_sent(action, ran.stderr, ran.exited)

    def _alert_not_sent(self, action: str, stderr: str, exited: int) -> None:
        why = "; ".join(self.redact(stderr).strip().splitlines()[-2:]) or f"exit {exited}"
        print(f"Warning: the {action} alert was not sent from {self.name}: {why}", flush=True)

    @contextmanager
    def audited(self, action: str, release: str = ""):
        """One audit line when the block ends: ok, or failed with the reason, and for a deploy or
        rollback the operator's alert (`record`). The block may set `release`, `result`, `detail`
        and `commit` (the release's, for the alert) on the dict it is given."""
        outcome = {"release": release}
        started = time.monotonic()
        self.put_back_release = ""
        try:
            yield outcome
        except BaseException as exc:
            detail = outcome.get("detail") or getattr(exc, "detail", "") or str(getattr(exc, "message", "") or exc)
            step, reason = failure_kind(exc)
            self.record(action, "failed", release=outcome.get("release", ""), duration=time.monotonic() - started,
                        detail=detail, step=step, reason=reason, commit=outcome.get("commit", ""))
            raise
        self.record(action, outcome.get("result", "ok"), release=outcome.get("release", ""),
                    duration=time.monotonic() - started, detail=outcome.get("detail", ""), commit=outcome.get("commit", ""))

    @contextmanager
    def locked(self, action: str, wait: bool = False, wait_timeout: float = 1800, poll: float = 2.0):
        """Hold the host's lock for the block, or fail at once naming the holder (`wait`: queue)."""
        token = token_source.token_hex(8)
        info = {**identity(), "action": action, "since": now_iso(), "host": self.name, "token": token}
        started = time.monotonic()
        announced = False
        while True:
            out = self.conn.run(lock_commands.acquire(self.ctx, info), hide=True).stdout
            state, holder, liveness = lock_commands.parse_report(out)
            if state == "ACQUIRED":
                break
            holder_text = lock_commands.describe(holder, liveness)
            if liveness == "STALE":
                self.record("lock", "refused", detail=f"stale lock: {holder_text}")
                raise Exit(f"{self.name} is locked by a {holder_text}. Make sure that run is really over, then clear "
                           f"it with `fab -H {self.name} lock.release --force`. Nothing was changed.", code=ExitCode.LOCKED)
            if not wait:
                self.record("lock", "refused", detail=f"{action} refused; held: {holder_text}")
                raise Exit(f"{self.name} is busy: {holder_text}. Wait for it to finish, or queue behind it with "
                           f"`--wait`. Nothing was changed.", code=ExitCode.LOCKED)
            if time.monotonic() - started > wait_timeout:
                self.record("lock", "refused", detail=f"{action} gave up waiting {wait_timeout:.0f}s; held: {holder_text}")
                raise Exit(f"Gave up waiting {wait_timeout:.0f}s for the lock on {self.name}: {holder_text}. "
                           f"Nothing was changed.", code=ExitCode.LOCKED)
            if not announced:
                print(f"Waiting for the lock on {self.name}: {holder_text}", flush=True)
                announced = True
            time.sleep(poll)
        keeper = self.conn.run(lock_commands.keeper(self.ctx, token), hide=True, asynchronous=True)
        self._deferred = []
        try:
            if wait and announced:
                self.refresh_facts(self.variant)  # the host may have changed while we waited
            yield
        finally:
            deferred, self._deferred = self._deferred, None
            # The audit line (and alert) of the operation, then the release: one round trip.
            lines = [f"{{ {command}; }} || echo {ALERT_FAILED}-{action}" for action, command in deferred]
            result = self.conn.run("; ".join([*lines, lock_commands.release(self.ctx, token)]), hide=True, warn=True)
            out = result.stdout
            for action, _ in deferred:
                if f"{ALERT_FAILED}-{action}" in out and action in NOTIFIED_ACTIONS:
                    self._alert_not_sent(action, result.stderr, 1)
            if "NOT-OURS" in out:
                print(f"Note: the lock on {self.name} was force-released during this {action} and is now held by "
                      f"another run; it was left alone.", flush=True)
            try:
                keeper.join()
            except Exception:
                pass

    # --- releases --------------------------------------------------------------------------
    def releases(self) -> tuple[list[tuple[str, dict]], str]:
        out = self.conn.run(release_commands.list_releases(self.ctx), hide=True).stdout
        return release_commands.parse_releases(out)

    def release(self, release_id: str) -> Release:
        """The release's recorded metadata; a clear message when it has none."""
        out = self.conn.run(release_commands.read_meta(self.ctx, release_id), hide=True, warn=True).stdout
        meta = _json(out) if out.strip() != "MISSING" else None
        if not meta or not meta.get("backend_image"):
            why = "has no RELEASE.json" if meta is None else "has an unreadable or incomplete RELEASE.json"
            raise StepFailed("read release", f"release {release_id} on {self.name} {why} (made by an interrupted deploy, "
                                             f"or changed by hand), so its image and assets are unknown. Pick another "
                                             f"release (`fab -H {self.name} releases`) or deploy again.")
        return Release.from_meta(release_id, meta)

    def ensure_image(self, release: Release, step: str = "build backend image") -> None:
        build = sh(compose_commands.build_backend(self.ctx))
        self.run(self.in_release(release.id, release_commands.image_present_or_build(release.image, build)), step, hide=False)

    def probe(self, release: Release) -> None:
        command = self.in_release(release.id, release_commands.probe(release.image, self.base_url, list(release.assets)))
        result = self.probe_run(command)
        for line in result.stdout.splitlines():
            print(f"   {line}")
        if not result.ok:
            out = result.stdout.strip()
            raise StepFailed("health checks", out.splitlines()[-1] if out else result.stderr.strip()[-500:])

    def activate(self, release: Release, *, backend: bool = True, then: str = "") -> None:
        """Move traffic to `release` without dropping requests and prove it with the probe, in one
        round trip (commands/rollout.activation): the API and worker are replaced only when
        `backend` (a dashboard-only release just switches `current` and reloads nginx); `then`
        runs after the checks passed (recording the release). Each step gets its own row."""
        stream = self.steps.remote()
        result = self.conn.run(self.activation_script(release, backend=backend, then=then), warn=True, hide="stderr",
                               out_stream=stream)
        stream.finish(result.ok)
        if not result.ok:
            failed_checks = [line for line in stream.lines if line.startswith("FAIL")]  # the probe's own verdicts
            output = (result.stderr.strip() or "\n".join(stream.lines[-8:]))[-1500:]
            raise StepFailed(stream.current or "activate",
                             self.redact("; ".join(failed_checks) if failed_checks else f"exit {result.exited}: {output}"))

    def prepare_release(self, release: Release, files: list[tuple[str, int, str]],
                        images: list[str]) -> tuple[set[str], list[tuple[str, dict]]]:
        """Send the release's own files (settings, release.yml, RELEASE.json, the alert program) as
        one tar into the lock's 0700 inbox, then lay the release out, unpack them and report which
        of `images` the host has and the kept releases: two round trips. Call inside `locked` (the
        inbox is the lock's)."""
        self.conn.put(io.BytesIO(release_commands.files_archive(files)), remote=f"{self.ctx.inbox}/{release_commands.RELEASE_TAR}")
        out = self.run(release_commands.unpack_release(self.ctx, release.id) + "; " + image_commands.present(images)
                       + "; " + release_commands.list_releases(self.ctx), "prepare release").stdout
        return image_commands.parse_present(out), release_commands.parse_releases(out)[0]

    def start_backend(self, release: Release) -> release_commands.SchemaState:
        """One round trip: build the backend image on the host if it is missing, start Postgres and
        NATS, and read the database's schema state (fails closed: see SchemaState.readable)."""
        stream = self.steps.remote()
        result = self.conn.run(self.start_backend_script(release), warn=True, hide="stderr", out_stream=stream)
        stream.finish(result.ok)
        if not result.ok:
            raise StepFailed(stream.current or "start backend", self.redact(f"exit {result.exited}: {result.stderr.strip()[-1500:]}"))
        return release_commands.parse_schema("\n".join(stream.facts))

    def start_backend_script(self, release: Release) -> str:
        build = release_commands.image_present_or_build(release.image, sh(compose_commands.build_backend(self.ctx)))
        if release.postgres_image:
            build += "\n" + release_commands.image_present_or_build(release.postgres_image,
                                                                      sh(compose_commands.build_postgres(self.ctx)))
        return rollout.start_backend(self.ctx, release.id, build,
                                     release_commands.schema_state(self.ctx, release.id, self.settings.db_wait_seconds))

    def ensure_archive(self) -> None:
        """The WAL archive ready (stanza, first full backup); a failure is a warning, not a failed
        deploy (the database serves as before; `doctor` keeps saying so)."""
        result = self.conn.run(pitr_commands.ensure_stanza(self.ctx), warn=True, hide=True)
        state = release_commands.parse_facts("\n".join(line[len("@@fact "):] for line in result.stdout.splitlines()
                                                       if line.startswith("@@fact "))).get("pitr", "failed")
        for line in result.stdout.splitlines():
            if not line.startswith("@@fact "):
                print(line, flush=True)
        if state != "ok":
            print(f"   WARNING: the WAL archive is not ready ({state}): "
                  + self.redact(" ".join(result.stderr.strip().splitlines()[-2:]) or "no output")
                  + f". Restores to a moment are not possible until it is; `fab -H {self.name} doctor` checks it.", flush=True)

    def activation_script(self, release: Release, *, backend: bool = True, then: str = "") -> str:
        probe = release_commands.probe(release.image, self.base_url, list(release.assets))
        live = self.current_meta
        nginx_same = bool(live.get("stack_fingerprint")) and live.get("stack_fingerprint") == release.meta.get("stack_fingerprint")
        return rollout.activation(self.ctx, release.id, backend=backend, probe=probe, then=then, nginx_same=nginx_same)

    def check_running(self) -> list[str]:
        """What is wrong with the live stack as Docker sees it (nothing: []), in one round trip:
        every service has a running container and none is unhealthy."""
        out = self.conn.run(rollout.running_services(self.ctx), hide=True, warn=True).stdout
        return rollout.stack_problems(out)

    def put_back(self, previous: str, failed: str, marked: bool = True, backend: bool = True) -> str:
        """Put `previous` back (with its own settings) after `failed` did not pass its checks
        (`backend=False`: `failed` changed only the dashboard, so only `current` and nginx go
        back); returns a sentence for the error message."""
        if not previous:
            self.probe_run(sh(rollout.remove_current(self.ctx)))
            return " There is no earlier release to go back to; `current` was removed."
        print(f"   rolling back automatically to {previous}")
        try:
            release = self.release(previous)
            if backend:
                self.ensure_image(release, "rebuild previous image")
            self.activate(release, backend=backend)
        except StepFailed as again:
            return f" Automatic rollback to {previous} ALSO failed ({again.detail}); run `fab -H {self.name} rollback --to {previous}`."
        self.put_back_release = previous
        return f" Release {previous} was put back automatically and is serving" + (f"; {failed} is marked failed." if marked else ".")

    def schema(self, release_id: str) -> release_commands.SchemaState:
        """The database's schema state as seen with `release_id`'s migrations."""
        out = self.probe_run(release_commands.schema_state(self.ctx, release_id, self.settings.db_wait_seconds)).stdout
        return release_commands.parse_schema(out)

    # --- alerts ----------------------------------------------------------------------------
    def install_notify(self, along: str = "", step: str = "install alerts") -> None:
        """Install APP_DIR/bin/tasktracker-notify and its notify.conf (commands/notify.py): one
        command, which can ride along with another (`along`: deploy's prepare), reads what the host
        has; only a file that differs is sent, over SFTP into its 0700/0600 file (notify.conf holds
        the bot token and the webhook URL: never on a command line). Usually nothing is sent."""
        command = notify_commands.prepare_install(self.ctx)
        have = notify_commands.parse_installed(self.run(f"{along} && {command}" if along else command, step).stdout)
        s = self.settings
        conf = notify_commands.conf_text(self.ctx, telegram_api_base_url=s.telegram_api_base_url,
                                         bot_token=s.telegram_bot_token.reveal(), chat_id=s.alert_telegram_chat_id,
                                         webhook_url=s.alert_webhook_url.reveal())
        for path, text in ((notify_commands.script_path(self.ctx), notify_commands.NOTIFY_SCRIPT),
                           (notify_commands.conf_path(self.ctx), conf)):
            if have.get(path) != notify_commands.digest(text):
                self.put_text(text, path)

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
            except StepFailed as failure:  # the set is still made; the WAL archive stays on the host
                print(f"   WARNING: the WAL archive is not copied off-site: {failure.detail}", flush=True)
        result = self.conn.run(sh(backup_commands.run(self.ctx, keep or self.settings.backup_keep, db_only)),
                               warn=True, hide="stdout")
        for line in result.stdout.splitlines():
            if line.startswith("[backup]"):
                print(f"   {line}", flush=True)
        if result.exited == offsite_commands.PUSH_FAILED_EXIT:
            raise StepFailed("off-site copy", self.redact(" ".join(result.stderr.strip().splitlines()[-3:]) or "no output"))
        if not result.ok:
            raise StepFailed("backup", self.redact((result.stderr.strip().splitlines() or ["no output"])[-1]))
        name, manifest = backup_commands.parse_run(result.stdout)
        v = manifest["verification"]
        print(f"   set {name}: verified ({v['tables']} tables, {v['rows']} rows, restore check {v['seconds']}s), "
              f"{sum(manifest['sizes'].values())} bytes, {manifest['duration_s']}s")
        return name

    # --- off-site copies (restic) -------------------------------------------------------------
    def install_offsite(self) -> str:
        """When OFFSITE_REPOSITORY is set: install tasktracker-offsite and its offsite.conf (only a
        file that differs is sent, over SFTP: the password never reaches a command line) and, for an
        SFTP repository, the host's own key. Returns that key's public half ('' otherwise)."""
        s = self.settings
        if not s.offsite_repository:
            return ""
        with_key = offsite_commands.sftp_target(s.offsite_repository) is not None
        pubkey, have = offsite_commands.parse_prepare(
            self.run(offsite_commands.prepare(self.ctx, with_key), "install off-site copies").stdout)
        conf = offsite_commands.conf_text(
            repository=s.offsite_repository, password=s.offsite_password.reveal(),
            aws_access_key_id=s.offsite_aws_access_key_id.reveal(), aws_secret_access_key=s.offsite_aws_secret_access_key.reveal(),
            keep=(s.offsite_keep_daily, s.offsite_keep_weekly, s.offsite_keep_monthly),
            sftp=offsite_commands.sftp_command(s.offsite_repository, self.facts.get("home", "").rstrip("/")))
        sent = []
        for path, text in ((offsite_commands.script_path(self.ctx), offsite_commands.OFFSITE_SCRIPT),
                           (offsite_commands.conf_path(self.ctx), conf)):
            if have.get(path) != offsite_commands.digest(text):
                self.put_text(text, path + ".new")
                sent.append(path)
        self.run(offsite_commands.finish(self.ctx, sent), "install off-site copies")
        return pubkey

    def offsite(self, action: str, *args: str, show: bool = False):
        """Run one action of the host's tasktracker-offsite; the result whatever its exit code
        (`show`: its output streams here as it comes; restic never prints the password)."""
        return self.conn.run(sh(offsite_commands.run(self.ctx, action, *args)), warn=True, hide=not show)

    def backup_sets(self) -> tuple[list[dict], list[str]]:
        return backup_commands.parse_sets(self.conn.run(backup_commands.list_sets(self.ctx), hide=True).stdout)

    def restore_backup(self, set_name: str, *, fresh_database: bool = False, migrate: bool = False) -> None:
        """Restore a set's database and NATS data (backup.restore); a recovery restores into a
        fresh database and migrates it before api and worker start again. On a swarm it scales api and
        worker down and up (`docker service scale`), so it runs on a manager that is the data node."""
        if self.engine == "swarm" and self.engine_problem:
            raise StepFailed("restore", f"on a swarm a restore scales the api and worker services down and up again, which "
                                        f"only a manager can; {self.name} is a worker. Make the data node a manager "
                                        f"(`docker node promote NODE` on the manager) and run the restore there. Nothing was changed")
        start = release_commands.in_current(self.ctx, compose_commands.either(
            self.ctx, lambda ctx: compose_commands.start(ctx, ["nats", "api", "worker"])))
        before = self.before_start(migrate)
        self.run(backup_commands.restore(self.ctx, set_name, f'cd "$HOME" && {start}', fresh_database=fresh_database,
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
        self.refuse_pitr_on_swarm()
        start = release_commands.in_current(self.ctx, compose_commands.either(
            self.ctx, lambda ctx: compose_commands.start(ctx, ["nats", "api", "worker"])))
        script = pitr_commands.restore_to_time(self.ctx, target, f'cd "$HOME" && {start}',
                                               self.before_start(migrate=False))
        result = self.conn.run(script, warn=True)
        if result.exited == pitr_commands.NO_PGBACKREST_EXIT:
            raise StepFailed("restore to a time", "the live release's Postgres image has no pgBackRest; nothing was changed")
        if not result.ok:
            raise StepFailed("restore to a time", self.redact((result.stderr.strip().splitlines() or ["no output"])[-1]))

    def refuse_pitr_on_swarm(self) -> None:
        """The restore-to-a-time scripts stop the Postgres container, which Swarm would start again at
        once on the same volume: refused on a swarm, before anything changes."""
        if self.engine == "swarm":
            raise StepFailed("restore to a time", "restoring to a moment is not available on a swarm yet (Swarm would "
                                                  "restart the stopped Postgres on the volume being restored). Restore a "
                                                  "backup set instead (`backup.restore --name SET`). Nothing was changed")

    def install_wal_offsite(self, stanza: bool = True) -> str:
        """With an SFTP off-site repository: pgBackRest's second repository there (settings, key and
        known host into the volume; stanza; first full backup), so every WAL segment is archived
        off-site too. Returns pitr-offsite=ok|unavailable, or '' when the repository is not SFTP;
        StepFailed says why it could not."""
        s = self.settings
        if not pitr_commands.offsite_repo_path(s.offsite_repository):
            return ""
        conf = f"{self.ctx.app_dir}/shared/pgbackrest-offsite.conf"
        self.run(sh(["install", "-m", "600", "/dev/null", conf + ".new"]), "off-site WAL archive")
        self.put_text(pitr_commands.offsite_conf(s.offsite_repository, s.offsite_password.reveal()), conf + ".new")
        self.run(sh(["mv", "-f", conf + ".new", conf]), "off-site WAL archive")
        result = self.conn.run(pitr_commands.install_offsite(s.offsite_repository, conf, self.ctx.container("postgres"), stanza),
                               warn=True, hide=True)
        if not result.ok:
            raise StepFailed("off-site WAL archive", self.redact((result.stderr.strip().splitlines() or ["no output"])[-1]))
        return [line for line in result.stdout.splitlines() if line.startswith("pitr-offsite=")][-1]

    def restore_wal_offsite(self, target: str, *, migrate: bool) -> str:
        """recover: the database to the last WAL archived off-site (or `target`, UTC), after the
        set was restored; says what the database now holds. With no off-site archive yet, the set's
        data stays; a failed restore puts the set's data back and, unless `target` was asked for,
        only warns (StepFailed when it was)."""
        self.refuse_pitr_on_swarm()
        self.install_wal_offsite(stanza=False)  # the stanza follows the restored cluster
        start = release_commands.in_current(self.ctx, compose_commands.either(
            self.ctx, lambda ctx: compose_commands.start(ctx, ["nats", "api", "worker"])))
        before = self.before_start(migrate)
        result = self.conn.run(pitr_commands.restore_from_offsite(self.ctx, target, before, f'cd "$HOME" && {start}'),
                               warn=True, hide="stderr")
        said = [line[len("[recover] "):] for line in result.stderr.splitlines() if line.startswith("[recover] ")]
        reason = self.redact("; ".join(said) or (result.stderr.strip().splitlines() or ["no output"])[-1])
        if result.exited == pitr_commands.NO_OFFSITE_ARCHIVE_EXIT and not target:
            print("   the off-site WAL archive has no backup yet: the database holds the set's data; "
                  f"`fab -H {self.name} backup.offsite.init` archives this host's WAL off-site from now on")
            return "no off-site WAL archive yet"
        if result.exited == pitr_commands.PUT_BACK_FAILED_EXIT or (not result.ok and target):
            raise StepFailed("off-site WAL archive", reason)
        if not result.ok:
            print(f"   WARNING: the off-site WAL could not be restored ({reason}); the database holds the set's data")
            return "the off-site WAL could NOT be restored (the set's data)"
        return f"the database at {target + ' UTC' if target else 'the last WAL archived off-site'}"

    # --- the current release's stack ---------------------------------------------------------
    def on_current(self, argv_for, *, what: str, pty: bool = False, hide=False):
        """Run `argv_for(ctx)` (a Compose argv builder, or one that builds a shell line) in the
        current release."""
        built = argv_for(self.ctx)
        command = release_commands.in_current(self.ctx,
                                              built if isinstance(built, str) else sh(built))
        result = self.conn.run(command, warn=True, hide=hide, pty=pty, **({"in_stream": None} if pty else {}))
        if result.exited == release_commands.NO_RELEASE_EXIT:
            raise Exit(f"{self.name} has no release yet (nothing at {self.ctx.current_link}), so there is nothing to "
                       f"{what}. Deploy one first: `fab -H {self.name} deploy`.", code=ExitCode.HOST_NOT_READY)
        if not result.ok:
            raise Exit(f"`{what}` failed on {self.name} (exit {result.exited}); its output is above.",
                       code=result.exited or ExitCode.FAILED)
        return result

    # --- images ---------------------------------------------------------------------------
    def images_present(self, images: list[str]) -> set[str]:
        return image_commands.parse_present(self.conn.run(image_commands.present(images), hide=True).stdout)

    def ship_images(self, images: list[str], report_every: float = 3.0) -> int:
        """Stream `docker save | gzip` from this machine into the host's `docker load` over the
        connection's own SSH trust; prints progress; returns the compressed bytes sent."""
        return ship_images_to([self], images, report_every)


def ship_images_to(hosts: list[Host], images: list[str], report_every: float = 3.0) -> int:
    """One `docker save | gzip` on this machine, streamed into `docker load` on every host at once
    (over each connection's own SSH trust): several nodes cost one save and one compression, and
    their loads run side by side. Prints progress; returns the compressed bytes sent to each."""
    names = ", ".join(host.name for host in hosts)
    save = subprocess.Popen(image_commands.save(images), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    gzip = subprocess.Popen(["gzip", "-1"], stdin=save.stdout, stdout=subprocess.PIPE)
    save.stdout.close()
    loads = [subprocess.Popen(image_commands.ssh_load(remote.ssh_argv(host.conn), f"{host.conn.user}@{host.conn.host}"),
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for host in hosts]
    receiving = list(loads)
    sent, started, last = 0, time.monotonic(), time.monotonic()
    try:
        while receiving and (chunk := gzip.stdout.read(1 << 20)):
            for load in list(receiving):
                try:
                    load.stdin.write(chunk)
                except BrokenPipeError:  # that load ended early: its exit status says why
                    receiving.remove(load)
            sent += len(chunk)
            if time.monotonic() - last > report_every:
                last = time.monotonic()
                print(f"   shipped {sent / 1e6:.0f} MB ({sent / 1e6 / (last - started):.1f} MB/s)", flush=True)
    finally:
        for load in loads:
            try:
                load.stdin.close()
            except BrokenPipeError:
                pass
    if not receiving:  # every load ended early: stop the save instead of waiting on a full pipe
        gzip.kill()
        save.kill()
    errors = []
    for load in loads:  # stdin is closed: read what each said, then its exit status
        load.stdout.read()
        errors.append(load.stderr.read())
        load.wait()
    gzip.stdout.close()
    gzip.wait()
    save_err = save.communicate()[1]
    failed = [(host, err) for host, load, err in zip(hosts, loads, errors, strict=True) if load.returncode]
    if save.returncode or gzip.returncode or failed:
        host, err = failed[0] if failed else (hosts[0], b"")
        why = (save_err or err).decode(errors="replace").strip()[-500:]
        raise StepFailed("ship images", f"sending {', '.join(images)} to {host.name} failed: {why}")
    print(f"   shipped {', '.join(images)} to {names}: {sent / 1e6:.1f} MB compressed in "
          f"{time.monotonic() - started:.1f}s")
    return sent
