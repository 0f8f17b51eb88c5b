"""Organization invitations and domains (issue 16), applied through ``deliver_one`` on the real database:
the same guarantees as the other tables (duplicates, order, deletes and revocations final, child first)."""

from __future__ import annotations

import dataclasses
import json

from sqlalchemy import select

from shared.models import OrganizationDomain, OrganizationInvitation, OrganizationMembership, User, WebhookEvent
from tests.support.signing import load_payload
from tests.test_handlers import ORG_ID, UNSEEN_USER_ID, deliver, event_row, ms, one
from worker.ops import entities
from worker.ops.timeline import timeline

INVITATION_ID = "orginv_2g7np7Hrk0SN6kj5EDMLDaKNL0S"
REVOKED_ID = "orginv_2hRq5Kx0mW8bTz1LcP3dNyA7vEe"
DOMAIN_ID = "orgdmn_2g7np7Hrk0SN6kj5EDMLDaKNL0S"


def test_an_invitation_from_pending_to_accepted(session_factory, settings):
    created = load_payload("organizationInvitation.created")
    assert deliver(session_factory, settings, created) == "processed"
    invitation = one(session_factory, OrganizationInvitation, INVITATION_ID)
    assert (invitation.organization_clerk_id, invitation.email, invitation.role, invitation.status) == (
        ORG_ID,
        "jane.doe@acme.com",
        "org:member",
        "pending",
    )
    assert invitation.user_clerk_id is None
    assert ms(invitation.expires_at) == created["data"]["expires_at"]
    assert invitation.clerk_data == {k: v for k, v in created["data"].items() if k != "private_metadata"}

    assert deliver(session_factory, settings, load_payload("organizationInvitation.accepted")) == "processed"

    invitation = one(session_factory, OrganizationInvitation, INVITATION_ID)
    assert (invitation.status, invitation.user_clerk_id) == ("accepted", UNSEEN_USER_ID)
    assert invitation.deleted_at is None


def test_a_late_create_never_undoes_an_acceptance_or_a_revocation(session_factory, settings):
    # Given the accepted and the revoked invitation, applied first
    deliver(session_factory, settings, load_payload("organizationInvitation.accepted"))
    deliver(session_factory, settings, load_payload("organizationInvitation.revoked"))
    late_revoked_create = load_payload("organizationInvitation.revoked")
    late_revoked_create["type"] = "organizationInvitation.created"
    late_revoked_create["data"].update(status="pending", updated_at=late_revoked_create["data"]["created_at"])

    # When their older creates arrive late, and the acceptance again under another svix-id
    assert deliver(session_factory, settings, load_payload("organizationInvitation.created")) == "ignored"
    assert deliver(session_factory, settings, late_revoked_create) == "ignored"
    replay = load_payload("organizationInvitation.accepted")
    assert deliver(session_factory, settings, replay, svix_id="msg_replayed_acceptance") == "ignored"

    # Then each keeps its final status
    assert one(session_factory, OrganizationInvitation, INVITATION_ID).status == "accepted"
    assert one(session_factory, OrganizationInvitation, REVOKED_ID).status == "revoked"


def test_a_duplicate_invitation_event_changes_nothing(session_factory, settings):
    created = load_payload("organizationInvitation.created")
    assert deliver(session_factory, settings, created, svix_id="msg_inv") == "processed"
    synced_at = one(session_factory, OrganizationInvitation, INVITATION_ID).synced_at

    assert deliver(session_factory, settings, created, svix_id="msg_inv") == "processed"  # the recorded status

    assert one(session_factory, OrganizationInvitation, INVITATION_ID).synced_at == synced_at
    with session_factory() as session:
        assert len(session.scalars(select(WebhookEvent)).all()) == 1


def test_invitations_and_domains_before_their_organization_and_after_its_delete(session_factory, settings):
    # Given an invitation and a domain of an organization not seen yet
    assert deliver(session_factory, settings, load_payload("organizationInvitation.created")) == "processed"
    assert deliver(session_factory, settings, load_payload("organizationDomain.created")) == "processed"
    assert one(session_factory, OrganizationDomain, DOMAIN_ID).deleted_at is None

    # When the organization is deleted, and then the revoked invitation and the domain's update arrive
    deliver(session_factory, settings, load_payload("organization.deleted"))
    assert deliver(session_factory, settings, load_payload("organizationInvitation.revoked")) == "processed"
    assert deliver(session_factory, settings, load_payload("organizationDomain.updated")) == "processed"

    # Then all of them are inactive from the organization's delete on, with their last fields
    org_deleted_at = load_payload("organization.deleted")["timestamp"]
    for model, clerk_id in (
        (OrganizationInvitation, INVITATION_ID),
        (OrganizationInvitation, REVOKED_ID),
        (OrganizationDomain, DOMAIN_ID),
    ):
        assert ms(one(session_factory, model, clerk_id).deleted_at) == org_deleted_at
    assert one(session_factory, OrganizationDomain, DOMAIN_ID).verification_status == "verified"


def test_a_domain_is_verified_then_deleted_and_a_late_update_does_not_revive_it(session_factory, settings):
    assert deliver(session_factory, settings, load_payload("organizationDomain.created")) == "processed"
    domain = one(session_factory, OrganizationDomain, DOMAIN_ID)
    assert (domain.organization_clerk_id, domain.name, domain.enrollment_mode, domain.verification_status) == (
        ORG_ID,
        "acme.com",
        "automatic_invitation",
        None,
    )

    deliver(session_factory, settings, load_payload("organizationDomain.deleted"))
    assert deliver(session_factory, settings, load_payload("organizationDomain.updated")) == "processed"

    domain = one(session_factory, OrganizationDomain, DOMAIN_ID)
    assert ms(domain.deleted_at) == load_payload("organizationDomain.deleted")["timestamp"]
    assert (domain.enrollment_mode, domain.verification_status) == ("automatic_suggestion", "verified")
    assert deliver(session_factory, settings, load_payload("organizationDomain.deleted"), svix_id="msg_again") == (
        "ignored"
    )


def test_an_invalid_invitation_ends_dead_with_the_field_named(session_factory, settings):
    payload = load_payload("organizationInvitation.created")
    payload["data"]["organization_id"] = "not_an_org"

    assert deliver(session_factory, settings, payload, svix_id="msg_bad_inv") == "dead"

    assert "data.organization_id" in (event_row(session_factory, "msg_bad_inv").last_error or "")
    with session_factory() as session:
        assert session.scalars(select(OrganizationInvitation)).all() == []


def test_events_of_an_invitation_are_found_by_its_id(session_factory, settings):
    deliver(session_factory, settings, load_payload("organizationInvitation.created"), svix_id="msg_inv_1")
    deliver(session_factory, settings, load_payload("organizationInvitation.accepted"), svix_id="msg_inv_2")

    with session_factory() as session:
        assert [event.svix_id for event, _ in timeline(session, INVITATION_ID)] == ["msg_inv_1", "msg_inv_2"]
        # and the acceptance is among the events of the user who accepted
        invitee = one(session_factory, OrganizationInvitation, INVITATION_ID).user_clerk_id
        assert invitee is not None
        assert [event.svix_id for event, _ in timeline(session, invitee)] == ["msg_inv_2"]
        # and the operators' entity search finds the row
        [found] = entities.find(session, INVITATION_ID)
    assert (found.table, found.columns["status"]) == ("organization_invitations", "accepted")


def test_scrub_reaches_invitations_to_a_deleted_users_addresses_and_their_memberships(session_factory, settings):
    scrub = dataclasses.replace(settings, deleted_user_pii="scrub")
    # Given the invitee as a user whose second address the invitation went to, and their membership
    user = load_payload("user.updated")
    user["data"]["id"] = UNSEEN_USER_ID
    user["data"]["email_addresses"].append({"id": "idn_jane", "email_address": "Jane.Doe@acme.com"})
    deliver(session_factory, scrub, user, svix_id="msg_user")
    deliver(session_factory, scrub, load_payload("organizationInvitation.created"), svix_id="msg_invited")
    deliver(session_factory, scrub, load_payload("organizationMembership.created"), svix_id="msg_member")
    # and a domain of the organization whose affiliation was verified with that address
    domain = load_payload("organizationDomain.created")
    domain["data"]["affiliation_email_address"] = "jane.doe@ACME.com"
    deliver(session_factory, scrub, domain, svix_id="msg_domain")
    assert one(session_factory, OrganizationDomain, domain["data"]["id"]).clerk_data["affiliation_email_address"]

    # When the user is deleted, and the acceptance (naming the user) arrives afterwards
    deleted = load_payload("user.deleted")
    deleted["data"]["id"] = UNSEEN_USER_ID
    deliver(session_factory, scrub, deleted, svix_id="msg_deleted")
    assert deliver(session_factory, scrub, load_payload("organizationInvitation.accepted"), svix_id="msg_acc") == (
        "processed"
    )

    # Then no row and no stored payload holds the address or the name any more
    invitation = one(session_factory, OrganizationInvitation, INVITATION_ID)
    assert (invitation.email, invitation.clerk_data, invitation.status) == (None, None, "accepted")
    row = one(session_factory, User, UNSEEN_USER_ID)
    assert (row.clerk_data, row.phone_number, row.external_id, row.unsafe_metadata) == (None, None, None, {})
    assert one(session_factory, OrganizationMembership, "orgmem_2g7np7Hrk0SN6kj5EDMLDaKNL0S").clerk_data is None
    kept_domain = one(session_factory, OrganizationDomain, domain["data"]["id"])
    assert "affiliation_email_address" not in kept_domain.clerk_data
    assert (kept_domain.name, kept_domain.clerk_data["name"]) == ("acme.com", "acme.com")  # the rest is kept
    for svix_id in ("msg_user", "msg_invited", "msg_member", "msg_acc", "msg_domain"):
        stored = json.dumps(event_row(session_factory, svix_id).payload).lower()
        assert "jane.doe@acme.com" not in stored
        assert "john.doe@example.com" not in stored
