"""The event task: thin, binding log context and calling ``process_batch``."""

from __future__ import annotations

import random
import time
from functools import cache
from typing import Any

import structlog
from celery_batches import SimpleRequest
from redis.exceptions import RedisError
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_delay, wait_random_exponential

from shared import metrics, receipts
from shared.config import Settings, get_settings
from shared.db import session_factory
from shared.publish import PROCESS_EVENT_TASK, EventPublisher, QueueUnavailable
from shared.redis_client import redis_client
from worker.celery_app import BATCH_INTERVAL_SECONDS, BATCH_SIZE, MAX_COUNTDOWN_SECONDS, app
from worker.pipeline.batch import process_batch
from worker.pipeline.batching import EventBatches
from worker.pipeline.errors import DatabaseUnavailable
from worker.pipeline.ledger import Delivery

log = structlog.get_logger("clerk_sync.tasks")


@app.task(
    name=PROCESS_EVENT_TASK,
    base=EventBatches,
    flush_every=BATCH_SIZE,
    flush_interval=BATCH_INTERVAL_SECONDS,
    acks_late=True,
    ignore_result=True,
)
def process_event(requests: list[SimpleRequest]) -> None:
    """Apply a batch of events (each message is one event; acked after the batch returns).

    While Postgres is unreachable the batch waits in-process (nothing else can make
    progress either); after a minute its events go back to the queue with a short
    countdown. No attempt spends an event's retry budget.
    """
    settings = get_settings()
    deliveries = [Delivery(*request.args) for request in requests]
    structlog.contextvars.bind_contextvars(batch_size=len(deliveries))
    try:
        while True:
            try:
                for attempt in _while_database_unavailable(deliveries):
                    with attempt:
                        process_batch(session_factory(settings), deliveries, settings=settings)
                _forget_receipts(settings, deliveries)
                return
            except DatabaseUnavailable:
                pass
            except Exception:
                # A bug, not an outage: returning would ack the batch, so put the events back.
                log.exception("batch_failed_requeued")
            if _requeue_later(settings, deliveries):
                return
    finally:
        structlog.contextvars.clear_contextvars()


@cache
def _redis(redis_url: str) -> Any:
    return redis_client(redis_url, timeout=5.0)


@cache
def _publisher(settings: Settings) -> EventPublisher:
    return EventPublisher(settings, timeout=5.0)


def _forget_receipts(settings: Settings, deliveries: list[Delivery]) -> None:
    """Every event of the batch has its row now; the ingress's receipts can go."""
    try:
        receipts.forget(_redis(settings.redis_url), settings.queue_name, [d.svix_id for d in deliveries])
    except (RedisError, OSError) as exc:
        # Harmless: the sweep forgets receipts whose events Postgres already knows.
        log.info("receipts_not_forgotten", error=type(exc).__name__)


def _while_database_unavailable(deliveries: list[Delivery]) -> Retrying:
    def count_retry(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        log.warning("database_unavailable", error=str(error), waiting_events=len(deliveries))
        for _delivery in deliveries:
            metrics.database_unavailable_retry(None)

    return Retrying(
        retry=retry_if_exception_type(DatabaseUnavailable),
        wait=wait_random_exponential(multiplier=0.5, max=10),
        stop=stop_after_delay(60),
        before_sleep=count_retry,
        reraise=True,
    )


def _requeue_later(settings: Settings, deliveries: list[Delivery]) -> bool:
    """Put the events back with a countdown; False (keep waiting) if Redis is down too."""
    try:
        for delivery in deliveries:
            _publisher(settings).publish(
                svix_id=delivery.svix_id,
                svix_timestamp=delivery.svix_timestamp,
                body=delivery.body,
                countdown=random.uniform(MAX_COUNTDOWN_SECONDS / 4, MAX_COUNTDOWN_SECONDS / 2),
            )
    except QueueUnavailable as exc:
        # Acking now would lose the events: hold them until either store is back.
        log.warning("requeue_failed_waiting", error=str(exc))
        time.sleep(5)
        return False
    log.warning("batch_requeued_database_unavailable", count=len(deliveries))
    return True
