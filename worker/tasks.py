"""Celery tasks: thin wrappers that bind log context and call plain functions."""

from __future__ import annotations

import random
import time
from functools import cache
from typing import Any

import structlog
from celery_batches import SimpleRequest
from kombu.exceptions import OperationalError as BrokerError
from redis.exceptions import RedisError
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_delay, wait_random_exponential

from shared import metrics
from shared.config import ConfigError, Settings, get_settings
from shared.db import session_factory
from shared.queue import (
    BATCH_INTERVAL_SECONDS,
    BATCH_SIZE,
    MAX_COUNTDOWN_SECONDS,
    PROCESS_EVENT_TASK,
    PURGE_PAYLOADS_TASK,
    RECONCILE_TASK,
    SWEEP_TASK,
    enqueue_event,
    forget_receipts,
    redis_client,
)
from worker import sweeper
from worker.batch import process_batch
from worker.batching import EventBatches
from worker.celery_app import app
from worker.errors import DatabaseUnavailable
from worker.ledger import Delivery

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
            if _requeue_later(deliveries):
                return
    finally:
        structlog.contextvars.clear_contextvars()


@cache
def _redis(redis_url: str) -> Any:
    return redis_client(redis_url, timeout=5.0)


def _forget_receipts(settings: Settings, deliveries: list[Delivery]) -> None:
    """Every event of the batch has its row now; the ingress's receipts can go."""
    try:
        forget_receipts(_redis(settings.redis_url), settings.queue_name, [d.svix_id for d in deliveries])
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


def _requeue_later(deliveries: list[Delivery]) -> bool:
    """Put the events back with a countdown; False (keep waiting) if Redis is down too."""
    try:
        for delivery in deliveries:
            enqueue_event(
                app,
                svix_id=delivery.svix_id,
                svix_timestamp=delivery.svix_timestamp,
                body=delivery.body,
                countdown=random.uniform(MAX_COUNTDOWN_SECONDS / 4, MAX_COUNTDOWN_SECONDS / 2),
            )
    except (BrokerError, OSError) as exc:
        # Acking now would lose the events: hold them until either store is back.
        log.warning("requeue_failed_waiting", error=type(exc).__name__)
        time.sleep(5)
        return False
    log.warning("batch_requeued_database_unavailable", count=len(deliveries))
    return True


@app.task(name=SWEEP_TASK, ignore_result=True)
def sweep() -> int:
    settings = get_settings()
    with session_factory(settings).begin() as session:
        count = sweeper.sweep(session, app, stale_pending_seconds=settings.stale_pending_seconds)
        count += sweeper.recover_lost(
            session,
            app,
            _redis(settings.redis_url),
            queue_name=settings.queue_name,
            older_than_seconds=settings.lost_message_seconds,
        )
    if count:
        log.info("sweep_requeued", count=count)
    return count


@app.task(name=PURGE_PAYLOADS_TASK, ignore_result=True)
def purge_payloads() -> int:
    settings = get_settings()
    with session_factory(settings).begin() as session:
        count = sweeper.purge_payloads(session, retention_days=settings.payload_retention_days)
    log.info("payloads_purged", count=count)
    return count


# acks_late off: a reconcile may outlast the broker's visibility timeout, and one
# lost run is simply the next interval's job. Reads only: it never runs --fix.
@app.task(name=RECONCILE_TASK, ignore_result=True, acks_late=False, time_limit=3600, soft_time_limit=3540)
def reconcile() -> dict[str, int]:
    """Report drift between Clerk and the tables in the logs (RECONCILE_INTERVAL_SECONDS)."""
    from worker.clerk_api import ClerkApiError, client_from_settings
    from worker.reconcile import reconcile as run_reconcile

    settings = get_settings()
    try:
        with client_from_settings(settings) as client:
            report = run_reconcile(session_factory(settings), client, settings=settings)
    except (ConfigError, ClerkApiError) as exc:
        log.error("reconcile_failed", error=str(exc))
        return {}
    counts = report.counts()
    if report.drift_found:
        log.warning("reconcile_drift_found", **counts)
    else:
        log.info("reconcile_no_drift", **counts)
    return counts
