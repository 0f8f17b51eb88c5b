"""Find a synced row by Clerk id or email: what the application sees for one entity right now."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, inspect, select
from sqlalchemy.orm import Session

from shared.models import OrganizationMembership, User
from shared.resources import RESOURCES

# Every synced table, from the resource table: users, organizations, memberships, invitations, domains.
SYNCED_MODELS: tuple[type[Any], ...] = tuple(resource.model for resource in RESOURCES)
MAX_MATCHES = 20


@dataclass(frozen=True)
class Found:
    """One synced row: its table, Clerk id, every column as stored, and memberships naming it."""

    table: str
    clerk_id: str
    columns: dict[str, Any]
    memberships: list[str]


def _columns(row: Any) -> dict[str, Any]:
    return {attr.key: getattr(row, attr.key) for attr in inspect(row).mapper.column_attrs}


def _memberships(session: Session, clerk_id: str) -> list[str]:
    named = (OrganizationMembership.user_clerk_id == clerk_id) | (
        OrganizationMembership.organization_clerk_id == clerk_id
    )
    query = select(OrganizationMembership.clerk_id).where(named).order_by(OrganizationMembership.clerk_id)
    return list(session.scalars(query.limit(MAX_MATCHES)))


def find(session: Session, query: str) -> list[Found]:
    """Rows whose Clerk id is ``query``, or users whose email is ``query`` (any case)."""
    query = query.strip()
    rows: list[Any] = []
    if "@" in query:
        rows += session.scalars(select(User).where(func.lower(User.email) == query.lower()).limit(MAX_MATCHES))
    else:
        for model in SYNCED_MODELS:
            rows += session.scalars(select(model).where(model.clerk_id == query))
    return [
        Found(
            table=row.__tablename__,
            clerk_id=row.clerk_id,
            columns=_columns(row),
            memberships=_memberships(session, row.clerk_id),
        )
        for row in rows
    ]
