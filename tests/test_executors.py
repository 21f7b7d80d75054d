"""The host layer against a fake connection (Fabric's MockRemote idea): `tasks.host.Host` built
directly on a FakeConnection that answers commands from canned results and records every command,
for the branches real hosts rarely reach (a rollback that fails too, a lock taken over, a stale
lock, ...). Plus the pure deciders: pruning, the rollback target, the schema guard, and what a
failed migration did."""

from __future__ import annotations

import hashlib
import io
import json
import re
import shlex
from pathlib import Path

import pytest
from invoke import Exit
from invoke.exceptions import UnexpectedExit
from invoke.runners import Result

import tasks.backup as backup_tasks
import tasks.host as host_module
from tasks.commands import lock as lock_commands
from tasks.commands.release import SchemaState
from tasks.deploy import SENT_PATHS, env_values, migration_failure_detail, release_fingerprint, releases_to_prune
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
    """The JSON lines the host appended to its audit log."""
    entries = []
    for command in conn.commands:
        if command.endswith(">> tasktracker/audit.log"):
            entries.append(json.loads(next(w for w in shlex.split(command) if w.startswith("{"))))
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


def test_put_back_when_the_previous_release_fails_too(capsys):
    conn = _activation(FakeConnection()).on(
        "--no-recreate --scale", fail("the new api container did not become healthy (unhealthy); the old one kept serving"))
    message = make_host(conn).put_back("r1", "r2")
    assert message == (" Automatic rollback to r1 ALSO failed (exit 1: the new api container did not become healthy (unhealthy); "
                       "the old one kept serving); run `fab -H vps rollback --to r1`.")
    assert "rolling back automatically to r1" in capsys.readouterr().out
    assert not any("ln -sfn releases/" in c for c in conn.commands)  # current was not switched


def test_put_back_when_the_previous_release_has_no_metadata():
    conn = FakeConnection().on("else echo MISSING", ok("MISSING\n"))
    message = make_host(conn).put_back("r1", "r2")
    assert message.startswith(" Automatic rollback to r1 ALSO failed (release r1 on vps has no RELEASE.json")
    assert message.endswith("; run `fab -H vps rollback --to r1`.")
    assert len(conn.commands) == 1


def test_put_back_when_the_previous_release_fails_its_health_checks():
    conn = (_activation(FakeConnection()).on("--no-recreate --scale", ok("api: 0123456789ab healthy; replaced 1 old container(s)\n"))
            .on("/probe.py", fail("", stdout="ok   /nginx-health\nFAIL /api/health: 503 database down\n")))
    assert make_host(conn).put_back("r1", "r2", marked=False) == (
        " Automatic rollback to r1 ALSO failed (FAIL /api/health: 503 database down); run `fab -H vps rollback --to r1`.")


@pytest.mark.parametrize("marked, ending", [(True, "; r2 is marked failed."), (False, ".")])
def test_put_back_puts_the_previous_release_back(marked, ending):
    conn = (_activation(FakeConnection()).on("--no-recreate --scale", ok("api: 0123456789ab healthy; replaced 1 old container(s)\n"))
            .on("/probe.py", ok("ok   /nginx-health\nok   /api/health\n")))
    assert make_host(conn).put_back("r1", "r2", marked) == " Release r1 was put back automatically and is serving" + ending
    steps = ["else echo MISSING", "docker image inspect", "--no-recreate --scale", "up -d --no-deps worker", "nginx -t -q",
             "ln -sfn releases/r1 tasktracker/current.tmp", "/probe.py"]
    assert [next(s for s in steps if s in c) for c in conn.commands] == steps
    assert all(c.startswith("cd tasktracker/releases/r1 && ") for c in conn.commands[1:5] + conn.commands[6:])
    assert conn.commands[5].startswith("ln -sfn releases/r1 tasktracker/current.tmp && mv -T tasktracker/current.tmp "
                                       "tasktracker/current && cd tasktracker/releases/r1 && ")


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
