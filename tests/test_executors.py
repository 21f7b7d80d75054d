"""The host layer against a fake connection (Fabric's MockRemote idea): `tasks.host.Host` built
directly on a FakeConnection that answers commands from canned results and records every command,
for the branches real hosts rarely reach (a rollback that fails too, a lock taken over, a stale
lock, ...). Plus the pure deciders: pruning, the rollback target, the schema guard, and what a
failed migration did."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import re
import sys
import shlex
from pathlib import Path

import pytest
from invoke import Exit
from invoke.exceptions import UnexpectedExit
from invoke.runners import Result

import tasks.backup as backup_tasks
import tasks.guards as guards
import tasks.localhost as localhost
import tasks.pipeline as pipeline
from tasks.commands import fingerprint as fingerprints
import tasks.host as host_module
import tasks.tls as tls_tasks
from tasks import remote
from tasks.commands import budget
from tasks.commands import images as image_commands
from tasks.commands import schema as schema_commands
from tasks.commands import lock as lock_commands
from tasks.commands import notify as notify_commands
from tasks.commands import cluster as cluster_commands
from tasks.commands.schema import SchemaState
from tasks.release_env import env_values
from tasks.commands.fingerprint import SENT_PATHS, release_fingerprint
from tasks.commands.release import releases_to_prune
from tasks.commands.schema import migration_failure_detail
from tasks.settings import PROJECT_ROOT
from tasks.exits import ExitCode
from tasks.host import Host, Release
from tasks.rollback import choose_target, schema_problem
from tasks.settings import Settings
from tasks.steps import StepFailed

# --- the fake connection ---------------------------------------------------------------------------


def ok(stdout: str = "") -> tuple[str, str, int]:
    return stdout, "", 0


def fail(stderr: str, exited: int = 1, stdout: str = "") -> tuple[str, str, int]:
    return stdout, stderr, exited


class FakePromise:
    def __init__(self, result: Result):
        self.result = result
        self.joined = False

    def join(self) -> Result:
        self.joined = True
        return self.result


class FakeConnection:
    """Stands in for fabric.Connection. `on(pattern, *answers)`: commands containing `pattern` (or
    matching it, for a compiled regex) get `answers` in order, the last one repeating; the first
    matching rule wins; anything else succeeds with no output. Like Fabric, a failing command raises
    UnexpectedExit unless run with warn=True."""

    def __init__(self, host: str = "vps"):
        self.original_host = host
        self.rules: list[tuple[str | re.Pattern, list]] = []
        self.calls: list[tuple[str, dict]] = []
        self.uploads: list[tuple[str, bytes]] = []
        self.files: dict[str, bytes] = {}
        self.promises: list[FakePromise] = []

    def on(self, pattern: str | re.Pattern, *answers: tuple[str, str, int]) -> "FakeConnection":
        self.rules.append((pattern, list(answers)))
        return self

    @property
    def commands(self) -> list[str]:
        return [command for command, _ in self.calls]

    def _answer(self, command: str) -> tuple[str, str, int]:
        for pattern, answers in self.rules:
            if pattern.search(command) if isinstance(pattern, re.Pattern) else pattern in command:
                return answers.pop(0) if len(answers) > 1 else answers[0]
        return ok()

    def run(self, command: str, *, warn: bool = False, asynchronous: bool = False, **kwargs):
        self.calls.append((command, {"warn": warn, "asynchronous": asynchronous, **kwargs}))
        stdout, stderr, exited = self._answer(command)
        if kwargs.get("out_stream") is not None:  # like Invoke: the output is shown through it, and kept
            kwargs["out_stream"].write(stdout)
        result = Result(stdout=stdout, stderr=stderr, exited=exited, command=command)
        if exited and not warn:
            raise UnexpectedExit(result)
        if asynchronous:
            self.promises.append(FakePromise(result))
            return self.promises[-1]
        return result

    def put(self, local, remote: str | None = None, **kwargs) -> None:
        data = local.getvalue() if hasattr(local, "getvalue") else Path(local).read_bytes()
        self.uploads.append((remote, data))

    def get(self, remote: str, local=None, **kwargs) -> None:
        data = self.files[remote]
        if hasattr(local, "write"):
            local.write(data)
        else:
            Path(local).write_bytes(data)


ENV = {
    "POSTGRES_PASSWORD": "pg-Secret-7f3a9",
    "NATS_PASSWORD": "nats-Secret-1b2c",
    "TELEGRAM_BOT_TOKEN": "123456:tg-Secret-token",
    "OPENAI_API_KEY": "sk-openai-Secret-99",
    "APP_URL": "https://tasks.example.com",
    "WEBAPP_URL": "https://tasks.example.com/app",
    "DOMAIN": "tasks.example.com",
}
FACTS = {"user": "deploy", "home": "/home/deploy", "docker": "27.3.1", "compose_v2": "2.29.7", "rsync": "/usr/bin/rsync",
         "current": "releases/r2", "current_meta": ""}
PREFLIGHT_OUT = "user=deploy\nhome=/home/deploy\ndocker=27.3.1 \ncompose_v2=2.29.7\nrsync=/usr/bin/rsync\ncurrent=releases/r2\ncurrent_meta=\n"
WHO = {"user": "alice", "machine": "laptop", "commit": "ab12cd3"}
BOB = {"action": "deploy", "commit": "cd34ef5", "host": "vps", "machine": "ci-runner", "since": "2026-11-25T21:30:00+00:00",
       "token": "0123456789abcdef", "user": "bob"}
BOB_TEXT = "deploy by bob@ci-runner since 2026-11-25T21:30:00+00:00 (commit cd34ef5)"
R1 = {"release": "r1", "backend_image": "tasktracker-backend:11aa22bb33cc", "assets": ["/assets/index-1.js"], "previous": "",
      "result": "ok", "commit": "77aa001"}

ACQUIRE, KEEPER, UNLOCK = "echo ACQUIRED", "exec cat > /dev/null", "echo NOT-OURS"


def held(liveness: str) -> tuple[str, str, int]:
    return ok(f"HELD\n{json.dumps(BOB, sort_keys=True)}\n\n{liveness}\n")


class Clock:
    """Replaces the `time` module tasks.host uses: time moves only when it sleeps."""

    def __init__(self):
        self.now = 0.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture(autouse=True)
def fixed_identity(monkeypatch):
    monkeypatch.setattr(host_module, "identity", lambda: dict(WHO))
    monkeypatch.setattr(host_module, "now_iso", lambda: "2026-11-25T21:40:00+00:00")


@pytest.fixture
def clock(monkeypatch):
    fake = Clock()
    monkeypatch.setattr(host_module, "time", fake)
    return fake


def settings(**env) -> Settings:
    return Settings.load(environ={**ENV, **env}, env_file="/nonexistent")


def make_host(conn: FakeConnection, **env) -> Host:
    return Host(conn, settings(**env), "v2", dict(FACTS))


def audit_entries(conn: FakeConnection) -> list[dict]:
    """The JSON lines the host appended to its audit log (a deploy's or rollback's line rides with
    its alert in one command)."""
    entries = []
    for command in conn.commands:
        if ">> tasktracker/audit.log" in command:
            entries.append(json.loads(next(w for w in shlex.split(command) if w.startswith('{"'))))
    return entries


def token_of(conn: FakeConnection) -> str:
    acquire = next(c for c in conn.commands if ACQUIRE in c)
    return re.search(r'"token": "([0-9a-f]{16})"', acquire).group(1)


# --- put_back ------------------------------------------------------------------------------------


def test_put_back_without_an_earlier_release_removes_current():
    conn = FakeConnection()
    assert make_host(conn).put_back("", "r2") == " There is no earlier release to go back to; `current` was removed."
    assert conn.commands == ["rm -f tasktracker/current"]


def _activation(conn: FakeConnection) -> FakeConnection:
    return (conn.on("else echo MISSING", ok(json.dumps(R1)))
            .on("docker image inspect", ok("image tasktracker-backend:11aa22bb33cc already built\n")))


def marks(*steps: str) -> str:
    """What an activation script prints as it reaches each step (steps.RemoteSteps reads it)."""
    return "".join(f"@@step {step} {100 + n}.0\n" for n, step in enumerate(steps))


ACTIVATION = "@@step replace api (new beside old)"  # in every backend activation script
ALL_STEPS = ("replace api (new beside old)", "restart worker (graceful)", "switch current and reload nginx", "health checks")


def test_put_back_when_the_previous_release_fails_too(capsys):
    conn = _activation(FakeConnection()).on(ACTIVATION, fail(
        "the new api container did not become healthy (unhealthy); the old one kept serving", stdout=marks(ALL_STEPS[0])))
    host = make_host(conn)
    message = host.put_back("r1", "r2")
    assert message == (" Automatic rollback to r1 ALSO failed (exit 1: the new api container did not become healthy (unhealthy); "
                       "the old one kept serving); run `fab -H vps rollback --to r1`.")
    assert "rolling back automatically to r1" in capsys.readouterr().out
    assert (host.steps.rows[-1][0], host.steps.rows[-1][2]) == ("replace api (new beside old)", "FAILED")
    script = conn.commands[-1]  # current is switched only after the api step: it was not reached
    assert script.index(ACTIVATION) < script.index("ln -sfn releases/r1")


def test_put_back_when_the_previous_release_has_no_metadata():
    conn = FakeConnection().on("else echo MISSING", ok("MISSING\n"))
    message = make_host(conn).put_back("r1", "r2")
    assert message.startswith(" Automatic rollback to r1 ALSO failed (release r1 on vps has no RELEASE.json")
    assert message.endswith("; run `fab -H vps rollback --to r1`.")
    assert len(conn.commands) == 1


def test_put_back_when_the_previous_release_fails_its_health_checks():
    conn = _activation(FakeConnection()).on(ACTIVATION, fail("", stdout=marks(*ALL_STEPS) + "ok   /nginx-health\n"
                                                                         "FAIL /api/health: 503 database down\n"))
    assert make_host(conn).put_back("r1", "r2", marked=False) == (
        " Automatic rollback to r1 ALSO failed (FAIL /api/health: 503 database down); run `fab -H vps rollback --to r1`.")


@pytest.mark.parametrize("marked, ending", [(True, "; r2 is marked failed."), (False, ".")])
def test_put_back_puts_the_previous_release_back(marked, ending, capsys):
    conn = _activation(FakeConnection()).on(ACTIVATION, ok(marks(*ALL_STEPS) + "api: 0123456789ab healthy; replaced 1 old "
                                                            "container(s)\nok   /nginx-health\nok   /api/health\n"))
    host = make_host(conn)
    assert host.put_back("r1", "r2", marked) == " Release r1 was put back automatically and is serving" + ending
    assert [c.split("\n")[0][:40] for c in conn.commands][:2] == [c[:40] for c in (
        "if [ -f tasktracker/releases/r1/RELEASE.json ]; then cat", "cd tasktracker/releases/r1 && if docker image inspect")]
    script = conn.commands[2]  # one round trip: api, worker, nginx check, switch, reload, probe, in this order
    order = [ACTIVATION, "--no-recreate --scale", "up -d --no-deps worker", "@@step restart worker", "nginx -t -q",
             "ln -sfn releases/r1 tasktracker/current.tmp", "kill -HUP 1", "@@step health checks", "/probe.py"]
    assert [script.index(part) for part in order] == sorted(script.index(part) for part in order)
    assert len(conn.commands) == 3
    assert [row[0] for row in host.steps.rows] == list(ALL_STEPS)
    out = capsys.readouterr().out
    assert "-> replace api (new beside old)" in out and "   ok   /api/health" in out and "@@step" not in out


def test_a_dashboard_only_put_back_leaves_the_api_alone():
    conn = _activation(FakeConnection()).on("@@step switch current", ok(marks(*ALL_STEPS[2:])))
    assert make_host(conn).put_back("r1", "r2", backend=False).startswith(" Release r1 was put back automatically")
    script = conn.commands[-1]
    assert len(conn.commands) == 2 and "docker image inspect" not in conn.commands[0]  # no image check either
    assert "--scale" not in script and "up -d --no-deps worker" not in script
    assert 'docker exec "$ngx" nginx -t -q -c /srv/app/releases/r1/nginx/nginx.conf' in script
    assert 'docker kill --signal HUP "$ngx"' in script


# --- release metadata ------------------------------------------------------------------------------


@pytest.mark.parametrize("output, why", [
    ("MISSING\n", "has no RELEASE.json"),
    ('{"backend_image": "tasktracker-back', "has an unreadable or incomplete RELEASE.json"),
    ('{"release": "r9", "result": "deploying"}\n', "has an unreadable or incomplete RELEASE.json"),
    ("[1, 2]\n", "has an unreadable or incomplete RELEASE.json"),
], ids=["missing", "truncated", "no image", "not an object"])
def test_release_without_usable_metadata_is_a_clear_step_failure(output, why):
    conn = FakeConnection().on("else echo MISSING", ok(output))
    with pytest.raises(StepFailed) as failure:
        make_host(conn).release("r9")
    assert failure.value.step == "read release"
    assert failure.value.detail == (f"release r9 on vps {why} (made by an interrupted deploy, or changed by hand), so its image "
                                    f"and assets are unknown. Pick another release (`fab -H vps releases`) or deploy again.")


def test_release_reads_its_metadata():
    conn = FakeConnection().on("else echo MISSING", ok(json.dumps(R1) + "\n"))
    release = make_host(conn).release("r1")
    assert release == Release("r1", "tasktracker-backend:11aa22bb33cc", ("/assets/index-1.js",), "", "ok")
    assert release.commit == "77aa001"
    assert release.recorded("failed", failure="x") == {**R1, "result": "failed", "failure": "x"}
    assert conn.commands == ["if [ -f tasktracker/releases/r1/RELEASE.json ]; then cat tasktracker/releases/r1/RELEASE.json; "
                             "else echo MISSING; fi"]


# --- the lock ------------------------------------------------------------------------------------


def test_locked_acquires_and_releases_with_the_same_token():
    conn = FakeConnection().on(ACQUIRE, ok("ACQUIRED\n")).on(UNLOCK, ok("RELEASED\n"))
    host = make_host(conn)
    with host.locked("deploy"):
        conn.run("echo body")
    token = token_of(conn)
    assert conn.commands[1:] == [lock_commands.keeper(host.ctx, token), "echo body", lock_commands.release(host.ctx, token)]
    info = json.loads(next(w for w in shlex.split(conn.commands[0]) if w.startswith("{")))
    assert info == {**WHO, "action": "deploy", "since": "2026-11-25T21:40:00+00:00", "host": "vps", "token": token}
    assert conn.calls[1][1]["asynchronous"] is True and conn.promises[0].joined
    assert audit_entries(conn) == []


def test_locked_releases_when_the_block_fails():
    conn = FakeConnection().on(ACQUIRE, ok("ACQUIRED\n")).on(UNLOCK, ok("RELEASED\n"))
    host = make_host(conn)
    with pytest.raises(StepFailed):
        with host.locked("deploy"):
            raise StepFailed("migrate database", "exit 1")
    assert conn.commands[-1] == lock_commands.release(host.ctx, token_of(conn))


@pytest.mark.parametrize("liveness", ["ALIVE", "STARTING"])
def test_locked_refuses_at_once_when_held(liveness):
    conn = FakeConnection().on(ACQUIRE, held(liveness))
    with pytest.raises(Exit) as refused:
        with make_host(conn).locked("rollback"):
            pytest.fail("the block ran without the lock")
    assert refused.value.code == ExitCode.LOCKED == 4
    assert refused.value.message == (f"vps is busy: {BOB_TEXT}. Wait for it to finish, or queue behind it with `--wait`. "
                                     "Nothing was changed.")
    [entry] = audit_entries(conn)
    assert (entry["action"], entry["result"], entry["detail"]) == ("lock", "refused", f"rollback refused; held: {BOB_TEXT}")
    assert len(conn.commands) == 2  # acquire, audit: no keeper, no release


def test_locked_refuses_a_stale_lock_and_says_how_to_clear_it():
    conn = FakeConnection().on(ACQUIRE, held("STALE"))
    with pytest.raises(Exit) as refused:
        with make_host(conn).locked("deploy", wait=True):
            pytest.fail("the block ran without the lock")
    assert refused.value.code == ExitCode.LOCKED
    assert refused.value.message == (f"vps is locked by a {BOB_TEXT} -- its holder is gone (stale lock). Make sure that run is "
                                     "really over, then clear it with `fab -H vps lock.release --force`. Nothing was changed.")
    [entry] = audit_entries(conn)
    assert (entry["result"], entry["detail"]) == ("refused", f"stale lock: {BOB_TEXT} -- its holder is gone (stale lock)")


def test_locked_waits_then_acquires_and_reads_the_host_again(clock, capsys):
    conn = (FakeConnection().on(ACQUIRE, held("ALIVE"), held("ALIVE"), ok("ACQUIRED\n"))
            .on('echo "user=$(id -un)"', ok(PREFLIGHT_OUT)).on(UNLOCK, ok("RELEASED\n")))
    host = make_host(conn)
    with host.locked("deploy", wait=True, poll=2.0):
        conn.run("echo body")
    assert clock.sleeps == [2.0, 2.0]
    assert capsys.readouterr().out.count(f"Waiting for the lock on vps: {BOB_TEXT}") == 1
    kinds = [next((k for k in (ACQUIRE, KEEPER, "id -un", "echo body", UNLOCK) if k in c), c) for c in conn.commands]
    assert kinds == [ACQUIRE, ACQUIRE, ACQUIRE, KEEPER, "id -un", "echo body", UNLOCK]
    assert host.facts["current"] == "releases/r2" and host.variant == "v2"


def test_locked_gives_up_waiting(clock):
    conn = FakeConnection().on(ACQUIRE, held("ALIVE"))
    with pytest.raises(Exit) as gave_up:
        with make_host(conn).locked("deploy", wait=True, wait_timeout=0):
            pytest.fail("the block ran without the lock")
    assert gave_up.value.code == ExitCode.LOCKED
    assert gave_up.value.message == f"Gave up waiting 0s for the lock on vps: {BOB_TEXT}. Nothing was changed."
    assert not any(KEEPER in c or UNLOCK in c for c in conn.commands)


def test_giving_up_waiting_is_audited(clock):
    conn = FakeConnection().on(ACQUIRE, held("ALIVE"))
    with pytest.raises(Exit):
        with make_host(conn).locked("deploy", wait=True, wait_timeout=0):
            pass
    assert [e["result"] for e in audit_entries(conn)] == ["refused"]


def test_locked_leaves_a_lock_that_was_taken_over_alone(capsys):
    conn = FakeConnection().on(ACQUIRE, ok("ACQUIRED\n")).on(UNLOCK, ok("NOT-OURS\n"))
    host = make_host(conn)
    with host.locked("deploy"):
        conn.run("echo body")
    assert capsys.readouterr().out == ("Note: the lock on vps was force-released during this deploy and is now held by another "
                                       "run; it was left alone.\n")
    token = token_of(conn)
    assert conn.commands[1:] == [lock_commands.keeper(host.ctx, token), "echo body", lock_commands.release(host.ctx, token)]
    assert lock_commands.force_release(host.ctx) not in conn.commands


# --- the audit record ----------------------------------------------------------------------------


def test_audited_records_one_ok_line():
    conn = FakeConnection()
    with make_host(conn).audited("deploy", release="r3") as outcome:
        outcome["result"] = "unchanged"
    [entry] = audit_entries(conn)
    assert {k: entry[k] for k in ("action", "result", "release", "host", "user", "machine", "commit", "time")} == {
        "action": "deploy", "result": "unchanged", "release": "r3", "host": "vps", **WHO, "time": "2026-11-25T21:40:00+00:00"}
    assert "detail" not in entry


def test_audited_records_a_failure_with_its_detail_and_never_a_secret():
    conn = FakeConnection()
    host = make_host(conn)
    detail = (f"exit 2: psql: error: FATAL:  password authentication failed for user \"postgres\"\n"
              f"  connection string: postgresql://postgres:{ENV['POSTGRES_PASSWORD']}@postgres/tasktracker\n"
              f"  bot token {ENV['TELEGRAM_BOT_TOKEN']}")
    with pytest.raises(StepFailed):
        with host.audited("migrate", release="r3"):
            raise StepFailed("migrate database", detail)
    [command] = [c for c in conn.commands if "audit.log" in c]
    [entry] = audit_entries(conn)
    assert (entry["action"], entry["result"], entry["release"]) == ("migrate", "failed", "r3")
    assert entry["detail"] == ("exit 2: psql: error: FATAL: password authentication failed for user \"postgres\" connection string: "
                               "postgresql://postgres:[REDACTED]@postgres/tasktracker bot token [REDACTED]")
    for secret in host.settings.secret_values():
        assert secret not in command


def test_audited_failure_detail_sources():
    conn = FakeConnection()
    host = make_host(conn)
    with pytest.raises(Exit):
        with host.audited("rollback"):
            raise Exit("Refusing to roll back on vps: schema. Nothing was changed.", code=5)
    with pytest.raises(StepFailed):
        with host.audited("deploy") as outcome:
            outcome.update(release="r4", detail="health checks: FAIL /api/health")
            raise StepFailed("health checks", "something else")
    with pytest.raises(KeyboardInterrupt):
        with host.audited("backup"):
            raise KeyboardInterrupt
    with pytest.raises(StepFailed):
        with host.audited("deploy"):
            raise StepFailed("x", "y" * 400 + " the end")
    entries = audit_entries(conn)
    assert [(e["action"], e["result"], e.get("release"), e.get("detail")) for e in entries[:3]] == [
        ("rollback", "failed", "", "Refusing to roll back on vps: schema. Nothing was changed."),
        ("deploy", "failed", "r4", "health checks: FAIL /api/health"),
        ("backup", "failed", "", None),  # Ctrl-C: recorded as failed, without a detail
    ]
    assert len(entries[3]["detail"]) == 300 and entries[3]["detail"].endswith("y the end")


def test_audit_redacts_a_secret_with_inner_whitespace():
    conn = FakeConnection()
    password = "correct  horse battery"
    with pytest.raises(StepFailed):
        with make_host(conn, POSTGRES_PASSWORD=password).audited("deploy"):
            raise StepFailed("prepare", f"bad password {password}")
    assert "horse" not in audit_entries(conn)[0]["detail"]


# --- alerts: deploys and rollbacks tell the operator (tasktracker-notify on the host) --------------

NOTIFY_RE = re.compile(r"; if \[ -x tasktracker/bin/tasktracker-notify \]; then tasktracker/bin/tasktracker-notify (.*); fi$")


def alerts(conn: FakeConnection) -> list[str]:
    """The messages handed to the host's notify program."""
    return [shlex.split(m.group(1))[0] for c in conn.commands if (m := NOTIFY_RE.search(c))]


def test_a_deploy_sends_one_alert_in_the_audit_round_trip():
    conn = FakeConnection()
    with make_host(conn).audited("deploy") as outcome:
        outcome["release"] = "r3"
    assert len(conn.commands) == 1 and audit_entries(conn)[0]["release"] == "r3"
    assert alerts(conn) == ["deploy ok: release r3, commit ab12cd3, by alice@laptop, 0s"]


def test_alerts_name_the_failed_step_the_put_back_release_and_the_refusal():
    conn = (_activation(FakeConnection()).on("--no-recreate --scale", ok("api: 0123456789ab healthy; replaced 1 old container(s)\n"))
            .on("/probe.py", ok("ok   /nginx-health\n")))
    host = make_host(conn)
    with pytest.raises(StepFailed):
        with host.audited("deploy", release="r3"):
            detail = "health checks: FAIL /api/health" + host.put_back("r1", "r3")
            raise StepFailed("health checks", detail)
    with pytest.raises(Exit):
        with host.audited("rollback", release="r1") as outcome:
            outcome["commit"] = "77aa001"  # the release's commit, not this checkout's
            raise Exit("Refusing to roll back on vps: schema. Nothing was changed.", code=ExitCode.REFUSED)
    with pytest.raises(KeyboardInterrupt):
        with host.audited("rollback", release="r2"):
            raise KeyboardInterrupt
    with pytest.raises(StepFailed):  # a new operation: the earlier put-back is not reported again
        with host.audited("deploy", release="r4"):
            raise StepFailed("upload files", "rsync exit 23")
    assert alerts(conn) == [
        "deploy FAILED at 'health checks'; r1 was put back and is serving: release r3, commit ab12cd3, by alice@laptop, 0s",
        "rollback FAILED (refused to protect data): release r1, commit 77aa001, by alice@laptop, 0s",
        "rollback FAILED (interrupted): release r2, commit ab12cd3, by alice@laptop, 0s",
        "deploy FAILED at 'upload files': release r4, commit ab12cd3, by alice@laptop, 0s",
    ]


def test_alerts_say_who_in_ci_and_carry_no_secret(monkeypatch):
    monkeypatch.setattr(host_module, "identity", lambda: {**WHO, "ci_run": "acme/tasks#42"})
    conn = FakeConnection()
    host = make_host(conn, ALERT_WEBHOOK_URL="https://hooks.example.com/T/B/hook-Secret-5")
    secret_release = f"r-{ENV['POSTGRES_PASSWORD']}"  # a value that happens to contain a secret is redacted
    with pytest.raises(StepFailed):
        with host.audited("deploy", release=secret_release):
            raise StepFailed("migrate database", f"password {ENV['POSTGRES_PASSWORD']} bot {ENV['TELEGRAM_BOT_TOKEN']}")
    [message] = alerts(conn)
    assert message == "deploy FAILED at 'migrate database': release r-[REDACTED], commit ab12cd3, by alice@laptop (CI acme/tasks#42), 0s"
    for secret in host.settings.secret_values():
        assert secret not in conn.commands[0].split(">> tasktracker/audit.log")[1]


def test_other_operations_send_no_alert():
    conn = FakeConnection()
    host = make_host(conn)
    for action in ("backup", "migrate", "restore", "ssl.renew"):
        with host.audited(action):
            pass
    host.record("lock", "refused", detail="deploy refused")
    assert len(audit_entries(conn)) == 5 and alerts(conn) == []
    assert all(c.endswith(">> tasktracker/audit.log") for c in conn.commands)


def test_a_failed_alert_is_a_warning_and_never_hides_the_outcome(capsys):
    why = "tasktracker-notify: telegram message not sent: could not connect\ntasktracker-notify: webhook message not sent: HTTP 401\n"
    conn = FakeConnection().on("tasktracker-notify", fail(why))
    host = make_host(conn)
    with host.audited("deploy", release="r3"):
        pass  # the deploy succeeded: it still does
    with pytest.raises(StepFailed, match="health checks"):  # the real failure, not the alert's
        with host.audited("rollback", release="r1"):
            raise StepFailed("health checks", "FAIL /api/health")
    out = capsys.readouterr().out
    assert out.count("Warning: the deploy alert was not sent from vps: tasktracker-notify: telegram message not sent: could "
                     "not connect; tasktracker-notify: webhook message not sent: HTTP 401\n") == 1
    assert "Warning: the rollback alert was not sent from vps" in out
    assert [e["result"] for e in audit_entries(conn)] == ["ok", "failed"]


INSTALL_OUT = "{}  tasktracker/bin/tasktracker-notify\n{}  tasktracker/bin/notify.conf\n"
HOOK = "https://hooks.example.com/T/B/hook-Secret-5"


def test_install_notify_sends_only_what_differs_and_secrets_only_over_sftp():
    s = settings(ALERT_TELEGRAM_CHAT_ID="-1001234", ALERT_WEBHOOK_URL=HOOK)
    ctx = make_host(FakeConnection()).ctx
    conf = notify_commands.conf_text(ctx, telegram_api_base_url="https://api.telegram.org", bot_token=ENV["TELEGRAM_BOT_TOKEN"],
                                     chat_id="-1001234", webhook_url=HOOK)
    assert HOOK in conf and f"/bot{ENV['TELEGRAM_BOT_TOKEN']}/sendMessage" in conf
    program = notify_commands.digest(notify_commands.NOTIFY_SCRIPT)
    cases = [("", {"tasktracker/bin/tasktracker-notify": notify_commands.NOTIFY_SCRIPT, "tasktracker/bin/notify.conf": conf}),
             (INSTALL_OUT.format(program, "0" * 64), {"tasktracker/bin/notify.conf": conf}),  # the settings changed
             (INSTALL_OUT.format(program, notify_commands.digest(conf)), {})]  # nothing changed: no upload at all
    for out, sent in cases:
        conn = FakeConnection().on("sha256sum", ok(out))
        Host(conn, s, "v2", dict(FACTS)).install_notify(along="echo prepared", step="prepare release")
        assert conn.commands == ["echo prepared && " + notify_commands.prepare_install(ctx)]  # one round trip
        assert {path: data.decode() for path, data in conn.uploads} == sent
        for secret in s.secret_values():
            assert secret not in conn.commands[0]


def test_the_schedules_install_the_notify_program(monkeypatch):
    for module, args in ((backup_tasks, ("02:00",)), (tls_tasks, ("03:00",))):
        conn = FakeConnection().on("crontab -l | grep", ok("the line\n"))
        monkeypatch.setattr(module.Host, "open", classmethod(lambda cls, c, *a, conn=conn, **k: Host(conn, settings(), "v2", dict(FACTS))))
        module.schedule.body(None, *args)
        assert any(c.endswith(notify_commands.prepare_install(make_host(FakeConnection()).ctx)) for c in conn.commands)
        assert "tasktracker/bin/notify.conf" in [path for path, _ in conn.uploads]
        [cron] = [c for c in conn.commands if "crontab -" in c]
        assert "|| /home/deploy/tasktracker/bin/tasktracker-notify " in cron


# --- backups: choosing and pulling a set -------------------------------------------------------------

SET = "20261124T020000Z"
SETS_OUT = (f"{SET}\t21329\t{json.dumps({'set': SET, 'verification': {'result': 'ok'}})}\n"
            "20261125T020000Z\t100\t\n--log\n")


def test_chosen_set():
    host = make_host(FakeConnection().on("echo '--log'", ok(SETS_OUT)))
    assert backup_tasks.chosen_set(host, None) == SET
    assert backup_tasks.chosen_set(host, SET) == SET
    for name in ("20261125T020000Z", "../../etc", "latest"):
        with pytest.raises(Exit) as refused:
            backup_tasks.chosen_set(host, name)
        assert refused.value.code == ExitCode.USAGE and f"have: {SET};" in refused.value.message
    with pytest.raises(Exit, match="No verified backup set on vps"):
        backup_tasks.chosen_set(make_host(FakeConnection().on("echo '--log'", ok("--log\n"))), None)


def _pulling(monkeypatch, files: dict[str, bytes], sums: str) -> FakeConnection:
    conn = FakeConnection().on("echo '--log'", ok(SETS_OUT))
    conn.files = {f"tasktracker/backups/{SET}/{name}": data for name, data in files.items()}
    conn.files[f"tasktracker/backups/{SET}/SHA256SUMS"] = sums.encode()
    host = make_host(conn)
    monkeypatch.setattr(backup_tasks.Host, "open", classmethod(lambda cls, c, *args, **kwargs: host))
    return conn


def test_pull_copies_and_checks_every_file(monkeypatch, tmp_path, capsys):
    files = {"database.dump": b"PGDMP...", "rowcounts.txt": b"tasks=3\n"}
    sums = "".join(f"{hashlib.sha256(data).hexdigest()}  {name}\n" for name, data in files.items())
    _pulling(monkeypatch, {**files, "manifest.json": b"{}"}, sums)
    backup_tasks.pull.body(None, name=SET, to=str(tmp_path))
    local = tmp_path / SET
    assert sorted(p.name for p in local.iterdir()) == ["SHA256SUMS", "database.dump", "manifest.json", "rowcounts.txt"]
    assert local.stat().st_mode & 0o777 == 0o700 and (local / "database.dump").stat().st_mode & 0o777 == 0o600
    assert (local / "SHA256SUMS").read_text() == sums
    assert f"Backup {SET} copied to {local} and checked." in capsys.readouterr().out


@pytest.mark.parametrize("line", ["0" * 64 + "  ../../.ssh/authorized_keys", "0" * 64 + "  /etc/passwd", "not-a-digest  database.dump"],
                         ids=["parent path", "absolute path", "bad digest"])
def test_pull_refuses_a_checksum_file_naming_other_files(monkeypatch, tmp_path, line):
    _pulling(monkeypatch, {}, line + "\n")
    with pytest.raises(Exit) as refused:
        backup_tasks.pull.body(None, name=SET, to=str(tmp_path / "pulled"))
    assert refused.value.code == ExitCode.REFUSED
    assert not (tmp_path / "pulled").exists()


def test_pull_fails_on_a_checksum_mismatch(monkeypatch, tmp_path):
    _pulling(monkeypatch, {"database.dump": b"changed"}, f"{hashlib.sha256(b'original').hexdigest()}  database.dump\n")
    with pytest.raises(Exit, match="database.dump of 20261124T020000Z does not match its checksum") as failed:
        backup_tasks.pull.body(None, name=SET, to=str(tmp_path))
    assert failed.value.code == ExitCode.FAILED


# --- deploy's pure parts ---------------------------------------------------------------------------


def test_env_values_apply_every_setting_over_the_file(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("EXTRA_FLAG=1\nPOSTGRES_PASSWORD=stale\nHTTP_PORT=8080\n")
    values = env_values(settings(), env_file, "/home/deploy/tasktracker")
    assert values["EXTRA_FLAG"] == "1"
    assert values["POSTGRES_PASSWORD"] == ENV["POSTGRES_PASSWORD"]  # revealed, and the validated value wins
    assert values["HTTP_PORT"] == "80" and values["APP_ROOT"] == "/home/deploy/tasktracker"
    assert "[REDACTED]" not in values.values()
    assert env_values(settings(), tmp_path / "missing.env", "/x")["APP_ROOT"] == "/x"
    # plain `docker compose ...` typed in APP_DIR/current finds the release's stack (docs/design.md: from the plan to the toolkit)
    assert values["COMPOSE_FILE"] == "compose.yml:docker-compose.production.yml:release.yml"
    assert values["COMPOSE_PROJECT_NAME"] == settings().compose_project


def test_release_fingerprint_follows_what_is_shipped(tmp_path):
    for rel in SENT_PATHS:
        path = tmp_path / rel
        if rel.endswith((".py", ".yml")):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"# {rel}\n")
        else:
            path.mkdir(parents=True)
            (path / "file.txt").write_text(rel)
    base = release_fingerprint(tmp_path, "A=1\n", "v2")
    assert base == release_fingerprint(tmp_path, "A=1\n", "v2")
    assert base != release_fingerprint(tmp_path, "A=2\n", "v2")
    assert base != release_fingerprint(tmp_path, "A=1\n", "v1")
    (tmp_path / "backend/file.txt").write_text("changed")
    assert base != release_fingerprint(tmp_path, "A=1\n", "v2")


# --- pure deciders -------------------------------------------------------------------------------


def rows(*specs: tuple[str, str, str]) -> list[tuple[str, dict]]:
    return [(name, {"result": result, "previous": previous}) for name, result, previous in specs]


def test_failed_releases_never_count_toward_keep():
    history = rows(("r0", "ok", ""), ("r1", "ok", "r0"), ("r2", "failed", "r1"), ("r3", "failed", "r1"),
                   ("r4", "failed", "r1"), ("r5", "failed", "r1"))
    assert releases_to_prune(history, "r1", keep=2) == ["r2", "r3"]  # r0 stays; the newest two failed stay
    assert releases_to_prune(history, "r1", keep=2, keep_failed=0) == ["r2", "r3", "r4", "r5"]


def test_four_failed_after_one_good_keep_the_good():
    history = rows(("r1", "ok", ""), ("r2", "failed", "r1"), ("r3", "failed", "r1"), ("r4", "deploying", "r1"), ("r5", "failed", "r1"))
    assert "r1" not in releases_to_prune(history, "r1", keep=1, keep_failed=0)
    assert "r1" not in releases_to_prune(history, "", keep=1, keep_failed=0)


def test_current_and_its_predecessor_are_always_kept():
    history = rows(*[(f"r{i}", "ok", f"r{i - 1}" if i > 1 else "") for i in range(1, 7)])
    assert releases_to_prune(history, "r3", keep=2) == ["r1", "r4"]  # rolled back to r3: r6, r5 newest; r3 and r2 kept
    assert releases_to_prune(history, "r6", keep=2) == ["r1", "r2", "r3", "r4"]
    assert releases_to_prune([], "", keep=2) == []
    assert releases_to_prune(rows(("r1", "ok", "")), "r1", keep=2) == []


def test_rollback_target_after_a_failed_deploy_and_a_new_one():
    # A ok; C failed and A was put back; D deployed on top of A: rolling back from D returns to A, not C
    history = rows(("A", "ok", ""), ("C", "failed", "A"), ("D", "ok", "A"))
    assert choose_target(history, "D", None) == ("A", "")


def test_rollback_target_skips_failed_releases_in_the_chain():
    # C failed and its put-back failed too, so C stayed current; D was deployed on top of C
    history = rows(("A", "ok", ""), ("B", "ok", "A"), ("C", "failed", "B"), ("D", "ok", "C"))
    assert choose_target(history, "D", None) == ("B", "")


@pytest.mark.parametrize("history, current", [
    (rows(("C", "failed", "B"), ("D", "ok", "C")), "D"),           # B was pruned
    (rows(("D", "ok", "X")), "D"),                                  # the predecessor itself was pruned
    (rows(("A", "failed", "B"), ("B", "failed", "A"), ("D", "ok", "A")), "D"),  # a loop of failed ones
    (rows(("A", "ok", "")), "A"),                                   # the first release
    ([], ""),                                                       # nothing deployed
], ids=["pruned behind failed", "pruned", "loop", "first release", "empty host"])
def test_rollback_target_none_when_the_chain_ends(history, current):
    target, reason = choose_target(history, current, None)
    assert target is None
    assert reason == (f"the release that was live before {current or 'nothing'} is no longer kept (or never succeeded); "
                      f"pick one with --to (see `releases`)")


def test_rollback_to_a_named_release():
    history = rows(("A", "ok", ""), ("C", "failed", "A"), ("D", "ok", "A"))
    assert choose_target(history, "D", "C") == ("C", "")  # --to is the operator's call, even a failed one
    assert choose_target(history, "D", "D") == (None, "release D is already current")
    assert choose_target(history, "D", "Z") == (None, "release 'Z' is not kept on the host (kept: A, C, D)")
    assert choose_target([], "", "Z") == (None, "release 'Z' is not kept on the host (kept: none)")


def schema(readable=True, revision="0002", known=("0001", "0002"), parents=("0001",), fingerprint="f1", error="") -> SchemaState:
    return SchemaState(readable, revision, fingerprint, tuple(known), tuple(r for r in known if r not in parents), error)


def test_schema_problem():
    unreadable = schema(readable=False, revision="", error="no running postgres container")
    assert schema_problem(unreadable, "r1") == (
        "the database's migration revision could not be read (no running postgres container), so it is unknown whether r1's "
        "code works on its schema. Check Postgres (`compose.logs --service postgres`) and try again.")
    assert "(no answer)" in schema_problem(schema(readable=False, revision=""), "r1")
    newer = schema_problem(schema(revision="0003"), "r1")
    assert newer.startswith("release r1 predates the database schema: the database is at migration 0003, which a later "
                            "release applied and r1's code does not know.")
    assert "pass --force" in newer
    for fine in (schema(), schema(revision="0001"), schema(revision="<none>"), schema(revision="")):
        assert schema_problem(fine, "r1") is None


def test_migration_failure_detail():
    before = schema(revision="0001", fingerprint="f1")
    unchanged = migration_failure_detail(before, schema(revision="0001", fingerprint="f1"), "20261125T214510Z-predeploy", "r1", "vps")
    assert unchanged == ("Postgres rolled the migration back: the database is unchanged (revision 0001), nothing needed "
                         "restoring, no write was lost, and release r1 keeps serving. Backup 20261125T214510Z-predeploy, "
                         "taken just before the migration, is kept.")
    changed = migration_failure_detail(before, schema(revision="0002", fingerprint="f2"), "20261125T214510Z-predeploy", "r1", "vps")
    assert changed.startswith("The migration changed the database before it failed (revision 0001 -> 0002, schema changed). "
                              "It was NOT restored automatically")
    assert "`fab -H vps backup.restore --name 20261125T214510Z-predeploy` restores the pre-migration state" in changed
    assert "release r1 keeps serving" in changed
    fresh = migration_failure_detail(schema(revision="<none>", fingerprint="e"), schema(revision="<none>", fingerprint="f"), "", "", "vps")
    assert "(revision <none> -> <none>, schema changed)" in fresh and "no backup was taken" in fresh
    assert "no release was serving" in fresh
    unreadable = migration_failure_detail(before, schema(readable=False, revision="", error="timeout"), "", "r1", "vps")
    assert unreadable == ("The database could not be read after the failure (timeout), so whether the migration changed it is "
                          "unknown; nothing was restored and release r1 keeps serving. Check with "
                          "`fab -H vps compose.logs --service postgres`.")


def test_fake_connection_behaves_like_fabric():
    conn = FakeConnection().on(re.compile(r"^false\b"), fail("boom", 3)).on("twice", ok("1"), ok("2"))
    with pytest.raises(UnexpectedExit):
        conn.run("false x")
    assert conn.run("false y", warn=True).exited == 3
    assert [conn.run("twice").stdout for _ in range(3)] == ["1", "2", "2"]
    conn.put(io.BytesIO(b"data"), remote="/r")
    assert conn.uploads == [("/r", b"data")]


# --- before a deploy changes anything: the memory budget and `deploy --dry-run` ----------------------

RSYNC_DRY_RUN = """created directory tasktracker/releases/r3
>f+++++++++ backend/alembic/versions/0002_add_due.py
>fcs....... nginx/nginx.conf
>f+++++++++ frontend/dist/assets/index-1.js

Number of regular files transferred: 3
Total file size: 91,000 bytes
Total transferred file size: 1,029 bytes
Total bytes sent: 331

sent 331 bytes  received 64 bytes  790.00 bytes/sec
total size is 91,000  speedup is 0.13 (DRY RUN)
"""
SCHEMA_AT_0001 = "db=ok\nrevision=0001\nschema=f1\nknown=0001 0002\nparents=0001\n"
RELEASES_BEFORE = (f"r1\t{json.dumps({'result': 'ok', 'previous': ''})}\nr2\t{json.dumps({'result': 'ok', 'previous': 'r1'})}\n"
                   "current=r2\n")
RELEASES_AFTER = RELEASES_BEFORE.replace("current=r2\n", f"r3\t{json.dumps({'result': 'ok', 'previous': 'r2'})}\ncurrent=r3\n")
STACK = image_commands.stack_images(PROJECT_ROOT)
BASE = image_commands.build_base_images(PROJECT_ROOT / "backend" / "Dockerfile")
HAVE = "".join(f"have={i}\n" for i in STACK + BASE)  # everything but the new backend image
BACKUP_OK = "[backup] done\nBACKUP OK 20261125T214510Z-predeploy\n" + json.dumps(
    {"verification": {"tables": 2, "rows": 9, "seconds": 1.0}, "sizes": {"database.dump": 100}, "duration_s": 2.0})


def _read_only(command: str) -> bool:
    """The deploy's commands that only read the host (image presence, schema, release list, probe);
    scripts (`set -e ...`) change it."""
    if command.startswith("set -e"):
        return False
    return (command.startswith(("docker image inspect", "pg=$(", "for r in $(ls", "sha256sum"))
            or "/probe.py" in command or command.endswith(" pending-definitions tasktracker"))


@pytest.fixture
def planning(monkeypatch, tmp_path):
    """Deploy's plan made deterministic and local: a built dist, a fixed fingerprint, release id and
    identity, no Docker here, rsync recorded instead of run."""
    (tmp_path / "dist").mkdir()
    (tmp_path / "dist" / "index.html").write_text('<script src="/assets/index-1.js"></script>')
    monkeypatch.setattr(pipeline, "FRONTEND", tmp_path)
    monkeypatch.setattr(pipeline, "is_up_to_date", lambda frontend: (True, "built 2026-11-25T21:00:00Z from commit ab12cd3"))
    monkeypatch.setattr(fingerprints, "release_fingerprint", lambda root, env_text, variant: "fp-new")
    monkeypatch.setattr(pipeline, "new_release_id", lambda now, commit: "r3")
    monkeypatch.setattr(pipeline, "git_commit", lambda: "ab12cd3")
    monkeypatch.setattr(pipeline, "identity", lambda: dict(WHO))
    monkeypatch.setattr(pipeline, "now_iso", lambda: "2026-11-25T21:40:00+00:00")
    monkeypatch.setattr(localhost, "ok", lambda argv: False)
    monkeypatch.setattr(schema_commands, "local_revisions", lambda versions: {"0001": (), "0002": ("0001",)})
    calls: list[dict] = []

    def rsync(conn, **options):
        calls.append(options)
        return Result(stdout=RSYNC_DRY_RUN if options.get("dry_run") else "Total bytes sent: 1,029\n", exited=0)

    monkeypatch.setattr(remote, "rsync", rsync)
    monkeypatch.setattr(remote, "rsync_command", lambda conn, **o: f"cd {o['cwd']} && rsync ... {o['remote_path']}")
    return calls


def planning_host(conn: FakeConnection, current: str = "releases/r2", fingerprint: str = "fp-old", **env) -> Host:
    conn.on(re.compile(r"^docker image inspect .*have="), ok(HAVE)).on('echo "known=', ok(SCHEMA_AT_0001))
    conn.on("sha256sum", ok("0" * 64 + "  tasktracker/env/r2.env\n"))
    host = Host(conn, settings(**env), "v2", {**FACTS, "current": current,
                                              "current_meta": json.dumps({"fingerprint": fingerprint}) if current else ""})
    return host


def test_dry_run_without_a_live_release(planning, capsys):
    conn = FakeConnection().on('echo "current=$(basename', ok("current=\n"))
    planned = pipeline.dry_run(planning_host(conn, current=""), None, skip_build=False)
    out = capsys.readouterr().out
    for line in ("Dry run on vps: nothing is changed (no build, no lock, no audit line).",
                 "frontend: up to date (built 2026-11-25T21:00:00Z from commit ab12cd3)",
                 "release: r3 -> vps:tasktracker/releases/r3 (Compose v2), the host's first release",
                 "settings: new (no live release)",
                 "files: 3 would be sent, 1029 bytes",
                 "   backend/alembic/versions/0002_add_due.py",
                 "   no live release, so a fresh database: all 2 would run (0001, 0002)",
                 "releases pruned after it: none"):
        assert line in out.splitlines()
    assert [c for c in conn.commands if not _read_only(c)] == []  # nothing but reads: no lock, no audit, no schema
    assert conn.uploads == [] and not any("audit.log" in c or ".deploy.lock" in c for c in conn.commands)
    assert planning == [{**planning_host(FakeConnection(), current="").upload_options("r3", ""), "dry_run": True}]
    assert planning[0]["link_dest"] is None
    steps = [p.step for p in planned]
    assert "back up database before migrating" not in steps  # a fresh database has nothing to lose
    assert steps[0] == "prepare release and its settings"
    assert steps[-1] == "replace api, restart worker, switch current, reload nginx, health checks, record"
    assert "    2. [host] mkdir -p tasktracker/releases/r3 " in out
    for secret in settings().secret_values():
        assert secret not in out


def test_dry_run_when_nothing_changed(planning, capsys):
    conn = FakeConnection()
    planned = pipeline.dry_run(planning_host(conn, fingerprint="fp-new"), None, skip_build=True)
    assert planned == [] and conn.commands == [] and planning == []
    out = capsys.readouterr().out
    assert "frontend: --skip-build: frontend/dist is sent as it is\n" in out
    assert out.endswith("Nothing changed since release r2 (same files, same settings): the deploy would only run the health "
                        "checks and change nothing.\n")


def test_dry_run_with_migrations_pending_plans_a_backup(planning, capsys, monkeypatch):
    monkeypatch.setattr(pipeline, "is_up_to_date", lambda frontend: (False, "sources changed"))
    conn = FakeConnection().on('echo "current=$(basename', ok(RELEASES_BEFORE))
    planned = pipeline.dry_run(planning_host(conn, KEEP_RELEASES="2"), None, skip_build=False)
    out = capsys.readouterr().out.splitlines()
    for line in ("frontend: stale (sources changed): the deploy would build it first, so its files and the release below "
                 "would change",
                 "release: r3 -> vps:tasktracker/releases/r3 (Compose v2), replacing r2",
                 "settings: changed since r2 (values not shown)",
                 "files: 3 would be sent, 1029 bytes (the rest hard-linked from r2)",
                 f"   backend {image_commands.backend_image(PROJECT_ROOT, 'tasktracker')}: built on the host "
                 f"(BUILD_BACKEND=auto): docker compose -p tasktracker -f compose.yml -f docker-compose.production.yml -f release.yml build api",
                 "   1 pending (0002; the database is at 0001): a database-only backup is taken first",
                 "releases pruned after it: r1"):
        assert line in out
    assert planning[0]["link_dest"] == "../r2" and planning[0]["dry_run"] is True
    assert [p.command for p in planned if p.step == "back up database before migrating"][-1] == (
        "tasktracker/bin/tasktracker-backup tasktracker tasktracker 7 --db-only")
    assert [c for c in conn.commands if not _read_only(c)] == []


@pytest.mark.parametrize("schema_out, line", [
    ("db=unreachable\ndb_error=no running postgres container\nknown=0001\nparents=\n",
     "   the database's revision could not be read (no running postgres container): the deploy would stop before migrating "
     "(fail closed) and r2 would keep serving"),
    ("db=ok\nrevision=0002\nschema=f\nknown=0001\nparents=\n",
     "   none pending (the database is at 0002, this checkout's head): no migration runs"),
    ("db=ok\nrevision=0009\nschema=f\nknown=0001\nparents=\n",
     "   the database is at 0009, which this checkout's migrations do not know (a later release applied it): `alembic upgrade "
     "head` would fail and the deploy would stop"),
    ("db=ok\nrevision=<none>\nschema=f\nknown=0001\nparents=\n", "   the database has no migration yet: all 2 would run (0001, 0002)"),
], ids=["unreadable", "up to date", "newer", "empty"])
def test_dry_run_migration_verdicts(planning, capsys, schema_out, line):
    conn = FakeConnection().on('echo "known=', ok(schema_out)).on('echo "current=$(basename', ok(RELEASES_BEFORE))
    pipeline.dry_run(planning_host(conn), None, skip_build=True)
    assert line in capsys.readouterr().out.splitlines()


def test_the_dry_run_plans_exactly_what_the_deploy_runs(planning, capsys):
    """The commands `--dry-run` prints are the ones the deploy then runs, in the same order: the
    remote ones (all but the reads), the files written over SFTP, and the rsync."""
    plan_conn = FakeConnection().on('echo "current=$(basename', ok(RELEASES_BEFORE))
    planned = pipeline.dry_run(planning_host(plan_conn, KEEP_RELEASES="2"), None, skip_build=True)
    deploy_conn = (FakeConnection().on("tar -xpf", ok(HAVE + RELEASES_BEFORE)).on("--db-only", ok(BACKUP_OK))
                   .on("@@step build images", ok(marks("build images", "start postgres and nats", "read database schema")
                                                         + "".join(f"@@fact {line}\n" for line in SCHEMA_AT_0001.splitlines())))
                   .on(ACTIVATION, ok(marks(*ALL_STEPS, "record release and prune") + "ok   /nginx-health\npruned r1\n")))
    outcome: dict = {}
    host = planning_host(deploy_conn, KEEP_RELEASES="2")
    visited: set[str] = set()
    sys.setprofile(lambda frame, event, arg: visited.add(frame.f_code.co_filename))
    try:
        pipeline.run_deploy(host, pipeline.plan_deploy(host, None), outcome)
    finally:
        sys.setprofile(None)
    assert str(PROJECT_ROOT / "tasks" / "pipeline.py") in visited
    assert not [f for f in visited if f.endswith(("tasks/swarm.py", "tasks/swarm_nodes.py", "tasks/swarm_plan.py"))]  # no Swarm code
    assert outcome == {"release": "r3"}
    assert [p.command for p in planned if p.where == "host"] == [c for c in deploy_conn.commands if not _read_only(c)]
    assert [p.command.split(" <- ")[0] for p in planned if p.where == "sftp"] == [path for path, _ in deploy_conn.uploads]
    assert [p.command for p in planned if p.where == "here"] == ["cd {} && rsync ... tasktracker/releases/r3/".format(
        PROJECT_ROOT)]
    dry, real = planning
    assert dry == {**real, "dry_run": True}
    assert "rm -rf -- tasktracker/releases/r1 tasktracker/env/r1.env" in planned[-1].command
    # a release with a migration: the tar, unpack, start, the WAL archive, [the backup's 3 commands and upload],
    # migrate, the app role, activate, the pending definitions read
    assert len(deploy_conn.commands) == 6 + 4 and len(deploy_conn.uploads) == 1 + 1
    migrate, role = deploy_conn.commands[-4:-2]
    assert "-f compose.migrate.yml run --rm --no-deps -T api alembic upgrade head" in migrate
    assert role.startswith("if [ -f tasktracker/env/app-role.sql ]; then") and "psql" in role
    tar = tarfile.open(fileobj=io.BytesIO(deploy_conn.uploads[0][1]))
    assert {m.name: oct(m.mode) for m in tar.getmembers()}["env/app-role.sql"] == "0o600"
    sql = tar.extractfile("env/app-role.sql").read().decode()
    password = host.settings.app_db_password.reveal()
    # A verifier, never the password.
    assert "PASSWORD 'SCRAM-SHA-256$4096:" in sql and password not in sql
    env = tar.extractfile("env/r3.env").read().decode()
    assert f"APP_DB_PASSWORD={password}\n" in env and "APP_DB_USER=tasktracker_app\n" in env
    assert password not in "\n".join(deploy_conn.commands)
    assert [row[0] for row in host.steps.rows][-5:] == [*ALL_STEPS, "record release and prune"]


def test_a_dashboard_only_release_leaves_the_backend_alone(planning, capsys, monkeypatch):
    monkeypatch.setattr(pipeline, "backend_fingerprint", lambda root, env_text, variant, paths=None: "bfp")
    monkeypatch.setattr(fingerprints, "backend_fingerprint", lambda root, env_text, variant, paths=None: "bfp")
    image = image_commands.backend_image(PROJECT_ROOT, "tasktracker")
    conn = (FakeConnection().on("tar -xpf", ok(RELEASES_BEFORE))
            .on("@@step switch current", ok(marks(*ALL_STEPS[2:], "record release and prune") + "ok   /nginx-health\n")))
    host = planning_host(conn)
    host.facts["current_meta"] = json.dumps({"fingerprint": "fp-old", "backend_fingerprint": "bfp", "backend_image": image,
                                             "backend_release": "r1", "result": "ok"})
    plan = pipeline.plan_deploy(host, None)
    assert not plan.backend and plan.backend_release == "r1"
    pipeline.run_deploy(host, plan, {})
    tar = tarfile.open(fileobj=io.BytesIO(conn.uploads[0][1]))
    assert "RELEASE_ID: r1" in tar.extractfile("releases/r3/release.yml").read().decode()  # what the API truthfully reports
    assert json.loads(tar.extractfile("releases/r3/RELEASE.json").read())["backend_release"] == "r1"
    assert {m.name: oct(m.mode) for m in tar.getmembers()}["env/r3.env"] == "0o600"
    script = conn.commands[-1]
    assert "--scale" not in script and "up -d --no-deps worker" not in script and "docker image inspect" not in conn.commands[0]
    assert len(conn.commands) == 2 and len(conn.uploads) == 1  # unpack, activate; the tar
    assert ("images, backend build, database, migrations, api and worker", 0.0,
            "skipped (unchanged since r1: its containers keep running)") in host.steps.rows


@pytest.mark.parametrize("mem_kb, level", [(1_950_000, budget.REFUSE), (3_900_000, budget.WARN), (8_000_000, budget.OK),
                                           ("", budget.OK)], ids=["2 GB", "4 GB", "8 GB", "unknown"])
def test_memory_budget_before_anything_changes(capsys, mem_kb, level):
    conn = FakeConnection()
    host = Host(conn, settings(), "v2", {**FACTS, "mem_total_kb": str(mem_kb)})
    if level == budget.REFUSE:
        with pytest.raises(Exit) as refused:
            guards.check_memory_budget(host)
        assert refused.value.code == ExitCode.REFUSED
        assert refused.value.message.startswith("The stack does not fit in the memory of vps: the services reserve 1.6 GiB, more "
                                                "than the 1.4 GiB the host has for them (1.9 GiB less 512 MiB for the system)")
        assert refused.value.message.endswith("Nothing was changed on the server.")
    else:
        assert guards.check_memory_budget(host).level == level
    out = capsys.readouterr().out
    assert conn.commands == []  # decided from the preflight's facts: no round trip
    assert ("  total                             1.6 GiB    6.6 GiB" in out) == (level != budget.OK)
    assert ("warning: the limits add up to 6.6 GiB" in out) == (level == budget.WARN)


def test_env_values_keep_the_offsite_secrets_out_of_the_stack(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("OFFSITE_REPOSITORY=sftp:b@h:/r\nOFFSITE_PASSWORD=never-in-a-container\nOFFSITE_AWS_SECRET_ACCESS_KEY=sk\n")
    from tasks.settings import Settings

    s = Settings.load(env_file=str(env_file), environ=ENV)
    assert s.offsite_password.reveal() == "never-in-a-container"
    values = env_values(s, env_file, "/x")
    assert not [k for k in values if k.startswith("OFFSITE_")]
    assert "never-in-a-container" not in values.values()


def test_compose_down_with_volumes_asks_first_and_a_wrong_answer_changes_nothing(monkeypatch):
    import tasks.compose as compose_tasks

    conn = FakeConnection()
    host = make_host(conn)
    monkeypatch.setattr(compose_tasks, "open_host", lambda c, *args, **kwargs: host)
    asked = []
    monkeypatch.setattr("builtins.input", lambda prompt: asked.append(prompt) or "yes")
    with pytest.raises(Exit) as refused:
        compose_tasks.down.body(None, volumes=True)
    assert refused.value.code == ExitCode.USAGE and "nothing was changed" in str(refused.value.message)
    assert "point-in-time archive" in asked[0] and conn.commands == []


def test_compose_recreate_applies_the_pending_definitions_under_the_lock_with_an_audit_line(monkeypatch, capsys):
    """No --service: the services the live release defines otherwise, recreated and awaited in
    one script, under the lock; the audit line names them."""
    import tasks.compose as compose_tasks

    conn = (FakeConnection().on(ACQUIRE, ok("ACQUIRED\n")).on(UNLOCK, ok("RELEASED\n"))
            .on("pending-definitions", ok("@@pending nginx\n@@pending postgres\n")))
    host = make_host(conn)
    monkeypatch.setattr(compose_tasks, "open_host", lambda c, *args, **kwargs: host)
    compose_tasks.recreate.body(None)
    (script,) = [c for c in conn.commands if "--force-recreate" in c]
    assert "up -d --no-deps --force-recreate postgres nginx" in script
    assert script.index("up -d --no-deps") < script.index("postgres did not become healthy")
    entry = [e for e in audit_entries(conn) if e["action"] == "compose.recreate"]
    assert [(e["result"], e["detail"]) for e in entry] == [("ok", "postgres nginx")]
    assert "postgres, nginx recreated and healthy in" in capsys.readouterr().out


def test_compose_recreate_with_nothing_pending_changes_nothing(monkeypatch, capsys):
    import tasks.compose as compose_tasks

    conn = FakeConnection().on(ACQUIRE, ok("ACQUIRED\n")).on(UNLOCK, ok("RELEASED\n"))
    host = make_host(conn)
    monkeypatch.setattr(compose_tasks, "open_host", lambda c, *args, **kwargs: host)
    compose_tasks.recreate.body(None)
    assert not [c for c in conn.commands if "--force-recreate" in c]
    assert "nothing was recreated" in capsys.readouterr().out
    assert [e["detail"] for e in audit_entries(conn) if e["action"] == "compose.recreate"] == ["nothing pending"]


def test_compose_recreate_refuses_the_api_before_connecting(monkeypatch):
    import tasks.compose as compose_tasks

    monkeypatch.setattr(compose_tasks, "open_host", lambda *a, **k: pytest.fail("connected"))
    with pytest.raises(Exit) as refused:
        compose_tasks.recreate.body(None, service=["postgres", "api"])
    assert refused.value.code == ExitCode.USAGE and "not api" in str(refused.value.message)


def test_a_rollback_names_the_services_left_on_their_previous_definition(capsys):
    conn = FakeConnection().on("pending-definitions", ok("@@pending postgres\n"))
    make_host(conn).report_pending("r1", "rollback")
    out = capsys.readouterr().out
    assert out.count("NOTICE: ") == 1 and "the rollback left it running its previous definition" in out
    assert conn.commands[-1].startswith("( cd tasktracker/releases/r1 && docker compose")


# --- the Telegram webhook after a deploy (tasks/telegram.py) ---------------------------------

def test_after_a_deploy_the_webhook_is_set_with_the_derived_secret_and_checked(capsys):
    from tasks import botapi as telegram
    from tasks.commands.telegram import webhook_secret
    from tests.support import BotApiStandIn

    with BotApiStandIn() as bot:
        host = make_host(FakeConnection(), TELEGRAM_API_BASE_URL=bot.url)
        telegram.after_change(host)
        assert bot.methods() == ["setWebhook", "getWebhookInfo"]
        body = bot.calls[0][1]
        assert body["url"] == "https://tasks.example.com/api/telegram/webhook" and body["allowed_updates"] == ["message"]
        assert body["secret_token"] == webhook_secret(ENV["TELEGRAM_BOT_TOKEN"])
    out = capsys.readouterr().out
    assert "Telegram webhook: https://tasks.example.com/api/telegram/webhook, 0 updates pending" in out
    assert body["secret_token"] not in out and ENV["TELEGRAM_BOT_TOKEN"] not in out


def test_no_https_yet_sets_no_webhook_and_says_why(capsys):
    from tasks import botapi as telegram
    from tests.support import BotApiStandIn

    with BotApiStandIn() as bot:
        host = make_host(FakeConnection().on("letsencrypt/live", ("", "", 1)), TELEGRAM_API_BASE_URL=bot.url)
        telegram.after_change(host)
        assert bot.calls == []
    assert "Telegram webhook not set: vps serves no HTTPS for tasks.example.com yet" in capsys.readouterr().out
    with BotApiStandIn() as bot:
        telegram.after_change(make_host(FakeConnection(), TELEGRAM_API_BASE_URL=bot.url, TELEGRAM_WEBHOOK="off"))
        assert bot.calls == []
    assert capsys.readouterr().out == ""


def test_a_bot_api_that_does_not_answer_is_a_warning_that_names_no_token(capsys):
    from tasks import botapi as telegram

    telegram.after_change(make_host(FakeConnection(), TELEGRAM_API_BASE_URL="http://127.0.0.1:9"))
    out = capsys.readouterr().out
    assert "WARNING: the Telegram webhook could not be set: the Bot API at http://127.0.0.1:9 did not answer" in out
    assert ENV["TELEGRAM_BOT_TOKEN"] not in out and "telegram.webhook" in out


def test_testhost_up_refuses_a_missing_network_before_making_anything(tmp_path, monkeypatch):
    """Issue 26: `testhost.up --network NET` with no such network: one paragraph, nothing made
    (no state dir, no dockerd started, no container recorded)."""
    from invoke import Context

    from lab import testhost

    monkeypatch.setenv("TASKTRACKER_TESTHOST_DIR", str(tmp_path / "hosts"))
    asked = []
    monkeypatch.setattr(testhost, "ok", lambda argv: asked.append(argv) or False)
    monkeypatch.setattr(testhost, "start_dockerd", lambda *a: pytest.fail("dockerd started"))
    monkeypatch.setattr(testhost.os, "geteuid", lambda: 0)
    with pytest.raises(Exit) as refused:
        testhost.up(Context(), "vm1", network="tt-no-such-net")
    assert asked == [["docker", "network", "inspect", "tt-no-such-net"]]
    assert "Docker network 'tt-no-such-net' does not exist" in str(refused.value.message)
    assert "`docker network create tt-no-such-net`" in str(refused.value.message)
    assert "Nothing was changed" in str(refused.value.message)
    assert not (tmp_path / "hosts").exists()


def test_a_testhost_whose_boot_never_finished_is_not_claimed_up(tmp_path, monkeypatch):
    """A host recorded before its container ran (the boot failed half-way) has no pinned key and
    no ssh config: `up` again removes what that boot left, by its records, and boots it anew."""
    from lab import testhost

    monkeypatch.setenv("TASKTRACKER_TESTHOST_DIR", str(tmp_path))
    ran = []
    monkeypatch.setattr(testhost, "ok", lambda argv: True)
    monkeypatch.setattr(testhost, "run", lambda argv, **kw: ran.append(argv))
    monkeypatch.setattr(testhost, "wait_for_ssh", lambda c: pytest.fail("claimed up"))
    half = {"hosts": {"vm1": {"container": "tt-vm-ab12-vm1", "volume": "tt-vm-ab12-vm1-docker"}}}
    assert testhost.restart(half, "vm1") is False
    assert ran == [["docker", "rm", "-f", "tt-vm-ab12-vm1"],
                   ["docker", "volume", "rm", "-f", "tt-vm-ab12-vm1-docker"]]


def test_migrate_and_restores_run_as_the_owner_then_apply_the_app_role():
    """`fab migrate` runs the current release's migration as the schema's owner; a restore runs
    the migration (when asked), then the app role's SQL, before api and worker start."""
    from tasks.commands import compose as compose_commands

    conn = FakeConnection()
    host = Host(conn, settings(), "v2", FACTS)
    host.on_current(compose_commands.migrate, what="migrate")
    assert "-f compose.migrate.yml run --rm --no-deps -T api alembic upgrade head" in conn.commands[-1]
    host.restore_backup("20260101T000000Z", fresh_database=True, migrate=True)
    script = conn.commands[-1]
    assert "--no-owner --no-privileges" in script
    migration = script.index("-f compose.migrate.yml run --rm --no-deps -T api alembic upgrade head")
    role = script.index("tasktracker/env/app-role.sql")
    start = script.index("start_services\n")
    assert migration < role < start


# --- recover: the commit first, the maintenance switch, the kept sets (issue 26) ----------------

import tasks.deploy as deploy_tasks  # noqa: E402
from tasks.commands import offsite as offsite_commands  # noqa: E402

OFFSITE_ENV = {"OFFSITE_REPOSITORY": "s3:https://s3.example.com/bucket/tt", "OFFSITE_PASSWORD": "pw-offsite-Secret-5",
               "OFFSITE_AWS_ACCESS_KEY_ID": "AKIA1", "OFFSITE_AWS_SECRET_ACCESS_KEY": "aws-Secret-7"}
RECOVERY_SET, NEWEST_SET = "20261125T020000Z", "20261126T020000Z"
DESCRIBED = (f'OFFSITE NEWEST {NEWEST_SET}\nOFFSITE SET {RECOVERY_SET}\n'
             f'{{"set": "{RECOVERY_SET}", "release": "20261124T100000Z-ab12cd3", "commit": "ab12cd3"}}\n')
SAME_HEAD = ("ab12cd3" + "0" * 33, False)


@pytest.mark.parametrize("head, any_checkout, refused", [
    (SAME_HEAD, False, False),
    (("ff00aa1" + "0" * 33, False), False, True),
    (("ab12cd3" + "0" * 33, True), False, True),  # uncommitted changes count as another commit
    (("ff00aa1" + "0" * 33, True), True, False),
])
def test_recover_names_the_commit_first_and_refuses_another_checkout_changing_nothing(monkeypatch, capsys, head,
                                                                                    any_checkout, refused):
    monkeypatch.setattr(deploy_tasks, "git_head", lambda: head)
    conn = FakeConnection().on("tasktracker-offsite tasktracker tasktracker describe", ok(DESCRIBED))
    host = make_host(conn, **OFFSITE_ENV)
    described = deploy_tasks.describe_recovery(host, RECOVERY_SET)
    assert described == {"newest": NEWEST_SET, "set": RECOVERY_SET, "release": "20261124T100000Z-ab12cd3", "commit": "ab12cd3"}
    assert capsys.readouterr().out.startswith(f"recover deploys commit ab12cd3: the release 20261124T100000Z-ab12cd3 of "
                                              f"off-site set {RECOVERY_SET} ran it; this checkout is {head[0][:12]}")
    refusal = deploy_tasks.checkout_refusal(described, host.name, any_checkout)
    if refused:
        assert "Check out that commit, `git checkout ab12cd3`, and run this again, or pass --any-checkout" in refusal
        assert "\n" not in refusal
    else:
        assert refusal == ""
    # Only the off-site program (installed as `init` did) and a read of the repository ran.
    changing = [c for c in conn.commands if "describe" not in c and "tasktracker-offsite" not in c and "offsite.conf" not in c]
    assert changing == [], changing
    assert not [c for c in conn.commands if ".recovering" in c]


def recover_onto(monkeypatch, conn: FakeConnection, probe_fails: bool = False) -> tuple[Host, list[str]]:
    """recover_onto on a fake host with the deploy, restore and probe stood in for; the commands
    and those steps in the order they happened."""
    host = make_host(conn, **OFFSITE_ENV)
    monkeypatch.setattr(deploy_tasks, "git_head", lambda: SAME_HEAD)

    def step(name, fail=False):
        def run(*args, **kwargs):
            conn.calls.append((f"<{name}{' from the entry' if host.recovering else ''}>", {}))
            if fail:
                raise StepFailed("health checks", "api: HTTP 502")
            return pipeline.DeployPlan(None, "", "img", (), "r9", None) if name == "plan" else None
        return run

    monkeypatch.setattr(deploy_tasks.pipeline, "plan_deploy", step("plan"))
    monkeypatch.setattr(deploy_tasks.pipeline, "run_deploy", step("deploy"))
    monkeypatch.setattr(host, "restore_backup", step("restore"))
    monkeypatch.setattr(host, "release", lambda release_id: None)
    monkeypatch.setattr(host, "probe", step("probe", fail=probe_fails))
    described = offsite_commands.parse_described(DESCRIBED)
    try:
        deploy_tasks.recover_onto(host, None, described, False, "", {})
    except StepFailed:
        pass
    return host, [c for c in conn.commands if not c.startswith("mkdir -p tasktracker/bin") and "mv -f" not in c]


def test_recover_onto_keeps_the_entry_in_maintenance_until_the_data_is_complete_and_healthy(monkeypatch):
    conn = FakeConnection().on("tasktracker-offsite tasktracker tasktracker fetch", ok(f"OFFSITE FETCHED {RECOVERY_SET}\n"))
    host, commands = recover_onto(monkeypatch, conn)
    assert commands[0] == f"mkdir -p tasktracker && printf '%s\\n' {RECOVERY_SET} > tasktracker/.recovering"  # first of all
    fetch = commands.index(f"tasktracker/bin/tasktracker-offsite tasktracker tasktracker fetch {RECOVERY_SET}")
    assert commands[fetch + 2] == f"tasktracker/bin/tasktracker-offsite tasktracker tasktracker keep {RECOVERY_SET} {NEWEST_SET}"
    assert commands[-5:] == ["<plan from the entry>", "<deploy from the entry>", "<restore from the entry>", "<probe from the entry>",
                             "rm -f tasktracker/.recovering"]  # serving, all at once, after the checks
    assert host.recovering is False


def test_a_failed_recover_leaves_the_maintenance_on(monkeypatch):
    conn = FakeConnection().on("tasktracker-offsite tasktracker tasktracker fetch", ok(f"OFFSITE FETCHED {RECOVERY_SET}\n"))
    host, commands = recover_onto(monkeypatch, conn, probe_fails=True)
    assert commands[-1] == "<probe from the entry>"
    assert not [c for c in commands if c.startswith("rm -f") and ".recovering" in c]


def test_recover_stops_when_the_sets_cannot_be_kept_from_retention(monkeypatch):
    conn = (FakeConnection().on("tasktracker-offsite tasktracker tasktracker fetch", ok(f"OFFSITE FETCHED {RECOVERY_SET}\n"))
            .on("tasktracker-offsite tasktracker tasktracker keep", fail("Fatal: unable to create lock")))
    host, commands = recover_onto(monkeypatch, conn)
    assert "<plan from the entry>" not in commands and "<deploy from the entry>" not in commands
    assert not [c for c in commands if c.startswith("rm -f") and ".recovering" in c]


@pytest.mark.parametrize("joined", [True, False])
def test_a_worker_joins_with_the_token_on_stdin_and_the_token_is_rotated_after(monkeypatch, joined):
    """cluster.init's join: the Engine API through curl, the request (with the token) on stdin, so
    no argv on the node holds it; the manager then rotates the token, whether the join worked or
    not, and the next node gets the new one. A failed join says why without the token."""
    import tasks.cluster as cluster_tasks

    manager = FakeConnection().on("join-token --rotate", ok("SWMTKN-1-new\n"))
    worker = FakeConnection().on("/swarm/join", ok() if joined else fail("", exited=22, stdout='{"message":"manager unreachable"}'))
    monkeypatch.setattr(cluster_tasks, "firewall", lambda *args: None)
    monkeypatch.setattr(cluster_tasks, "read_facts", lambda conn: {"node_id": "n2"})
    monkeypatch.setattr(cluster_tasks, "_joining", {"manager": manager, "manager_address": "10.0.0.1",
                                                    "token": "SWMTKN-1-old", "peers": [], "members": []})
    facts = {"state": "inactive", "manager": False, "hostname": "vps2"}
    if joined:
        cluster_tasks.join_worker(worker, "vps2", facts, "10.0.0.2")
    else:
        with pytest.raises(Exit) as failed:
            cluster_tasks.join_worker(worker, "vps2", facts, "10.0.0.2")
        assert "manager unreachable" in failed.value.message and "SWMTKN" not in failed.value.message
    (join, options), = [(c, o) for c, o in worker.calls if "/swarm/join" in c]
    assert join == cluster_commands.JOIN and "SWMTKN" not in join
    assert json.loads(options["in_stream"].getvalue())["JoinToken"] == "SWMTKN-1-old"
    assert not [c for c in worker.commands + manager.commands if "SWMTKN" in c]
    assert "docker swarm join-token --rotate -q worker" in manager.commands
    assert cluster_tasks._joining["token"] == "SWMTKN-1-new"
