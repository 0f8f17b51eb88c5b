"""Apply Clerk objects to the synced tables so that any delivery order converges.

Each function is one conditional statement (or a short few) on a session the caller
owns; none commits. The rules (CONTRACT section 5):

- data is written only when it is newer than what the row holds
  (``clerk_updated_at`` < the object's ``updated_at``), so an old event or API
  snapshot never overwrites a newer one, and an update seen before its create wins;
- a delete leaves a tombstone (``deleted_at``) that no create or update clears, so a
  late event never resurrects a row; older data arriving after it still fills in the
  last known fields (unless PII is scrubbed);
- deleting a user or an organization deactivates its memberships, including ones
  that arrive later. Advisory locks order a membership write against a concurrent
  delete of its user or organization.

They are shared by webhook handlers and the backfill, which is why they take plain
field values rather than events.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from functools import cache
from typing import Any

from sqlalchemy import bindparam, func, literal, or_, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from shared.models import Organization, OrganizationMembership, User, WebhookEvent
from worker.pipeline.envelope import millis_to_datetime, to_millis

PII_COLUMNS = ("email", "first_name", "last_name", "username", "image_url")


@dataclass(frozen=True)
class UserFields:
    clerk_id: str
    email: str | None
    first_name: str | None
    last_name: str | None
    username: str | None
    image_url: str | None
    public_metadata: dict[str, Any]
    created_at_ms: int | None
    updated_at_ms: int


@dataclass(frozen=True)
class OrganizationFields:
    clerk_id: str
    name: str | None
    slug: str | None
    image_url: str | None
    public_metadata: dict[str, Any]
    created_at_ms: int | None
    updated_at_ms: int


@dataclass(frozen=True)
class MembershipFields:
    clerk_id: str
    organization_clerk_id: str | None
    user_clerk_id: str | None
    role: str | None
    created_at_ms: int | None
    updated_at_ms: int


_DATA_COLUMNS: dict[type, tuple[str, ...]] = {
    User: ("email", "first_name", "last_name", "username", "image_url", "public_metadata"),
    Organization: ("name", "slug", "image_url", "public_metadata"),
    OrganizationMembership: ("organization_clerk_id", "user_clerk_id", "role"),
}


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _metadata(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def primary_email(data: dict[str, Any]) -> str | None:
    """The address whose id is `primary_email_address_id`; never simply the first."""
    primary_id = data.get("primary_email_address_id")
    addresses = data.get("email_addresses")
    if not primary_id or not isinstance(addresses, list):
        return None
    for address in addresses:
        if isinstance(address, dict) and address.get("id") == primary_id:
            return _text(address.get("email_address"))
    return None


def user_fields(data: dict[str, Any], *, fallback_ms: int | None) -> UserFields:
    """UserFields from a Clerk user object (webhook `data` or Backend API user)."""
    return UserFields(
        clerk_id=data["id"],
        email=primary_email(data),
        first_name=_text(data.get("first_name")),
        last_name=_text(data.get("last_name")),
        username=_text(data.get("username")),
        image_url=_text(data.get("image_url")) or _text(data.get("profile_image_url")),
        public_metadata=_metadata(data.get("public_metadata")),
        created_at_ms=to_millis(data.get("created_at")),
        updated_at_ms=_version(data, fallback_ms),
    )


def organization_fields(data: dict[str, Any], *, fallback_ms: int | None) -> OrganizationFields:
    return OrganizationFields(
        clerk_id=data["id"],
        name=_text(data.get("name")),
        slug=_text(data.get("slug")),
        image_url=_text(data.get("image_url")) or _text(data.get("logo_url")),
        public_metadata=_metadata(data.get("public_metadata")),
        created_at_ms=to_millis(data.get("created_at")),
        updated_at_ms=_version(data, fallback_ms),
    )


def membership_fields(data: dict[str, Any], *, fallback_ms: int | None) -> MembershipFields:
    organization = data.get("organization")
    user_data = data.get("public_user_data")
    return MembershipFields(
        clerk_id=data["id"],
        organization_clerk_id=_text(organization.get("id")) if isinstance(organization, dict) else None,
        user_clerk_id=_text(user_data.get("user_id")) if isinstance(user_data, dict) else None,
        role=_text(data.get("role")),
        created_at_ms=to_millis(data.get("created_at")),
        updated_at_ms=_version(data, fallback_ms),
    )


def _version(data: dict[str, Any], fallback_ms: int | None) -> int:
    version = to_millis(data.get("updated_at"))
    if version is None:
        version = to_millis(data.get("created_at"))
    if version is None:
        version = fallback_ms
    if version is None:
        # Neither the object nor the envelope says when: order it before everything.
        return 0
    return version


def _lock(session: Session, kind: str, clerk_id: str, *, shared: bool) -> None:
    """Transaction-scoped advisory lock ordering membership writes against deletes."""
    fn = "pg_advisory_xact_lock_shared" if shared else "pg_advisory_xact_lock"
    session.execute(text(f"SELECT {fn}(hashtextextended(:key, 0))"), {"key": f"{kind}:{clerk_id}"})


# A membership write takes both shared locks in one round trip.
_LOCK_PARENTS_SHARED = text(
    "SELECT pg_advisory_xact_lock_shared(hashtextextended(:user_key, 0)),"
    " pg_advisory_xact_lock_shared(hashtextextended(:org_key, 0))"
)


@cache
def _upsert_statement(model: Any) -> Any:
    """The conditional upsert for ``model``, built once: only the parameters change per event.

    Building the statement per event cost SQLAlchemy more time than Postgres spends
    running it; a prepared shape with bind parameters is compiled once and cached.
    """
    table = model.__table__
    data = [name for name in _DATA_COLUMNS[model] if name in table.c]
    stmt = pg_insert(table).values(
        {
            **{name: bindparam(name, type_=table.c[name].type) for name in ("clerk_id", *data)},
            "clerk_updated_at": bindparam("clerk_updated_at", type_=table.c.clerk_updated_at.type),
            "updated_at": bindparam("updated_at", type_=table.c.updated_at.type),
            # Clerk's created_at when the object has one; else the insert time.
            "created_at": func.coalesce(bindparam("created_at", type_=table.c.created_at.type), func.now()),
        }
    )
    set_: dict[str, Any] = {name: stmt.excluded[name] for name in (*data, "clerk_updated_at", "updated_at")}
    set_["created_at"] = func.coalesce(bindparam("created_at", type_=table.c.created_at.type), table.c.created_at)
    set_["synced_at"] = func.now()
    return stmt.on_conflict_do_update(
        index_elements=[table.c.clerk_id],
        set_=set_,
        where=or_(table.c.clerk_updated_at.is_(None), table.c.clerk_updated_at < stmt.excluded.clerk_updated_at),
    ).returning(table.c.id)


def _upsert(session: Session, model: Any, values: dict[str, Any]) -> bool:
    """Insert, or update only if newer; True when the row changed."""
    params = {name: value for name, value in values.items() if not name.endswith("_ms")}
    params["clerk_updated_at"] = values["updated_at_ms"]
    params["updated_at"] = millis_to_datetime(values["updated_at_ms"])
    params["created_at"] = millis_to_datetime(values["created_at_ms"])
    return session.connection().execute(_upsert_statement(model), params).first() is not None


def upsert_user(session: Session, fields: UserFields, *, scrub_pii: bool) -> bool:
    changed = _upsert(session, User, dict(fields.__dict__))
    if changed and scrub_pii:
        # Older data arriving after a scrubbed delete must not bring the PII back.
        _scrub_user_row(session, fields.clerk_id, only_if_deleted=True)
    return changed


def upsert_organization(session: Session, fields: OrganizationFields) -> bool:
    return _upsert(session, Organization, dict(fields.__dict__))


def upsert_membership(session: Session, fields: MembershipFields) -> bool:
    """Upsert a membership; inactive at once if its user or organization is deleted."""
    if fields.user_clerk_id or fields.organization_clerk_id:
        session.execute(
            _LOCK_PARENTS_SHARED,
            {"user_key": f"user:{fields.user_clerk_id or ''}", "org_key": f"org:{fields.organization_clerk_id or ''}"},
        )
    changed = _upsert(session, OrganizationMembership, dict(fields.__dict__))
    _deactivate_if_parent_deleted(session, fields.clerk_id)
    return changed


def _deactivate_if_parent_deleted(session: Session, membership_id: str) -> None:
    m = OrganizationMembership.__table__.c
    # The earlier of the two deletes, as in Clerk's order (LEAST skips nulls).
    parent_deleted_at = func.least(
        select(User.deleted_at).where(User.clerk_id == m.user_clerk_id).scalar_subquery(),
        select(Organization.deleted_at).where(Organization.clerk_id == m.organization_clerk_id).scalar_subquery(),
    )
    session.execute(
        update(OrganizationMembership)
        .where(OrganizationMembership.clerk_id == membership_id, parent_deleted_at.is_not(None))
        .where(or_(OrganizationMembership.deleted_at.is_(None), OrganizationMembership.deleted_at > parent_deleted_at))
        .values(deleted_at=parent_deleted_at)
    )


def _tombstone(session: Session, model: Any, clerk_id: str, deleted_at: dt.datetime) -> bool:
    """Mark deleted, the earliest delete winning in any arrival order; creates the row if unseen. True if changed."""
    stmt = pg_insert(model).values(clerk_id=clerk_id, deleted_at=deleted_at)
    tombstone = stmt.on_conflict_do_update(
        index_elements=["clerk_id"],
        set_={"deleted_at": stmt.excluded.deleted_at, "synced_at": func.now()},
        where=or_(model.deleted_at.is_(None), model.deleted_at > stmt.excluded.deleted_at),
    ).returning(model.id)
    return session.execute(tombstone).first() is not None


def delete_user(session: Session, clerk_id: str, *, deleted_at: dt.datetime, scrub_pii: bool) -> bool:
    _lock(session, "user", clerk_id, shared=False)
    changed = _tombstone(session, User, clerk_id, deleted_at)
    _deactivate_memberships(session, OrganizationMembership.user_clerk_id == clerk_id, deleted_at)
    if scrub_pii:
        _scrub_user_row(session, clerk_id, only_if_deleted=False)
        scrub_user_events(session, clerk_id)
    return changed


def delete_organization(session: Session, clerk_id: str, *, deleted_at: dt.datetime) -> bool:
    _lock(session, "org", clerk_id, shared=False)
    changed = _tombstone(session, Organization, clerk_id, deleted_at)
    _deactivate_memberships(session, OrganizationMembership.organization_clerk_id == clerk_id, deleted_at)
    return changed


def delete_membership(
    session: Session, fields: MembershipFields | None, clerk_id: str, *, deleted_at: dt.datetime
) -> bool:
    """A membership delete carries the full membership: keep its fields if they are news."""
    filled = upsert_membership(session, fields) if fields is not None else False
    return _tombstone(session, OrganizationMembership, clerk_id, deleted_at) or filled


def _deactivate_memberships(session: Session, condition: Any, deleted_at: dt.datetime) -> None:
    session.execute(
        update(OrganizationMembership)
        .where(condition)
        .where(or_(OrganizationMembership.deleted_at.is_(None), OrganizationMembership.deleted_at > deleted_at))
        .values(deleted_at=deleted_at, synced_at=func.now())
    )


def _scrub_user_row(session: Session, clerk_id: str, *, only_if_deleted: bool) -> None:
    stmt = update(User).where(User.clerk_id == clerk_id).values(**dict.fromkeys(PII_COLUMNS))
    if only_if_deleted:
        stmt = stmt.where(User.deleted_at.is_not(None))
    session.execute(stmt)


def is_user_deleted(session: Session, clerk_id: str) -> bool:
    return (
        session.scalar(select(literal(True)).where(User.clerk_id == clerk_id, User.deleted_at.is_not(None))) is not None
    )


def scrub_user_events(session: Session, clerk_id: str) -> None:
    """Clear stored payloads that carry this user's personal data."""
    payload = WebhookEvent.payload
    session.execute(
        update(WebhookEvent)
        .where(
            or_(
                WebhookEvent.entity_id == clerk_id,
                payload["data"]["public_user_data"]["user_id"].astext == clerk_id,
            ),
            WebhookEvent.payload.is_not(None),
        )
        .values(
            payload=func.jsonb_build_object(
                "type",
                WebhookEvent.event_type,
                "scrubbed",
                True,
                "data",
                func.jsonb_build_object("id", payload["data"]["id"]),
            ),
            raw_body=None,
        )
    )
