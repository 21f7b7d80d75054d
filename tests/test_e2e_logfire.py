"""Logfire when the operator wants tracing (issue 27, part 2), on the sandbox with a local stand-in
for Logfire (LOGFIRE_BASE_URL at Docker's gateway, which the stack's containers reach): deployed
with LOGFIRE_TOKEN, a request and a task's job arrive as OTLP exports carrying the token, and the
token is in no output, log or audit line; deployed without it, nothing arrives."""

import json
import secrets
import subprocess
import urllib.request

import pytest
from dotenv import dotenv_values

from tests.support import OtlpReceiver, docker_gateway, wait_for

pytestmark = pytest.mark.e2e
APP = "lf"
SAID: list[str] = []  # everything the tasks printed, checked for the token at the end


@pytest.fixture(scope="module")
def receiver():
    with OtlpReceiver(docker_gateway()) as stand_in:
        yield stand_in


@pytest.fixture(scope="module")
def token():
    return "pylf_v1_us_" + secrets.token_hex(20)


def fab(sandbox, *args, env_file, check=True):
    out = sandbox.fab(*args, env_file=env_file, check=check)
    SAID.append(out.stdout + out.stderr)
    return out


def request(sandbox, path: str, payload: dict | None = None) -> dict:
    data = json.dumps(payload).encode() if payload is not None else None
    req = urllib.request.Request(sandbox.app_url(APP, path), data=data,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as res:
        return json.loads(res.read())


def psql(sandbox, sql: str) -> str:
    return compose(sandbox, "exec", "-T", "postgres", "psql", "-U", "postgres", "-d", "tasktracker",
                   "-Atc", sql).stdout.strip()


def compose(sandbox, *args: str, check=True) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", "compose", "-p", f"{sandbox.project}-{APP}", *args],
                          capture_output=True, text=True, check=check)


def make_a_task(sandbox, title: str) -> int:
    wait_for(lambda: request(sandbox, "/api/health")["status"] == "ok", 60, what="the API healthy")
    task = request(sandbox, "/api/tasks", {"title": title})
    sql = f"SELECT status FROM tasks WHERE id = {task['id']}"
    wait_for(lambda: psql(sandbox, sql) == "done", 60, what="the task's job run by the worker")
    request(sandbox, "/api/tasks")
    return task["id"]


def test_with_the_token_the_request_and_the_job_are_traced(sandbox, deployed, receiver, token):
    env = sandbox.app_env(APP, "traced", LOGFIRE_TOKEN=token, LOGFIRE_BASE_URL=receiver.url)
    fab(sandbox, "deploy", "--skip-build", env_file=env)
    task = make_a_task(sandbox, "Traced on the sandbox")
    wanted = (b"POST /api/tasks", b"GET /api/tasks", b"INSERT INTO tasks", b"process_task",
              f"processed task {task}".encode(), b"tasktracker-api", b"tasktracker-worker")
    wait_for(lambda: all(w in receiver.exports("traces") for w in wanted), 60,
             what="the request, its query, the job and the worker's log line at the receiver")
    exports = [r for r in receiver.requests if r["method"] == "POST"]
    assert exports and all(r["authorization"] == token for r in exports)
    # The token reaches the containers only through the release's .env (0600), not their command.
    release = (sandbox.home / APP / "current").resolve()
    assert dotenv_values(release / ".env")["LOGFIRE_TOKEN"] == token
    assert oct((release / ".env").resolve().stat().st_mode & 0o777) == "0o600"


def test_the_token_is_never_shown(sandbox, token):
    SAID.append(fab(sandbox, "status", env_file=sandbox.app_env(APP, "traced")).stdout)
    logs = compose(sandbox, "logs", "api", "worker", "nginx").stdout
    inspect = subprocess.run(["docker", "ps", "-a", "--no-trunc", "--format", "{{.Command}}"],
                             capture_output=True, text=True).stdout
    audit = (sandbox.home / APP / "audit.log").read_text()
    for text in (*SAID, logs, inspect, audit):
        assert token not in text


def test_without_the_token_nothing_is_sent(sandbox, receiver):
    env = sandbox.app_env(APP, "untraced", LOGFIRE_TOKEN="", LOGFIRE_BASE_URL=receiver.url)
    fab(sandbox, "deploy", "--skip-build", env_file=env)
    release = (sandbox.home / APP / "current").resolve()
    assert dotenv_values(release / ".env")["LOGFIRE_TOKEN"] == ""
    for service in ("api", "worker"):  # both recreated with the new release's settings
        check = compose(sandbox, "exec", "-T", service, "sh", "-c", 'test -z "$LOGFIRE_TOKEN"',
                        check=False)
        assert check.returncode == 0, service
    before = len(receiver.requests)
    make_a_task(sandbox, "Not traced on the sandbox")
    # Anything the untraced stack sent would be here by now: the traced one sent its request within
    # half a second (the SDK's batch delay); the wait is the task's own round trip.
    assert receiver.requests[before:] == []
