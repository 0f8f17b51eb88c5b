"""The resource table: everything clerk-sync knows about each kind of Clerk object, written once.

Handlers, the apply path, backfill, reconcile, the PII scrub and ``events --entity`` read
this table instead of branching on the resource. The order of ``RESOURCES`` is also the
order in which a batch locks rows (table by table, then by ``clerk_id``), so an
application that updates rows in key order never deadlocks with the worker. Adding a
resource is one entry here (plus its model, its migration and its handler).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from msgspec import Struct

from shared.clerk_objects import (
    DeletedMembership,
    DeletedOrganization,
    DeletedUser,
    MembershipData,
    OrganizationData,
    UserData,
)
from shared.models import Organization, OrganizationMembership, SyncedMixin, User


@dataclass(frozen=True, eq=False)  # compared and hashed by identity: one object per resource
class Resource:
    """One kind of Clerk object and its table."""

    name: str  # as the CLI spells it: --users, backfill "users"
    model: type[SyncedMixin]
    id_prefix: str
    api_list_path: str
    # The object as webhooks and the Backend API carry it, and what its delete event carries.
    data_type: type[Struct]
    deleted_type: type[Struct]
    upsert_types: tuple[str, ...]
    delete_type: str
    # Columns Clerk owns, written from the object (and compared by reconcile).
    columns: tuple[str, ...]
    row: Callable[[Any], dict[str, Any]]
    # One object by id ("{id}" filled in), to confirm one is gone; None when Clerk has no such endpoint.
    api_object_path: str | None = None
    # The list of one organization's objects ("{organization_id}" filled in): where a resource is
    # listed per organization, or where its instance-wide list is missing.
    api_per_organization_path: str | None = None
    # For a child: parent resource name -> the column holding the parent's clerk_id. A parent's
    # delete makes its children inactive, whenever they arrive.
    parent_columns: Mapping[str, str] = field(default_factory=dict)
    # Columns holding personal data, cleared when DELETED_USER_PII=scrub and the user is deleted.
    pii_columns: tuple[str, ...] = ()

    @property
    def table_name(self) -> str:
        return str(self.model.__tablename__)  # type: ignore[attr-defined]

    @property
    def event_types(self) -> tuple[str, ...]:
        return (*self.upsert_types, self.delete_type)

    def parents_of(self, data: Any) -> dict[str, str]:
        """Parent resource name -> parent clerk_id, read from a row built by ``row``."""
        values = self.row(data)
        return {parent: values[column] for parent, column in self.parent_columns.items() if values.get(column)}


def _metadata(value: dict[str, Any] | None) -> dict[str, Any]:
    return value if value is not None else {}


def _user_row(data: UserData) -> dict[str, Any]:
    return {
        "email": data.primary_email,
        "first_name": data.first_name,
        "last_name": data.last_name,
        "username": data.username,
        "image_url": data.image_url or data.profile_image_url,
        "public_metadata": _metadata(data.public_metadata),
    }


def _organization_row(data: OrganizationData) -> dict[str, Any]:
    return {
        "name": data.name,
        "slug": data.slug,
        "image_url": data.image_url or data.logo_url,
        "public_metadata": _metadata(data.public_metadata),
    }


def _membership_row(data: MembershipData) -> dict[str, Any]:
    return {
        "organization_clerk_id": data.organization.id,
        "user_clerk_id": data.public_user_data.user_id,
        "role": data.role,
    }


USERS = Resource(
    name="users",
    model=User,
    id_prefix="user_",
    api_list_path="/v1/users",
    api_object_path="/v1/users/{id}",
    data_type=UserData,
    deleted_type=DeletedUser,
    # A user signs up or is created by an admin, the API or an import; then any profile change.
    upsert_types=("user.created", "user.updated"),
    delete_type="user.deleted",
    columns=("email", "first_name", "last_name", "username", "image_url", "public_metadata"),
    row=_user_row,
    pii_columns=("email", "first_name", "last_name", "username", "image_url"),
)
ORGANIZATIONS = Resource(
    name="organizations",
    model=Organization,
    id_prefix="org_",
    api_list_path="/v1/organizations",
    api_object_path="/v1/organizations/{id}",
    data_type=OrganizationData,
    deleted_type=DeletedOrganization,
    upsert_types=("organization.created", "organization.updated"),
    delete_type="organization.deleted",
    columns=("name", "slug", "image_url", "public_metadata"),
    row=_organization_row,
)
MEMBERSHIPS = Resource(
    name="memberships",
    model=OrganizationMembership,
    id_prefix="orgmem_",
    api_list_path="/v1/organization_memberships",
    api_per_organization_path="/v1/organizations/{organization_id}/memberships",
    data_type=MembershipData,
    deleted_type=DeletedMembership,
    # A user joins (invitation accepted, added by an admin, or created the organization); a role changes.
    upsert_types=("organizationMembership.created", "organizationMembership.updated"),
    # The member left or was removed; the event carries the whole membership.
    delete_type="organizationMembership.deleted",
    columns=("organization_clerk_id", "user_clerk_id", "role"),
    row=_membership_row,
    parent_columns={"users": "user_clerk_id", "organizations": "organization_clerk_id"},
)

# In lock order.
RESOURCES: tuple[Resource, ...] = (USERS, ORGANIZATIONS, MEMBERSHIPS)
BY_NAME: dict[str, Resource] = {resource.name: resource for resource in RESOURCES}
BY_EVENT_TYPE: dict[str, Resource] = {t: resource for resource in RESOURCES for t in resource.event_types}


def resource_of_id(clerk_id: str) -> Resource | None:
    """The resource a Clerk id belongs to, by its prefix (longest prefix first: org_ vs orgmem_)."""
    for resource in sorted(RESOURCES, key=lambda r: -len(r.id_prefix)):
        if clerk_id.startswith(resource.id_prefix):
            return resource
    return None
