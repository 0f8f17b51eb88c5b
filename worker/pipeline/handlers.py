"""Event handlers, dispatched through one explicit table.

Each handler applies one Clerk event through ``worker.pipeline.apply`` and says whether the
tables changed (``processed``) or the event was older than what they hold, or
deleted what an earlier delete had already deleted (``ignored``). Event types missing
from HANDLERS are recorded ``ignored``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.orm import Session

from shared.config import Settings
from worker.pipeline import apply
from worker.pipeline.envelope import Envelope, millis_to_datetime
from worker.pipeline.errors import PermanentEventError


@dataclass(frozen=True)
class Outcome:
    status: str  # "processed" or "ignored"
    reason: str | None = None


STALE = Outcome("ignored", "older than what the tables hold")
ALREADY_DELETED = Outcome("ignored", "already deleted by an earlier delete")
APPLIED = Outcome("processed")


def _result(changed: bool) -> Outcome:
    return APPLIED if changed else STALE


def _deleted(changed: bool) -> Outcome:
    # The earliest delete wins: a delete that changes nothing found one at or before its time.
    return APPLIED if changed else ALREADY_DELETED


def _deleted_at(envelope: Envelope):  # type: ignore[no-untyped-def]
    # Deletes carry no updated_at: Clerk's order for them is the envelope timestamp.
    if envelope.timestamp_ms is None:
        raise PermanentEventError("delete event has no envelope 'timestamp'")
    return millis_to_datetime(envelope.timestamp_ms)


def upsert_user(session: Session, envelope: Envelope, settings: Settings) -> Outcome:
    fields = apply.user_fields(envelope.data, fallback_ms=envelope.timestamp_ms)
    return _result(apply.upsert_user(session, fields, scrub_pii=settings.deleted_user_pii == "scrub"))


def delete_user(session: Session, envelope: Envelope, settings: Settings) -> Outcome:
    return _deleted(
        apply.delete_user(
            session,
            envelope.entity_id,
            deleted_at=_deleted_at(envelope),
            scrub_pii=settings.deleted_user_pii == "scrub",
        )
    )


def upsert_organization(session: Session, envelope: Envelope, settings: Settings) -> Outcome:
    fields = apply.organization_fields(envelope.data, fallback_ms=envelope.timestamp_ms)
    return _result(apply.upsert_organization(session, fields))


def delete_organization(session: Session, envelope: Envelope, settings: Settings) -> Outcome:
    return _deleted(apply.delete_organization(session, envelope.entity_id, deleted_at=_deleted_at(envelope)))


def upsert_membership(session: Session, envelope: Envelope, settings: Settings) -> Outcome:
    fields = apply.membership_fields(envelope.data, fallback_ms=envelope.timestamp_ms)
    return _result(apply.upsert_membership(session, fields))


def delete_membership(session: Session, envelope: Envelope, settings: Settings) -> Outcome:
    fields = apply.membership_fields(envelope.data, fallback_ms=envelope.timestamp_ms)
    return _deleted(apply.delete_membership(session, fields, envelope.entity_id, deleted_at=_deleted_at(envelope)))


Handler = Callable[[Session, Envelope, Settings], Outcome]

HANDLERS: dict[str, Handler] = {
    # A user signs up, or is created through the Backend API or an import.
    "user.created": upsert_user,
    # Any profile change: names, username, image, emails, public metadata.
    "user.updated": upsert_user,
    # The user is deleted (by themselves, an admin or the API); data is only {id, deleted}.
    "user.deleted": delete_user,
    "organization.created": upsert_organization,
    # Name, slug, logo or metadata changed.
    "organization.updated": upsert_organization,
    # Data is only {id, slug, deleted}; memberships go with it.
    "organization.deleted": delete_organization,
    # A user joins an organization (invitation accepted, added by an admin, or created it).
    "organizationMembership.created": upsert_membership,
    # The member's role changed.
    "organizationMembership.updated": upsert_membership,
    # The member left or was removed; data carries the full membership.
    "organizationMembership.deleted": delete_membership,
}
