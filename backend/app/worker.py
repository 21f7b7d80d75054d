"""TaskIQ broker on NATS JetStream, the job the worker runs for each new task, and the sweeper
that queues again a task whose job was lost (backend/README.md, "Jobs").

Run the worker with: taskiq worker app.worker:broker --ack-type when_executed

- The job stream is declared here: file storage, work-queue retention (a job leaves the stream
  once acknowledged), limits from the settings, and new jobs refused when full (never old ones
  dropped).
- A job is acknowledged after it ran (`--ack-type when_executed`); one not acknowledged (the
  worker killed mid-job) is delivered again after JOB_ACK_WAIT seconds. `finish_task` makes a
  second run of a finished job change nothing.
- The row is the record: a task still pending JOB_REQUEUE_AFTER seconds after its job was queued
  (lost with NATS, refused while it was down, or failed) is queued again by the sweeper, at most
  JOB_MAX_REQUEUES times; then it is marked failed (the dead letters `status` shows).
- The worker proves it can take a job: each fetch from the stream touches HEARTBEAT (the health
  check reads its age), and a worker that cannot fetch, or finds jobs waiting that it is not
  given, exits so that its container is started again.
"""

import asyncio
import json
import os
import re
import time
from pathlib import Path

from loguru import logger
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import AckPolicy, ConsumerConfig, DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError
from taskiq import AckableMessage, TaskiqEvents, TaskiqState
from taskiq_nats import PullBasedJetStreamBroker

from . import db, tracing
from .config import EVENTS_SUBJECT, AppConfig

HEARTBEAT = Path(os.environ.get("WORKER_HEARTBEAT", "/tmp/worker-heartbeat"))
STUCK_AFTER = 60  # seconds without a working fetch, or with jobs waiting and none given: exit
STREAM, SUBJECT, DURABLE = "TASKTRACKER_JOBS", "tasktracker.jobs", "tasktracker-worker"


class JobBroker(PullBasedJetStreamBroker):
    """The pull broker with the stream declared on purpose and a fetch loop that notices when it
    can no longer take jobs."""

    async def _add_or_reuse_stream(self) -> None:
        if not self.is_worker_process:  # the API publishes; the worker owns the stream's shape
            await super()._add_or_reuse_stream()
            return
        try:
            info = await self.js.stream_info(STREAM)
        except NotFoundError:
            await self.js.add_stream(config=self.stream_config)
            return
        if info.config.retention != self.stream_config.retention:
            # A stream made by an earlier release (the library's default keeps every job forever)
            # cannot change its retention. Its jobs are in the database too: the tasks they were for
            # are still pending, and the sweeper queues them again.
            logger.warning("replacing job stream {} ({} messages): retention {} -> {}", STREAM,
                           info.state.messages, info.config.retention, self.stream_config.retention)
            await self.js.delete_stream(STREAM)
            await self.js.add_stream(config=self.stream_config)
        else:
            await self.js.update_stream(config=self.stream_config)

    async def listen(self):
        healthy_since = time.monotonic()
        starved = 0
        while True:
            try:
                messages = await self.consumer.fetch(batch=self.pull_consume_batch, timeout=5)
            except NatsTimeoutError:
                messages = []
                info = await self._consumer_info()
                # Jobs wait and none is given although none is in flight: the subscription is lost.
                starved = starved + 1 if info and info.num_pending and not info.num_ack_pending else 0
                if starved * 5 >= STUCK_AFTER:
                    self._give_up(f"{info.num_pending} jobs wait in the stream but none was given for {STUCK_AFTER} s")
            except Exception as exc:  # NATS away, the consumer gone
                if time.monotonic() - healthy_since > STUCK_AFTER:
                    self._give_up(f"no job could be fetched for {STUCK_AFTER} s ({type(exc).__name__}: {exc})")
                logger.warning("fetching jobs failed ({}: {}); trying again", type(exc).__name__, exc)
                await asyncio.sleep(1)
                continue
            healthy_since = time.monotonic()
            HEARTBEAT.touch()
            for message in messages:
                yield AckableMessage(data=message.data, ack=message.ack)

    async def _consumer_info(self):
        try:
            return await self.consumer.consumer_info()
        except Exception:
            return None

    @staticmethod
    def _give_up(reason: str) -> None:
        logger.error("the worker cannot take jobs: {}; exiting so that it is started again", reason)
        os._exit(3)


_config = AppConfig.from_env()
broker = JobBroker(
    servers=[_config.nats_url],
    subject=SUBJECT,
    stream_name=STREAM,
    durable=DURABLE,
    stream_config=StreamConfig(
        name=STREAM, subjects=[SUBJECT], retention=RetentionPolicy.WORK_QUEUE, storage=StorageType.FILE,
        discard=DiscardPolicy.NEW, max_msgs=_config.job_stream_max_msgs, max_bytes=_config.job_stream_max_bytes,
    ),
    consumer_config=ConsumerConfig(
        durable_name=DURABLE, ack_policy=AckPolicy.EXPLICIT, ack_wait=_config.job_ack_wait, max_deliver=5,
    ),
    max_reconnect_attempts=-1,  # through any NATS restart; the fetch loop above notices one it misses
    **_config.nats_options(),  # NATS_USER / NATS_PASSWORD, handed to nats.connect()
)


def summarise(title: str, body: str) -> tuple[int, str]:
    """The worker's job: count words and build a one-line summary (stands in for the LLM call)."""
    words = re.findall(r"\w+", f"{title} {body}")
    summary = " ".join(words[:12])
    return len(words), summary


def _summary(row) -> dict:
    word_count, summary = summarise(row.title, row.body)
    return {"word_count": word_count, "summary": summary}


async def publish_event(nc, kind: str, task: dict) -> None:
    await nc.publish(EVENTS_SUBJECT, json.dumps({"type": kind, "task": task}).encode())


@broker.task(task_name="process_task")
async def process_task(task_id: int) -> dict | None:
    with tracing.job_span("process_task", task_id=task_id):  # with LOGFIRE_TOKEN: a span per job
        return await _process_task(task_id)


async def _process_task(task_id: int) -> dict | None:
    if _config.job_standin_seconds:  # the LLM call's latency, outside the row's lock
        await asyncio.sleep(_config.job_standin_seconds)
    outcome, result = await asyncio.to_thread(db.finish_task, task_id, _summary)
    if outcome != "done":
        logger.info("task {} {}: a repeated job, nothing to do", task_id,
                    "was deleted" if outcome == "vanished" else f"is already {result['status']}")
        return None
    await publish_event(broker.client, "task.processed", result)
    logger.info("processed task {} ({} words)", task_id, result["word_count"])
    return result


async def sweep_forever(cfg: AppConfig) -> None:
    """Every few seconds: queue again the tasks whose job is late (db.claim_stale)."""
    while True:
        await asyncio.sleep(max(1, min(cfg.job_requeue_after // 4, 15)))
        if not broker.client.is_connected:
            continue
        try:
            again, failed = await asyncio.to_thread(db.claim_stale, cfg.job_requeue_after, cfg.job_max_requeues)
            for task_id in again:
                await process_task.kiq(task_id)
        except Exception as exc:
            logger.warning("the sweeper could not queue late jobs ({}: {})", type(exc).__name__, exc)
            continue
        if again or failed:
            logger.warning("sweeper: queued {} late jobs again; {} tasks failed after {} tries",
                           len(again), len(failed), cfg.job_max_requeues)


@broker.on_event(TaskiqEvents.WORKER_STARTUP)
async def start_the_sweeper(state: TaskiqState) -> None:
    tracing.setup("worker")  # with LOGFIRE_TOKEN: its jobs, queries and logs to Logfire
    HEARTBEAT.touch()
    state.sweeper = asyncio.create_task(sweep_forever(AppConfig.from_env()))


@broker.on_event(TaskiqEvents.WORKER_SHUTDOWN)
async def stop_the_sweeper(state: TaskiqState) -> None:
    sweeper = getattr(state, "sweeper", None)
    if sweeper:
        sweeper.cancel()
