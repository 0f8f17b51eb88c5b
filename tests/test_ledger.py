"""What the ledger records for each kind of delivery: unsynced, invalid, redelivered with another body."""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import hashlib
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import structlog.testing
from sqlalchemy import select, text

from devkit.history import snapshot
from devkit.waiting import wait_for
from shared import metrics
from shared.models import User, WebhookEvent
from tests.support.backends import waiting_on_a_lock
from tests.support.ledger import ledger_row
from tests.support.pipeline import deliver_one
from tests.support.signing import load_payload
from worker.pipeline import ledger
from worker.pipeline.batch import process_batch
from worker.pipeline.ledger import Delivery

USER_ID = "user_2g7np7Hrk0SN6kj5EDMLDaKNL0S"


def sha256(body: str) -> str:
    return hashlib.sha256(body.encode()).hexdigest()


@contextmanager
def trigger_on_users(database_url: str, body: str) -> Iterator[None]:
    """A trigger on users running ``body`` (plpgsql) for every row written, for the block's duration."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            f"CREATE FUNCTION test_guard() RETURNS trigger AS $$ BEGIN {body} RETURN NEW; END $$ LANGUAGE plpgsql"
        )
        conn.execute(
            "CREATE TRIGGER test_guard BEFORE INSERT OR UPDATE ON users FOR EACH ROW EXECUTE FUNCTION test_guard()"
        )
    try:
        yield
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute("DROP TRIGGER IF EXISTS test_guard ON users; DROP FUNCTION IF EXISTS test_guard()")


def test_an_unsynced_type_is_recorded_ignored_without_its_payload(session_factory, settings):
    # Given an event type that carries a one-time code and is not synced
    body = json.dumps({"type": "email.created", "object": "event", "timestamp": 1716883200012,
                       "data": {"id": "ema_1", "to_email_address": "jd@example.com", "data": {"otp_code": "123456"}}})  # fmt: skip

    # When it is delivered
    assert deliver_one(session_factory, Delivery("msg_email", 1716883200, body), settings=settings) == "ignored"

    # Then its row keeps the type, the body's hash and the times, and nothing of the body
    row = ledger_row(session_factory, "msg_email")
    assert (row.event_type, row.status, row.attempts) == ("email.created", "ignored", 1)
    assert row.payload is None and row.raw_body is None
    assert row.body_sha256 == sha256(body)
    assert row.received_at is not None and row.processed_at is not None
    assert row.last_error == "event type 'email.created' is not synced"


def test_an_invalid_event_is_dead_at_once_and_touches_no_synced_row(session_factory, settings):
    # Given a user in the tables
    assert (
        deliver_one(
            session_factory, Delivery("msg_ok", None, json.dumps(load_payload("user.created"))), settings=settings
        )
        == "processed"
    )
    with session_factory() as session:
        before = snapshot(session)

    # When signed bodies that are not valid events arrive: an update holding only the id, a membership
    # naming neither organization nor user, a wrong type, a number no clock holds
    only_id = {"type": "user.updated", "timestamp": "soon", "data": {"id": USER_ID}}
    membership = copy.deepcopy(load_payload("organizationMembership.created"))
    del membership["data"]["organization"], membership["data"]["public_user_data"]
    wrong_type = copy.deepcopy(load_payload("user.updated"))
    wrong_type["data"]["email_addresses"] = "jd@example.com"
    huge = copy.deepcopy(load_payload("user.updated"))
    huge["data"]["updated_at"] = 1e30
    results = process_batch(
        session_factory,
        [Delivery(f"msg_bad_{n}", None, json.dumps(p)) for n, p in enumerate((only_id, membership, wrong_type, huge))],
        settings=settings,
    )

    # Then each is dead after one attempt, naming the field, and no synced row changed
    assert results == {f"msg_bad_{n}": "dead" for n in range(4)}
    reasons = [ledger_row(session_factory, f"msg_bad_{n}").last_error for n in range(4)]
    assert reasons == [
        "invalid_payload: timestamp: expected int, got str",
        "invalid_payload: data.organization is missing",
        "invalid_payload: data.email_addresses: expected array | null, got str",
        "invalid_payload: data.updated_at: expected int, got float",
    ]
    for n in range(4):
        row = ledger_row(session_factory, f"msg_bad_{n}")
        assert (row.attempts, row.next_attempt_at, len(row.errors)) == (1, None, 1)
        assert row.payload is not None  # kept for the operator
    with session_factory() as session:
        assert snapshot(session) == before


def test_a_type_given_twice_with_different_values_is_dead_and_says_so(session_factory, settings):
    # Given bodies with "type" twice: msgspec reads the first, the jsonb payload (and a replay) the last
    body = json.dumps(load_payload("user.created"))
    twice = {
        "msg_type_first_unsynced": '{"type":"session.created",' + body[1:],
        "msg_type_last_other": body[:-1] + ',"type":"user.deleted"}',
    }

    # When they are delivered
    results = {
        svix_id: deliver_one(session_factory, Delivery(svix_id, None, text), settings=settings)
        for svix_id, text in twice.items()
    }

    # Then both are dead, the reason saying what is wrong (not that type names no event), and nothing is applied
    assert results == dict.fromkeys(twice, "dead")
    for svix_id in twice:
        row = ledger_row(session_factory, svix_id)
        assert row.last_error == "invalid_payload: type is given more than once, with different values"
    with session_factory() as session:
        assert session.scalar(select(User.clerk_id)) is None


def test_a_body_whose_reading_fails_unexpectedly_is_dead_with_a_one_line_reason(session_factory, settings, monkeypatch):
    # Given a reader that fails on one body in a way no validation foresaw (a bug of ours, or a
    # library's): parse depends on the body alone, so it would fail on every attempt
    real_parse = ledger.parse

    def failing_on_one(body: str):
        if "user_reader_fails" in body:
            raise RecursionError("deep inside a library")
        return real_parse(body)

    monkeypatch.setattr(ledger, "parse", failing_on_one)
    bad = load_payload("user.created")
    bad["data"]["id"] = "user_reader_fails"

    # When it arrives in a batch with a good event
    results = process_batch(
        session_factory,
        [
            Delivery("msg_unreadable", None, json.dumps(bad)),
            Delivery("msg_fine", None, json.dumps(load_payload("user.created"))),
        ],
        settings=settings,
    )

    # Then it is dead at once with a reason naming only the kind of failure, and the other is applied
    assert results == {"msg_unreadable": "dead", "msg_fine": "processed"}
    row = ledger_row(session_factory, "msg_unreadable")
    assert (row.attempts, row.last_error) == (1, "invalid_payload: the body could not be read (RecursionError)")
    assert row.raw_body == json.dumps(bad)  # kept for the operator, as text: nothing of it was read
    with session_factory() as session:
        assert session.scalar(select(User.clerk_id).where(User.clerk_id == "user_reader_fails")) is None


def test_a_redelivery_with_another_body_is_never_applied(session_factory, settings):
    registry = metrics.registry()
    counted_before = registry.get_sample_value("clerk_sync_conflicting_redeliveries_total") or 0.0
    first = json.dumps(load_payload("user.updated"))
    assert deliver_one(session_factory, Delivery("msg_same", None, first), settings=settings) == "processed"

    # When the svix-id arrives again with a newer body (a forged or buggy redelivery)
    forged = load_payload("user.updated")
    forged["data"]["first_name"], forged["data"]["updated_at"] = "Mallory", forged["data"]["updated_at"] + 1000
    with structlog.testing.capture_logs() as logged:
        status = deliver_one(session_factory, Delivery("msg_same", None, json.dumps(forged)), settings=settings)
    assert status == "processed"

    # Then the row is unchanged, the conflict recorded and counted, and the table still holds the first body
    row = ledger_row(session_factory, "msg_same")
    assert row.body_sha256 == sha256(first)
    assert [entry["body_sha256"] for entry in row.conflicts] == [sha256(json.dumps(forged))]
    assert row.payload == json.loads(first) and row.attempts == 1
    with session_factory() as session:
        assert session.scalars(select(User.first_name)).one() == "John"
    assert metrics.registry().get_sample_value("clerk_sync_conflicting_redeliveries_total") == counted_before + 1
    warnings = [line for line in logged if line["event"] == "event_conflicting_redelivery"]
    assert [(w["log_level"], w["svix_id"]) for w in warnings] == [("warning", "msg_same")]


def test_after_a_failed_attempt_the_stored_body_is_applied_not_the_redelivered_one(
    session_factory, settings, database_url
):
    # Given a first attempt that failed (the database refused it)
    first = json.dumps(load_payload("user.updated"))
    with trigger_on_users(database_url, "RAISE EXCEPTION 'not now';"):
        assert deliver_one(session_factory, Delivery("msg_retry", None, first), settings=settings) == "failed"

    # When the svix-id is redelivered with another body
    forged = load_payload("user.updated")
    forged["data"]["first_name"] = "Mallory"
    status = deliver_one(session_factory, Delivery("msg_retry", None, json.dumps(forged)), settings=settings)

    # Then the body first received is the one applied and kept
    assert status == "processed"
    row = ledger_row(session_factory, "msg_retry")
    assert row.payload == json.loads(first) and len(row.conflicts) == 1
    with session_factory() as session:
        assert session.scalars(select(User.first_name)).one() == "John"


def test_our_own_re_enqueue_of_the_stored_body_is_not_a_conflict(session_factory, settings, database_url):
    # Given a failed event, and the body the sweeper re-enqueues: the stored JSON, re-serialised
    first = json.dumps(load_payload("user.updated"), indent=2)
    with trigger_on_users(database_url, "RAISE EXCEPTION 'not now';"):
        assert deliver_one(session_factory, Delivery("msg_swept", None, first), settings=settings) == "failed"
    again = json.dumps(ledger_row(session_factory, "msg_swept").payload, separators=(",", ":"))
    assert sha256(again) != sha256(first)

    # When it comes back, Then it is applied and no conflict is recorded
    assert deliver_one(session_factory, Delivery("msg_swept", None, again), settings=settings) == "processed"
    assert ledger_row(session_factory, "msg_swept").conflicts == []


def test_a_deadlock_met_again_and_again_spends_no_budget(session_factory, settings, database_url):
    # Given writes to users that always fail as a deadlock would
    body = json.dumps(load_payload("user.created"))
    with trigger_on_users(database_url, "RAISE EXCEPTION 'deadlock' USING ERRCODE = 'deadlock_detected';"):
        status = deliver_one(session_factory, Delivery("msg_deadlock", None, body), settings=settings)

    # Then the event waits for its retry with its whole budget left
    row = ledger_row(session_factory, "msg_deadlock")
    assert (status, row.status, row.attempts) == ("failed", "failed", 0)
    assert row.next_attempt_at is not None and row.last_error == "DeadlockDetected (40P01)"


def test_the_retry_delay_stops_doubling_at_a_week(session_factory, settings, database_url):
    # Given the longest retry settings allowed, and an event that has failed 299 times
    longest = dataclasses.replace(settings, max_attempts=500, retry_base_seconds=86400.0)
    body = json.dumps(load_payload("user.created"))
    with trigger_on_users(database_url, "RAISE EXCEPTION 'not now';"):
        assert deliver_one(session_factory, Delivery("msg_long", None, body), settings=longest) == "failed"
        with session_factory.begin() as session:
            session.execute(text("UPDATE webhook_events SET attempts = 299 WHERE svix_id = 'msg_long'"))

        # When it fails once more
        status = deliver_one(session_factory, Delivery("msg_long", None, body), settings=longest)

    # Then it waits for its retry at most a week (86400 s doubled 299 times overflows a date)
    row = ledger_row(session_factory, "msg_long")
    assert (status, row.attempts) == ("failed", 300)
    wait = row.next_attempt_at - row.updated_at
    assert ledger.MAX_RETRY_DELAY / 2 <= wait <= ledger.MAX_RETRY_DELAY + dt.timedelta(seconds=5), wait


def test_the_error_of_a_refused_write_names_no_value(session_factory, settings, database_url):
    # Given a unique index the application added on users.email, and a user holding the address
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("CREATE UNIQUE INDEX test_unique_email ON users (email)")
    try:
        created = load_payload("user.created")
        assert (
            deliver_one(session_factory, Delivery("msg_first", None, json.dumps(created)), settings=settings)
            == "processed"
        )
        other = copy.deepcopy(created)
        other["data"]["id"] = "user_someone_else"

        # When another user arrives with the same address
        status = deliver_one(session_factory, Delivery("msg_clash", None, json.dumps(other)), settings=settings)
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute("DROP INDEX IF EXISTS test_unique_email")

    # Then it is dead, and its error names the constraint, not the address
    row = ledger_row(session_factory, "msg_clash")
    assert status == "dead"
    assert row.last_error == "UniqueViolation (23505) constraint test_unique_email table users"
    assert "@" not in json.dumps(row.errors)


def test_a_batch_locks_rows_in_key_order_so_an_application_never_deadlocks_with_it(
    session_factory, settings, database_url
):
    # Given two users, and an application transaction that updates plans in key order and holds user a
    bodies = {}
    for name in ("user_lock_a", "user_lock_b"):
        payload = load_payload("user.created")
        payload["data"]["id"] = name
        bodies[name] = payload
        deliver_one(session_factory, Delivery(f"msg_{name}", None, json.dumps(payload)), settings=settings)
    app = psycopg.connect(database_url)
    # A short deadlock_timeout makes the application, not the batch, the side Postgres would cancel.
    app.execute("SET deadlock_timeout = '100ms'")
    app.execute("UPDATE users SET plan = 'pro' WHERE clerk_id = 'user_lock_a'")

    # When a batch updating b then a (in event order) runs meanwhile
    updates = []
    for name in ("user_lock_b", "user_lock_a"):
        payload = copy.deepcopy(bodies[name])
        payload["type"] = "user.updated"
        payload["data"]["updated_at"] += 1000
        updates.append(Delivery(f"msg_update_{name}", None, json.dumps(payload)))
    results: dict[str, str] = {}
    batch = threading.Thread(target=lambda: results.update(process_batch(session_factory, updates, settings=settings)))
    batch.start()

    wait_for(
        lambda: len(waiting_on_a_lock(database_url)) == 1,
        timeout=30,
        what="the batch waiting on the application's lock",
    )

    # Then the application goes on to user b without a deadlock (the batch waits on a, holding nothing)
    app.execute("UPDATE users SET plan = 'pro' WHERE clerk_id = 'user_lock_b'")
    app.commit()
    app.close()
    batch.join(timeout=30)
    assert results == {"msg_update_user_lock_b": "processed", "msg_update_user_lock_a": "processed"}
    with session_factory() as session:
        assert set(session.scalars(select(User.plan).where(User.clerk_id.like("user_lock_%")))) == {"pro"}


def test_scrubbing_reaches_every_stored_payload_naming_the_deleted_user(session_factory, settings):
    # Given DELETED_USER_PII=scrub, a user, and a membership naming them
    scrubbing = dataclasses.replace(settings, deleted_user_pii="scrub")
    user_id = "user_2h8op3Isl1QR7tKu5FGNfaLKEoU"  # the member in the membership samples
    created = load_payload("user.created")
    created["data"]["id"] = user_id
    deliveries = [
        Delivery("msg_s_user", None, json.dumps(created)),
        Delivery("msg_s_member", None, json.dumps(load_payload("organizationMembership.created"))),
    ]
    for delivery in deliveries:
        deliver_one(session_factory, delivery, settings=scrubbing)

    # When the user is deleted, and a membership about them arrives after the delete
    deleted = load_payload("user.deleted")
    deleted["data"]["id"] = user_id
    deliver_one(session_factory, Delivery("msg_s_delete", None, json.dumps(deleted)), settings=scrubbing)
    # (its PII is scrubbed in the transaction that would have stored it)
    late = load_payload("organizationMembership.updated")
    deliver_one(session_factory, Delivery("msg_s_late", None, json.dumps(late)), settings=scrubbing)

    # Then the row and every stored payload naming the user hold no personal data, the late one included
    with session_factory() as session:
        payloads = {row.svix_id: row.payload for row in session.scalars(select(WebhookEvent))}
        assert session.execute(text("SELECT email FROM users WHERE clerk_id = :id"), {"id": user_id}).scalar() is None
    for svix_id in ("msg_s_user", "msg_s_member", "msg_s_late"):
        assert payloads[svix_id]["scrubbed"] is True, svix_id
        assert "Jane" not in json.dumps(payloads[svix_id]) and "@" not in json.dumps(payloads[svix_id])
