"""The resource table: what it derives from Clerk's conventions."""

from __future__ import annotations

import dataclasses

import pytest

from shared.resources import CLERK_DATA, MEMBERSHIPS, RESOURCES, USERS


def test_event_types_ids_and_api_paths_follow_clerks_conventions():
    derived = {
        r.name: (r.id_prefix, r.upsert_types, r.delete_type, r.api_object_path, r.columns[-1]) for r in RESOURCES
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


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"api_list_path": None}, "users: api_gets_by_id needs api_list_path"),
        ({"data_type": MEMBERSHIPS.data_type}, "users: deleted_type's ids are not orgmem_..."),
    ],
)
def test_an_entry_that_contradicts_itself_is_refused(change, reason):
    with pytest.raises(ValueError) as info:
        dataclasses.replace(USERS, **change)
    assert str(info.value) == reason
