"""Migrations keep existing data: a database filled at an earlier revision is migrated to head."""

from __future__ import annotations

import json
import os
import subprocess

import psycopg
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine

from devkit.services import ROOT, SERVICE_TABLES, bin_path, migrate, temporary_database
from devkit.waiting import wait_for
from shared.models import Base
from shared.schema import REVISIONS
from tests.support.backends import waiting_on_a_lock
from tests.support.processes import free_port
from tests.support.signing import load_payload


def _release(url: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The Procfile's release step (``alembic upgrade head``) on ``url``, run to its end."""
    return subprocess.run(
        [bin_path("alembic"), "upgrade", "head"],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": url, **env},
        capture_output=True,
        text=True,
        check=False,
    )


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


def test_a_database_filled_at_0003_keeps_its_data_and_gains_the_wider_coverage_at_head():
    # Given a database at revision 0003 holding a user, an organization, a membership and an operator action
    with temporary_database("0003") as url, psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO users (clerk_id, email, plan, public_metadata, clerk_updated_at)"
            " VALUES ('user_old', 'old@example.com', 'pro', '{\"tier\": 1}', 5)"
        )
        conn.execute(
            "INSERT INTO organizations (clerk_id, name, plan, clerk_updated_at) VALUES ('org_old', 'Old', 'team', 6)"
        )
        conn.execute(
            "INSERT INTO organization_memberships (clerk_id, organization_clerk_id, user_clerk_id, role, clerk_updated_at)"
            " VALUES ('orgmem_old', 'org_old', 'user_old', 'org:admin', 7)"
        )
        conn.execute("INSERT INTO operator_actions (operator, source, action, count) VALUES ('ops', 'cli', 'pause', 0)")

        # When it is migrated to head
        migrate(url)

        # Then the rows are intact, with the new columns empty or at their defaults
        assert conn.execute(
            "SELECT email, plan, public_metadata, clerk_updated_at, external_id, phone_number, banned, locked,"
            " unsafe_metadata, private_metadata, clerk_data FROM users"
        ).fetchone() == ("old@example.com", "pro", {"tier": 1}, 5, None, None, False, False, {}, None, None)
        assert conn.execute(
            "SELECT name, plan, clerk_updated_at, members_count, created_by, clerk_data FROM organizations"
        ).fetchone() == ("Old", "team", 6, None, None, None)
        assert conn.execute(
            "SELECT role, user_clerk_id, clerk_updated_at, permissions, public_metadata FROM organization_memberships"
        ).fetchone() == ("org:admin", "user_old", 7, [], {})
        assert conn.execute("SELECT operator, action FROM operator_actions").fetchone() == ("ops", "pause")

        # And the new tables exist, empty, taking rows with the synced tables' shape
        conn.execute(
            "INSERT INTO organization_invitations (clerk_id, organization_clerk_id, email, status)"
            " VALUES ('orginv_new', 'org_old', 'a@example.com', 'pending')"
        )
        conn.execute("INSERT INTO organization_domains (clerk_id, name) VALUES ('orgdmn_new', 'example.com')")
        assert conn.execute("SELECT count(*) FROM organization_invitations").fetchone() == (1,)
        assert conn.execute("SELECT deleted_at FROM organization_domains").fetchone() == (None,)


def test_an_accepted_invitation_recorded_before_0006_gains_its_invitee():
    # Given a database at 0005 holding an accepted invitation's event, as the worker recorded it then
    accepted = load_payload("organizationInvitation.accepted")
    with temporary_database("0005") as url, psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO webhook_events (svix_id, event_type, status, attempts, payload, entity_id)"
            " VALUES ('msg_acc_old', 'organizationInvitation.accepted', 'processed', 1, %s, %s),"
            "        ('msg_acc_purged', 'organizationInvitation.accepted', 'processed', 1, NULL, %s)",
            (json.dumps(accepted), accepted["data"]["id"], accepted["data"]["id"]),
        )

        # When it is migrated to head
        migrate(url)

        # Then the event names the user who accepted, and a purged one stays as it was
        rows = dict(conn.execute("SELECT svix_id, user_clerk_id FROM webhook_events").fetchall())
        assert rows == {"msg_acc_old": accepted["data"]["user_id"], "msg_acc_purged": None}


def test_bodies_written_from_0008_on_are_compressed_with_lz4_and_older_ones_stay_readable():
    # Given a database at 0007 holding a body large enough for Postgres to compress (with pglz, its default)
    body = load_payload("user.created")
    body["data"]["unsafe_metadata"] = {"notes": [f"note {n}" for n in range(400)]}
    insert = (
        "INSERT INTO webhook_events (svix_id, event_type, status, attempts, payload)"
        " VALUES (%s, 'user.created', 'processed', 1, %s)"
    )
    with temporary_database("0007") as url, psycopg.connect(url, autocommit=True) as conn:
        conn.execute(insert, ("msg_before", json.dumps(body)))

        # When it is migrated to head and the same body arrives again under another svix-id
        migrate(url)
        conn.execute(insert, ("msg_after", json.dumps(body)))

        # Then the new one is stored with lz4, the old one stays as it was, and both read back whole
        stored = conn.execute("SELECT svix_id, pg_column_compression(payload), payload FROM webhook_events").fetchall()
        assert {svix_id: method for svix_id, method, _ in stored} == {"msg_before": "pglz", "msg_after": "lz4"}
        assert all(payload == body for _, _, payload in stored)
        # And so is every column holding a body, an object as Clerk sent it, or its metadata
        columns = "SELECT attrelid::regclass::text, attname FROM pg_attribute WHERE attnum > 0 AND NOT attisdropped"
        lz4 = set(conn.execute(f"{columns} AND attcompression = 'l'"))
        holding = set(
            conn.execute(
                f"{columns} AND attrelid::regclass::text = ANY(%s)"
                " AND (attname IN ('payload', 'raw_body', 'clerk_data') OR attname LIKE '%%\\_metadata')",
                (list(SERVICE_TABLES),),
            )
        )
        assert lz4 == holding
        assert ("users", "unsafe_metadata") in lz4 and ("organization_domains", "clerk_data") in lz4

        # And a downgrade gives the columns back to the server's default
        subprocess.run(
            [bin_path("alembic"), "downgrade", "0007"],
            cwd=ROOT,
            env={**os.environ, "DATABASE_URL": url},
            check=True,
            capture_output=True,
        )
        assert set(conn.execute(f"{columns} AND attcompression = 'l'")) == set()


def test_migrations_log_their_own_notices_and_never_an_applications():
    # Given a database at 0005 with an application's trigger that raises a NOTICE quoting the row
    # it sees, and an event 0006 updates
    accepted = load_payload("organizationInvitation.accepted")
    with temporary_database("0005") as url, psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "CREATE FUNCTION app_audit() RETURNS trigger LANGUAGE plpgsql AS"
            " $$ BEGIN RAISE NOTICE 'audit %', NEW.payload; RETURN NEW; END $$"
        )
        conn.execute(
            "CREATE TRIGGER app_audit BEFORE UPDATE ON webhook_events FOR EACH ROW EXECUTE FUNCTION app_audit()"
        )
        conn.execute(
            "INSERT INTO webhook_events (svix_id, event_type, status, attempts, payload)"
            " VALUES ('msg_audited', 'organizationInvitation.accepted', 'processed', 1, %s)",
            (json.dumps(accepted),),
        )

        # When it is migrated to head
        done = _release(url, LOG_FORMAT="json")

        # Then it succeeds, and nothing of the trigger's notice (the payload it quoted) is logged
        assert done.returncode == 0, done.stderr
        output = done.stdout + done.stderr
        assert "audit" not in output
        assert accepted["data"]["email_address"] not in output
        assert conn.execute("SELECT user_clerk_id FROM webhook_events").fetchone() == (accepted["data"]["user_id"],)


def test_the_release_step_against_a_database_that_does_not_answer_fails_in_one_line():
    # Given a DATABASE_URL, password included, naming a port nothing listens on
    url = f"postgresql://postgres:release-s3cret@127.0.0.1:{free_port()}/clerk_sync"

    # When the Procfile's release runs
    done = _release(url)

    # Then it fails with one line naming the problem, not a traceback, and never the password
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("clerk-sync: database unavailable: connection failed: ")
    assert "Connection refused" in done.stderr and "nothing was migrated" in done.stderr
    assert "release-s3cret" not in done.stderr


def test_a_migration_the_database_stops_fails_in_one_line_and_release_can_run_again():
    # Given a database at 0008, and an application transaction holding the users table 0009 alters
    with temporary_database("0008") as url, psycopg.connect(url) as holder:
        holder.execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")

        # When the Procfile's release runs and has its connection cut while it waits for the table
        # (its lock timeout, 5 s, ends in the same error class and the same line)
        release = subprocess.Popen(
            [bin_path("alembic"), "upgrade", "head"],
            cwd=ROOT,
            env={**os.environ, "DATABASE_URL": url, "LOG_FORMAT": "json"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        pid = wait_for(lambda: waiting_on_a_lock(url), timeout=4, what="release waiting")[0]
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        _, stderr = release.communicate(timeout=60)
        holder.rollback()

        # Then it fails with one line saying why, not a traceback
        assert release.returncode == 1, stderr
        errors = [line for line in stderr.splitlines() if not line.startswith("{")]
        assert errors == [line for line in errors if line.startswith("clerk-sync: migration stopped: ")], stderr
        assert len(errors) == 1 and errors[0].endswith("run release again"), stderr
        assert "terminating connection" in errors[0], errors[0]

        # And it can run again, to head
        again = _release(url)
        assert again.returncode == 0, again.stderr
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT version_num FROM alembic_version").fetchone() == (REVISIONS[-1],)


def test_the_schema_at_head_is_the_models():
    # Given a database migrated to head
    with temporary_database() as url:
        engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
        try:
            # When alembic compares it with shared.models
            with engine.connect() as connection:
                differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
        finally:
            engine.dispose()
    # Then nothing differs: every model change has its migration
    assert differences == []


def test_every_reader_by_status_can_use_the_index_of_what_is_not_done(database_url):
    # Given the ledger, and a planner told to avoid reading the whole table
    readers = {
        "sweeper, due retries": "status = 'failed' AND next_attempt_at <= now()",
        "sweeper and resume, pending": "status = 'pending' AND next_attempt_at IS NULL",
        "dead-letter queue": "status = 'dead'",
        "metrics and status counts": "status IN ('pending', 'failed', 'dead')",
        "oldest waiting": "status IN ('pending', 'failed')",
    }
    with psycopg.connect(database_url) as conn:
        conn.execute("SET enable_seqscan = off")
        for reader, where in readers.items():
            # When each reader's condition is planned
            plan = "\n".join(row[0] for row in conn.execute(f"EXPLAIN SELECT id FROM webhook_events WHERE {where}"))  # noqa: S608 - fixed conditions
            # Then the partial index serves it
            assert "ix_webhook_events_not_done" in plan, (reader, plan)
