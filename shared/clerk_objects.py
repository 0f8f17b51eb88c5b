"""Clerk's objects as typed, validated structs: what each synced object must hold.

These are the shapes of ``data`` in a webhook and of the objects the Backend API lists
(backfill and reconcile read them with the same types). Only what clerk-sync stores or
orders by is declared; fields Clerk adds later are accepted and ignored. A value of the
wrong type, an id without Clerk's prefix, or a time no clock could hold fails validation
with the field named (see ``shared.events``).

Times: Clerk sends milliseconds since the epoch; some older shapes and the spec's
examples use seconds. Both are accepted between 2000-01-01 and 2100-01-01 and read as
milliseconds (``millis``); anything else (1e30, a negative number, a string) is invalid.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, ClassVar, cast

import msgspec
from msgspec import Meta, Struct

# 2000-01-01 and 2100-01-01, in seconds and in milliseconds.
_MIN_SECONDS, _MAX_SECONDS = 946_684_800, 4_102_444_800
_MIN_MILLIS, _MAX_MILLIS = _MIN_SECONDS * 1000, _MAX_SECONDS * 1000
# A Clerk time up to this is in seconds, a larger one in milliseconds (``millis``).
SECONDS_UP_TO = _MAX_SECONDS

# Bounds checked by msgspec; the gap between the two ranges is checked by ``check_times``.
ClerkTime = Annotated[int, Meta(ge=_MIN_SECONDS, le=_MAX_MILLIS)]
TIME_RULE = "is not a time in seconds or milliseconds between 2000 and 2100"


def _clerk_id(prefix: str) -> Meta:
    """A Clerk id: the prefix, then printable ASCII without spaces; at most 64 characters."""
    return Meta(pattern=f"^{prefix}[!-~]+$", max_length=64, extra={"id_prefix": prefix})


def id_prefix_of(struct: type[Struct]) -> str:
    """The prefix of the ids of ``struct`` (its ``id`` field's, as ``_clerk_id`` was given it)."""
    (id_type,) = (info.type for info in msgspec.structs.fields(struct) if info.name == "id")
    return str(id_type.__metadata__[0].extra["id_prefix"])


UserId = Annotated[str, _clerk_id("user_")]
OrganizationId = Annotated[str, _clerk_id("org_")]
MembershipId = Annotated[str, _clerk_id("orgmem_")]
InvitationId = Annotated[str, _clerk_id("orginv_")]
DomainId = Annotated[str, _clerk_id("orgdmn_")]
Metadata = dict[str, Any]
# A count, in the range of a Postgres integer.
Count = Annotated[int, Meta(ge=-(2**31), le=2**31 - 1)]


def millis(value: int) -> int:
    """A validated Clerk time in milliseconds."""
    return value * 1000 if value <= SECONDS_UP_TO else value


def check_times(obj: Struct, *names: str) -> None:
    """Refuse a time between the seconds range and the milliseconds range (called by __post_init__)."""
    for name in names:
        value = getattr(obj, name)
        if value is not None and _MAX_SECONDS < value < _MIN_MILLIS:
            raise ValueError(f"{name} {TIME_RULE}")


class _Versioned(Struct, frozen=True, kw_only=True):
    """Clerk's two times, on every synced object; ``__post_init__`` checks them and ``time_fields``.

    Keyword-only, so a subclass's required fields may follow these (nothing builds these
    structs by position: msgspec decodes them by name).
    """

    # The time fields ``check_times`` looks at; a subclass with more times names them all.
    time_fields: ClassVar[tuple[str, ...]] = ("updated_at", "created_at")

    updated_at: ClerkTime
    created_at: ClerkTime | None = None

    def __post_init__(self) -> None:
        check_times(self, *self.time_fields)


class _Metadata(_Versioned, frozen=True, kw_only=True):
    """The metadata users, organizations and memberships carry (private_metadata kept only when
    SYNC_PRIVATE_METADATA is on)."""

    public_metadata: Metadata | None = None
    private_metadata: Metadata | None = None


class _Account(_Metadata, frozen=True, kw_only=True):
    """What users and organizations both carry (shared.models.AccountMixin holds it)."""

    image_url: str | None = None


class _OrganizationObject(_Versioned, frozen=True, kw_only=True):
    """An object one organization holds (an invitation, a domain), naming the organization by id."""

    organization_id: OrganizationId


class EmailAddress(Struct, frozen=True):
    id: str
    email_address: str


class PhoneNumber(Struct, frozen=True):
    id: str
    phone_number: str | None = None


class UserData(_Account, frozen=True):
    """A user as ``user.created``/``user.updated`` and ``GET /v1/users`` carry it."""

    time_fields = ("updated_at", "created_at", "last_sign_in_at", "last_active_at")

    id: UserId
    primary_email_address_id: str | None = None
    email_addresses: list[EmailAddress] | None = None
    first_name: str | None = None
    last_name: str | None = None
    username: str | None = None
    profile_image_url: str | None = None
    unsafe_metadata: Metadata | None = None
    external_id: str | None = None
    primary_phone_number_id: str | None = None
    phone_numbers: list[PhoneNumber] | None = None
    banned: bool | None = None
    locked: bool | None = None
    last_sign_in_at: ClerkTime | None = None
    last_active_at: ClerkTime | None = None

    @property
    def primary_email(self) -> str | None:
        """The address whose id is ``primary_email_address_id``; never simply the first."""
        return _primary(self.email_addresses, self.primary_email_address_id, "email_address")

    @property
    def primary_phone(self) -> str | None:
        """The number whose id is ``primary_phone_number_id``, like ``primary_email``."""
        return _primary(self.phone_numbers, self.primary_phone_number_id, "phone_number")


def _primary(items: Sequence[Any] | None, primary_id: str | None, field: str) -> str | None:
    """The ``field`` of the item whose id is ``primary_id``, if Clerk sent it."""
    for item in items or ():
        if item.id == primary_id:
            return cast(str | None, getattr(item, field))
    return None


class OrganizationData(_Account, frozen=True):
    """An organization as ``organization.created``/``.updated`` and ``GET /v1/organizations`` carry it."""

    id: OrganizationId
    name: str | None = None
    slug: str | None = None
    logo_url: str | None = None
    members_count: Count | None = None
    max_allowed_memberships: Count | None = None
    created_by: str | None = None


class OrganizationRef(Struct, frozen=True):
    id: OrganizationId


class PublicUserData(Struct, frozen=True):
    user_id: UserId


class _MembershipDetails(_Metadata, frozen=True, kw_only=True):
    """What a membership holds besides its id, organization and user: a live one and a deleted one alike."""

    role: str | None = None
    permissions: list[str] | None = None


class MembershipData(_MembershipDetails, frozen=True):
    """A membership: its organization and its user are required, or it joins nothing."""

    id: MembershipId
    organization: OrganizationRef
    public_user_data: PublicUserData


class InvitationData(_OrganizationObject, frozen=True):
    """An organization invitation: ``organizationInvitation.*`` and ``GET /v1/organizations/{id}/invitations``.

    Clerk sends the whole invitation each time and never deletes one: it ends ``accepted``
    (``user_id`` then names the new member) or ``revoked``, or expires (``expires_at``) silently.
    """

    time_fields = ("updated_at", "created_at", "expires_at")

    id: InvitationId
    email_address: str | None = None
    role: str | None = None
    status: str | None = None
    user_id: UserId | None = None
    expires_at: ClerkTime | None = None


class DomainVerification(Struct, frozen=True):
    status: str | None = None


class DomainData(_OrganizationObject, frozen=True):
    """An organization domain: ``organizationDomain.created``/``.updated``, ``GET /v1/organizations/{id}/domains``."""

    id: DomainId
    name: str | None = None
    enrollment_mode: str | None = None
    # null until the domain is verified
    verification: DomainVerification | None = None


class DeletedDomain(Struct, frozen=True):
    """``organizationDomain.deleted`` carries only the id, like a user's delete."""

    id: DomainId


class DeletedUser(Struct, frozen=True):
    """``user.deleted`` carries only the id (ordered by the envelope's timestamp)."""

    id: UserId


class DeletedOrganization(Struct, frozen=True):
    id: OrganizationId


class DeletedMembership(_MembershipDetails, frozen=True, kw_only=True):
    """``organizationMembership.deleted`` carries the whole membership; older shapes may not."""

    id: MembershipId
    organization: OrganizationRef | None = None
    public_user_data: PublicUserData | None = None
    # Optional here, still checked when present.
    updated_at: ClerkTime | None = None  # type: ignore[assignment]

    def as_membership(self) -> MembershipData | None:
        """The membership it carries, when it carries a whole one."""
        if self.organization is None or self.public_user_data is None or self.updated_at is None:
            return None
        return MembershipData(
            id=self.id,
            organization=self.organization,
            public_user_data=self.public_user_data,
            updated_at=self.updated_at,
            created_at=self.created_at,
            role=self.role,
            permissions=self.permissions,
            public_metadata=self.public_metadata,
            private_metadata=self.private_metadata,
        )
