"""What beat's sweep does: re-enqueue what is due or lost, purge old payloads.

Long retries are scheduled here, from Postgres, not with Celery countdowns: a
countdown longer than Redis's visibility timeout makes a task run again and again.
"""

from __future__ import annotations

import datetime as dt
import json

import structlog
from sqlalchemy import and_, func, null, or_, select, update
from sqlalchemy.orm import Session

from shared import receipts
from shared.models import WebhookEvent
from shared.publish import EventPublisher
from worker.pipeline import ledger

log = structlog.get_logger("clerk_sync.sweeper")

SWEEP_BATCH = 500
# The retention purge works in transactions of this many rows, for at most PURGE_SECONDS a run: the
# pool process running it applies no events meanwhile, and what is left the next hourly run takes.
PURGE_CHUNK = 1000
PURGE_SECONDS = 5.0
NO_BODY_ERROR = "payload no longer stored (scrubbed or purged): the event cannot be enqueued again"


def _due_condition(now: dt.datetime, stale_pending: dt.timedelta):  # type: ignore[no-untyped-def]
    return or_(
        and_(WebhookEvent.status == "failed", WebhookEvent.next_attempt_at <= now),
        # Pending rows left by a pause, or by a sweep whose message was lost since.
        and_(
            WebhookEvent.status == "pending",
            func.coalesce(WebhookEvent.next_attempt_at, WebhookEvent.updated_at + stale_pending) <= now,
        ),
    )


def body_of(row: WebhookEvent) -> str | None:
    """The event body to enqueue again: the stored payload, or the raw text kept."""
    if row.payload is not None and not row.payload.get("scrubbed"):
        return json.dumps(row.payload, separators=(",", ":"))
    return row.raw_body


# A conservative drain rate (events/s) for spacing re-enqueued events' due times.
RELEASE_DRAIN_RATE = 50


def requeue(session: Session, publisher: EventPublisher, rows: list[WebhookEvent], *, grace: dt.timedelta) -> int:
    """Enqueue ``rows`` and push their due time out so one sweep does not repeat another.

    A row whose body is gone can never be applied: it becomes ``dead`` rather than being
    picked again by every sweep. Raises QueueUnavailable if the broker refuses a message.
    """
    count = 0
    now = dt.datetime.now(dt.UTC)
    for row in rows:
        body = body_of(row)
        if body is None:
            row.status = "dead"
            row.last_error = NO_BODY_ERROR
            row.errors = [*row.errors, {"at": now.isoformat(), "error": NO_BODY_ERROR}]
            row.next_attempt_at = None
            row.processed_at = now
            row.updated_at = now
            continue
        publisher.publish(svix_id=row.svix_id, svix_timestamp=row.svix_timestamp, body=body)
        row.next_attempt_at = now + grace
        count += 1
    session.flush()
    return count


def sweep(session: Session, publisher: EventPublisher, *, stale_pending_seconds: int) -> int:
    """Re-enqueue failed events that are due and pending ones presumed lost."""
    if ledger.is_paused(session):
        return 0
    now = dt.datetime.now(dt.UTC)
    stale = dt.timedelta(seconds=stale_pending_seconds)
    rows = list(
        session.scalars(
            select(WebhookEvent)
            .where(_due_condition(now, stale))
            .order_by(WebhookEvent.received_at)
            .limit(SWEEP_BATCH)
            .with_for_update(skip_locked=True)
        )
    )
    return requeue(session, publisher, rows, grace=stale)


def release_held(session: Session, publisher: EventPublisher, *, stale_pending_seconds: int) -> int:
    """After a resume: enqueue every held event at once, in order of arrival."""
    total = 0
    while True:
        rows = list(
            session.scalars(
                select(WebhookEvent)
                .where(WebhookEvent.status == "pending", WebhookEvent.next_attempt_at.is_(None))
                .order_by(WebhookEvent.received_at, WebhookEvent.id)
                .limit(SWEEP_BATCH)
                .with_for_update(skip_locked=True)
            )
        )
        if not rows:
            return total
        # The n-th released event waits behind n others: give it time to be drained before
        # a sweep presumes it lost and enqueues it again (harmless, but wasted work).
        grace = dt.timedelta(seconds=stale_pending_seconds + total / RELEASE_DRAIN_RATE)
        total += requeue(session, publisher, rows, grace=grace)


def recover_lost(session: Session, publisher: EventPublisher, *, queue_name: str, older_than_seconds: float) -> int:
    """Re-enqueue events whose message vanished in Redis (``shared.receipts``); none while paused."""
    if ledger.is_paused(session):
        return 0

    def recorded(svix_ids: list[str]) -> set[str]:
        return set(session.scalars(select(WebhookEvent.svix_id).where(WebhookEvent.svix_id.in_(svix_ids))))

    requeued = receipts.recover_lost(
        publisher.redis, recorded, publisher.republish, queue_name=queue_name, older_than_seconds=older_than_seconds
    )
    if requeued:
        log.warning("lost_messages_requeued", count=requeued)
    return requeued


def purge_payloads(session: Session, *, retention_days: int, limit: int = PURGE_CHUNK) -> int:
    """Drop the bodies of up to ``limit`` processed/ignored events past retention, oldest first;
    dead rows stay whole. Found through ``ix_webhook_events_holding_body``: only rows with a body."""
    cutoff = dt.datetime.now(dt.UTC) - dt.timedelta(days=retention_days)
    due = (
        select(WebhookEvent.id)
        .where(
            WebhookEvent.status.in_(("processed", "ignored")),
            WebhookEvent.received_at < cutoff,
            or_(WebhookEvent.payload.is_not(None), WebhookEvent.raw_body.is_not(None)),
        )
        .order_by(WebhookEvent.received_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    result = session.execute(
        update(WebhookEvent)
        .where(WebhookEvent.id.in_(due.scalar_subquery()))
        # null(): a plain None would store JSON's null, which IS NOT NULL (rows purged before this
        # hold it, and the purge now turns them into SQL's NULL too).
        .values(payload=null(), raw_body=None)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
