"""Pause and resume: hold applying events while the ingress keeps accepting them."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from shared.models import WebhookEvent
from shared.publish import EventPublisher
from worker.ops import audit
from worker.ops.audit import Actor
from worker.ops.dead_letters import Transaction
from worker.pipeline import ledger
from worker.recovery import sweeper


def pause(session: Session, *, actor: Actor) -> bool:
    """Set the paused flag; returns whether it was already set (then nothing changed: no audit row)."""
    was_paused = ledger.is_paused(session)
    if not was_paused:
        ledger.set_paused(session, True)
        audit.record(session, actor, action="pause")
    return was_paused


def unpause(session: Session, *, actor: Actor) -> bool:
    """Clear the paused flag; returns whether it was set. Release held events after commit."""
    was_paused = ledger.is_paused(session)
    ledger.set_paused(session, False)
    audit.record(session, actor, action="resume", count=held_count(session))
    return was_paused


@dataclass(frozen=True)
class Resumed:
    was_paused: bool
    released: int


def resume(transaction: Transaction, publisher: EventPublisher, *, actor: Actor, stale_pending_seconds: int) -> Resumed:
    """Clear the flag (committed first), then enqueue the held events in order of arrival.

    The flag must be committed before a released message reaches a worker, or the
    worker would hold that event again. ``QueueUnavailable`` propagates after the flag
    is cleared: the held events stay pending and the sweeper enqueues them later.
    """
    with transaction() as session:
        was_paused = unpause(session, actor=actor)
    with transaction() as session:
        released = release_held(session, publisher, stale_pending_seconds=stale_pending_seconds)
    return Resumed(was_paused=was_paused, released=released)


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
