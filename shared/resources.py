"""The resource table: everything clerk-sync knows about each kind of Clerk object, written once.

Handlers, the apply path, backfill, reconcile, the PII scrub and ``events --entity`` read
this table instead of branching on the resource. The order of ``RESOURCES`` is also the
order in which a batch locks rows (table by table, then by ``clerk_id``), so an
application that updates rows in key order never deadlocks with the worker. Adding a
resource is one entry here (plus its model, its migration and its handler).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast, get_type_hints

from msgspec import Struct

from shared.clerk_objects import (
    DeletedDomain,
    DeletedMembership,
    DeletedOrganization,
    DeletedUser,
    DomainData,
    InvitationData,
    MembershipData,
    OrganizationData,
    UserData,
    id_prefix_of,
    millis,
)
from shared.models import (
    Organization,
    OrganizationDomain,
    OrganizationInvitation,
    OrganizationMembership,
    SyncedMixin,
    User,
)

# Every synced row also keeps the object as Clerk sent it (``clerk_data``, written with the columns).
CLERK_DATA = "clerk_data"
# Held only while SYNC_PRIVATE_METADATA is on: a column of that name, and the key of clerk_data.
PRIVATE_METADATA = "private_metadata"


@dataclass(frozen=True)
class ClerkSide:
    """How Clerk names and serves one kind of object: its webhooks' types, what a delete carries,
    and where the Backend API lists it (what backfill and reconcile read)."""

    # What the event types start with: "<stem>.created", "<stem>.updated", "<stem>.deleted".
    stem: str
    # What "<stem>.deleted" carries; None when Clerk never deletes the object (an invitation ends
    # accepted or revoked).
    deleted_type: type[Struct] | None
    # The events that carry the whole object (after the stem): Clerk's convention, unless the
    # resource has events of its own (an invitation is accepted or revoked).
    upsert_actions: tuple[str, ...] = ("created", "updated")
    # The instance-wide list; None when Clerk lists the resource only per organization.
    list_path: str | None = None
    # Whether Clerk gets one object by id at ``list_path`` + "/{id}" (``object_path``), to confirm
    # one is gone.
    gets_by_id: bool = False
    # One organization's objects ("{organization_id}" filled in): where the resource is listed per
    # organization, or where its instance-wide list is missing.
    per_organization_path: str | None = None

    def __post_init__(self) -> None:
        if self.gets_by_id and self.list_path is None:
            raise ValueError(f"{self.stem}: gets_by_id needs a list_path")

    @property
    def object_path(self) -> str | None:
        """One object by id ("{id}" filled in); None when Clerk has no such endpoint."""
        return f"{self.list_path}/{{id}}" if self.gets_by_id else None


@dataclass(frozen=True, eq=False)  # compared and hashed by identity: one object per resource
class Resource:
    """One kind of Clerk object and its table."""

    name: str  # as the CLI spells it: --users, backfill "users"
    model: type[SyncedMixin]
    # Builds the columns Clerk owns (``row_columns``) from the object. The struct it takes is the
    # object as webhooks and the Backend API carry it (``data_type``).
    row: Callable[[Any], dict[str, Any]]
    clerk: ClerkSide
    # For a child: parent resource name -> the column holding the parent's clerk_id. A parent's
    # delete makes its children inactive, whenever they arrive.
    parent_columns: Mapping[str, str] = field(default_factory=dict)
    # When DELETED_USER_PII=scrub and a user is deleted, their personal data is cleared (the user's
    # row, rows naming the user by ``user_column``, invitations addressed to the user): every column
    # but these, so that a new column is scrubbed unless it is said to be kept (``pii_columns``).
    # None when the resource holds no one's personal data: nothing of it is scrubbed.
    kept_on_scrub: tuple[str, ...] | None = None
    # The column naming the user an object belongs to (a member, an invitation's acceptor): the
    # PII scrub follows it.
    user_column: str | None = None
    # Columns Clerk changes without a new updated_at (activity, counters): stored as the newest object
    # said, but reconcile does not call a difference in them drift.
    volatile_columns: tuple[str, ...] = ()
    # Keys of the object holding an object with private metadata of its own (a membership's organization),
    # removed from clerk_data with the object's own unless SYNC_PRIVATE_METADATA is on. Each must be
    # validated as an object (or null) by ``data_type``.
    nested_private: tuple[str, ...] = ()
    # The object's struct: the one ``row`` takes (read from its annotation).
    data_type: type[Struct] = field(init=False)
    # What its ids start with ("user_"), read from ``data_type``'s id (shared.clerk_objects says it).
    id_prefix: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_type", _struct_taken_by(self.row))
        object.__setattr__(self, "id_prefix", id_prefix_of(self.data_type))
        deleted_type = self.clerk.deleted_type
        if deleted_type is not None and id_prefix_of(deleted_type) != self.id_prefix:
            raise ValueError(f"{self.name}: deleted_type's ids are not {self.id_prefix}...")
        unknown = set(self.kept_on_scrub or ()) - set(self.columns)
        if unknown:
            raise ValueError(f"{self.name}: kept_on_scrub names no column: {sorted(unknown)}")

    @property
    def table_name(self) -> str:
        return str(self.model.__tablename__)  # type: ignore[attr-defined]

    @property
    def upsert_types(self) -> tuple[str, ...]:
        return tuple(f"{self.clerk.stem}.{action}" for action in self.clerk.upsert_actions)

    @property
    def delete_type(self) -> str | None:
        return None if self.clerk.deleted_type is None else f"{self.clerk.stem}.deleted"

    @property
    def event_types(self) -> tuple[str, ...]:
        delete_type = self.delete_type
        return self.upsert_types if delete_type is None else (*self.upsert_types, delete_type)

    @property
    def row_columns(self) -> tuple[str, ...]:
        """Columns Clerk owns that ``row`` builds from the object: the model says which (``object_columns``)."""
        return self.model.object_columns()

    @property
    def columns(self) -> tuple[str, ...]:
        """Columns Clerk owns, written from the object (and compared by reconcile: ``compared_columns``)."""
        return (*self.row_columns, CLERK_DATA)

    @property
    def pii_columns(self) -> tuple[str, ...]:
        """Columns holding personal data: cleared by the scrub (all but ``kept_on_scrub``)."""
        if self.kept_on_scrub is None:
            return ()
        return tuple(column for column in self.columns if column not in self.kept_on_scrub)

    @property
    def private_columns(self) -> tuple[str, ...]:
        """Columns written only while SYNC_PRIVATE_METADATA is on."""
        return tuple(column for column in self.columns if column == PRIVATE_METADATA)

    @property
    def compared_columns(self) -> tuple[str, ...]:
        """What reconcile compares: Clerk's fields that change only with a new version."""
        skipped = {CLERK_DATA, *self.private_columns, *self.volatile_columns}
        return tuple(column for column in self.columns if column not in skipped)

    def parents_of(self, data: Any) -> dict[str, str]:
        """Parent resource name -> parent clerk_id, read from the object."""
        return self.parents_in(self.row(data))

    def parents_in(self, values: Mapping[str, Any]) -> dict[str, str]:
        """Parent resource name -> parent clerk_id, read from a row built by ``row``."""
        return {parent: values[column] for parent, column in self.parent_columns.items() if values.get(column)}

    def user_in(self, values: Mapping[str, Any]) -> str | None:
        """The user a row built by ``row`` belongs to (``user_column``), when it names one."""
        return None if self.user_column is None else values.get(self.user_column)


def _struct_taken_by(row: Callable[[Any], dict[str, Any]]) -> type[Struct]:
    """The struct a row builder is written for: its one parameter's annotation."""
    hints = get_type_hints(row)
    hints.pop("return", None)
    taken = list(hints.values())
    if len(taken) != 1 or not (isinstance(taken[0], type) and issubclass(taken[0], Struct)):
        raise TypeError(f"{getattr(row, '__name__', row)} must take one annotated Clerk object (a msgspec Struct)")
    return cast(type[Struct], taken[0])


def _metadata(value: dict[str, Any] | None) -> dict[str, Any]:
    return value if value is not None else {}


def _metadata_columns(data: UserData | OrganizationData | MembershipData) -> dict[str, Any]:
    """The metadata columns (shared.models.MetadataMixin) of an object that carries metadata."""
    return {"public_metadata": _metadata(data.public_metadata), PRIVATE_METADATA: data.private_metadata}


def _time(value: int | None) -> dt.datetime | None:
    return None if value is None else dt.datetime.fromtimestamp(millis(value) / 1000, tz=dt.UTC)


def _user_row(data: UserData) -> dict[str, Any]:
    return {
        "email": data.primary_email,
        "first_name": data.first_name,
        "last_name": data.last_name,
        "username": data.username,
        "image_url": data.image_url or data.profile_image_url,
        "external_id": data.external_id,
        "phone_number": data.primary_phone,
        "banned": bool(data.banned),
        "locked": bool(data.locked),
        "last_sign_in_at": _time(data.last_sign_in_at),
        "last_active_at": _time(data.last_active_at),
        "unsafe_metadata": _metadata(data.unsafe_metadata),
        **_metadata_columns(data),
    }


def _organization_row(data: OrganizationData) -> dict[str, Any]:
    return {
        "name": data.name,
        "slug": data.slug,
        "image_url": data.image_url or data.logo_url,
        "members_count": data.members_count,
        "max_allowed_memberships": data.max_allowed_memberships,
        "created_by": data.created_by,
        **_metadata_columns(data),
    }


def _membership_row(data: MembershipData) -> dict[str, Any]:
    return {
        "organization_clerk_id": data.organization.id,
        "user_clerk_id": data.public_user_data.user_id,
        "role": data.role,
        "permissions": data.permissions if data.permissions is not None else [],
        **_metadata_columns(data),
    }


def _invitation_row(data: InvitationData) -> dict[str, Any]:
    return {
        "organization_clerk_id": data.organization_id,
        "email": data.email_address,
        "role": data.role,
        "status": data.status,
        "user_clerk_id": data.user_id,
        "expires_at": _time(data.expires_at),
    }


def _domain_row(data: DomainData) -> dict[str, Any]:
    return {
        "organization_clerk_id": data.organization_id,
        "name": data.name,
        "enrollment_mode": data.enrollment_mode,
        "verification_status": None if data.verification is None else data.verification.status,
    }


USERS = Resource(
    name="users",
    model=User,
    row=_user_row,
    # A user signs up or is created by an admin, the API or an import; then any profile change.
    clerk=ClerkSide("user", deleted_type=DeletedUser, list_path="/v1/users", gets_by_id=True),
    # What tells nobody who the user was: the account's state and the application's public metadata.
    kept_on_scrub=("public_metadata", "banned", "locked", "last_sign_in_at", "last_active_at"),
    # Clerk refreshes it as the user comes and goes, without a user.updated.
    volatile_columns=("last_active_at",),
)
ORGANIZATIONS = Resource(
    name="organizations",
    model=Organization,
    row=_organization_row,
    clerk=ClerkSide("organization", deleted_type=DeletedOrganization, list_path="/v1/organizations", gets_by_id=True),
    # Members joining and leaving change it without an organization.updated.
    volatile_columns=("members_count",),
)
MEMBERSHIPS = Resource(
    name="memberships",
    model=OrganizationMembership,
    row=_membership_row,
    # created: a user joins (invitation accepted, added by an admin, or created the organization);
    # updated: a role changes; deleted: the member left or was removed (the event carries the whole
    # membership).
    clerk=ClerkSide(
        "organizationMembership",
        deleted_type=DeletedMembership,
        list_path="/v1/organization_memberships",
        per_organization_path="/v1/organizations/{organization_id}/memberships",
    ),
    parent_columns={"users": "user_clerk_id", "organizations": "organization_clerk_id"},
    # Only clerk_data is personal: it holds the member's public_user_data (names, image, identifier).
    kept_on_scrub=(
        "organization_clerk_id",
        "user_clerk_id",
        "role",
        "permissions",
        "public_metadata",
        PRIVATE_METADATA,
    ),
    user_column="user_clerk_id",
    # data.organization is the whole organization, private metadata included.
    nested_private=("organization",),
)
INVITATIONS = Resource(
    name="invitations",
    model=OrganizationInvitation,
    row=_invitation_row,
    # An admin invites an address; the invitee accepts; an admin revokes a pending one. Each event
    # carries the whole invitation, and its status; none deletes it.
    clerk=ClerkSide(
        "organizationInvitation",
        deleted_type=None,
        upsert_actions=("created", "accepted", "revoked"),
        per_organization_path="/v1/organizations/{organization_id}/invitations",
    ),
    # The organization's delete makes its invitations inactive (deleted_at), whenever they arrive.
    parent_columns={"organizations": "organization_clerk_id"},
    # The address and the payload are personal.
    kept_on_scrub=("organization_clerk_id", "role", "status", "user_clerk_id", "expires_at"),
    user_column="user_clerk_id",
)
DOMAINS = Resource(
    name="domains",
    model=OrganizationDomain,
    row=_domain_row,
    # An admin adds a domain; its enrollment mode or verification changes; it is removed (the delete
    # carries only its id).
    clerk=ClerkSide(
        "organizationDomain",
        deleted_type=DeletedDomain,
        per_organization_path="/v1/organizations/{organization_id}/domains",
    ),
    parent_columns={"organizations": "organization_clerk_id"},
)

# In lock order.
RESOURCES: tuple[Resource, ...] = (USERS, ORGANIZATIONS, MEMBERSHIPS, INVITATIONS, DOMAINS)
BY_NAME: dict[str, Resource] = {resource.name: resource for resource in RESOURCES}
BY_EVENT_TYPE: dict[str, Resource] = {t: resource for resource in RESOURCES for t in resource.event_types}


def resource_of_id(clerk_id: str) -> Resource | None:
    """The resource a Clerk id belongs to, by its prefix (longest prefix first: org_ vs orgmem_)."""
    for resource in sorted(RESOURCES, key=lambda r: -len(r.id_prefix)):
        if clerk_id.startswith(resource.id_prefix):
            return resource
    return None
