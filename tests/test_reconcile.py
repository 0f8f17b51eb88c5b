"""`clerk-sync reconcile [--fix]` finds planted drift of each kind, and repairs it."""

from __future__ import annotations

import json

from sqlalchemy import delete, insert, null, select, update

from devkit.waiting import wait_for
from shared.models import Organization, OrganizationDomain, OrganizationInvitation, OrganizationMembership, User
from tests.support.cli import run_cli
from tests.support.fake_clerk import SECRET_KEY, FakeClerkServer, clerk_env, make_instance
from worker.clerk.api import ClerkClient
from worker.clerk.backfill import backfill


def backfilled(server, clerk, session_factory, settings) -> None:
    with ClerkClient(server.url, SECRET_KEY) as client:
        backfill(session_factory, client, settings=settings)


def test_reconcile_reports_each_kind_of_drift_and_fix_repairs_it(base_env, settings, session_factory, tmp_path):
    clerk = make_instance(users=60, organizations=6, members_per_org=3)
    with FakeClerkServer(clerk) as server:
        env = clerk_env(base_env, server)
        # Given tables in step with Clerk, then drift planted of every kind
        backfilled(server, clerk, session_factory, settings)
        lost_user, lost_membership = clerk.users[1]["id"], clerk.memberships[4]["id"]
        stale_user, edited_org = clerk.users[2]["id"], clerk.organizations[1]["id"]
        overtaken_user, paying_user = clerk.users[3]["id"], clerk.users[5]["id"]
        with session_factory.begin() as session:
            # missing: rows Clerk has that the tables lost
            session.execute(delete(User).where(User.clerk_id == lost_user))
            session.execute(delete(OrganizationMembership).where(OrganizationMembership.clerk_id == lost_membership))
            # vanished: live rows Clerk never had (or deleted without the webhook arriving)
            session.execute(insert(User).values(clerk_id="user_ghost", email="ghost@example.com", clerk_updated_at=1))
            session.execute(insert(Organization).values(clerk_id="org_ghost", name="Ghost", clerk_updated_at=1))
            session.execute(
                insert(OrganizationMembership).values(
                    clerk_id="orgmem_ghost", organization_clerk_id=edited_org, user_clerk_id=paying_user
                )
            )
            # stale: an older version with other data, and an edit behind clerk-sync's back
            session.execute(
                update(User)
                .where(User.clerk_id.in_([stale_user, paying_user]))
                .values(first_name="Wrong", clerk_updated_at=User.clerk_updated_at - 5000)
            )
            session.execute(update(Organization).where(Organization.clerk_id == edited_org).values(name="Edited"))
            # not drift: a row newer than Clerk's list (a webhook that overtook it)
            session.execute(
                update(User)
                .where(User.clerk_id == overtaken_user)
                .values(first_name="Newer", clerk_updated_at=User.clerk_updated_at + 5000)
            )
            # application-owned data that every repair must keep
            session.execute(update(User).where(User.clerk_id == paying_user).values(plan="pro"))

        # When reconcile runs without --fix
        found = run_cli(env, "reconcile", "--json", cwd=tmp_path)

        # Then it exits 1 and names each kind per resource
        assert found.returncode == 1, found.stderr
        report = json.loads(found.stdout)
        assert report["drift"] is True
        resources = report["resources"]
        assert resources["users"]["missing"] == {"count": 1, "sample": [lost_user]}
        assert resources["users"]["vanished"] == {"count": 1, "sample": ["user_ghost"]}
        assert resources["users"]["stale"] == {"count": 2, "sample": sorted([stale_user, paying_user])}
        assert resources["organizations"]["missing"]["count"] == 0
        assert resources["organizations"]["vanished"] == {"count": 1, "sample": ["org_ghost"]}
        assert resources["organizations"]["stale"] == {"count": 1, "sample": [edited_org]}
        assert resources["memberships"]["missing"] == {"count": 1, "sample": [lost_membership]}
        assert resources["memberships"]["vanished"] == {"count": 1, "sample": ["orgmem_ghost"]}
        assert resources["memberships"]["stale"]["count"] == 0
        with session_factory() as session:  # and it changed nothing
            assert session.scalar(select(User.first_name).where(User.clerk_id == stale_user)) == "Wrong"

        # When reconcile runs with --fix
        fixed = run_cli(env, "reconcile", "--fix", cwd=tmp_path)

        # Then it still exits 1, reporting what it found and repaired
        assert fixed.returncode == 1, fixed.stderr
        assert "drift found and repaired" in fixed.stdout
        assert "user_ghost" in fixed.stdout

        # And a second reconcile finds nothing
        again = run_cli(env, "reconcile", cwd=tmp_path)
        assert again.returncode == 0, again.stdout + again.stderr
        assert again.stdout.strip().endswith("no drift")

    # And the tables hold Clerk's data, tombstones for the vanished, the plan kept
    with session_factory() as session:
        users = {u.clerk_id: u for u in session.scalars(select(User))}
        assert users[lost_user].first_name == clerk.users[1]["first_name"]
        assert users[stale_user].first_name == clerk.users[2]["first_name"]
        assert (users[paying_user].first_name, users[paying_user].plan) == (clerk.users[5]["first_name"], "pro")
        assert users[overtaken_user].first_name == "Newer"
        assert users["user_ghost"].deleted_at is not None
        assert session.scalar(select(Organization.deleted_at).where(Organization.clerk_id == "org_ghost")) is not None
        assert session.scalar(select(Organization.name).where(Organization.clerk_id == edited_org)) == "Org 1"
        memberships = {m.clerk_id: m for m in session.scalars(select(OrganizationMembership))}
        assert memberships["orgmem_ghost"].deleted_at is not None
        assert memberships[lost_membership].deleted_at is None


def test_reconcile_covers_invitations_domains_and_rows_synced_before_clerk_data(
    base_env, settings, session_factory, tmp_path
):
    clerk = make_instance(users=10, organizations=3, members_per_org=2, invitations_per_org=3, domains_per_org=2)
    with FakeClerkServer(clerk) as server:
        env = clerk_env(base_env, server)
        # Given tables in step with Clerk, then drift planted in invitations and domains, and an
        # organization and a user as migration 0004 left them (no clerk_data, new columns empty)
        backfilled(server, clerk, session_factory, settings)
        lost_invitation, edited_invitation = clerk.invitations[0]["id"], clerk.invitations[4]["id"]
        old_org, old_user = clerk.organizations[2]["id"], clerk.users[7]["id"]
        with session_factory.begin() as session:
            session.execute(delete(OrganizationInvitation).where(OrganizationInvitation.clerk_id == lost_invitation))
            session.execute(
                update(OrganizationInvitation)
                .where(OrganizationInvitation.clerk_id == edited_invitation)
                .values(status="pending")
            )
            session.execute(
                insert(OrganizationDomain).values(
                    clerk_id="orgdmn_ghost", organization_clerk_id=old_org, name="ghost.example", clerk_updated_at=1
                )
            )
            session.execute(
                update(Organization)
                .where(Organization.clerk_id == old_org)
                .values(clerk_data=null(), members_count=None)
            )
            session.execute(update(User).where(User.clerk_id == old_user).values(clerk_data=null()))

        # When reconcile runs
        found = run_cli(env, "reconcile", "--json", cwd=tmp_path)

        # Then each is named in its resource
        assert found.returncode == 1, found.stderr
        resources = json.loads(found.stdout)["resources"]
        assert resources["invitations"]["missing"] == {"count": 1, "sample": [lost_invitation]}
        assert resources["invitations"]["stale"] == {"count": 1, "sample": [edited_invitation]}
        assert resources["domains"]["vanished"] == {"count": 1, "sample": ["orgdmn_ghost"]}
        assert resources["organizations"]["stale"] == {"count": 1, "sample": [old_org]}
        assert resources["users"]["stale"] == {"count": 1, "sample": [old_user]}

        # When it repairs, a second run finds nothing
        assert run_cli(env, "reconcile", "--fix", cwd=tmp_path).returncode == 1
        again = run_cli(env, "reconcile", cwd=tmp_path)
        assert again.returncode == 0, again.stdout + again.stderr

    # And the rows hold Clerk's data again
    with session_factory() as session:
        invitations = {i.clerk_id: i for i in session.scalars(select(OrganizationInvitation))}
        assert invitations[lost_invitation].status == clerk.invitations[0]["status"]
        assert invitations[edited_invitation].status == clerk.invitations[4]["status"]
        ghost = session.scalars(select(OrganizationDomain).where(OrganizationDomain.clerk_id == "orgdmn_ghost")).one()
        assert ghost.deleted_at is not None
        org = session.scalars(select(Organization).where(Organization.clerk_id == old_org)).one()
        assert (org.members_count, org.clerk_data["id"]) == (3, old_org)


def test_reconcile_table_output_and_mass_delete_guard(base_env, settings, session_factory, tmp_path):
    # Given tables backfilled from one Clerk instance
    clerk = make_instance(users=40, organizations=2, members_per_org=2)
    with FakeClerkServer(clerk) as server:
        backfilled(server, clerk, session_factory, settings)
    # When reconcile --fix runs against another instance that has none of those users
    other = make_instance(users=0, organizations=2, members_per_org=0)
    other.organizations = clerk.organizations
    with FakeClerkServer(other) as server:
        result = run_cli(clerk_env(base_env, server), "reconcile", "--fix", "--users", cwd=tmp_path)

    # Then it reports 40 vanished users but refuses to tombstone them
    assert result.returncode == 1
    header, *rows = result.stdout.splitlines()
    assert header.split() == ["RESOURCE", "KIND", "COUNT", "SAMPLE"]
    assert rows[1].split()[:3] == ["users", "vanished", "40"]
    assert len(rows[1].split()) == 3 + 5  # a sample of five ids
    assert any(line.startswith("refused: 40 of 40 users vanished") for line in rows)
    with session_factory() as session:
        assert session.scalars(select(User).where(User.deleted_at.is_not(None))).first() is None


def test_beat_runs_reconcile_and_logs_drift(processes, base_env, settings, session_factory):
    # Given tables with one user Clerk does not know, and beat scheduling reconcile every 2 s
    clerk = make_instance(users=5, organizations=1, members_per_org=1)
    with FakeClerkServer(clerk) as server:
        backfilled(server, clerk, session_factory, settings)
        with session_factory.begin() as session:
            session.execute(insert(User).values(clerk_id="user_ghost", clerk_updated_at=1))
        env = {"CLERK_SECRET_KEY": SECRET_KEY, "CLERK_API_URL": server.url, "RECONCILE_INTERVAL_SECONDS": "2"}

        # When a worker and beat run
        worker = processes.start_worker(concurrency=1, **env)
        processes.start_beat(**env)

        # Then the worker logs the drift counts, and repairs nothing
        line = wait_for(
            lambda: next((ln for ln in worker.log().splitlines() if "reconcile_drift_found" in ln), None),
            timeout=120,
            what="reconcile_drift_found in the worker log",
        )
    counts = json.loads(line)
    assert counts["users_vanished"] == 1
    assert counts["users_missing"] == 0
    with session_factory() as session:
        assert session.scalar(select(User.deleted_at).where(User.clerk_id == "user_ghost")) is None


def test_beat_reconcile_skips_an_object_holding_a_lone_surrogate_and_logs_none_of_it(
    processes, base_env, settings, session_factory
):
    # Given a synced user whose object Clerk now lists with lone UTF-16 surrogates (JSON allows the
    # escape; Postgres and UTF-8 cannot hold it), one of them in a field of the wrong type
    clerk = make_instance(users=2, organizations=1, members_per_org=1)
    with FakeClerkServer(clerk) as server:
        backfilled(server, clerk, session_factory, settings)
        clerk.users[1].update(
            last_name="Lovelace\udfff", banned="Byron\udfff", updated_at=clerk.users[1]["updated_at"] + 1
        )
        env = {"CLERK_SECRET_KEY": SECRET_KEY, "CLERK_API_URL": server.url, "RECONCILE_INTERVAL_SECONDS": "2"}

        # When beat runs reconcile on a worker
        worker = processes.start_worker(concurrency=1, **env)
        processes.start_beat(**env)
        wait_for(
            lambda: "reconcile_no_drift" in worker.log() or "raised unexpected" in worker.log(),
            timeout=120,
            what="reconcile's outcome in the worker log",
        )

    # Then the object is skipped as invalid, the run reports, and no line quotes its values
    log = worker.log()
    assert "reconcile_object_skipped" in log and "reconcile_no_drift" in log, log
    assert "Lovelace" not in log and "Byron" not in log
