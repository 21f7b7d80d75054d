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
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from invoke import Exit

from . import remote
from .commands import audit as audit_commands
from .commands import lock as lock_commands
from .commands import notify as notify_commands
from .commands import release as release_commands
from .commands import schema as schema_commands
from .commands import sh
from .commands.context import HostContext
from .compose_engine import ComposeEngine
from .host_data import DataOperations
from .exits import ExitCode
from .identity import identity, now_iso
from .preflight import absolute_app_dir, choose_compose, choose_engine, host_problem
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
        return cls(id=release_id, image=meta.get("backend_image", ""),
                   assets=tuple(meta.get("assets", [])),
                   previous=meta.get("previous", ""), result=meta.get("result", ""),
                   meta=dict(meta))

    @property
    def commit(self) -> str:
        return self.meta.get("commit", "?")

    @property
    def postgres_image(self) -> str:
        """The Postgres image the release built and pins ("" for one that pulls compose.yml's)."""
        return self.meta.get("postgres_image", "")

    def recorded(self, result: str, **extra) -> dict:
        """The metadata to write for this release with a new result."""
        return {**self.meta, "release": self.id, "backend_image": self.image,
                "assets": list(self.assets),
                "previous": self.previous, "result": result, **extra}


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
EXIT_REASONS = {ExitCode.FAILED: "", ExitCode.USAGE: "bad input or settings",
                ExitCode.HOST_NOT_READY: "host not ready",
                ExitCode.LOCKED: "locked", ExitCode.REFUSED: "refused to protect data"}


def failure_kind(exc: BaseException) -> tuple[str, str]:
    """(step, reason) an operation stopped at, for its alert: a step name or a kind of refusal,
    never the failure's detail (that can quote command output)."""
    if isinstance(exc, StepFailed):
        return exc.step, ""
    if isinstance(exc, Exit):
        return "", EXIT_REASONS.get(exc.code, f"exit {exc.code}")
    return "", "interrupted" if isinstance(exc, KeyboardInterrupt) else type(exc).__name__


class Host(ComposeEngine, DataOperations):
    """A connected host, its facts, and the operations every task shares."""

    def __init__(self, conn, settings: Settings, variant: str, facts: dict[str, str],
                 steps: Steps | None = None):
        self.conn = conn
        self.settings = settings
        self.facts = facts
        self.ctx = HostContext(settings.app_dir, settings.compose_project, variant,
                               managed_db=settings.managed_db)
        self.steps = steps or Steps(f"{conn.original_host}", settings.secret_values())
        self.engine, self.engine_problem = "compose", None  # refresh_facts: choose_engine
        self.put_back_release = ""  # set by put_back when it succeeded (the alert says so)
        self.recovering = False  # recover: the entry is in maintenance; probes go from inside nginx
        # audit lines waiting for the lock's release
        self._deferred: list[tuple[str, str]] | None = None

    # --- connecting ----------------------------------------------------------------------
    @classmethod
    def open(cls, c, settings: Settings | None = None, *, compose: str = "auto",
             steps: Steps | None = None) -> "Host":
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
            raise Exit(problem + " Nothing was changed on the server.",
                       code=ExitCode.HOST_NOT_READY)
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

    def refuse_while_recovering(self, action: str) -> None:
        """A `recover` that did not finish leaves the host in maintenance with a database that may
        be incomplete: `action` would serve or change it; refused, changing nothing."""
        set_name = self.facts.get("recovering", "")
        if set_name:
            raise Exit(f"{self.name} is in the middle of a recovery (off-site set {set_name}; "
                       "every client gets 503 \"recovering\" and the database may be incomplete): "
                       f"`{action}` would serve or change it. Finish the recovery first: "
                       f"`fab -H {self.name} recover --from-offsite` resumes it. Nothing was "
                       "changed.", code=ExitCode.HOST_NOT_READY)

    # --- running commands ----------------------------------------------------------------
    def run(self, command: str, step: str, **kwargs):
        """Run; on failure raise StepFailed with the (redacted) output."""
        return run_checked(self.conn, command, step, secrets=self.settings.secret_values(),
                           **kwargs)

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
    def record(self, action: str, result: str, *, release: str = "", duration: float = 0.0,
               detail: str = "",
               step: str = "", reason: str = "", commit: str = "") -> None:
        """One audit line; for a deploy or rollback also the operator's alert, in the same round
        trip (`step`/`reason`: where it failed; `commit`: the release's, when not this checkout's).
        A failed alert is a warning, never an error."""
        entry = {"time": now_iso(), **identity(), "host": self.name, "action": action,
                 "result": result,
                 "release": release, "duration_s": round(duration, 1)}
        if detail:
            entry["detail"] = " ".join(self.redact(detail).split())[-300:]
        command = audit_commands.append(self.ctx, entry)
        if action in NOTIFIED_ACTIONS:
            who = f"{entry['user']}@{entry['machine']}" + (f" (CI {entry['ci_run']})"
                                                           if entry.get("ci_run") else "")
            message = notify_commands.operation_message(
                action, result, release=release, commit=commit or entry.get("commit", ""), who=who,
                seconds=duration,
                step=step, reason=reason, put_back=self.put_back_release)
            command += "; " + notify_commands.send(self.ctx, self.redact(message))
        # inside `locked`: sent with the lock's release (one round trip)
        if self._deferred is not None:
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
            detail = outcome.get("detail") or getattr(exc, "detail",
                                                      "") or str(getattr(exc, "message", "") or exc)
            step, reason = failure_kind(exc)
            self.record(action, "failed", release=outcome.get("release", ""),
                        duration=time.monotonic() - started,
                        detail=detail, step=step, reason=reason, commit=outcome.get("commit", ""))
            raise
        self.record(action, outcome.get("result", "ok"), release=outcome.get("release", ""),
                    duration=time.monotonic() - started, detail=outcome.get("detail", ""),
                    commit=outcome.get("commit", ""))

    @contextmanager
    def locked(self, action: str, wait: bool = False, wait_timeout: float = 1800,
               poll: float = 2.0):
        """Hold the host's lock for the block, or fail at once naming the holder (`wait`: queue)."""
        token = token_source.token_hex(8)
        info = {**identity(), "action": action, "since": now_iso(), "host": self.name,
                "token": token}
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
                raise Exit(f"{self.name} is locked by a {holder_text}. Make sure that run is "
                           "really over, then clear "
                           f"it with `fab -H {self.name} lock.release --force`. Nothing was "
                           "changed.", code=ExitCode.LOCKED)
            if not wait:
                self.record("lock", "refused", detail=f"{action} refused; held: {holder_text}")
                raise Exit(f"{self.name} is busy: {holder_text}. Wait for it to finish, or queue "
                           f"behind it with `--wait`. Nothing was changed.", code=ExitCode.LOCKED)
            if time.monotonic() - started > wait_timeout:
                self.record("lock", "refused", detail=f"{action} gave up waiting "
                                                      f"{wait_timeout:.0f}s; held: {holder_text}")
                raise Exit(f"Gave up waiting {wait_timeout:.0f}s for the lock on {self.name}: "
                           f"{holder_text}. Nothing was changed.", code=ExitCode.LOCKED)
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
            lines = [f"{{ {command}; }} || echo {ALERT_FAILED}-{action}" for action,
                     command in deferred]
            result = self.conn.run("; ".join([*lines, lock_commands.release(self.ctx, token)]),
                                   hide=True, warn=True)
            out = result.stdout
            for action, _ in deferred:
                if f"{ALERT_FAILED}-{action}" in out and action in NOTIFIED_ACTIONS:
                    self._alert_not_sent(action, result.stderr, 1)
            if "NOT-OURS" in out:
                print(f"Note: the lock on {self.name} was force-released during this {action} and "
                      f"is now held by another run; it was left alone.", flush=True)
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
        out = self.conn.run(release_commands.read_meta(self.ctx, release_id), hide=True,
                            warn=True).stdout
        meta = _json(out) if out.strip() != "MISSING" else None
        if not meta or not meta.get("backend_image"):
            why = ("has no RELEASE.json" if meta is None else "has an unreadable or incomplete "
                                                              "RELEASE.json")
            raise StepFailed("read release", f"release {release_id} on {self.name} {why} (made by "
                                             "an interrupted deploy, "
                                             "or changed by hand), so its image and assets are "
                                             "unknown. Pick another "
                                             f"release (`fab -H {self.name} releases`) or deploy "
                                             "again.")
        return Release.from_meta(release_id, meta)

    def schema(self, release_id: str) -> schema_commands.SchemaState:
        """The database's schema state as seen with `release_id`'s migrations."""
        out = self.probe_run(schema_commands.schema_state(self.ctx, release_id,
                                                           self.settings.db_wait_seconds)).stdout
        return schema_commands.parse_schema(out)

    # --- alerts ----------------------------------------------------------------------------
    def install_notify(self, along: str = "", step: str = "install alerts") -> None:
        """Install APP_DIR/bin/tasktracker-notify and its notify.conf (commands/notify.py): one
        command, which can ride along with another (`along`: deploy's prepare), reads what the host
        has; only a file that differs is sent, over SFTP into its 0700/0600 file (notify.conf holds
        the bot token and the webhook URL: never on a command line). Usually nothing is sent."""
        command = notify_commands.prepare_install(self.ctx)
        have = notify_commands.parse_installed(self.run(f"{along} && {command}" if along
                                                        else command, step).stdout)
        s = self.settings
        conf = notify_commands.conf_text(self.ctx, telegram_api_base_url=s.telegram_api_base_url,
                                         bot_token=s.telegram_bot_token.reveal(),
                                         chat_id=s.alert_telegram_chat_id,
                                         webhook_url=s.alert_webhook_url.reveal())
        for path, text in ((notify_commands.script_path(self.ctx), notify_commands.NOTIFY_SCRIPT),
                           (notify_commands.conf_path(self.ctx), conf)):
            if have.get(path) != notify_commands.digest(text):
                self.put_text(text, path)

    # --- the current release's stack ---------------------------------------------------------
    def on_current(self, argv_for, *, what: str, pty: bool = False, hide=False):
        """Run `argv_for(ctx)` (a Compose argv builder, or one that builds a shell line) in the
        current release."""
        built = argv_for(self.ctx)
        command = release_commands.in_current(self.ctx,
                                              built if isinstance(built, str) else sh(built))
        result = self.conn.run(command, warn=True, hide=hide, pty=pty,
                               **({"in_stream": None} if pty else {}))
        if result.exited == release_commands.NO_RELEASE_EXIT:
            raise Exit(f"{self.name} has no release yet (nothing at {self.ctx.current_link}), so "
                       "there is nothing to "
                       f"{what}. Deploy one first: `fab -H {self.name} deploy`.",
                       code=ExitCode.HOST_NOT_READY)
        if not result.ok:
            raise Exit(f"`{what}` failed on {self.name} (exit {result.exited}); its output is "
                       "above.",
                       code=result.exited or ExitCode.FAILED)
        return result
