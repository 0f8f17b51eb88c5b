"""The synced tables (CONTRACT section 4) and the event ledger.

Every synced row carries version columns besides what the application reads:
``clerk_updated_at`` (milliseconds, Clerk's ``updated_at`` of the data the row
holds; ``clerk_event_at``, the timestamp of the event that brought it, breaks a
tie) and ``deleted_at`` (the tombstone). They are what make out-of-order and
duplicate deliveries converge: see ``worker/pipeline/apply.py``.
"""

from __future__ import annotations

import datetime as dt
from functools import cache
from typing import Any, ClassVar

from sqlalchemy import (
    ARRAY,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, MappedColumn, declared_attr, mapped_column

# Re-exported: the statuses live in an import-free module (the CLI's fast start needs them).
from shared.statuses import EVENT_STATUSES as EVENT_STATUSES
from shared.statuses import FINAL_STATUSES as FINAL_STATUSES
from shared.statuses import NOT_DONE_SQL
from shared.statuses import EventStatus as EventStatus

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


# Marks a column of a synced table that no event writes: the application owns it (``plan``).
APPLICATION_OWNED = {"owner": "application"}


def _now_column() -> Mapped[dt.datetime]:
    return mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())


class SyncedMixin:
    """Columns every synced entity shares."""

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    clerk_id: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    # Clerk's own created_at/updated_at of the data held; null until data arrives
    # (a delete seen before any create leaves a tombstone with no data).
    created_at: Mapped[dt.datetime] = _now_column()
    updated_at: Mapped[dt.datetime] = _now_column()
    deleted_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    # Version of the data held: Clerk's updated_at in milliseconds.
    clerk_updated_at: Mapped[int | None] = mapped_column(BigInteger)
    # Between two versions of one updated_at, Clerk's order: the envelope timestamp (ms) of the
    # event that brought the data held; null for data from the Backend API (it loses every tie).
    clerk_event_at: Mapped[int | None] = mapped_column(BigInteger)
    synced_at: Mapped[dt.datetime] = _now_column()
    # The object as Clerk last sent it (the data the row holds), without private_metadata unless
    # SYNC_PRIVATE_METADATA is on; null for a tombstone that never saw data.
    clerk_data: Mapped[dict[str, Any] | None] = mapped_column(JSONB)

    @classmethod
    @cache
    def object_columns(cls) -> tuple[str, ...]:
        """The columns built from Clerk's object (``shared.resources.Resource.row``), in table order:
        all but those every synced table has (ids, versions, times, clerk_data) and the application's own."""
        common = {name for name, value in vars(SyncedMixin).items() if isinstance(value, MappedColumn)}
        columns = cls.__table__.columns  # type: ignore[attr-defined]
        synced = [c for c in columns if not APPLICATION_OWNED.items() <= c.info.items()]
        return tuple(c.name for c in synced if c.name not in common)


def _metadata_column() -> Mapped[dict[str, Any]]:
    return mapped_column(JSONB, nullable=False, server_default=text("'{}'::jsonb"))


class MetadataMixin:
    """The metadata users, organizations and memberships carry."""

    public_metadata: Mapped[dict[str, Any]] = _metadata_column()
    # Written only while SYNC_PRIVATE_METADATA is on; null otherwise.
    private_metadata: Mapped[dict[str, Any] | None] = mapped_column(JSONB)


class AccountMixin(MetadataMixin):
    """What users and organizations both have: a picture, metadata, and the application's plan."""

    image_url: Mapped[str | None] = mapped_column(Text)
    # Owned by the application: no event ever writes it.
    plan: Mapped[str] = mapped_column(Text, nullable=False, server_default=text("'free'"), info=APPLICATION_OWNED)


class User(AccountMixin, SyncedMixin, Base):
    __tablename__ = "users"

    email: Mapped[str | None] = mapped_column(Text)
    first_name: Mapped[str | None] = mapped_column(Text)
    last_name: Mapped[str | None] = mapped_column(Text)
    username: Mapped[str | None] = mapped_column(Text)
    external_id: Mapped[str | None] = mapped_column(Text)
    # The primary phone number (primary_phone_number_id), like email.
    phone_number: Mapped[str | None] = mapped_column(Text)
    banned: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default=text("false"))
    locked: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default=text("false"))
    last_sign_in_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    last_active_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    unsafe_metadata: Mapped[dict[str, Any]] = _metadata_column()


class Organization(AccountMixin, SyncedMixin, Base):
    __tablename__ = "organizations"

    name: Mapped[str | None] = mapped_column(Text)
    slug: Mapped[str | None] = mapped_column(Text)
    # The user who created it.
    created_by: Mapped[str | None] = mapped_column(String(64))
    # Clerk's count as of the organization object held (Clerk does not resend it when members change).
    members_count: Mapped[int | None] = mapped_column(Integer)
    max_allowed_memberships: Mapped[int | None] = mapped_column(Integer)


class OrganizationObjectMixin:
    """What an organization's objects (memberships, invitations, domains) share: the organization's
    clerk_id, indexed as ``ix_<index_name>_organization``. No foreign key: an object may arrive
    before its organization (or its user)."""

    # Names the table's indexes: ix_memberships_organization, ix_memberships_user, ...
    index_name: ClassVar[str]
    # The table's other indexes.
    indexes: ClassVar[tuple[Index, ...]] = ()

    organization_clerk_id: Mapped[str | None] = mapped_column(String(64))

    @declared_attr.directive
    @classmethod
    def __table_args__(cls) -> tuple[Index, ...]:
        return (Index(f"ix_{cls.index_name}_organization", "organization_clerk_id"), *cls.indexes)


class OrganizationMembership(OrganizationObjectMixin, MetadataMixin, SyncedMixin, Base):
    __tablename__ = "organization_memberships"
    index_name = "memberships"
    indexes = (Index("ix_memberships_user", "user_clerk_id"),)

    user_clerk_id: Mapped[str | None] = mapped_column(String(64))
    role: Mapped[str | None] = mapped_column(Text)
    # The role's permissions, a JSON array of strings ("org:posts:read", ...).
    permissions: Mapped[list[str]] = mapped_column(JSONB, nullable=False, server_default=text("'[]'::jsonb"))


class OrganizationInvitation(OrganizationObjectMixin, SyncedMixin, Base):
    """An invitation to an organization: pending until accepted or revoked (Clerk never deletes one)."""

    __tablename__ = "organization_invitations"
    index_name = "invitations"
    indexes = (
        # The PII scrub finds a deleted user's invitations by address.
        Index("ix_invitations_email", text("lower(email)")),
        Index("ix_invitations_user", "user_clerk_id", postgresql_where=text("user_clerk_id IS NOT NULL")),
    )

    email: Mapped[str | None] = mapped_column(Text)
    role: Mapped[str | None] = mapped_column(Text)
    # pending, accepted, revoked (or expired, which Clerk announces by no event)
    status: Mapped[str | None] = mapped_column(Text)
    # The user who accepted it, once the payload names one.
    user_clerk_id: Mapped[str | None] = mapped_column(String(64))
    expires_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


class OrganizationDomain(OrganizationObjectMixin, SyncedMixin, Base):
    """A domain an organization claims, for automatic invitations or suggestions once verified."""

    __tablename__ = "organization_domains"
    index_name = "domains"
    indexes = (Index("ix_domains_name", "name"),)

    name: Mapped[str | None] = mapped_column(Text)
    # automatic_invitation, automatic_suggestion or manual_invitation
    enrollment_mode: Mapped[str | None] = mapped_column(Text)
    # verification.status ("verified", ...); null while Clerk has not verified it
    verification_status: Mapped[str | None] = mapped_column(Text)


class WebhookEvent(Base):
    """One row per svix-id ever received: the dedupe key and the event's state."""

    __tablename__ = "webhook_events"
    __table_args__ = (
        # Only what is not done: every reader by status asks for pending, failed or dead rows.
        Index(
            "ix_webhook_events_not_done",
            "status",
            "next_attempt_at",
            postgresql_where=text(NOT_DONE_SQL),
        ),
        Index("ix_webhook_events_entity", "entity_id"),
        Index("ix_webhook_events_user", "user_clerk_id", postgresql_where=text("user_clerk_id IS NOT NULL")),
        Index(
            "ix_webhook_events_organization",
            "organization_clerk_id",
            postgresql_where=text("organization_clerk_id IS NOT NULL"),
        ),
        # Only the rows still holding a body: what the retention purge looks for (by age).
        Index(
            "ix_webhook_events_holding_body",
            "received_at",
            postgresql_where=text("payload IS NOT NULL OR raw_body IS NOT NULL"),
        ),
        # The console's chart of the last hour reads the rows changed since then.
        Index("ix_webhook_events_updated", "updated_at"),
        CheckConstraint("status IN ('pending', 'processed', 'ignored', 'failed', 'dead')", name="status_known"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    svix_id: Mapped[str] = mapped_column(String(255), unique=True, nullable=False)
    event_type: Mapped[str | None] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(16), nullable=False, server_default="pending")
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    last_error: Mapped[str | None] = mapped_column(Text)
    # Every attempt's error, oldest first: [{"at": iso, "error": str}, ...]
    errors: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, nullable=False, server_default=text("'[]'::jsonb"))
    # The body as received and applied; null for event types that are not synced (and once
    # purged by retention), a stub once scrubbed.
    payload: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    # The body as received when it is not storable as jsonb (not JSON at all).
    raw_body: Mapped[str | None] = mapped_column(Text)
    # sha256 of the body first received under this svix-id: a redelivery with another body is a conflict.
    body_sha256: Mapped[str | None] = mapped_column(String(64))
    # Redeliveries of this svix-id whose body differed, never applied: [{"at": iso, "body_sha256": hex}, ...]
    conflicts: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, nullable=False, server_default=text("'[]'::jsonb"))
    svix_timestamp: Mapped[int | None] = mapped_column(BigInteger)
    # The Clerk ids the event names (its object, and a membership's user and organization):
    # what `events --entity` and the PII scrub find events by, payload or not.
    entity_id: Mapped[str | None] = mapped_column(String(64))
    user_clerk_id: Mapped[str | None] = mapped_column(String(64))
    organization_clerk_id: Mapped[str | None] = mapped_column(String(64))
    received_at: Mapped[dt.datetime] = _now_column()
    processed_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    next_attempt_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[dt.datetime] = _now_column()


class ControlFlag(Base):
    """Operator switches shared by every worker (e.g. ``paused``)."""

    __tablename__ = "clerk_sync_control"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text, nullable=False)
    updated_at: Mapped[dt.datetime] = _now_column()


class OperatorAction(Base):
    """One change an operator made (replay, discard, pause, resume), from the console or the CLI.

    Written in the same transaction as the change it records, so the table holds exactly
    what happened. Column names follow CONTRACT section 7.
    """

    __tablename__ = "operator_actions"
    __table_args__ = (Index("ix_operator_actions_time", "time"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    time: Mapped[dt.datetime] = _now_column()
    # A console account's name, or for the CLI the OS user (or its --operator).
    operator: Mapped[str] = mapped_column(Text, nullable=False)
    # "console" or "cli".
    source: Mapped[str] = mapped_column(String(16), nullable=False)
    action: Mapped[str] = mapped_column(String(16), nullable=False)
    # The filter of a bulk action (type, error, since, entity, limit); null when ids were named.
    filter: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    svix_ids: Mapped[list[str]] = mapped_column(ARRAY(Text), nullable=False, server_default=text("'{}'"))
    count: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
