"""More of each object (issue 16): the new columns, clerk_data and SYNC_PRIVATE_METADATA, applied
through ``deliver_one`` on the real database, by the same convergence rules as the older columns."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json

from shared.models import Organization, OrganizationMembership, User
from tests.support.signing import load_payload
from tests.test_handlers import MEMBERSHIP_ID, ORG_ID, USER_ID, deliver, ms, one


def test_a_user_keeps_the_new_fields_and_clerk_data_without_private_metadata(session_factory, settings):
    payload = load_payload("user.created")
    payload["data"].update(
        external_id="ext-42",
        private_metadata={"stripe": "cus_123"},
        unsafe_metadata={"theme": "dark"},
        primary_phone_number_id="idn_phone_b",
        phone_numbers=[
            {"id": "idn_phone_a", "object": "phone_number", "phone_number": "+15555550100"},
            {"id": "idn_phone_b", "object": "phone_number", "phone_number": "+15555550199"},
        ],
    )

    assert deliver(session_factory, settings, payload) == "processed"

    user = one(session_factory, User, USER_ID)
    assert user.external_id == "ext-42"
    assert user.phone_number == "+15555550199"  # the primary one, not the first
    assert (user.banned, user.locked) == (False, False)
    assert ms(user.last_sign_in_at) == payload["data"]["last_sign_in_at"]
    assert ms(user.last_active_at) == payload["data"]["last_active_at"]
    assert user.unsafe_metadata == {"theme": "dark"}
    assert user.private_metadata is None  # SYNC_PRIVATE_METADATA is off by default
    expected = {k: v for k, v in payload["data"].items() if k != "private_metadata"}
    assert user.clerk_data == expected


def test_private_metadata_is_kept_only_with_the_setting_on(session_factory, settings):
    private = dataclasses.replace(settings, sync_private_metadata=True)
    organization = load_payload("organization.updated")
    membership = load_payload("organizationMembership.created")
    membership["data"]["private_metadata"] = {"seat": 7}

    assert deliver(session_factory, private, organization) == "processed"
    assert deliver(session_factory, private, membership) == "processed"

    org = one(session_factory, Organization, ORG_ID)
    assert org.private_metadata == {"internal_id": "ORG-123"}
    assert org.clerk_data["private_metadata"] == {"internal_id": "ORG-123"}
    kept = one(session_factory, OrganizationMembership, MEMBERSHIP_ID)
    assert kept.private_metadata == {"seat": 7}
    assert kept.clerk_data == membership["data"]


def test_organization_and_membership_fields(session_factory, settings):
    assert deliver(session_factory, settings, load_payload("organization.updated")) == "processed"
    assert deliver(session_factory, settings, load_payload("organizationMembership.updated")) == "processed"

    org = one(session_factory, Organization, ORG_ID)
    assert (org.members_count, org.max_allowed_memberships, org.created_by) == (3, 10, USER_ID)
    assert org.private_metadata is None and "private_metadata" not in org.clerk_data
    membership = one(session_factory, OrganizationMembership, MEMBERSHIP_ID)
    assert membership.permissions == ["org:posts:read", "org:posts:write", "org:posts:delete", "org:members:manage"]
    assert membership.public_metadata == {}
    assert membership.clerk_data["role"] == "org:admin"
    # The membership carries its whole organization: that one's private metadata is left out too.
    assert "private_metadata" not in membership.clerk_data
    assert "private_metadata" not in membership.clerk_data["organization"]
    assert membership.clerk_data["organization"]["name"] == "Acme Corp"


def test_the_new_columns_follow_the_version_rule(session_factory, settings):
    # Given a newer update that bans the user and sets an external id
    newer = load_payload("user.updated")
    newer["data"].update(banned=True, locked=True, external_id="ext-new", unsafe_metadata={"v": 2})
    assert deliver(session_factory, settings, newer) == "processed"

    # When the older create arrives late, and the newer update is delivered again under another svix-id
    assert deliver(session_factory, settings, load_payload("user.created")) == "ignored"
    assert deliver(session_factory, settings, newer, svix_id="msg_replayed_update") == "ignored"

    # Then every column, clerk_data included, is the newer one's
    user = one(session_factory, User, USER_ID)
    assert (user.banned, user.locked, user.external_id, user.unsafe_metadata) == (True, True, "ext-new", {"v": 2})
    assert user.clerk_data["updated_at"] == newer["data"]["updated_at"]
    assert user.clerk_data["last_name"] == "Doe Updated"


def test_a_delete_keeps_the_last_clerk_data(session_factory, settings):
    deliver(session_factory, settings, load_payload("user.updated"))
    deliver(session_factory, settings, load_payload("user.deleted"))

    user = one(session_factory, User, USER_ID)
    assert user.deleted_at is not None
    assert user.clerk_data["last_name"] == "Doe Updated"  # a delete carries no object: the last one stays


def test_a_membership_delete_writes_its_clerk_data_only_when_newer(session_factory, settings):
    # The delete carries a stale copy of the membership (older updated_at than the update's)
    deliver(session_factory, settings, load_payload("organizationMembership.updated"))
    deliver(session_factory, settings, load_payload("organizationMembership.deleted"))

    membership = one(session_factory, OrganizationMembership, MEMBERSHIP_ID)
    assert membership.deleted_at is not None
    assert membership.role == membership.clerk_data["role"] == "org:admin"


def test_times_in_seconds_are_stored_as_times(session_factory, settings):
    payload = load_payload("user.created")
    payload["data"]["last_sign_in_at"] = 1_716_883_100  # seconds, as older shapes send
    assert deliver(session_factory, settings, payload) == "processed"

    user = one(session_factory, User, USER_ID)
    assert user.last_sign_in_at == dt.datetime.fromtimestamp(1_716_883_100, tz=dt.UTC)
    assert json.loads(json.dumps(user.clerk_data))["last_sign_in_at"] == 1_716_883_100  # as Clerk sent it
