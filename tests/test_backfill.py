"""`clerk-sync backfill` against a local HTTP server speaking Clerk's Backend API."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from sqlalchemy import func, select

from shared.models import (
    ControlFlag,
    Organization,
    OrganizationDomain,
    OrganizationInvitation,
    OrganizationMembership,
    User,
)
from tests.support.cli import run_cli
from tests.support.fake_clerk import (
    SECRET_KEY,
    FakeClerkServer,
    clerk_env,
    make_instance,
    primary_email_of,
)
from tests.support.pipeline import deliver_one
from worker.clerk.api import ClerkClient
from worker.clerk.backfill import backfill
from worker.pipeline.ledger import Delivery


def snapshot(session_factory) -> dict[str, list[tuple[Any, ...]]]:
    """Every synced row with every column, to show that a second run changes nothing."""
    tables = {}
    with session_factory() as session:
        for model in (User, Organization, OrganizationMembership, OrganizationInvitation, OrganizationDomain):
            columns = list(model.__table__.columns)
            tables[model.__tablename__] = sorted(tuple(row) for row in session.execute(select(*columns)))
    return tables


def count(session_factory, model, *conditions) -> int:
    with session_factory() as session:
        return session.scalar(select(func.count()).select_from(model).where(*conditions))


def progress_rows(session_factory) -> dict[str, dict[str, Any]]:
    with session_factory() as session:
        rows = session.execute(select(ControlFlag.name, ControlFlag.value).where(ControlFlag.name.like("backfill:%")))
        return {name: json.loads(value) for name, value in rows}


def test_full_backfill_survives_429_and_500_and_a_second_run_changes_nothing(base_env, session_factory, tmp_path):
    # Given Clerk with 1,000 users, 50 organizations, 150 memberships, 100 invitations and 50 domains,
    # which rate-limits the user list once and fails the organization list once
    clerk = make_instance(users=1000, organizations=50, members_per_org=3, invitations_per_org=2, domains_per_org=1)
    clerk.fail(429, "/v1/users", retry_after="1", from_offset=300)
    clerk.fail(500, "/v1/organizations")
    with FakeClerkServer(clerk) as server:
        env = clerk_env(base_env, server)

        # When the backfill runs with every resource
        first = run_cli(env, "backfill", "--page-size", "100", "--json", cwd=tmp_path)

        # Then it succeeds, having been answered the 429 and the 500 and tried again
        assert first.returncode == 0, first.stderr
        assert len(clerk.requests_to("/v1/users", 429)) == 1
        assert len(clerk.requests_to("/v1/organizations", 500)) == 1
        summary = json.loads(first.stdout)["resources"]
        names = ("users", "organizations", "memberships", "invitations", "domains")
        assert [summary[r]["fetched"] for r in names] == [1000, 50, 150, 100, 50]
        assert [summary[r]["applied"] for r in names] == [1000, 50, 150, 100, 50]
        # Pages were read oldest first, 100 at a time, the rate-limited one twice.
        assert clerk.offsets("/v1/users") == list(range(0, 1100, 100))

        # And the tables hold Clerk's data: the primary email, not the first one
        assert count(session_factory, User) == 1000
        assert count(session_factory, Organization) == 50
        assert count(session_factory, OrganizationMembership, OrganizationMembership.deleted_at.is_(None)) == 150
        with session_factory() as session:
            users = {u.clerk_id: u for u in session.scalars(select(User))}
            memberships = {m.clerk_id: m for m in session.scalars(select(OrganizationMembership))}
            organizations = {o.clerk_id: o for o in session.scalars(select(Organization))}
        for data in clerk.users:
            row = users[data["id"]]
            assert row.email == primary_email_of(data)
            assert (row.first_name, row.last_name, row.username) == (
                data["first_name"],
                data["last_name"],
                data["username"],
            )
            assert row.public_metadata == data["public_metadata"]
            assert row.clerk_updated_at == data["updated_at"]
            assert row.plan == "free"
            assert (row.banned, row.last_sign_in_at is not None) == (False, True)
            assert row.clerk_data == {k: v for k, v in data.items() if k != "private_metadata"}
        assert users[clerk.users[3]["id"]].email == "user3@example.com"  # second of two addresses
        for data in clerk.organizations:
            assert (organizations[data["id"]].name, organizations[data["id"]].slug) == (data["name"], data["slug"])
        for data in clerk.memberships:
            row = memberships[data["id"]]
            assert (row.organization_clerk_id, row.user_clerk_id, row.role) == (
                data["organization"]["id"],
                data["public_user_data"]["user_id"],
                data["role"],
            )
        # Invitations and domains come from each organization's lists, in every status
        with session_factory() as session:
            invitations = {i.clerk_id: i for i in session.scalars(select(OrganizationInvitation))}
            domains = {d.clerk_id: d for d in session.scalars(select(OrganizationDomain))}
        for data in clerk.invitations:
            row = invitations[data["id"]]
            assert (row.organization_clerk_id, row.email, row.status) == (
                data["organization_id"],
                data["email_address"],
                data["status"],
            )
            assert "private_metadata" not in row.clerk_data
        assert {i.status for i in invitations.values()} == {"pending", "accepted", "revoked"}
        for data in clerk.domains:
            row = domains[data["id"]]
            assert (row.organization_clerk_id, row.name, row.verification_status) == (
                data["organization_id"],
                data["name"],
                (data["verification"] or {}).get("status"),
            )
        assert {s.path for s in clerk.seen if s.path.endswith("/domains")} == {
            f"/v1/organizations/{org['id']}/domains" for org in clerk.organizations
        }
        assert progress_rows(session_factory) == {}
        before = snapshot(session_factory)

        # When it runs again over the same data
        second = run_cli(env, "backfill", "--page-size", "500", cwd=tmp_path)

        # Then nothing is applied and not a single column (synced_at included) changed
        assert second.returncode == 0, second.stderr
        lines = {line.split()[0]: line.split() for line in second.stdout.splitlines()[1:]}
        assert {name: cells[1:4] for name, cells in lines.items()} == {
            "users": ["1000", "0", "1000"],
            "organizations": ["50", "0", "50"],
            "memberships": ["150", "0", "150"],
            "invitations": ["100", "0", "100"],
            "domains": ["50", "0", "50"],
        }
        assert snapshot(session_factory) == before


def test_interrupted_backfill_resumes_at_the_saved_offset(base_env, session_factory, tmp_path):
    # Given Clerk whose user list fails for good from offset 300 on
    clerk = make_instance(users=450, organizations=2, members_per_org=1)
    clerk.fail(500, "/v1/users", from_offset=300, times=None)
    with FakeClerkServer(clerk) as server:
        env = clerk_env(base_env, server)

        # When the backfill runs
        broken = run_cli(env, "backfill", "--users", "--page-size", "100", "--retries", "1", cwd=tmp_path)

        # Then it stops with one line and exit 1, keeping the three committed pages
        assert broken.returncode == 1
        assert broken.stderr.strip().splitlines()[-1].startswith("clerk-sync: backfill stopped, progress saved")
        assert "500" in broken.stderr.strip().splitlines()[-1]
        assert count(session_factory, User) == 300
        assert progress_rows(session_factory)["backfill:users"]["offset"] == 300

        # When Clerk recovers and the backfill runs again
        clerk.heal()
        already_seen = len(clerk.requests_to("/v1/users"))
        resumed = run_cli(env, "backfill", "--users", "--page-size", "100", "--json", cwd=tmp_path)

        # Then it starts at offset 300, not 0, and finishes
        assert resumed.returncode == 0, resumed.stderr
        after = [int(s.query["offset"]) for s in clerk.requests_to("/v1/users")[already_seen:]]
        assert after == [300, 400]
        users = json.loads(resumed.stdout)["resources"]["users"]
        assert (users["resumed_from"], users["fetched"], users["applied"]) == (300, 150, 150)
        assert count(session_factory, User) == 450
        assert progress_rows(session_factory) == {}

        # And --restart starts from the beginning again, changing nothing
        restarted = run_cli(env, "backfill", "--users", "--restart", "--json", cwd=tmp_path)
        assert restarted.returncode == 0, restarted.stderr
        users = json.loads(restarted.stdout)["resources"]["users"]
        assert (users["resumed_from"], users["fetched"], users["applied"]) == (0, 450, 0)


def test_an_interrupted_backfill_of_invitations_resumes_at_the_organization_it_reached(
    base_env, session_factory, tmp_path
):
    # Given Clerk with 6 organizations of 3 invitations each, whose organization list fails from offset 4 on
    clerk = make_instance(users=4, organizations=6, members_per_org=0, invitations_per_org=3)
    clerk.fail(500, "/v1/organizations", from_offset=4, times=None)
    with FakeClerkServer(clerk) as server:
        env = clerk_env(base_env, server)
        args = ("backfill", "--invitations", "--page-size", "2")

        # When the backfill of invitations runs, it stops after two pages of organizations
        broken = run_cli(env, *args, "--retries", "1", cwd=tmp_path)
        assert broken.returncode == 1
        assert count(session_factory, OrganizationInvitation) == 12
        assert progress_rows(session_factory)["backfill:invitations"]["offset"] == 4

        # When Clerk recovers and it runs again
        clerk.heal()
        already_seen = len(clerk.requests_to("/v1/organizations"))
        resumed = run_cli(env, *args, "--json", cwd=tmp_path)

        # Then it resumes at the fifth organization, and every invitation is stored
        assert resumed.returncode == 0, resumed.stderr
        after = [int(s.query["offset"]) for s in clerk.requests_to("/v1/organizations")[already_seen:]]
        assert after == [4, 6]
        invitations = json.loads(resumed.stdout)["resources"]["invitations"]
        assert (invitations["resumed_from"], invitations["fetched"], invitations["applied"]) == (4, 6, 6)
        assert count(session_factory, OrganizationInvitation) == 18
        assert progress_rows(session_factory) == {}


def test_backfill_without_secret_key_refuses_with_one_line(base_env, tmp_path):
    result = run_cli(base_env, "backfill", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "clerk-sync: configuration error: CLERK_SECRET_KEY is not set: "
        "backfill and reconcile need the Clerk Backend API key"
    )


def test_rejected_key_is_a_one_line_failure(base_env, session_factory, tmp_path):
    with FakeClerkServer(make_instance(users=3, organizations=1, members_per_org=1)) as server:
        env = {**clerk_env(base_env, server), "CLERK_SECRET_KEY": "sk_test_not_the_right_one"}
        result = run_cli(env, "backfill", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().endswith("401, CLERK_SECRET_KEY was refused")
    # Progress goes to stderr as JSON log lines; the error is the one line that is not.
    assert [line for line in result.stderr.splitlines() if not line.startswith("{")] == [
        result.stderr.strip().splitlines()[-1]
    ]


# What a refusing API or a proxy before it may answer: Clerk's message about one of its users, and a
# page that echoes the request, the key's Authorization header included.
REFUSALS = {
    "clerk": {
        "errors": [
            {
                "code": "form_param_value_invalid",
                "message": "ada@example.com is invalid",
                "long_message": "The user Ada Lovelace (ada@example.com) is invalid",
            }
        ]
    },
    "echo": f"<html><body>400 Bad Request: Authorization: Bearer {SECRET_KEY}; ada@example.com</body></html>",
}


@pytest.mark.parametrize("answer", REFUSALS, ids=list(REFUSALS))
@pytest.mark.parametrize("command", ["backfill", "reconcile"])
def test_a_refusal_is_named_by_clerks_error_code_and_quotes_nothing_of_its_body(
    base_env, session_factory, tmp_path, command, answer
):
    # Given Clerk (or a proxy before it) refusing the user list with a body that holds values
    clerk = make_instance(users=3, organizations=1, members_per_org=1)
    clerk.fail(422, "/v1/users", times=None, body=REFUSALS[answer])
    with FakeClerkServer(clerk) as server:
        # When the command runs
        result = run_cli(clerk_env(base_env, server), command, "--users", cwd=tmp_path)

    # Then it fails in one line naming the status and Clerk's error code, and nothing of the body
    assert result.returncode == 1
    code = " form_param_value_invalid" if answer == "clerk" else ""
    assert result.stderr.strip().splitlines()[-1].endswith(f"Clerk API /v1/users: 422{code}")
    for value in (SECRET_KEY, "ada@example.com", "Lovelace"):
        assert value not in result.stderr + result.stdout


def test_a_database_error_is_named_by_class_and_sqlstate_never_by_its_message(
    base_env, session_factory, blocking_trigger, tmp_path
):
    # Given an application trigger whose error message quotes the row (here its clerk_id)
    clerk = make_instance(users=3, organizations=1, members_per_org=1)
    held = clerk.users[1]["id"]
    blocking_trigger.block(held)
    with FakeClerkServer(clerk) as server:
        # When the backfill writes that user
        result = run_cli(clerk_env(base_env, server), "backfill", "--users", cwd=tmp_path)

    # Then it fails in one line naming the error's class and SQLSTATE, and nothing the database wrote
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == "clerk-sync: database error: RaiseException (P0001)"
    assert held not in result.stderr
    assert "on hold" not in result.stderr


def test_memberships_fall_back_to_per_organization_lists(base_env, session_factory, settings, tmp_path):
    # Given a Clerk without the instance-wide membership list
    clerk = make_instance(users=20, organizations=4, members_per_org=3)
    clerk.instance_memberships_endpoint = False
    with FakeClerkServer(clerk) as server:
        # When memberships are backfilled
        result = run_cli(clerk_env(base_env, server), "backfill", "--memberships", "--page-size", "2", cwd=tmp_path)

        # Then each organization's list was read and every membership stored
        assert result.returncode == 0, result.stderr
        assert len(clerk.requests_to("/v1/organization_memberships", 404)) == 1
        assert {s.path for s in clerk.seen if s.path.endswith("/memberships")} == {
            f"/v1/organizations/{org['id']}/memberships" for org in clerk.organizations
        }
        assert count(session_factory, OrganizationMembership) == 12


def _event(event_type: str, data: dict[str, Any], timestamp_ms: int) -> str:
    return json.dumps(
        {"data": data, "object": "event", "type": event_type, "timestamp": timestamp_ms, "instance_id": "ins_test"}
    )


def test_backfill_racing_webhooks_converges(base_env, settings, session_factory):
    # Given Clerk's list (a slow one) holding an older snapshot of 300 users, and
    # webhooks with newer data for users 0-99 and deletes of users 100-149
    clerk = make_instance(users=300, organizations=10, members_per_org=3)
    clerk.page_delay = 0.05
    updated = {u["id"]: {**u, "first_name": "Newer", "updated_at": u["updated_at"] + 60_000} for u in clerk.users[:100]}
    deleted = [u["id"] for u in clerk.users[100:150]]
    events = [
        (f"msg_up_{i}", _event("user.updated", data, data["updated_at"])) for i, data in enumerate(updated.values())
    ]
    events += [
        (f"msg_del_{i}", _event("user.deleted", {"id": uid, "object": "user", "deleted": True}, 1_800_000_000_000))
        for i, uid in enumerate(deleted)
    ]
    # Interleave so that updates and deletes land before, during and after the pages.
    events.sort(key=lambda item: hash(item[0]))

    with FakeClerkServer(clerk) as server, ClerkClient(server.url, SECRET_KEY) as client:
        # When the backfill runs in a thread while the webhooks are applied
        with ThreadPoolExecutor(max_workers=1) as pool:
            running = pool.submit(backfill, session_factory, client, settings=settings, page_size=25)
            statuses = [
                deliver_one(session_factory, Delivery(svix_id, None, body), settings=settings)
                for svix_id, body in events
            ]
            running.result(timeout=120)
        # and once more afterwards, with the same stale snapshot
        backfill(session_factory, client, settings=settings, page_size=500)

    # Then every event was applied or found older, nothing failed
    assert set(statuses) <= {"processed", "ignored"}
    # And the newest data won, and the deleted users stayed deleted
    with session_factory() as session:
        users = {u.clerk_id: u for u in session.scalars(select(User))}
        memberships = list(session.scalars(select(OrganizationMembership)))
    assert len(users) == 300
    for clerk_id, data in updated.items():
        assert (users[clerk_id].first_name, users[clerk_id].clerk_updated_at) == ("Newer", data["updated_at"])
    for clerk_id in deleted:
        assert users[clerk_id].deleted_at is not None
        assert users[clerk_id].email is not None  # the last known fields are kept
    for data in clerk.users[150:]:
        assert users[data["id"]].deleted_at is None
        assert users[data["id"]].first_name == data["first_name"]
    # And memberships of deleted users are inactive, the others active
    for membership in memberships:
        assert (membership.deleted_at is not None) == (membership.user_clerk_id in deleted)
