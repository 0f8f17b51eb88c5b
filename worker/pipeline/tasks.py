"""The event task: a batch of what is waiting, applied by ``process_batch``, acked after it commits.

Celery hands a pool process one message at a time (prefetch one). The task adds whatever else
is waiting in the queue, up to ``BATCH_LIMIT`` (``taking``: atomically, recorded unacked as kombu
records its own), and applies them all in one ``process_batch`` call. So a lone event is applied
at once, and under load a batch is what piled up while the worker was busy. After the commit
the taken messages are acked and the batch's receipts forgotten, and the next batch is taken,
all in one round trip; the task goes on so while something is waiting, for at most
``KEEP_TAKING_SECONDS``. Celery acks its own message when the task returns.

When Postgres cannot be reached the batch waits its turn in the worker's shared backoff
(``outage``) for at most ``database_wait``, then hands its events back to the queue and
returns; no attempt spends an event's retry budget. The soft time limit hands them back too.
"""

from __future__ import annotations

import time
from functools import cache
from typing import Any

import structlog
from celery.exceptions import SoftTimeLimitExceeded
from redis.exceptions import RedisError

from shared import metrics, receipts
from shared.config import Settings, get_settings
from shared.db import session_factory
from shared.publish import PROCESS_EVENT_TASK, EventPublisher, QueueUnavailable
from shared.redis_client import redis_client
from worker.celery_app import app
from worker.pipeline import outage, taking
from worker.pipeline.batch import process_batch
from worker.pipeline.errors import DatabaseUnavailable
from worker.pipeline.ledger import Delivery

log = structlog.get_logger("clerk_sync.tasks")

# The most events one transaction applies. Larger batches amortise the commit and the round
# trips further; this many keeps a batch well under a second (docs/performance.md).
BATCH_LIMIT = 64

# After a batch, the pool process takes the next one itself, in the round trip that acks the
# last, for this long at most; then it returns to Celery (its next message, a shutdown). Each
# batch handed over by Celery costs its main process a wake-up, a dispatch and an ack.
KEEP_TAKING_SECONDS = 1.0


@app.task(
    name=PROCESS_EVENT_TASK,
    bind=True,
    acks_late=True,
    # A pool process killed at the hard time limit: its message goes back to the queue.
    acks_on_failure_or_timeout=False,
    reject_on_worker_lost=True,
    ignore_result=True,
    Request=taking.EventRequest,
)
def process_event(self: Any, svix_id: str, svix_timestamp: int | None, body: str) -> None:
    """Apply this event and whatever else is waiting, batch after batch while more is waiting."""
    settings = get_settings()
    client = redis_for(settings.redis_url)
    wait = outage.backoff(cap_seconds=settings.timings.database_wait)
    own_tag = (self.request.properties or {}).get("delivery_tag") or self.request.id
    keep_taking_until = time.monotonic() + KEEP_TAKING_SECONDS
    # While Postgres is away, taking more would only move more events round the queue.
    taken = [] if wait.step else _take(client, settings, own_tag)
    # One name for what was taken and the batch it makes: a soft time limit anywhere sees both.
    batch = (taken, [Delivery(svix_id, svix_timestamp, body), *(item.delivery for item in taken)])
    try:
        while batch[1]:
            structlog.contextvars.bind_contextvars(batch_size=len(batch[1]))
            if not _apply(settings, batch[1], wait):
                _hand_back(client, settings, own_tag, *batch)
                return
            more = time.monotonic() < keep_taking_until
            batch = _finish(client, settings, own_tag, *batch, take_more=more)
    except SoftTimeLimitExceeded:
        log.warning("batch_time_limit", soft_limit_seconds=settings.timings.task_soft_time_limit)
        _hand_back(client, settings, own_tag, *batch)
    finally:
        structlog.contextvars.clear_contextvars()


@cache
def redis_for(redis_url: str) -> Any:
    """The process's client for taking, acking and receipts (redis-py resets it after a fork)."""
    return redis_client(redis_url, timeout=5.0)


@cache
def _publisher(settings: Settings) -> EventPublisher:
    return EventPublisher(settings, timeout=5.0)


def _take(client: Any, settings: Settings, own_tag: str) -> list[taking.Taken]:
    try:
        return taking.take_waiting(client, settings.queue_name, delivery_tag=own_tag, limit=BATCH_LIMIT - 1)
    except (RedisError, OSError) as exc:
        # Redis went away after handing this message over: apply it alone.
        log.info("take_waiting_failed", error=type(exc).__name__)
        return []


def _apply(settings: Settings, deliveries: list[Delivery], wait: outage.DatabaseBackoff) -> bool:
    """True once the batch is recorded; False if Postgres stayed away for ``database_wait``."""
    deadline = time.monotonic() + settings.timings.database_wait
    factory = session_factory(settings)
    while wait.wait_turn(deadline):
        step = wait.step
        try:
            process_batch(factory, deliveries, settings=settings)
        except DatabaseUnavailable as exc:
            for _delivery in deliveries:
                metrics.database_unavailable_retry(None)
            wait.failed(step, error=str(exc), waiting_events=len(deliveries))
            continue
        except SoftTimeLimitExceeded:
            raise
        except Exception:
            # A bug, not an outage: log it, and keep the events for a later attempt.
            log.exception("batch_failed")
            time.sleep(settings.timings.restore_interval)
            return False
        wait.succeeded(step)
        return True
    return False


def _finish(
    client: Any,
    settings: Settings,
    own_tag: str,
    taken: list[taking.Taken],
    deliveries: list[Delivery],
    *,
    take_more: bool,
) -> tuple[list[taking.Taken], list[Delivery]]:
    """Every event of the batch has its row: ack what was taken, forget the receipts, and (in the
    same round trip) take the next batch if ``take_more``: what it took, and its events."""
    try:
        pipe = client.pipeline(transaction=False)
        taking.acknowledge(pipe, delivery_tag=own_tag, taken=taken)
        receipts.forget_on(pipe, settings.queue_name, [d.svix_id for d in deliveries])
        if take_more:
            taking.take_on(pipe, settings.queue_name, delivery_tag=own_tag, limit=BATCH_LIMIT)
        replies = pipe.execute()
    except (RedisError, OSError) as exc:
        # Harmless: kombu redelivers what was not acked (a duplicate, recorded as such), and
        # the sweep forgets receipts whose events Postgres knows. What a lost reply took is
        # in kombu's unacked hash: visible again after the visibility timeout.
        log.info("batch_ack_failed", error=type(exc).__name__)
        return [], []
    taken = taking.read_taken(replies[-1]) if take_more else []
    return taken, [item.delivery for item in taken]


def _hand_back(
    client: Any, settings: Settings, own_tag: str, taken: list[taking.Taken], deliveries: list[Delivery]
) -> None:
    """Put the events back on the queue (fresh receipts) and let go of the messages they came in."""
    publisher = _publisher(settings)
    try:
        for delivery in deliveries:
            publisher.publish(svix_id=delivery.svix_id, svix_timestamp=delivery.svix_timestamp, body=delivery.body)
        pipe = client.pipeline(transaction=False)
        receipts.touch_on(pipe, settings.queue_name, [d.svix_id for d in deliveries])
        taking.acknowledge(pipe, delivery_tag=own_tag, taken=taken)
        pipe.execute()
    except (QueueUnavailable, RedisError, OSError) as exc:
        # Redis is away too: nothing is acked that was not enqueued again; kombu's visibility
        # timeout and the receipts bring the rest back.
        log.warning("batch_hand_back_failed", error=type(exc).__name__)
        return
    log.info("batch_handed_back", count=len(deliveries))
