"""Event handlers, dispatched through one explicit table: each turns an event into a ``Change``.

What a change does to the tables (and whether it is news) is decided by
``worker.pipeline.apply``, the same for webhooks, backfill and reconcile. Event types
missing from HANDLERS are recorded ``ignored`` before they get here.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from shared.clerk_objects import millis
from shared.events import Event
from shared.resources import CLERK_DATA
from worker.pipeline.apply import Change


def _time(ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC)


def change_from_object(resource: Any, data: Any, *, sent: Any, event_at: int | None = None) -> Change:
    """A created/updated object (a webhook's data or a Backend API object): its data, versioned by updated_at.

    ``sent`` is the object as Clerk sent it (JSON bytes, or the decoded API object), kept as clerk_data;
    ``event_at`` the envelope timestamp of the webhook carrying it (a tie's tie-break), None from the API.
    """
    row = resource.row(data)
    return Change(
        resource=resource,
        clerk_id=data.id,
        row={**row, CLERK_DATA: sent},
        version=millis(data.updated_at),
        event_at=event_at,
        created_at=None if data.created_at is None else millis(data.created_at),
        parents=resource.parents_in(row),
        user_id=resource.user_in(row),
    )


def upsert(event: Event) -> Change:
    return change_from_object(
        event.resource,
        event.data,  # type: ignore[attr-defined]
        sent=event.clerk_data,  # type: ignore[attr-defined]
        event_at=event.timestamp_ms,
    )


def delete(event: Event) -> Change:
    # A delete carries no updated_at: Clerk's order for it is the envelope timestamp.
    return Change(resource=event.resource, clerk_id=event.entity_id, deleted_at=_time(event.timestamp_ms))


def delete_membership(event: Event) -> Change:
    """The member left or was removed: a tombstone, plus the membership's fields when they are news."""
    whole = event.data.as_membership()  # type: ignore[attr-defined]
    tombstone = delete(event)
    if whole is None:
        return tombstone
    change = change_from_object(event.resource, whole, sent=event.clerk_data, event_at=event.timestamp_ms)
    return replace(change, deleted_at=tombstone.deleted_at)


Handler = Callable[[Event], Change]

HANDLERS: dict[str, Handler] = {
    # A user signs up, or is created through the Backend API or an import.
    "user.created": upsert,
    # Any profile change: names, username, image, emails, public metadata.
    "user.updated": upsert,
    # The user is deleted (by themselves, an admin or the API); data is only {id, deleted}.
    "user.deleted": delete,
    "organization.created": upsert,
    # Name, slug, logo or metadata changed.
    "organization.updated": upsert,
    # Data is only {id, slug, deleted}; its memberships go with it.
    "organization.deleted": delete,
    # A user joins an organization (invitation accepted, added by an admin, or created it).
    "organizationMembership.created": upsert,
    # The member's role changed.
    "organizationMembership.updated": upsert,
    # The member left or was removed; data carries the full membership.
    "organizationMembership.deleted": delete_membership,
    # An admin invites an email address to an organization (status pending).
    "organizationInvitation.created": upsert,
    # The invitee accepted: status accepted, user_id the new member (a membership.created follows).
    "organizationInvitation.accepted": upsert,
    # An admin revoked a pending invitation: status revoked. Clerk never deletes an invitation.
    "organizationInvitation.revoked": upsert,
    # An admin adds a domain to an organization (unverified: verification null).
    "organizationDomain.created": upsert,
    # Its enrollment mode changed, or it was verified.
    "organizationDomain.updated": upsert,
    # The domain was removed; data is only {id, deleted}.
    "organizationDomain.deleted": delete,
}
