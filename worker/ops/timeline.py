"""Every event that touched one user, organization, membership, invitation or domain, in Clerk's order."""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, Numeric, and_, case, extract, func, or_, select
from sqlalchemy.orm import Session

from shared.clerk_objects import SECONDS_UP_TO
from shared.models import WebhookEvent
from shared.resources import BY_NAME, resource_of_id


def touches_entity(entity_id: str) -> ColumnElement[bool]:
    """Events about ``entity_id``: its own id, or a membership, invitation or domain naming the user or org."""
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


# Where a child's events name each parent (``Resource.parent_columns``' resources).
_PARENT_COLUMNS = {"users": WebhookEvent.user_clerk_id, "organizations": WebhookEvent.organization_clerk_id}


def _parents_deletes(session: Session, entity_id: str) -> ColumnElement[bool] | None:
    """For a membership, an invitation or a domain: the deletes of the user or organization its
    events name, which ended it too (``apply`` deactivates a deleted parent's children)."""
    resource = resource_of_id(entity_id)
    if resource is None or not resource.parent_columns:
        return None
    deletes = []
    for parent in resource.parent_columns:
        named = select(_PARENT_COLUMNS[parent]).where(WebhookEvent.entity_id == entity_id)
        parent_ids = [clerk_id for clerk_id in session.scalars(named.distinct()) if clerk_id]
        if parent_ids:
            delete_type = BY_NAME[parent].delete_type
            deletes.append(and_(WebhookEvent.entity_id.in_(parent_ids), WebhookEvent.event_type == delete_type))
    return or_(*deletes) if deletes else None


def timeline(session: Session, entity_id: str, *, latest: int | None = None) -> list[tuple[WebhookEvent, int | None]]:
    """Every event that touched ``entity_id``, in Clerk's order then arrival order: its own, those
    naming it (a membership naming a user), and for a child its parents' deletes; with ``latest``,
    only the last that many (a page cannot hold a large organization's tens of thousands).

    Returns each row with its envelope timestamp in ms (None when the body was not
    JSON or its payload has been purged; those sort by arrival).
    """
    millis = _envelope_millis()
    order_key = func.coalesce(millis, extract("epoch", WebhookEvent.received_at) * 1000)
    touching = touches_entity(entity_id)
    parents_deletes = _parents_deletes(session, entity_id)
    query = select(WebhookEvent, millis).where(touching if parents_deletes is None else or_(touching, parents_deletes))
    order = (order_key, WebhookEvent.received_at, WebhookEvent.id)
    if latest is None:
        rows = list(session.execute(query.order_by(*order)))
    else:  # the last ``latest``, read newest first, then put back in order
        rows = list(session.execute(query.order_by(*(key.desc() for key in order)).limit(latest)))[::-1]
    # rows unpack like tuples (Result.tuples() is deprecated in SQLAlchemy 2.1)
    return [(row, None if ms is None else int(ms)) for row, ms in rows]
