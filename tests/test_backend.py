"""The reference backend against a real PostgreSQL and a real nats-server (JetStream), both
requiring a login whose user name and password hold the characters URLs and config files trip on."""

import asyncio
import contextlib
import importlib.util
import json
import os
import shlex
import signal
import stat
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from websockets.sync.client import connect as ws_connect

from tests.support import (
    ROOT, LocalPostgres, OtlpReceiver, free_port, pgvector_bindir, port_open, wait_for,
)

# pytest-xdist: its module's stack (PostgreSQL, NATS, the API, the worker) starts once, on one worker.
pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("backend")]

BACKEND = ROOT / "backend"

# The app's database role and NATS login: `@ / # :` and friends must still connect.
DB_USER = "tt@app/x:y#z"
DB_PASSWORD = "p@ss/w#rd:1 %?&=+ 'q\"$x\\"
NATS_USER = "tt@nats"
NATS_PASSWORD = "n@ts/p#ss:w rd,1 'q\"$x\\ 123"
BOT_TOKEN = "123456:test-bot-token"


def sql_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def sql_identifier(value: str) -> str:
    return '"' + value.replace('"', '""') + '"'


@pytest.fixture(scope="module")
def postgres():
    # PostgreSQL with pgvector (migration 0002 creates the extension). The app's role here is not a
    # superuser, so the extension is created first as one, as a DBA would (in the stack,
    # POSTGRES_USER is the superuser and the migration creates it).
    pg = LocalPostgres(pgvector_bindir()).start()
    pg.psql(f"CREATE ROLE {sql_identifier(DB_USER)} LOGIN PASSWORD {sql_literal(DB_PASSWORD)}")
    for db in ("tasktracker", "migrations_check", "jobs_check", "tracing_check"):
        pg.psql(f"CREATE DATABASE {db} OWNER {sql_identifier(DB_USER)}")
        pg.psql("CREATE EXTENSION vector", db=db)
    yield pg
    pg.stop()


def nats_entrypoint() -> list[str]:
    """The nats service's entrypoint in compose.yml, as Compose hands it to Docker (`$$` is `$`)."""
    entrypoint = yaml.safe_load((ROOT / "compose.yml").read_text())["services"]["nats"]["entrypoint"]
    assert all("$" not in part.replace("$$", "") for part in entrypoint), "no Compose variables in the script"
    return [part.replace("$$", "$") for part in entrypoint]


class ComposeNats:
    """nats-server started by compose.yml's own entrypoint script, with a login."""

    def __init__(self, base: Path, user: str = NATS_USER, password: str = NATS_PASSWORD):
        self.port, self.monitor_port = free_port(), free_port()
        self.base = base
        self.env = {"PATH": os.environ["PATH"], "TMPDIR": str(base), "NATS_USER": user, "NATS_PASSWORD": password}
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> "ComposeNats":
        store = self.base / "jetstream"
        store.mkdir(parents=True, exist_ok=True)
        argv = [*nats_entrypoint(), "--jetstream", "--store_dir", str(store), "-a", "127.0.0.1", "-p", str(self.port),
                "--http_port", str(self.monitor_port)]
        self.log = open(self.base / "nats.log", "w")
        self.proc = subprocess.Popen(argv, env=self.env, stdout=self.log, stderr=subprocess.STDOUT)
        wait_for(lambda: self.proc.poll() is None and port_open(self.port), 15, what="nats-server")
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(10)


@pytest.fixture(scope="module")
def nats_server(tmp_path_factory):
    server = ComposeNats(tmp_path_factory.mktemp("nats")).start()
    yield server
    server.stop()


def image_env() -> dict[str, str]:
    """The ENV the backend's Dockerfile gives both containers."""
    text = (BACKEND / "Dockerfile").read_text().replace("\\\n", " ")
    return dict(pair.split("=", 1) for line in text.splitlines() if line.startswith("ENV ")
                for pair in shlex.split(line[4:]))


def backend_env(postgres, nats_server, db="tasktracker"):
    env = {**{k: v for k, v in os.environ.items() if k != "DATABASE_URL"}, **image_env()}
    # The app builds its database URL from the parts, as in the containers.
    return {**env, "POSTGRES_USER": DB_USER, "POSTGRES_PASSWORD": DB_PASSWORD, "POSTGRES_HOST": "127.0.0.1",
            "POSTGRES_PORT": str(postgres.port), "POSTGRES_DB": db, "NATS_URL": nats_server.url,
            "NATS_USER": NATS_USER, "NATS_PASSWORD": NATS_PASSWORD, "RELEASE_ID": "test-release-1", "PYTHONUNBUFFERED": "1",
            "JOB_REQUEUE_AFTER": "2", "JOB_ACK_WAIT": "5", "TELEGRAM_BOT_TOKEN": BOT_TOKEN, "WORKER_HEARTBEAT": str(nats_server.base / "heartbeat")}


def backend_config_module():
    spec = importlib.util.spec_from_file_location("reference_backend_config", BACKEND / "app" / "config.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_database_url_percent_encodes_user_password_and_database(monkeypatch):
    from sqlalchemy.engine import make_url

    monkeypatch.delenv("DATABASE_URL", raising=False)
    for user, password, db in ((DB_USER, DB_PASSWORD, "task/db#1"), ("postgres", "a:b@c/d?e#f%g", "tasktracker")):
        monkeypatch.setenv("POSTGRES_USER", user)
        monkeypatch.setenv("POSTGRES_PASSWORD", password)
        monkeypatch.setenv("POSTGRES_DB", db)
        cfg = backend_config_module().AppConfig.from_env()
        url = make_url(cfg.database_url)
        assert (url.username, url.password, url.host, url.port, url.database) == (user, password, "postgres", 5432, db)
        assert password not in repr(cfg)


async def _nats_login(url: str, **login) -> str:
    import nats

    try:
        nc = await nats.connect(url, connect_timeout=2, allow_reconnect=False, max_reconnect_attempts=0, **login)
    except Exception as exc:  # the server's refusal
        return f"{type(exc).__name__}: {exc}"
    await nc.close()
    return "ok"


def test_nats_requires_the_login_and_keeps_the_password_off_every_command_line(nats_server):
    assert "Authorization Violation" in asyncio.run(_nats_login(nats_server.url))
    assert "Authorization Violation" in asyncio.run(_nats_login(nats_server.url, user=NATS_USER, password=NATS_PASSWORD[:-1]))
    assert asyncio.run(_nats_login(nats_server.url, user=NATS_USER, password=NATS_PASSWORD)) == "ok"
    # The monitoring endpoint the compose healthcheck uses needs no login, so it listens on the
    # container's loopback only (the entrypoint's config; --http_port sets only the port).
    with urllib.request.urlopen(f"http://127.0.0.1:{nats_server.monitor_port}/healthz?js-enabled-only=true", timeout=5) as res:
        assert res.status == 200
    log = (nats_server.base / "nats.log").read_text()
    assert f"Starting http monitor on 127.0.0.1:{nats_server.monitor_port}" in log, log
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().decode(errors="replace")
        except OSError:
            continue
        assert NATS_PASSWORD not in argv, f"the NATS password is on the command line of {cmdline.parent.name}"
    # The config the entrypoint wrote is private to its owner.
    (conf,) = [p for p in nats_server.base.iterdir() if p.is_file() and p.name.startswith("tmp")]
    assert stat.S_IMODE(conf.stat().st_mode) == 0o600


@pytest.mark.parametrize("password", ["123456", "true", "10k", "with space", "-dash", "comma,cut", "semi;colon", "brace}",
                                      'quote"', "back\\slash", "$HOME", "#hash"])
def test_nats_entrypoint_keeps_any_password_exact(tmp_path, password):
    server = ComposeNats(tmp_path, user="u", password=password).start()
    try:
        assert asyncio.run(_nats_login(server.url, user="u", password=password)) == "ok"
        assert "Authorization Violation" in asyncio.run(_nats_login(server.url, user="u", password=password + "x"))
    finally:
        server.stop()


def alembic_upgrade(env, target="head"):
    return subprocess.run([sys.executable, "-m", "alembic", "upgrade", target], cwd=BACKEND, env=env, capture_output=True, text=True)


def test_migrations_create_the_schema_on_an_empty_database_twice(postgres, nats_server):
    env = backend_env(postgres, nats_server, db="migrations_check")
    first = alembic_upgrade(env, "0001")
    assert first.returncode == 0, first.stderr
    assert "Running upgrade  -> 0001" in first.stderr
    # A row written by a release from before pgvector gets its embedding from migration 0002.
    postgres.psql("INSERT INTO tasks (title, body) VALUES ('written before pgvector', '')", db="migrations_check")
    upgraded = alembic_upgrade(env)
    assert upgraded.returncode == 0, upgraded.stderr
    assert "Running upgrade 0001 -> 0002" in upgraded.stderr
    second = alembic_upgrade(env)
    assert second.returncode == 0, second.stderr
    assert "Running upgrade" not in second.stderr
    assert "Running upgrade 0002 -> 0003" in upgraded.stderr
    assert postgres.psql("SELECT version_num FROM alembic_version", db="migrations_check") == "0003"
    assert postgres.psql("SELECT count(*) FROM information_schema.columns WHERE table_name='tasks'", db="migrations_check") == "11"
    # The row from before 0003 is waiting for its job like any other: the sweeper reads it.
    assert postgres.psql("SELECT requeues, queued_at IS NULL FROM tasks", db="migrations_check") == "0|t"
    assert postgres.psql("SELECT indexdef FROM pg_indexes WHERE indexname = 'tasks_pending'",
                         db="migrations_check").endswith("(id) WHERE ((status)::text = 'pending'::text)")
    assert postgres.psql("SELECT count(*) FROM tasks WHERE embedding IS NULL", db="migrations_check") == "0"
    assert postgres.psql("SELECT vector_dims(embedding) FROM tasks", db="migrations_check") == "32"
    index = postgres.psql("SELECT indexdef FROM pg_indexes WHERE indexname = 'tasks_embedding_hnsw'", db="migrations_check")
    assert "USING hnsw (embedding vector_cosine_ops)" in index
    assert postgres.psql("SELECT indisvalid FROM pg_index WHERE indexrelid = 'tasks_embedding_hnsw'::regclass",
                         db="migrations_check") == "t"


def embedding_module():
    spec = importlib.util.spec_from_file_location("reference_backend_embedding", BACKEND / "app" / "embedding.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_embedding_is_deterministic_unit_length_and_puts_alike_texts_closer():
    embed = embedding_module().embed
    a, b, c = embed("Renew the TLS certificate"), embed("renew TLS certificates"), embed("Buy milk and bread")
    assert a == embed("Renew the TLS certificate") and len(a) == 32
    for v in (a, b, c, embed(""), embed("x")):
        assert abs(sum(x * x for x in v) - 1) < 1e-4

    def cosine(u, v):
        return sum(x * y for x, y in zip(u, v, strict=True))

    assert cosine(a, b) > cosine(a, c)


@contextlib.contextmanager
def running_backend(env: dict, logs: Path):
    """The API (uvicorn) and the worker (taskiq) as their containers run them; yields the API's
    URL."""
    port = free_port()
    api = subprocess.Popen([sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1", "--port", str(port)],
                           cwd=BACKEND, env=env, stdout=open(logs / "api.log", "w"), stderr=subprocess.STDOUT,
                           start_new_session=True)
    # taskiq's worker runs its workers as child processes: each program leads its own process group,
    # and the group is what is stopped.
    worker = subprocess.Popen([sys.executable, "-m", "taskiq", "worker", "app.worker:broker", "--workers", "1"],
                              cwd=BACKEND, env=env, stdout=open(logs / "worker.log", "w"), stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        wait_for(lambda: port_open(port), 30, what="uvicorn")
        yield f"http://127.0.0.1:{port}"
    finally:
        for proc in (api, worker):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(2)
            except subprocess.TimeoutExpired:  # taskiq's worker hangs on SIGTERM while NATS is down
                pass
            with contextlib.suppress(ProcessLookupError):  # and whatever of its group is left
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


@pytest.fixture(scope="module")
def untraced_receiver():
    """Where the untraced stack's LOGFIRE_BASE_URL points: with no token, nothing must arrive."""
    with OtlpReceiver() as receiver:
        yield receiver


@pytest.fixture(scope="module")
def stack(postgres, nats_server, tmp_path_factory, untraced_receiver):
    env = {**backend_env(postgres, nats_server), "LOGFIRE_TOKEN": "",
           "LOGFIRE_BASE_URL": untraced_receiver.url}
    assert alembic_upgrade(env).returncode == 0
    asyncio.run(old_job_stream(nats_server))  # as an earlier release's library left it
    with running_backend(env, tmp_path_factory.mktemp("logs")) as url:
        yield url


async def old_job_stream(nats_server) -> None:
    """The job stream as taskiq-nats makes it by default (limits retention: every job kept), with
    one message in it."""
    import nats

    nc = await nats.connect(nats_server.url, user=NATS_USER, password=NATS_PASSWORD)
    try:
        js = nc.jetstream()
        await js.add_stream(name="TASKTRACKER_JOBS", subjects=["tasktracker.jobs"])
        await js.publish("tasktracker.jobs", b"{}")
    finally:
        await nc.close()


def jetstream(nats_server) -> dict:
    url = f"http://127.0.0.1:{nats_server.monitor_port}/jsz?streams=true&config=true&consumers=true"
    with urllib.request.urlopen(url, timeout=5) as res:
        data = json.loads(res.read())
    return {s["name"]: s for a in data.get("account_details") or [] for s in a.get("stream_detail") or []}


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


def test_similar_tasks_come_nearest_first_through_the_hnsw_index(stack, postgres):
    titles = ["Rotate the database password", "Renew the TLS certificate for the API", "Water the office plants"]
    ids = {post(f"{stack}/api/tasks", {"title": t})[1]["id"]: t for t in titles}
    status, found = get(f"{stack}/api/tasks/similar?q=renew+TLS+certificates&limit=3")
    assert status == 200 and len(found) == 3
    assert found[0]["title"] == "Renew the TLS certificate for the API" and found[0]["id"] in ids
    assert [t["distance"] for t in found] == sorted(t["distance"] for t in found)
    assert "embedding" not in found[0]
    assert get(f"{stack}/api/tasks/similar?q=")[0] == 422 and get(f"{stack}/api/tasks/similar?q=x&limit=0")[0] == 422
    plan = postgres.psql("SET enable_seqscan = off; EXPLAIN SELECT id FROM tasks ORDER BY embedding <=> "
                         "(SELECT embedding FROM tasks LIMIT 1) LIMIT 3", db="tasktracker")
    assert "tasks_embedding_hnsw" in plan


def post_update(stack: str, update: dict, secret: str | None) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json", **({"X-Telegram-Bot-Api-Secret-Token": secret} if secret is not None else {})}
    req = urllib.request.Request(f"{stack}/api/telegram/webhook", data=json.dumps(update).encode(), headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=5) as res:
            return res.status, json.loads(res.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_a_telegram_message_with_the_webhook_secret_becomes_a_processed_task(stack, postgres):
    from tasks.commands.telegram import webhook_secret  # the toolkit's derivation: the two must agree

    message = {"update_id": 7, "message": {"message_id": 1, "chat": {"id": 42}, "text": "Call the plumber\nabout the sink"}}
    count = postgres.psql("SELECT count(*) FROM tasks", db="tasktracker")
    for secret in (None, "wrong", webhook_secret("123456:another-bot")):
        assert post_update(stack, message, secret)[0] == 403, secret
    assert postgres.psql("SELECT count(*) FROM tasks", db="tasktracker") == count  # nothing stored
    status, answer = post_update(stack, message, webhook_secret(BOT_TOKEN))
    assert status == 200 and answer["ok"] and answer["task"]
    wait_for(lambda: postgres.psql(f"SELECT status FROM tasks WHERE id = {answer['task']}", db="tasktracker") == "done",
             30, what="the message's task processed")
    assert postgres.psql(f"SELECT title, body FROM tasks WHERE id = {answer['task']}", db="tasktracker") == \
        "Call the plumber|Call the plumber\nabout the sink"
    # An update without text (a sticker, an edit) is taken and ignored: Telegram does not resend it.
    assert post_update(stack, {"update_id": 8, "edited_message": {"text": "x"}}, webhook_secret(BOT_TOKEN)) == \
        (200, {"ok": True, "task": None})


def api_healthcheck(stack: str) -> int:
    """The API container's health check from compose.yml, run here against this API's port."""
    test = yaml.safe_load((ROOT / "compose.yml").read_text())["services"]["api"]["healthcheck"]["test"]
    assert test[0] == "CMD" and test[1] == "python"
    argv = [sys.executable, *test[2:-1], test[-1].replace("8000", stack.rsplit(":", 1)[1])]
    return subprocess.run(argv, capture_output=True, timeout=10).returncode


def test_the_worker_declares_the_job_stream_in_place_of_an_old_one(stack, nats_server):
    stream = wait_for(lambda: (lambda s: s if s and s["config"].get("retention") == "workqueue" else None)(
        jetstream(nats_server).get("TASKTRACKER_JOBS")), 20, what="the job stream declared by the worker")
    config = stream["config"]
    assert (config["storage"], config["discard"], config["max_msgs"], config["max_bytes"]) == ("file", "new", 1_000_000, 256 << 20)
    consumer = {c["name"]: c["config"] for c in stream.get("consumer_detail") or []}["tasktracker-worker"]
    assert consumer["ack_policy"] == "explicit" and consumer["ack_wait"] == 5 * 10**9 and consumer["max_deliver"] == 5


def test_a_task_written_while_nats_is_down_is_processed_once_it_is_back(stack, nats_server, postgres):
    """NATS killed as the OOM killer would: the write is still acknowledged, and its job, which
    could not be queued, is queued by the worker's sweeper once NATS is back."""
    nats_server.stop(signal.SIGKILL)
    wait_for(lambda: get(f"{stack}/api/health")[0] == 503, 20, what="health 503")
    status, task = post(f"{stack}/api/tasks", {"title": "Written while NATS was down"})
    assert status == 201 and task["status"] == "pending"
    nats_server.start()
    done = wait_for(lambda: postgres.psql(f"SELECT status, requeues FROM tasks WHERE id = {task['id']}",
                                          db="tasktracker").startswith("done"), 45, what="the task processed")
    assert done
    row = postgres.psql(f"SELECT status, requeues, word_count FROM tasks WHERE id = {task['id']}", db="tasktracker")
    status_, requeues, words = row.split("|")
    assert status_ == "done" and int(requeues) >= 1 and words == "5", row  # queued again by the sweeper
    status, body = wait_for(lambda: (lambda r: r if r[0] == 200 else None)(get(f"{stack}/api/health")), 30, what="health 200")
    status, again = post(f"{stack}/api/tasks", {"title": "Written after NATS came back"})
    wait_for(lambda: postgres.psql(f"SELECT status FROM tasks WHERE id = {again['id']}", db="tasktracker") == "done",
             30, what="a new task processed by the same worker")


@pytest.fixture
def jobs_db(postgres, nats_server, monkeypatch):
    """The backend's `app.db`, imported here, on a database of its own at the newest revision."""
    env = backend_env(postgres, nats_server, db="jobs_check")
    assert alembic_upgrade(env).returncode == 0
    for key in ("POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_HOST", "POSTGRES_PORT", "POSTGRES_DB"):
        monkeypatch.setenv(key, env[key])
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.syspath_prepend(str(BACKEND))
    for name in [m for m in sys.modules if m == "app" or m.startswith("app.")]:
        monkeypatch.delitem(sys.modules, name)
    db = importlib.import_module("app.db")
    yield db
    db.get_engine().dispose()
    postgres.psql("TRUNCATE tasks", db="jobs_check")


def test_a_job_delivered_twice_does_its_work_once(jobs_db):
    task = jobs_db.insert_task("Twice", "delivered")
    calls = []

    def work(row):
        calls.append(row.id)
        return {"word_count": 2, "summary": "Twice delivered"}

    outcome, done = jobs_db.finish_task(task["id"], work)
    assert outcome == "done" and done["status"] == "done" and done["word_count"] == 2
    assert jobs_db.finish_task(task["id"], work)[0] == "repeated"
    assert calls == [task["id"]]
    assert jobs_db.finish_task(task["id"] + 1000, work) == ("vanished", None)


def test_late_jobs_are_claimed_once_and_fail_after_their_last_try(jobs_db, postgres):
    late, last_try, fresh = (jobs_db.insert_task(t, "")["id"] for t in ("late", "last try", "fresh"))
    postgres.psql(f"UPDATE tasks SET queued_at = now() - interval '2 minutes' WHERE id IN ({late}, {last_try}); "
                  f"UPDATE tasks SET requeues = 5 WHERE id = {last_try}", db="jobs_check")
    assert jobs_db.claim_stale(60, 5) == ([late], [last_try])
    assert jobs_db.claim_stale(60, 5) == ([], [])  # claimed: queued again just now
    rows = postgres.psql("SELECT id, status, requeues, queued_at > now() - interval '5 seconds' FROM tasks "
                         "ORDER BY id", db="jobs_check").splitlines()
    assert rows == [f"{late}|pending|1|t", f"{last_try}|failed|5|f", f"{fresh}|pending|0|t"]


LOGFIRE_MODULES = ("import sys, app.main; print(sorted({m.split('.')[0] for m in sys.modules "
                   "if m.startswith(('logfire', 'opentelemetry.sdk'))}))")


def test_without_a_logfire_token_nothing_is_traced_or_sent(stack, postgres, untraced_receiver):
    status, task = post(f"{stack}/api/tasks", {"title": "Not traced"})
    assert status == 201
    sql = f"SELECT status FROM tasks WHERE id = {task['id']}"
    wait_for(lambda: postgres.psql(sql, db="tasktracker") == "done", 30, what="the task processed")
    assert untraced_receiver.requests == []  # LOGFIRE_BASE_URL alone sends nothing
    # Without the token the app does not even import Logfire or OpenTelemetry's SDK.
    env = {**os.environ, **image_env(), "LOGFIRE_TOKEN": ""}
    out = subprocess.run([sys.executable, "-c", LOGFIRE_MODULES], cwd=BACKEND, capture_output=True,
                         text=True, env=env, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr


def test_with_a_logfire_token_requests_queries_and_jobs_are_traced(postgres, tmp_path):
    """LOGFIRE_TOKEN set and LOGFIRE_BASE_URL on a local receiver: the API's request, its queries
    and the worker's job arrive as OTLP exports carrying the token, which no log line shows. Its
    own NATS and database, so that no other worker takes the job."""
    token = "pylf_v1_us_" + "t0ken" * 8
    nats = ComposeNats(tmp_path).start()
    with OtlpReceiver() as receiver, contextlib.ExitStack() as stop:
        stop.callback(nats.stop)
        env = {**backend_env(postgres, nats, db="tracing_check"), "LOGFIRE_TOKEN": token,
               "LOGFIRE_BASE_URL": receiver.url}
        assert alembic_upgrade(env).returncode == 0
        with running_backend(env, tmp_path) as api:
            wait_for(lambda: get(f"{api}/api/health")[0] == 200, 30, what="health 200")
            status, task = post(f"{api}/api/tasks", {"title": "Traced through Logfire"})
            assert status == 201
            sql = f"SELECT status FROM tasks WHERE id = {task['id']}"
            wait_for(lambda: postgres.psql(sql, db="tracing_check") == "done", 30,
                     what="the task processed")
            wanted = (b"POST /api/tasks", b"INSERT INTO tasks", b"process_task",
                      f"processed task {task['id']}".encode())
            try:
                wait_for(lambda: all(w in receiver.exports("traces") for w in wanted), 30,
                         what="the request, its query, the job and the worker's log line exported")
            except AssertionError:
                missing = [w for w in wanted if w not in receiver.exports("traces")]
                paths = [r["path"] for r in receiver.requests]
                log = (tmp_path / "worker.log").read_text()[-1500:]
                raise AssertionError(f"not exported: {missing}; received {paths}; "
                                     f"worker log: {log}") from None
        exports = [r for r in receiver.requests if r["method"] == "POST"]
        assert exports and all(r["authorization"] == token for r in exports)
        assert b"tasktracker-api" in receiver.exports()
        assert b"tasktracker-worker" in receiver.exports()
        for log in ("api.log", "worker.log"):
            assert token not in (tmp_path / log).read_text()


def test_health_is_503_when_nats_is_down(stack, nats_server):
    assert api_healthcheck(stack) == 0
    nats_server.stop()
    status, body = wait_for(lambda: (lambda r: r if r[0] == 503 else None)(get(f"{stack}/api/health")), 20, what="health 503")
    assert body["status"] == "degraded"
    assert body["checks"]["nats"]["ok"] is False
    assert body["checks"]["database"]["ok"] is True
    assert body["checks"]["nats"]["error"] in ("not connected", "no answer")  # what failed, not the exception's words
    assert "127.0.0.1" not in json.dumps(body) and NATS_USER not in json.dumps(body)
    assert api_healthcheck(stack) != 0  # Docker marks the container unhealthy
