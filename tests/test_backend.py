"""The reference backend against a real PostgreSQL and a real nats-server (JetStream)."""

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
from websockets.sync.client import connect as ws_connect

from tests.helpers import ROOT, LocalNats, LocalPostgres, free_port, port_open, wait_for

BACKEND = ROOT / "backend"


@pytest.fixture(scope="module")
def postgres():
    pg = LocalPostgres().start()
    pg.psql("CREATE DATABASE tasktracker")
    yield pg
    pg.stop()


@pytest.fixture(scope="module")
def nats_server(tmp_path_factory):
    server = LocalNats(tmp_path_factory.mktemp("nats")).start()
    yield server
    server.stop()


def backend_env(postgres, nats_server):
    return {**os.environ, "DATABASE_URL": postgres.url("tasktracker"), "NATS_URL": nats_server.url,
            "RELEASE_ID": "test-release-1", "PYTHONUNBUFFERED": "1"}


def alembic_upgrade(env):
    return subprocess.run([sys.executable, "-m", "alembic", "upgrade", "head"], cwd=BACKEND, env=env, capture_output=True, text=True)


def test_migrations_create_the_schema_on_an_empty_database_twice(postgres, nats_server):
    postgres.psql("CREATE DATABASE migrations_check")
    env = {**backend_env(postgres, nats_server), "DATABASE_URL": postgres.url("migrations_check")}
    first = alembic_upgrade(env)
    assert first.returncode == 0, first.stderr
    assert "Running upgrade  -> 0001" in first.stderr
    second = alembic_upgrade(env)
    assert second.returncode == 0, second.stderr
    assert "Running upgrade" not in second.stderr
    assert postgres.psql("SELECT version_num FROM alembic_version", db="migrations_check") == "0001"
    assert postgres.psql("SELECT count(*) FROM information_schema.columns WHERE table_name='tasks'", db="migrations_check") == "8"


@pytest.fixture(scope="module")
def stack(postgres, nats_server, tmp_path_factory):
    env = backend_env(postgres, nats_server)
    assert alembic_upgrade(env).returncode == 0
    port = free_port()
    logs = tmp_path_factory.mktemp("logs")
    api = subprocess.Popen([sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1", "--port", str(port)],
                           cwd=BACKEND, env=env, stdout=open(logs / "api.log", "w"), stderr=subprocess.STDOUT)
    worker = subprocess.Popen([sys.executable, "-m", "taskiq", "worker", "app.worker:broker", "--workers", "1"],
                              cwd=BACKEND, env=env, stdout=open(logs / "worker.log", "w"), stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: port_open(port), 30, what="uvicorn")
        yield f"http://127.0.0.1:{port}"
    finally:
        for proc in (api, worker):
            proc.terminate()
            proc.wait(15)


def get(url):
    try:
        with urllib.request.urlopen(url, timeout=5) as res:
            return res.status, json.loads(res.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def post(url, payload):
    req = urllib.request.Request(url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as res:
        return res.status, json.loads(res.read())


def test_health_version_tasks_worker_and_websocket(stack, postgres):
    status, body = wait_for(lambda: (lambda r: r if r[0] == 200 else None)(get(f"{stack}/api/health")), 30, what="health 200")
    assert body["checks"]["database"]["ok"] and body["checks"]["nats"]["ok"]
    assert get(f"{stack}/api/version") == (200, {"release": "test-release-1"})

    with ws_connect(stack.replace("http", "ws") + "/ws", open_timeout=5) as ws:
        assert json.loads(ws.recv(timeout=5))["type"] == "hello"
        status, task = post(f"{stack}/api/tasks", {"title": "Ship the deploy toolkit", "body": "with real tests"})
        assert status == 201
        seen = {}
        while set(seen) != {"task.created", "task.processed"}:
            event = json.loads(ws.recv(timeout=20))
            if event.get("task", {}).get("id") == task["id"]:
                seen[event["type"]] = event["task"]
    assert seen["task.processed"]["status"] == "done"
    assert seen["task.processed"]["word_count"] == 7
    _, listed = get(f"{stack}/api/tasks")
    assert any(t["id"] == task["id"] and t["status"] == "done" for t in listed)
    row = postgres.psql(f"SELECT title, status, word_count FROM tasks WHERE id = {task['id']}", db="tasktracker")
    assert row == "Ship the deploy toolkit|done|7"


def test_health_is_503_when_nats_is_down(stack, nats_server):
    nats_server.stop()
    status, body = wait_for(lambda: (lambda r: r if r[0] == 503 else None)(get(f"{stack}/api/health")), 20, what="health 503")
    assert body["status"] == "degraded"
    assert body["checks"]["nats"]["ok"] is False
    assert body["checks"]["database"]["ok"] is True
