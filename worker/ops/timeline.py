"""Every event that touched one user, organization or membership, in Clerk's order."""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, Numeric, case, extract, func, or_, select
from sqlalchemy.orm import Session

from shared.clerk_objects import SECONDS_UP_TO
from shared.models import WebhookEvent


def touches_entity(entity_id: str) -> ColumnElement[bool]:
    """Events about ``entity_id``: its own id, or a membership naming the user or org."""
    return or_(
        WebhookEvent.entity_id == entity_id,
        WebhookEvent.user_clerk_id == entity_id,
        WebhookEvent.organization_clerk_id == entity_id,
    )


def _envelope_millis() -> ColumnElement[Any]:
    """The envelope ``timestamp`` in ms (Clerk sends ms; a value up to 2100-01-01 in seconds is seconds,
    as ``shared.clerk_objects.millis`` reads it)."""
    raw = WebhookEvent.payload["timestamp"]
    number = case((func.jsonb_typeof(raw) == "number", raw.astext.cast(Numeric)), else_=None)
    return case((number <= SECONDS_UP_TO, number * 1000), else_=number)


def timeline(session: Session, entity_id: str) -> list[tuple[WebhookEvent, int | None]]:
    """Every event that touched ``entity_id``, in Clerk's order then arrival order.

    Returns each row with its envelope timestamp in ms (None when the body was not
    JSON or its payload has been purged; those sort by arrival).
    """
    millis = _envelope_millis()
    order_key = func.coalesce(millis, extract("epoch", WebhookEvent.received_at) * 1000)
    rows = session.execute(
        select(WebhookEvent, millis)
        .where(touches_entity(entity_id))
        .order_by(order_key, WebhookEvent.received_at, WebhookEvent.id)
    )  # rows unpack like tuples (Result.tuples() is deprecated in SQLAlchemy 2.1)
    return [(row, None if ms is None else int(ms)) for row, ms in rows]
