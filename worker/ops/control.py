"""Pause and resume: hold applying events while the ingress keeps accepting them."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from shared.models import WebhookEvent
from shared.publish import EventPublisher
from worker.pipeline import ledger
from worker.recovery import sweeper


def pause(session: Session) -> bool:
    """Set the paused flag; returns whether it was already set."""
    was_paused = ledger.is_paused(session)
    ledger.set_paused(session, True)
    return was_paused


def unpause(session: Session) -> bool:
    """Clear the paused flag; returns whether it was set. Release held events after commit."""
    was_paused = ledger.is_paused(session)
    ledger.set_paused(session, False)
    return was_paused


def held_count(session: Session) -> int:
    """Events held by a pause (or replayed) and not yet enqueued again."""
    return int(
        session.scalar(
            select(func.count()).where(WebhookEvent.status == "pending", WebhookEvent.next_attempt_at.is_(None))
        )
        or 0
    )


def release_held(session: Session, publisher: EventPublisher, *, stale_pending_seconds: int) -> int:
    """Enqueue every held event in order of arrival (see ``worker.recovery.sweeper.release_held``)."""
    return sweeper.release_held(session, publisher, stale_pending_seconds=stale_pending_seconds)
