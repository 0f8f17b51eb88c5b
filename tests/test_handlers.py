"""Applying Clerk's realistic payloads through ``deliver_one`` (a batch of one) on the real database.

No broker here: each test calls what the Celery task calls, in the order it wants the
deliveries to arrive, and reads the synced tables and the ledger afterwards.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import hashlib
import json
from typing import Any

import msgspec
from sqlalchemy import func, select, text

from shared.clerk_objects import UserData
from shared.models import Organization, OrganizationMembership, User, WebhookEvent
from shared.resources import USERS
from tests.support.pipeline import deliver_one
from tests.support.signing import FIXTURES, load_payload
from worker.pipeline.apply import apply_changes
from worker.pipeline.batch import process_batch
from worker.pipeline.handlers import change_from_object
from worker.pipeline.ledger import Delivery

USER_ID = "user_2g7np7Hrk0SN6kj5EDMLDaKNL0S"
ORG_ID = "org_2g7np7Hrk0SN6kj5EDMLDaKNL0S"
MEMBERSHIP_ID = "orgmem_2g7np7Hrk0SN6kj5EDMLDaKNL0S"
UNSEEN_USER_ID = "user_2h8op3Isl1QR7tKu5FGNfaLKEoU"


def deliver(session_factory, settings, payload: dict[str, Any] | str, svix_id: str | None = None) -> str:  # type: ignore[no-untyped-def]
    """One delivery as the task makes it; the svix-id defaults to one per distinct body."""
    body = payload if isinstance(payload, str) else json.dumps(payload)
    svix_id = svix_id or f"msg_{hashlib.sha256(body.encode()).hexdigest()[:24]}"
    return deliver_one(session_factory, Delivery(svix_id, None, body), settings=settings)


def variant(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / "variants" / f"{name}.json").read_text())


def one(session_factory, model, clerk_id: str):  # type: ignore[no-untyped-def]
    with session_factory() as session:
        return session.scalars(select(model).where(model.clerk_id == clerk_id)).one()


def event_row(session_factory, svix_id: str) -> WebhookEvent:  # type: ignore[no-untyped-def]
    with session_factory() as session:
        return session.scalars(select(WebhookEvent).where(WebhookEvent.svix_id == svix_id)).one()


def ms(value: dt.datetime | None) -> int | None:
    return None if value is None else round(value.timestamp() * 1000)


def test_primary_email_is_the_one_named_not_the_first(session_factory, settings):
    assert deliver(session_factory, settings, load_payload("user.updated")) == "processed"

    user = one(session_factory, User, USER_ID)
    assert user.email == "john.doe@example.com"  # the second address in the list
    assert (user.first_name, user.last_name, user.username) == ("John", "Doe Updated", "johndoe")
    assert user.image_url == "https://img.clerk.com/yyyyy"
    assert user.public_metadata == {"department": "engineering"}
    assert user.plan == "free"
    assert user.deleted_at is None


def test_phone_only_user_has_no_email(session_factory, settings):
    payload = load_payload("user.created")
    payload["data"].update(email_addresses=[], primary_email_address_id=None, phone_numbers=[{"id": "idn_p"}])

    assert deliver(session_factory, settings, payload) == "processed"

    assert one(session_factory, User, USER_ID).email is None


def test_organization_fields(session_factory, settings):
    assert deliver(session_factory, settings, load_payload("organization.updated")) == "processed"

    org = one(session_factory, Organization, ORG_ID)
    assert (org.name, org.slug, org.image_url) == (
        "Acme Corp Updated",
        "acme-corp-updated",
        "https://img.clerk.com/yyyyyy",
    )
    assert org.public_metadata == {"department": "engineering"}
    assert org.deleted_at is None


def test_membership_for_a_user_not_seen_yet(session_factory, settings):
    assert deliver(session_factory, settings, load_payload("organizationMembership.created")) == "processed"

    membership = one(session_factory, OrganizationMembership, MEMBERSHIP_ID)
    assert (membership.organization_clerk_id, membership.user_clerk_id) == (ORG_ID, UNSEEN_USER_ID)
    assert membership.role == "org:member"
    assert membership.deleted_at is None
    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(User)) == 0


def test_legacy_shapes_from_the_docs(session_factory, settings):
    # Given older, sparser payloads: no event_attributes, no instance_id, legacy role key
    user_status = deliver(session_factory, settings, variant("user.created.docs-overview"))
    membership_status = deliver(session_factory, settings, variant("organizationMembership.created.legacy-docs"))

    # Then both apply
    assert (user_status, membership_status) == ("processed", "processed")
    user = one(session_factory, User, "user_29w83sxmDNGwOuEthce5gg56FcC")
    assert (user.email, user.first_name, user.last_name) == ("example@example.org", "Example", "Example")
    membership = one(session_factory, OrganizationMembership, "orgmem_29w9IptNja3mP8GDXpquBwN2qR9")
    assert membership.role == "admin"
    assert membership.organization_clerk_id == "org_29w9IfBrPmcpi0IeBVaKtA7R94W"
    assert membership.user_clerk_id == "user_29w83sxmDNGwOuEthce5gg56FcC"


def test_timestamps_in_seconds_and_milliseconds_order_together(session_factory, settings):
    # Given the update with its times in seconds, delivered first
    updated = load_payload("user.updated")
    updated["data"]["updated_at"] //= 1000
    updated["data"]["created_at"] //= 1000
    updated["timestamp"] //= 1000
    assert deliver(session_factory, settings, updated) == "processed"

    # When the older create arrives in milliseconds
    status = deliver(session_factory, settings, load_payload("user.created"), svix_id="msg_created")

    # Then it is recognised as older, and the row's version is in milliseconds
    assert status == "ignored"
    assert event_row(session_factory, "msg_created").last_error == "older than what the tables hold"
    user = one(session_factory, User, USER_ID)
    assert user.username == "johndoe"
    assert user.clerk_updated_at == 1716883500000

    # And a delete with a timestamp in seconds sets deleted_at to that second
    deleted = load_payload("user.deleted")
    deleted["timestamp"] = 1716883800
    assert deliver(session_factory, settings, deleted) == "processed"
    assert ms(one(session_factory, User, USER_ID).deleted_at) == 1716883800000


def _same_version_twice() -> tuple[dict[str, Any], dict[str, Any]]:
    """Two updates of one user with one updated_at and different data: the second sent later."""
    first, second = load_payload("user.updated"), load_payload("user.updated")
    first["data"]["first_name"], second["data"]["first_name"] = "First", "Second"
    second["timestamp"] = first["timestamp"] + 40
    return first, second


def test_a_tie_between_two_versions_of_one_updated_at_goes_to_the_later_event_in_any_order(session_factory, settings):
    first, second = _same_version_twice()
    # Given the later event, then the earlier one (Clerk's order reversed)
    assert deliver(session_factory, settings, second, svix_id="msg_second") == "processed"
    assert deliver(session_factory, settings, first, svix_id="msg_first") == "ignored"
    # Then the later event's data stays, and the earlier one is recorded as older
    assert one(session_factory, User, USER_ID).first_name == "Second"
    assert event_row(session_factory, "msg_first").last_error == "older than what the tables hold"


def test_a_tie_delivered_in_clerks_order_takes_the_later_event_alone_and_in_one_batch(session_factory, settings):
    first, second = _same_version_twice()
    # Given the two in Clerk's order, one at a time
    assert deliver(session_factory, settings, first, svix_id="msg_first") == "processed"
    assert deliver(session_factory, settings, second, svix_id="msg_second") == "processed"
    user = one(session_factory, User, USER_ID)
    assert (user.first_name, user.clerk_event_at) == ("Second", second["timestamp"])

    # And two more of a newer version in one batch, the later one first
    third, fourth = _same_version_twice()
    for payload, name in ((third, "Third"), (fourth, "Fourth")):
        payload["data"]["updated_at"] += 1000
        payload["data"]["first_name"] = name
    statuses = process_batch(
        session_factory,
        [Delivery("msg_fourth", None, json.dumps(fourth)), Delivery("msg_third", None, json.dumps(third))],
        settings=settings,
    )
    assert statuses == {"msg_fourth": "processed", "msg_third": "ignored"}
    assert one(session_factory, User, USER_ID).first_name == "Fourth"


def test_an_api_object_of_the_version_held_loses_the_tie_to_the_event(session_factory, settings):
    # Given the user as its event brought it
    first, _ = _same_version_twice()
    assert deliver(session_factory, settings, first) == "processed"
    # When the Backend API's copy of the same version, with other data, is applied (backfill's path)
    api_copy = {**first["data"], "first_name": "From the API"}
    with session_factory() as session, session.begin():
        applied = apply_changes(
            session, [change_from_object(USERS, msgspec.convert(api_copy, UserData), sent=api_copy)], scrub_pii=False
        )
    # Then the event's data stays: the API object has no envelope to order it after the event
    assert applied[0].changed is False
    assert one(session_factory, User, USER_ID).first_name == "First"


def test_late_create_after_delete_keeps_fields_and_tombstone(session_factory, settings):
    # Given the user deleted before any other event about them arrived
    assert deliver(session_factory, settings, load_payload("user.deleted")) == "processed"

    # When the create and update arrive late
    late = [deliver(session_factory, settings, load_payload(name)) for name in ("user.updated", "user.created")]

    # Then the row has the last known fields and stays deleted
    assert late == ["processed", "ignored"]
    user = one(session_factory, User, USER_ID)
    assert user.email == "john.doe@example.com"
    assert user.last_name == "Doe Updated"
    assert ms(user.deleted_at) == load_payload("user.deleted")["timestamp"]


def test_a_second_delete_is_ignored_as_already_deleted_and_the_first_time_stays(session_factory, settings):
    # Given the user deleted once
    first = load_payload("user.deleted")
    assert deliver(session_factory, settings, first, svix_id="msg_delete_1") == "processed"

    # When Clerk's delete is delivered again under a new svix-id, later
    again = {**first, "timestamp": first["timestamp"] + 60_000}
    status = deliver(session_factory, settings, again, svix_id="msg_delete_2")

    # Then it is ignored, says why, and the row keeps the first delete's time
    assert status == "ignored"
    assert event_row(session_factory, "msg_delete_2").last_error == "already deleted by an earlier delete"
    assert ms(one(session_factory, User, USER_ID).deleted_at) == first["timestamp"]


def test_membership_delete_and_update_ordered_by_envelope_timestamp(session_factory, settings):
    # Given the delete (whose data.updated_at is OLDER than the update's) arrives before the update
    names = ("organizationMembership.created", "organizationMembership.deleted", "organizationMembership.updated")
    statuses = [deliver(session_factory, settings, load_payload(name)) for name in names]

    # Then the update's role holds, and the membership is inactive from the delete's timestamp
    assert statuses == ["processed", "processed", "processed"]
    membership = one(session_factory, OrganizationMembership, MEMBERSHIP_ID)
    assert membership.role == "org:admin"
    assert ms(membership.deleted_at) == load_payload("organizationMembership.deleted")["timestamp"]


def test_membership_update_then_delete_keeps_the_update_role(session_factory, settings):
    for name in ("organizationMembership.updated", "organizationMembership.deleted", "organizationMembership.created"):
        deliver(session_factory, settings, load_payload(name))

    membership = one(session_factory, OrganizationMembership, MEMBERSHIP_ID)
    assert membership.role == "org:admin"
    assert membership.deleted_at is not None


def test_organization_delete_deactivates_memberships_including_later_ones(session_factory, settings):
    # Given an active membership in the organization
    deliver(session_factory, settings, load_payload("organization.created"))
    deliver(session_factory, settings, load_payload("organizationMembership.created"))

    # When the organization is deleted, and then a membership event for another member arrives
    assert deliver(session_factory, settings, load_payload("organization.deleted")) == "processed"
    late = load_payload("organizationMembership.created")
    late["data"]["id"] = "orgmem_late"
    late["data"]["public_user_data"]["user_id"] = "user_late"
    assert deliver(session_factory, settings, late) == "processed"

    # Then both memberships are inactive, from the organization's delete
    org_deleted_ms = load_payload("organization.deleted")["timestamp"]
    for clerk_id in (MEMBERSHIP_ID, "orgmem_late"):
        assert ms(one(session_factory, OrganizationMembership, clerk_id).deleted_at) == org_deleted_ms
    org = one(session_factory, Organization, ORG_ID)
    assert (org.name, ms(org.deleted_at)) == ("Acme Corp", org_deleted_ms)


def test_user_delete_deactivates_memberships_including_later_ones(session_factory, settings):
    deleted = load_payload("user.deleted")
    deleted["data"]["id"] = UNSEEN_USER_ID
    assert deliver(session_factory, settings, deleted) == "processed"

    deliver(session_factory, settings, load_payload("organizationMembership.updated"))

    membership = one(session_factory, OrganizationMembership, MEMBERSHIP_ID)
    assert membership.role == "org:admin"
    assert ms(membership.deleted_at) == deleted["timestamp"]


def test_application_plan_survives_every_event(session_factory, settings):
    # Given synced rows the application has upgraded
    deliver(session_factory, settings, load_payload("user.created"))
    deliver(session_factory, settings, load_payload("organization.created"))
    with session_factory.begin() as session:
        session.execute(text("UPDATE users SET plan = 'pro'"))
        session.execute(text("UPDATE organizations SET plan = 'pro'"))

    # When updates and deletes arrive
    for name in ("user.updated", "organization.updated", "user.deleted", "organization.deleted"):
        assert deliver(session_factory, settings, load_payload(name)) == "processed"

    # Then the plan is still the application's
    assert one(session_factory, User, USER_ID).plan == "pro"
    assert one(session_factory, Organization, ORG_ID).plan == "pro"


def test_event_from_another_instance_is_ignored(session_factory, settings):
    other = dataclasses.replace(settings, clerk_instance_id="ins_someone_else")
    assert deliver(session_factory, other, load_payload("user.created"), svix_id="msg_other") == "ignored"

    assert "ins_2g7np7Hrk0SN6kj5EDMLDaKNL0S" in (event_row(session_factory, "msg_other").last_error or "")
    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(User)) == 0

    same = dataclasses.replace(settings, clerk_instance_id="ins_2g7np7Hrk0SN6kj5EDMLDaKNL0S")
    assert deliver(session_factory, same, load_payload("user.created"), svix_id="msg_same") == "processed"


def test_unsynced_type_is_ignored_with_a_reason(session_factory, settings):
    assert deliver(session_factory, settings, load_payload("session.created"), svix_id="msg_session") == "ignored"

    row = event_row(session_factory, "msg_session")
    assert "session.created" in (row.last_error or "")
    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(User)) == 0


def test_scrub_clears_a_deleted_users_pii_and_payloads(session_factory, settings):
    scrub = dataclasses.replace(settings, deleted_user_pii="scrub")
    # Given a user, and a membership of the user not seen before
    deliver(session_factory, scrub, load_payload("user.updated"), svix_id="msg_updated")
    deliver(session_factory, scrub, load_payload("organizationMembership.created"), svix_id="msg_membership")
    other_deleted = load_payload("user.deleted")
    other_deleted["data"]["id"] = UNSEEN_USER_ID

    # When both users are deleted, and then an older create of the first arrives late
    deliver(session_factory, scrub, load_payload("user.deleted"), svix_id="msg_deleted")
    deliver(session_factory, scrub, other_deleted, svix_id="msg_other_deleted")
    assert deliver(session_factory, scrub, load_payload("user.created"), svix_id="msg_late") == "ignored"

    # Then the row keeps only what is not personal, and no stored payload carries the PII
    user = one(session_factory, User, USER_ID)
    assert (user.email, user.first_name, user.last_name, user.username, user.image_url) == (None,) * 5
    assert user.deleted_at is not None
    assert user.public_metadata == {"department": "engineering"}
    assert one(session_factory, OrganizationMembership, MEMBERSHIP_ID).deleted_at is not None
    for svix_id in ("msg_updated", "msg_membership", "msg_late"):
        stored = json.dumps(event_row(session_factory, svix_id).payload)
        assert "john.doe@example.com" not in stored
        assert "Doe" not in stored


def test_scrub_also_clears_pii_arriving_after_the_delete(session_factory, settings):
    scrub = dataclasses.replace(settings, deleted_user_pii="scrub")
    deliver(session_factory, scrub, load_payload("user.deleted"))

    assert deliver(session_factory, scrub, load_payload("user.updated"), svix_id="msg_late_update") == "processed"

    user = one(session_factory, User, USER_ID)
    assert (user.email, user.first_name, user.last_name, user.username, user.image_url) == (None,) * 5
    assert "john.doe@example.com" not in json.dumps(event_row(session_factory, "msg_late_update").payload)


def test_duplicate_svix_id_changes_nothing(session_factory, settings):
    # Given an event applied, and an old one ignored
    assert deliver(session_factory, settings, load_payload("user.updated"), svix_id="msg_dup") == "processed"
    assert deliver(session_factory, settings, load_payload("user.created"), svix_id="msg_old") == "ignored"
    before = {svix_id: event_row(session_factory, svix_id) for svix_id in ("msg_dup", "msg_old")}
    with session_factory.begin() as session:
        session.execute(text("UPDATE users SET plan = 'pro'"))

    # When both are delivered again under the same svix-ids (the first with a different body)
    changed = copy.deepcopy(load_payload("user.updated"))
    changed["data"]["updated_at"] += 1000
    changed["data"]["first_name"] = "Mallory"
    again = [
        deliver(session_factory, settings, changed, svix_id="msg_dup"),
        deliver(session_factory, settings, load_payload("user.created"), svix_id="msg_old"),
    ]

    # Then the statuses, attempts and the user row are unchanged
    assert again == ["processed", "ignored"]
    for svix_id, row in before.items():
        now = event_row(session_factory, svix_id)
        assert (now.status, now.attempts, now.processed_at) == (row.status, row.attempts, row.processed_at)
    user = one(session_factory, User, USER_ID)
    assert (user.first_name, user.plan) == ("John", "pro")
    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(WebhookEvent)) == 2


def test_invalid_bodies_end_dead_with_a_readable_reason(session_factory, settings):
    no_id = load_payload("user.created")
    del no_id["data"]["id"]
    cases = {
        "msg_not_json": "{not json",
        "msg_no_data_id": json.dumps(no_id),
        "msg_no_type": json.dumps({"data": {"id": USER_ID}}),
    }

    statuses = {svix_id: deliver(session_factory, settings, body, svix_id=svix_id) for svix_id, body in cases.items()}

    assert set(statuses.values()) == {"dead"}
    assert "not JSON" in (event_row(session_factory, "msg_not_json").last_error or "")
    assert "data.id" in (event_row(session_factory, "msg_no_data_id").last_error or "")
    assert "type" in (event_row(session_factory, "msg_no_type").last_error or "")
    for svix_id in cases:
        row = event_row(session_factory, svix_id)
        assert row.attempts == 1
        assert "\n" not in (row.last_error or "")
    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(User)) == 0
