"""Beat's periodic jobs: re-enqueue what is due or lost, purge old payloads."""

from __future__ import annotations

from functools import cache

import structlog

from shared.config import Settings, get_settings
from shared.db import session_factory
from shared.publish import PURGE_PAYLOADS_TASK, SWEEP_TASK, EventPublisher
from worker.celery_app import app
from worker.recovery import sweeper

log = structlog.get_logger("clerk_sync.tasks")


@cache
def _publisher(settings: Settings) -> EventPublisher:
    return EventPublisher(settings, timeout=5.0)


@app.task(name=SWEEP_TASK, ignore_result=True)
def sweep() -> int:
    settings = get_settings()
    publisher = _publisher(settings)
    with session_factory(settings).begin() as session:
        count = sweeper.sweep(session, publisher, stale_pending_seconds=settings.stale_pending_seconds)
        count += sweeper.recover_lost(
            session, publisher, queue_name=settings.queue_name, older_than_seconds=settings.lost_message_seconds
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
