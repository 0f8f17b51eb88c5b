"""Migrations keep existing data: a database filled at an earlier revision is migrated to head."""

from __future__ import annotations

import json

import psycopg

from devkit.services import migrate, temporary_database
from tests.support.signing import load_payload


def test_a_database_filled_at_0001_keeps_its_data_at_head():
    # Given a database at revision 0001 holding a user and a membership event, as the worker left them
    membership = load_payload("organizationMembership.created")
    with temporary_database("0001") as url, psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO users (clerk_id, email, plan, clerk_updated_at) VALUES ('user_old', 'old@example.com', 'pro', 1)"
        )
        conn.execute(
            "INSERT INTO webhook_events (svix_id, event_type, status, attempts, payload, entity_id)"
            " VALUES ('msg_old', 'organizationMembership.created', 'processed', 1, %s, %s)",
            (json.dumps(membership), membership["data"]["id"]),
        )

        # When it is migrated to head
        migrate(url)

        # Then the rows are intact, and the event's user and organization are filled from its payload
        assert conn.execute("SELECT email, plan FROM users WHERE clerk_id = 'user_old'").fetchone() == (
            "old@example.com",
            "pro",
        )
        row = conn.execute(
            "SELECT status, user_clerk_id, organization_clerk_id, body_sha256, conflicts FROM webhook_events"
        ).fetchone()
        assert row == (
            "processed",
            membership["data"]["public_user_data"]["user_id"],
            membership["data"]["organization"]["id"],
            None,  # the exact bytes of an old body are unknown: never reported as a conflict
            [],
        )
