"""TaskIQ broker on NATS JetStream and the job the worker runs for each new task.

Run the worker with: taskiq worker app.worker:broker
"""

import asyncio
import json
import re

import nats
from loguru import logger
from sqlalchemy import func, update
from taskiq_nats import PullBasedJetStreamBroker

from .config import EVENTS_SUBJECT, AppConfig
from .db import get_engine, row_to_dict, tasks

_config = AppConfig.from_env()
broker = PullBasedJetStreamBroker(
    servers=[_config.nats_url],
    subject="tasktracker.jobs",
    stream_name="TASKTRACKER_JOBS",
    durable="tasktracker-worker",
    **_config.nats_options(),  # NATS_USER / NATS_PASSWORD, handed to nats.connect()
)


def summarise(title: str, body: str) -> tuple[int, str]:
    """The worker's job: count words and build a one-line summary (stands in for the LLM call)."""
    words = re.findall(r"\w+", f"{title} {body}")
    summary = " ".join(words[:12])
    return len(words), summary


def _process(task_id: int) -> dict | None:
    with get_engine().begin() as conn:
        row = conn.execute(tasks.select().where(tasks.c.id == task_id)).one_or_none()
        if row is None:
            return None
        word_count, summary = summarise(row.title, row.body)
        done = conn.execute(
            update(tasks)
            .where(tasks.c.id == task_id)
            .values(status="done", word_count=word_count, summary=summary, processed_at=func.now())
            .returning(*tasks.c)
        ).one()
    return row_to_dict(done)


async def publish_event(nc, kind: str, task: dict) -> None:
    await nc.publish(EVENTS_SUBJECT, json.dumps({"type": kind, "task": task}).encode())


@broker.task(task_name="process_task")
async def process_task(task_id: int) -> dict | None:
    result = await asyncio.to_thread(_process, task_id)
    if result is None:
        logger.warning("task {} vanished before processing", task_id)
        return None
    cfg = AppConfig.from_env()
    nc = await nats.connect(cfg.nats_url, **cfg.nats_options())
    try:
        await publish_event(nc, "task.processed", result)
        await nc.flush()
    finally:
        await nc.close()
    logger.info("processed task {} ({} words)", task_id, result["word_count"])
    return result
