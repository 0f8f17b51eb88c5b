"""The `webhook_events` ledger and the operators' audit table, written and read directly by tests."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from devkit.waiting import wait_for
from shared.models import FINAL_STATUSES, OperatorAction, WebhookEvent
from shared.statuses import EventStatus

# What a dead event has spent: the default RETRY_MAX_ATTEMPTS.
DEAD_ATTEMPTS = 8


def add_event(
    session: Session, svix_id: str, status: str, *, age: dt.timedelta = dt.timedelta(0), **fields: Any
) -> WebhookEvent:
    """A ledger row as the worker would have left it, received ``age`` ago; ``fields`` override any column.

    By default a `user.created` of `user_a` (its entity), and a dead one has spent its attempts.
    """
    now = dt.datetime.now(dt.UTC)
    event_type = fields.setdefault("event_type", "user.created")
    entity_id = fields.setdefault("entity_id", "user_a")
    fields.setdefault("payload", {"type": event_type, "data": {"id": entity_id}})
    fields.setdefault("received_at", now - age)
    fields.setdefault("updated_at", now)
    fields.setdefault("attempts", DEAD_ATTEMPTS if status == EventStatus.DEAD else 0)
    row = WebhookEvent(svix_id=svix_id, status=status, **fields)
    session.add(row)
    session.flush()
    return row


def statuses(session_factory: Any) -> dict[str, str]:
    """svix_id -> status of every `webhook_events` row."""
    with session_factory() as session:
        return dict(session.execute(select(WebhookEvent.svix_id, WebhookEvent.status)).all())


def ledger_row(session_factory: Any, svix_id: str) -> WebhookEvent | None:
    """The `webhook_events` row of ``svix_id``, if there is one."""
    with session_factory() as session:
        return session.scalar(select(WebhookEvent).where(WebhookEvent.svix_id == svix_id))


def ledger_rows(session_factory: Any) -> list[WebhookEvent]:
    """Every `webhook_events` row."""
    with session_factory() as session:
        return list(session.scalars(select(WebhookEvent)))


def audit_rows(session_factory: Any) -> list[OperatorAction]:
    """Every `operator_actions` row, oldest first."""
    with session_factory() as session:
        return list(session.scalars(select(OperatorAction).order_by(OperatorAction.id)))


def wait_until_final(session_factory: Any, count: int, *, timeout: float = 90) -> dict[str, str]:
    """Wait until the ledger holds ``count`` events, all in a final status; returns their statuses."""

    def done() -> dict[str, str] | None:
        seen = statuses(session_factory)
        return seen if len(seen) == count and set(seen.values()) <= set(FINAL_STATUSES) else None

    result: dict[str, str] = wait_for(done, timeout=timeout, what=f"{count} events final")
    return result
