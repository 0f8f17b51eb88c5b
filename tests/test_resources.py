"""The resource table: what it derives from Clerk's conventions, and the PII scrub by complement."""

from __future__ import annotations

import dataclasses

import pytest

from shared.clerk_objects import DomainData, InvitationData, MembershipData, OrganizationData, UserData
from shared.events import SYNCED_TYPES, Unsynced, parse
from shared.resources import CLERK_DATA, INVITATIONS, MEMBERSHIPS, ORGANIZATIONS, RESOURCES, USERS, Resource
from tests.support.signing import PAYLOADS


def test_event_types_ids_and_api_paths_follow_clerks_conventions():
    derived = {
        r.name: (r.id_prefix, r.upsert_types, r.delete_type, r.clerk.object_path, r.columns[-1]) for r in RESOURCES
    }
    assert derived == {
        "users": ("user_", ("user.created", "user.updated"), "user.deleted", "/v1/users/{id}", CLERK_DATA),
        "organizations": (
            "org_",
            ("organization.created", "organization.updated"),
            "organization.deleted",
            "/v1/organizations/{id}",
            CLERK_DATA,
        ),
        "memberships": (
            "orgmem_",
            ("organizationMembership.created", "organizationMembership.updated"),
            "organizationMembership.deleted",
            None,
            CLERK_DATA,
        ),
        "invitations": (
            "orginv_",
            ("organizationInvitation.created", "organizationInvitation.accepted", "organizationInvitation.revoked"),
            None,
            None,
            CLERK_DATA,
        ),
        "domains": (
            "orgdmn_",
            ("organizationDomain.created", "organizationDomain.updated"),
            "organizationDomain.deleted",
            None,
            CLERK_DATA,
        ),
    }


def test_the_scrub_clears_every_column_but_those_kept():
    assert {r.name: r.pii_columns for r in RESOURCES} == {
        "users": (
            "email",
            "first_name",
            "last_name",
            "username",
            "external_id",
            "phone_number",
            "unsafe_metadata",
            "image_url",
            "private_metadata",
            CLERK_DATA,
        ),
        "organizations": (),
        "memberships": (CLERK_DATA,),
        "invitations": ("email", CLERK_DATA),
        "domains": (),
    }


@dataclasses.dataclass(frozen=True, eq=False)
class _Grown(Resource):
    """A resource whose model has gained a column of Clerk's, as a new release would add one."""

    @property
    def row_columns(self) -> tuple[str, ...]:
        return (*super().row_columns, "nickname")


def _grown(resource: Resource, **changes: object) -> Resource:
    given = {f.name: getattr(resource, f.name) for f in dataclasses.fields(resource) if f.init}
    return _Grown(**{**given, **changes})


def test_a_new_column_is_scrubbed_unless_it_is_said_to_be_kept():
    for resource in (USERS, MEMBERSHIPS, INVITATIONS):
        grown = _grown(resource)
        assert "nickname" in grown.pii_columns
        assert grown.kept_on_scrub is not None
        assert not set(grown.kept_on_scrub) & set(grown.pii_columns)
        kept = _grown(resource, kept_on_scrub=(*grown.kept_on_scrub, "nickname"))
        assert kept.pii_columns == resource.pii_columns
    # A resource holding no one's personal data stays out of the scrub, new columns and all.
    assert _grown(ORGANIZATIONS).pii_columns == ()


def test_clerks_columns_are_the_models_but_the_syncs_bookkeeping_and_the_applications_own():
    bookkeeping = {
        "id",
        "clerk_id",
        "created_at",
        "updated_at",
        "deleted_at",
        "clerk_updated_at",
        "clerk_event_at",
        "synced_at",
    }
    application = {"users": {"plan"}, "organizations": {"plan"}}
    for resource in RESOURCES:
        table = resource.model.__table__.columns.keys()  # type: ignore[attr-defined]
        assert set(table) - set(resource.columns) == bookkeeping | application.get(resource.name, set())
        assert list(resource.row_columns) == [c for c in table if c in resource.row_columns]  # in table order


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"kept_on_scrub": ("email", "nickname")}, "users: kept_on_scrub names no column: ['nickname']"),
        ({"row": MEMBERSHIPS.row}, "users: deleted_type's ids are not orgmem_..."),
    ],
)
def test_an_entry_that_contradicts_itself_is_refused(change, reason):
    with pytest.raises(ValueError) as info:
        dataclasses.replace(USERS, **change)
    assert str(info.value) == reason


def test_clerks_side_that_contradicts_itself_is_refused():
    with pytest.raises(ValueError) as info:
        dataclasses.replace(USERS.clerk, list_path=None)
    assert str(info.value) == "user: gets_by_id needs a list_path"


def test_each_row_builds_exactly_the_resources_row_columns():
    for event_type in sorted(SYNCED_TYPES):
        event = parse((PAYLOADS / f"{event_type}.json").read_text())
        assert not isinstance(event, Unsynced)
        if event.type in event.resource.upsert_types:
            assert set(event.resource.row(event.data)) == set(event.resource.row_columns), event_type


def test_the_object_type_is_the_one_the_row_builder_takes():
    assert {r.name: r.data_type for r in RESOURCES} == {
        "users": UserData,
        "organizations": OrganizationData,
        "memberships": MembershipData,
        "invitations": InvitationData,
        "domains": DomainData,
    }

    def untyped(data):
        return {}

    with pytest.raises(TypeError) as info:
        dataclasses.replace(USERS, row=untyped)
    assert str(info.value) == "untyped must take one annotated Clerk object (a msgspec Struct)"
