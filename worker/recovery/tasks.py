"""Beat's periodic jobs: re-enqueue what is due or lost, purge old payloads.

While Postgres is unreachable a job does nothing and says so through the worker's shared
database backoff (``worker.pipeline.outage``): one warning per worker per backoff step, never
a traceback. The next run after Postgres is back catches up.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import cache
from typing import TypeVar

import structlog
from sqlalchemy.orm import Session

from shared.config import Settings, get_settings
from shared.db import session_factory
from shared.publish import PURGE_PAYLOADS_TASK, SWEEP_TASK, EventPublisher, QueueUnavailable
from worker.celery_app import app
from worker.pipeline import outage
from worker.pipeline.errors import Failure, classify, describe
from worker.recovery import sweeper

log = structlog.get_logger("clerk_sync.tasks")

T = TypeVar("T")


@cache
def _publisher(settings: Settings) -> EventPublisher:
    return EventPublisher(settings, timeout=5.0)


def _in_transaction(settings: Settings, job: Callable[[Session], T], *, fallback: T) -> T:
    """Run ``job`` in one transaction; ``fallback`` if Postgres or Redis cannot be reached."""
    wait = outage.backoff(cap_seconds=settings.timings.database_wait)
    step = wait.step
    try:
        with session_factory(settings).begin() as session:
            result = job(session)
    except QueueUnavailable as exc:
        log.warning("sweep_broker_unavailable", error=str(exc))
        return fallback
    except Exception as exc:
        if classify(exc) is not Failure.UNAVAILABLE:
            raise
        wait.failed(step, error=describe(exc), waiting_events=0)
        return fallback
    wait.succeeded(step)
    return result


@app.task(name=SWEEP_TASK, ignore_result=True)
def sweep() -> int:
    settings = get_settings()
    publisher = _publisher(settings)

    def requeue(session: Session) -> int:
        count = sweeper.sweep(session, publisher, stale_pending_seconds=settings.stale_pending_seconds)
        return count + sweeper.recover_lost(
            session,
            publisher,
            queue_name=settings.queue_name,
            older_than_seconds=settings.timings.lost_message_after,
        )

    count = _in_transaction(settings, requeue, fallback=0)
    if count:
        log.info("sweep_requeued", count=count)
    return count


@app.task(name=PURGE_PAYLOADS_TASK, ignore_result=True)
def purge_payloads() -> int:
    """Chunk after chunk, each its own transaction, until none is left or PURGE_SECONDS have passed."""
    settings = get_settings()

    def purge(session: Session) -> int:
        return sweeper.purge_payloads(session, retention_days=settings.payload_retention_days)

    deadline = time.monotonic() + sweeper.PURGE_SECONDS
    count = 0
    while True:
        purged = _in_transaction(settings, purge, fallback=0)
        count += purged
        if purged < sweeper.PURGE_CHUNK or time.monotonic() >= deadline:
            break
    log.info("payloads_purged", count=count)
    return count
