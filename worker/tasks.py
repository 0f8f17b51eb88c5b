"""Celery tasks: thin wrappers that bind log context and call plain functions."""

from __future__ import annotations

import random

import structlog
from celery import Task
from celery.exceptions import Reject
from kombu.exceptions import OperationalError as BrokerError

from shared import metrics
from shared.config import ConfigError, get_settings
from shared.db import session_factory
from shared.queue import MAX_COUNTDOWN_SECONDS, PROCESS_EVENT_TASK, PURGE_PAYLOADS_TASK, RECONCILE_TASK, SWEEP_TASK
from worker import sweeper
from worker.celery_app import app
from worker.errors import DatabaseUnavailable
from worker.ledger import Delivery
from worker.process import process_delivery

log = structlog.get_logger("clerk_sync.tasks")


@app.task(name=PROCESS_EVENT_TASK, bind=True, max_retries=None)
def process_event(self: Task, svix_id: str, svix_timestamp: int | None, body: str) -> str:
    """Apply one event. While Postgres is down, retry without spending its budget."""
    structlog.contextvars.bind_contextvars(svix_id=svix_id, task_id=self.request.id)
    settings = get_settings()
    try:
        return process_delivery(
            session_factory(settings),
            Delivery(svix_id=svix_id, svix_timestamp=svix_timestamp, body=body),
            settings=settings,
        )
    except DatabaseUnavailable as exc:
        metrics.database_unavailable_retry(structlog.contextvars.get_contextvars().get("event_type"))
        countdown = min(2 ** min(self.request.retries, 5), MAX_COUNTDOWN_SECONDS / 2) + random.uniform(0, 1)
        try:
            raise self.retry(exc=exc, countdown=countdown) from exc
        except BrokerError:
            # Redis is gone too: leave the message where it is; it is redelivered.
            raise Reject(exc, requeue=True) from exc
    finally:
        structlog.contextvars.clear_contextvars()


@app.task(name=SWEEP_TASK, ignore_result=True)
def sweep() -> int:
    settings = get_settings()
    with session_factory(settings).begin() as session:
        count = sweeper.sweep(session, app, stale_pending_seconds=settings.stale_pending_seconds)
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
