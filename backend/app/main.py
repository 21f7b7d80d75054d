"""FastAPI app: health, version, tasks, similar tasks (pgvector) and a WebSocket of task events."""

import asyncio
import hmac
import json
from contextlib import asynccontextmanager

import nats
from fastapi import FastAPI, Query, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse
from loguru import logger
from pydantic import BaseModel, Field

from . import db, tracing
from .config import EVENTS_SUBJECT, AppConfig, webhook_secret
from .worker import broker, process_task, publish_event


class Hub:
    """Connected WebSocket clients and the NATS connection that feeds them."""

    def __init__(self) -> None:
        self.clients: set[WebSocket] = set()
        self.nc = None

    async def broadcast(self, payload: str) -> None:
        for ws in list(self.clients):
            try:
                await ws.send_text(payload)
            except Exception:  # a client that went away
                self.clients.discard(ws)

    async def on_event(self, msg) -> None:
        await self.broadcast(msg.data.decode())

    async def connect_forever(self, cfg: AppConfig) -> None:
        """Connect to NATS, retrying until it answers; nats-py reconnects by itself afterwards."""
        url = cfg.nats_url
        while True:
            try:
                self.nc = await nats.connect(
                    url, max_reconnect_attempts=-1, reconnect_time_wait=1, connect_timeout=2,
                    **cfg.nats_options(),
                )
                await self.nc.subscribe(EVENTS_SUBJECT, cb=self.on_event)
                await broker.startup()
                logger.info("connected to NATS at {}", url)
                return
            except Exception as exc:  # NATS not up yet
                logger.warning("NATS not reachable ({}), retrying", exc)
                await asyncio.sleep(1)


hub = Hub()


@asynccontextmanager
async def lifespan(app: FastAPI):
    connector = asyncio.create_task(hub.connect_forever(AppConfig.from_env()))
    yield
    connector.cancel()
    if hub.nc is not None:
        await broker.shutdown()
        await hub.nc.close()


app = FastAPI(title="Task Tracker (reference API)", lifespan=lifespan)
# With LOGFIRE_TOKEN: a span per request and per query, and the logs, to Logfire (app/tracing.py).
if tracing.setup("api"):
    tracing.instrument_fastapi(app)


# The public health answer says what failed, never why in the exception's words (they name
# internal hosts and users); the why goes to the API's log.
async def check_database() -> dict:
    try:
        await asyncio.wait_for(asyncio.to_thread(db.ping), timeout=3)
        return {"ok": True}
    except asyncio.TimeoutError:
        logger.warning("health: the database did not answer within 3 s")
        return {"ok": False, "error": "no answer within 3 s"}
    except Exception as exc:
        logger.warning("health: the database failed: {}: {}", type(exc).__name__, str(exc).splitlines()[0][:200])
        return {"ok": False, "error": "unreachable"}


async def check_nats() -> dict:
    nc = hub.nc
    if nc is None or not nc.is_connected:
        return {"ok": False, "error": "not connected"}
    try:
        await nc.flush(timeout=2)
        return {"ok": True}
    except Exception as exc:
        logger.warning("health: NATS failed: {}: {}", type(exc).__name__, str(exc)[:200])
        return {"ok": False, "error": "no answer"}


@app.get("/api/health")
async def health():
    checks = {"database": await check_database(), "nats": await check_nats()}
    healthy = all(c["ok"] for c in checks.values())
    body = {"status": "ok" if healthy else "degraded", "checks": checks}
    return JSONResponse(body, status_code=200 if healthy else 503)


@app.get("/api/version")
async def version():
    return {"release": AppConfig.from_env().release_id}


class TaskIn(BaseModel):
    title: str = Field(min_length=1, max_length=500)
    body: str = ""


@app.get("/api/tasks")
async def get_tasks():
    return await asyncio.to_thread(db.list_tasks)


@app.get("/api/tasks/similar")
async def similar_tasks(q: str = Query(min_length=1, max_length=500), limit: int = Query(5, ge=1, le=50)):
    """Tasks nearest to the text `q` (pgvector cosine distance over the HNSW index), nearest first."""
    return await asyncio.to_thread(db.similar_tasks, q, limit)


@app.post("/api/tasks", status_code=201)
async def create_task(task_in: TaskIn):
    """Stores the task, then queues its job. The row is the promise: a job that cannot be queued
    now (NATS down or its stream full) is queued by the worker's sweeper later (app/worker.py)."""
    task = await asyncio.to_thread(db.insert_task, task_in.title, task_in.body)
    if hub.nc is None or not hub.nc.is_connected:
        logger.warning("task {} stored; its job waits for the sweeper: NATS is down", task["id"])
        return task
    try:
        await publish_event(hub.nc, "task.created", task)
        await asyncio.wait_for(process_task.kiq(task["id"]), timeout=5)
    except Exception as exc:
        logger.warning("task {} stored; its job waits for the sweeper: {}: {}", task["id"], type(exc).__name__, exc)
    return task


@app.post("/api/telegram/webhook")
async def telegram_webhook(request: Request):
    """An update from the Telegram bot: a message becomes a task, processed like any other. Only
    requests carrying the webhook's secret token are taken (403 otherwise, and nothing stored);
    updates without text are acknowledged and ignored, so Telegram does not send them again."""
    token = AppConfig.from_env().telegram_bot_token
    given = request.headers.get("X-Telegram-Bot-Api-Secret-Token", "")
    if not token or not hmac.compare_digest(given.encode(), webhook_secret(token).encode()):
        return JSONResponse({"ok": False}, status_code=403)
    try:
        update = await request.json()
    except ValueError:
        return JSONResponse({"ok": False, "error": "not JSON"}, status_code=400)
    text = ((update.get("message") or {}).get("text") or "").strip() if isinstance(update, dict) else ""
    if not text:
        return {"ok": True, "task": None}
    task = await create_task(TaskIn(title=text.splitlines()[0][:500], body=text))
    return {"ok": True, "task": task["id"]}


@app.websocket("/ws")
async def events(ws: WebSocket):
    await ws.accept()
    hub.clients.add(ws)
    await ws.send_text(json.dumps({"type": "hello", "release": AppConfig.from_env().release_id}))
    try:
        while True:
            await ws.receive_text()
    except WebSocketDisconnect:
        pass
    finally:
        hub.clients.discard(ws)
