"""A batch of events in one transaction keeps each event's own status and failure isolation."""

from __future__ import annotations

import hashlib
import json
import random
import string
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import psycopg
import pytest
from sqlalchemy import select, text

from shared.db import PING_AFTER_IDLE_SECONDS, POOL_SIZE
from shared.events import parse
from shared.models import User, WebhookEvent
from tests.support.signing import load_payload, user_created
from worker.pipeline import handlers
from worker.pipeline.apply import apply_changes
from worker.pipeline.batch import process_batch
from worker.pipeline.errors import DatabaseUnavailable
from worker.pipeline.ledger import Delivery, set_paused


def _statuses(session_factory) -> dict[str, tuple[str, int, str | None]]:
    with session_factory() as session:
        rows = session.execute(
            select(WebhookEvent.svix_id, WebhookEvent.status, WebhookEvent.attempts, WebhookEvent.last_error)
        )
        return {row.svix_id: (row.status, row.attempts, row.last_error) for row in rows}


def test_batch_applies_each_event_once_and_dedupes_within_the_batch(session_factory, settings):
    # Given a batch with five events, one of them delivered twice, and an unsynced type
    deliveries = [Delivery(f"msg_b{i}", 1700000000, json.dumps(user_created(f"user_batch_{i}"))) for i in range(5)]
    deliveries.insert(2, deliveries[0])
    deliveries.append(Delivery("msg_session", 1700000000, json.dumps(load_payload("session.created"))))

    # When it is applied
    results = process_batch(session_factory, deliveries, settings=settings)

    # Then every distinct event has one row, one attempt, and its own status
    assert results == {**{f"msg_b{i}": "processed" for i in range(5)}, "msg_session": "ignored"}
    statuses = _statuses(session_factory)
    assert {k: v[:2] for k, v in statuses.items()} == {
        **{f"msg_b{i}": ("processed", 1) for i in range(5)},
        "msg_session": ("ignored", 1),
    }
    with session_factory() as session:
        assert session.scalar(select(text("count(*)")).select_from(User)) == 5

    # And a second delivery of the same batch changes nothing
    assert process_batch(session_factory, deliveries, settings=settings) == results
    assert _statuses(session_factory) == statuses


def test_a_poison_event_does_not_cost_the_rest_of_its_batch(session_factory, settings):
    # Given a batch where one body is not JSON, one nests deeper than any parser recurses, one has
    # no data.id, and one violates a column limit
    too_long = load_payload("user.created")
    too_long["data"]["id"] = "user_" + "x" * 40  # fits the envelope check, not the application's trigger
    with session_factory.begin() as session:
        session.execute(
            text(
                "CREATE OR REPLACE FUNCTION reject_x() RETURNS trigger AS $$ BEGIN "
                "IF NEW.clerk_id LIKE 'user_xxxx%' THEN RAISE EXCEPTION 'rejected by test trigger'; END IF; "
                "RETURN NEW; END $$ LANGUAGE plpgsql"
            )
        )
        session.execute(text("CREATE TRIGGER reject_x BEFORE INSERT ON users FOR EACH ROW EXECUTE FUNCTION reject_x()"))
    try:
        deliveries = [
            Delivery("msg_ok1", 1700000000, json.dumps(user_created("user_batch_1"))),
            Delivery("msg_not_json", 1700000000, "{not json"),
            Delivery("msg_nul_id", 1700000000, '{"type": "user.created", "data": {"id": "user_\\u0000x"}}'),
            Delivery("msg_nul_type", 1700000000, '{"type": "user.\\u0000", "data": {"id": "user_1"}}'),
            Delivery("msg_deep", 1700000000, '{"type": "user.created", "data": ' + "[" * 100_000 + "]" * 100_000 + "}"),
            Delivery("msg_no_id", 1700000000, json.dumps({"type": "user.created", "data": {}})),
            Delivery("msg_trigger", 1700000000, json.dumps(too_long)),
            Delivery("msg_ok2", 1700000000, json.dumps(user_created("user_batch_2"))),
        ]

        # When the batch is applied
        results = process_batch(session_factory, deliveries, settings=settings)
    finally:
        with session_factory.begin() as session:
            session.execute(text("DROP TRIGGER reject_x ON users"))

    # Then the good events are processed, the invalid ones dead with a readable reason,
    # and the one the database refused has failed (transient) with its error recorded
    statuses = _statuses(session_factory)
    assert results["msg_ok1"] == results["msg_ok2"] == "processed"
    assert statuses["msg_not_json"][0] == "dead" and "not JSON" in statuses["msg_not_json"][2]
    assert statuses["msg_deep"][0] == "dead" and "nests too deeply" in statuses["msg_deep"][2]
    assert statuses["msg_nul_id"][0] == statuses["msg_nul_type"][0] == "dead"
    assert statuses["msg_no_id"][0] == "dead" and "data.id" in statuses["msg_no_id"][2]
    assert statuses["msg_trigger"][0] in ("failed", "dead")
    # The error names the class and SQLSTATE, never the message (it could carry values)
    assert statuses["msg_trigger"][2] == "RaiseException (P0001)"
    with session_factory() as session:
        ids = set(session.scalars(select(User.clerk_id)))
    assert ids == {"user_batch_1", "user_batch_2"}


def test_a_paused_batch_is_held_pending(session_factory, settings):
    with session_factory.begin() as session:
        set_paused(session, True)
    results = process_batch(
        session_factory, [Delivery("msg_held", 1700000000, json.dumps(user_created("user_batch_7")))], settings=settings
    )
    assert results == {"msg_held": "pending"}
    assert _statuses(session_factory)["msg_held"][:2] == ("pending", 0)
    with session_factory() as session:
        assert session.scalars(select(User)).first() is None
        assert session.scalar(select(WebhookEvent.processed_at).where(WebhookEvent.svix_id == "msg_held")) is None


def test_each_new_row_ends_as_its_event_did_in_one_attempt(session_factory, settings):
    # Given a batch of new events: two that apply, one the same user's older update, one of another
    # Clerk instance (rows go in as "processed" and only these last two are corrected)
    older = user_created("user_batch_10")
    older["type"] = "user.updated"
    older["data"]["updated_at"] -= 60_000
    foreign = user_created("user_batch_11")
    foreign["instance_id"] = "ins_someone_else"
    deliveries = [
        Delivery("msg_n1", 1700000000, json.dumps(user_created("user_batch_10"))),
        Delivery("msg_n2", 1700000000, json.dumps(older)),
        Delivery("msg_n3", 1700000000, json.dumps(foreign)),
        Delivery("msg_n4", 1700000000, json.dumps(user_created("user_batch_12"))),
    ]

    # When it is applied with the samples' instance configured
    results = process_batch(
        session_factory, deliveries, settings=replace(settings, clerk_instance_id=older["instance_id"])
    )

    # Then each row holds its own ending, one attempt each, a reason where it was not applied
    assert results == {"msg_n1": "processed", "msg_n2": "ignored", "msg_n3": "ignored", "msg_n4": "processed"}
    statuses = _statuses(session_factory)
    assert [statuses[d.svix_id][:2] for d in deliveries] == [
        ("processed", 1),
        ("ignored", 1),
        ("ignored", 1),
        ("processed", 1),
    ]
    assert statuses["msg_n1"][2] is None and statuses["msg_n4"][2] is None
    assert statuses["msg_n2"][2] and "ins_someone_else" in (statuses["msg_n3"][2] or "")
    # and processed_at keeps the order of arrival
    with session_factory() as session:
        rows = session.execute(select(WebhookEvent.svix_id, WebhookEvent.processed_at)).all()
    assert [svix_id for svix_id, _ in sorted(rows, key=lambda row: row.processed_at)] == [d.svix_id for d in deliveries]


def test_a_paused_batch_records_duplicates_and_new_events_but_applies_nothing(session_factory, settings):
    # Given one event already processed, and the pipeline paused afterwards
    first = Delivery("msg_before_pause", 1700000000, json.dumps(user_created("user_batch_8")))
    assert process_batch(session_factory, [first], settings=settings) == {"msg_before_pause": "processed"}
    with session_factory.begin() as session:
        set_paused(session, True)

    # When a batch arrives with its duplicate and a new event for another user
    results = process_batch(
        session_factory,
        [first, Delivery("msg_paused_new", 1700000000, json.dumps(user_created("user_batch_9")))],
        settings=settings,
    )

    # Then the duplicate keeps its status, the new event is held, and no row is written for it
    assert results == {"msg_before_pause": "processed", "msg_paused_new": "pending"}
    with session_factory() as session:
        assert set(session.scalars(select(User.clerk_id))) == {"user_batch_8"}


def test_a_conflicting_redelivery_in_a_batch_applies_the_stored_body_and_the_rest(session_factory, settings):
    # Given an event whose first attempt failed: its row keeps the body first received
    stored = load_payload("user.updated")
    stored["data"]["id"] = "user_conflict"
    with session_factory.begin() as session:
        session.execute(
            text(
                "INSERT INTO webhook_events (svix_id, event_type, status, attempts, payload, body_sha256, received_at)"
                " VALUES ('msg_conflict', 'user.updated', 'failed', 1, CAST(:payload AS jsonb), 'stored', now())"
            ),
            {"payload": json.dumps(stored)},
        )
    # When a redelivery under its svix-id carries another user's body, in a batch with a new event
    other = load_payload("user.updated")
    other["data"]["id"] = "user_not_stored"
    results = process_batch(
        session_factory,
        [
            Delivery("msg_conflict", 1700000000, json.dumps(other)),
            Delivery("msg_fresh", 1700000000, json.dumps(user_created("user_batch_3"))),
        ],
        settings=settings,
    )

    # Then the stored body is the one applied, and the rest of the batch is applied too
    assert results == {"msg_conflict": "processed", "msg_fresh": "processed"}
    with session_factory() as session:
        assert set(session.scalars(select(User.clerk_id))) == {"user_conflict", "user_batch_3"}
        conflicts = session.scalar(select(WebhookEvent.conflicts).where(WebhookEvent.svix_id == "msg_conflict"))
    assert len(conflicts) == 1


def test_a_conflicting_redelivery_within_one_batch_is_recorded_and_never_applied(session_factory, settings):
    # Given a batch holding one svix-id twice, the second time with another user's body
    first, forged = user_created("user_first_body"), user_created("user_forged_body")
    deliveries = [
        Delivery("msg_twice", 1700000000, json.dumps(first)),
        Delivery("msg_other", 1700000000, json.dumps(user_created("user_batch_4"))),
        Delivery("msg_twice", 1700000000, json.dumps(forged)),
        Delivery("msg_twice", 1700000000, json.dumps(first)),
    ]

    # When it is applied
    results = process_batch(session_factory, deliveries, settings=settings)

    # Then the first body is applied and kept, and the other body is recorded as a conflict (once)
    assert results == {"msg_twice": "processed", "msg_other": "processed"}
    with session_factory() as session:
        assert set(session.scalars(select(User.clerk_id))) == {"user_first_body", "user_batch_4"}
        row = session.scalars(select(WebhookEvent).where(WebhookEvent.svix_id == "msg_twice")).one()
    assert (row.payload, row.attempts) == (first, 1)
    assert [c["body_sha256"] for c in row.conflicts] == [hashlib.sha256(json.dumps(forged).encode()).hexdigest()]


@pytest.fixture
def cut_connections(session_factory, database_url):  # type: ignore[no-untyped-def]
    """Cuts the run's pooled connections when called; afterwards the pool starts afresh, so that a
    connection cut here and never checked out again cannot fail the next test's first statement."""
    yield lambda: _terminate_our_connections(database_url)
    session_factory.kw["bind"].dispose()


def _terminate_our_connections(database_url: str) -> int:
    with psycopg.connect(database_url, autocommit=True) as conn:
        return len(
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND application_name = 'clerk-sync' AND pid <> pg_backend_pid()"
            ).fetchall()
        )


def test_a_pooled_connection_that_died_idle_is_replaced_before_the_batch(session_factory, settings, cut_connections):
    # Given pooled connections that Postgres dropped while they sat idle (a restart, an idle timeout)
    process_batch(
        session_factory, [Delivery("msg_warm", 1700000000, json.dumps(user_created("user_batch_4")))], settings=settings
    )
    assert cut_connections() >= 1
    time.sleep(PING_AFTER_IDLE_SECONDS + 0.2)

    # When the next batch comes: the pool pings a connection that sat idle and replaces it
    results = process_batch(
        session_factory,
        [Delivery("msg_after", 1700000000, json.dumps(user_created("user_batch_5")))],
        settings=settings,
    )

    # Then it is applied at the first attempt
    assert results == {"msg_after": "processed"}


def test_a_connection_that_died_a_moment_ago_costs_one_attempt_and_nothing_else(
    session_factory, settings, cut_connections
):
    # Given a pooled connection Postgres dropped just after its last batch (no ping: it was not idle)
    process_batch(
        session_factory,
        [Delivery("msg_warm2", 1700000000, json.dumps(user_created("user_batch_6")))],
        settings=settings,
    )
    assert cut_connections() >= 1
    delivery = Delivery("msg_next", 1700000000, json.dumps(user_created("user_batch_7")))

    # When the next batch meets it: the outage path (the task's backoff keeps the message and tries
    # again); each broken connection it meets leaves the pool, so the pool's size bounds the tries
    results = None
    for _attempt in range(POOL_SIZE + 1):
        try:
            results = process_batch(session_factory, [delivery], settings=settings)
            break
        except DatabaseUnavailable:
            continue

    # Then the event is applied once, its budget unspent
    assert results == {"msg_next": "processed"}
    assert _statuses(session_factory)["msg_next"][:2] == ("processed", 1)


def test_an_event_whose_ledger_row_postgres_refuses_is_recorded_bare(session_factory, settings):
    # Given an application trigger that refuses ledger rows naming one user
    with session_factory.begin() as session:
        session.execute(
            text(
                "CREATE OR REPLACE FUNCTION reject_ledger() RETURNS trigger AS $$ BEGIN "
                "IF NEW.entity_id = 'user_refused' THEN RAISE EXCEPTION 'rejected by test trigger'; END IF; "
                "RETURN NEW; END $$ LANGUAGE plpgsql"
            )
        )
        session.execute(
            text(
                "CREATE TRIGGER reject_ledger BEFORE INSERT OR UPDATE ON webhook_events FOR EACH ROW EXECUTE FUNCTION reject_ledger()"
            )
        )
    refused = load_payload("user.created")
    refused["data"]["id"] = "user_refused"
    try:
        # When an event about that user is applied with another one
        results = process_batch(
            session_factory,
            [
                Delivery("msg_refused", 1700000000, json.dumps(refused)),
                Delivery("msg_fine", 1700000000, json.dumps(user_created("user_batch_3"))),
            ],
            settings=settings,
        )
    finally:
        with session_factory.begin() as session:
            session.execute(text("DROP TRIGGER reject_ledger ON webhook_events"))

    # Then the other event is processed, and the refused one has a row: its failure, its body as text
    assert results == {"msg_refused": "failed", "msg_fine": "processed"}
    with session_factory() as session:
        row = session.scalars(select(WebhookEvent).where(WebhookEvent.svix_id == "msg_refused")).one()
    assert (row.status, row.attempts, row.last_error, row.entity_id) == ("failed", 1, "RaiseException (P0001)", None)
    assert row.payload is None and json.loads(row.raw_body) == refused
    with session_factory() as session:
        assert set(session.scalars(select(User.clerk_id))) == {"user_batch_3"}


def _ends(session_factory, settings, svix_id: str, payload: str) -> WebhookEvent:  # type: ignore[no-untyped-def]
    """The ledger row of ``payload`` delivered alone (after a batch with a good event failed with it)."""
    good = Delivery(f"{svix_id}_good", None, json.dumps(user_created(f"user_{svix_id}")))
    results = process_batch(session_factory, [Delivery(svix_id, None, payload), good], settings=settings)
    assert results[good.svix_id] == "processed"
    with session_factory() as session:
        return session.scalars(select(WebhookEvent).where(WebhookEvent.svix_id == svix_id)).one()


def test_a_value_too_long_for_its_column_ends_dead_at_once_with_its_body_kept(session_factory, settings):
    # Given an organization whose creator's id is longer than any Clerk id (the column holds 64)
    organization = load_payload("organization.created")
    organization["data"]["created_by"] = "user_" + "x" * 70
    # Then it is dead at its first attempt, named by Postgres's error, the body kept as the payload
    row = _ends(session_factory, settings, "msg_too_long", json.dumps(organization))
    assert (row.status, row.attempts, row.last_error) == ("dead", 1, "StringDataRightTruncation (22001)")
    assert row.payload == organization and row.raw_body is None


def test_a_value_too_large_for_its_index_ends_dead_at_once(session_factory, settings):
    # Given a domain whose name no btree entry can hold (incompressible, over 2.7 kB)
    domain = load_payload("organizationDomain.created")
    rng = random.Random(0)
    domain["data"]["name"] = "".join(rng.choice(string.ascii_lowercase) for _ in range(9000)) + ".com"
    # Then it is dead at its first attempt: no retry will ever make it fit
    row = _ends(session_factory, settings, "msg_too_large", json.dumps(domain))
    assert (row.status, row.attempts) == ("dead", 1)
    assert row.last_error is not None and row.last_error.startswith("ProgramLimitExceeded (54000)")
    assert row.payload == domain


def test_a_body_postgres_cannot_store_as_jsonb_ends_dead_kept_as_text(session_factory, settings):
    # Given a user event carrying a number beyond jsonb's range in a field nobody reads
    user = load_payload("user.created")
    body = json.dumps(user)[:-1] + ', "extra": 1e1000000}'
    # Then it is dead at its first attempt and its body is kept as text
    row = _ends(session_factory, settings, "msg_not_jsonb", body)
    assert (row.status, row.attempts) == ("dead", 1)
    assert row.last_error == "invalid_payload: the body is JSON that Postgres cannot store as jsonb"
    assert row.payload is None and row.raw_body == body


def test_an_older_event_racing_the_insert_of_a_newer_one_is_recorded_ignored(session_factory, settings):
    newer, older = load_payload("user.updated"), load_payload("user.created")
    # Given another batch inserting the user's newer version, not committed yet
    with session_factory() as other_batch:
        apply_changes(other_batch, [handlers.upsert(parse(json.dumps(newer)))], scrub_pii=False)  # type: ignore[arg-type]
        # When the older event's batch runs meanwhile
        with ThreadPoolExecutor(1) as pool:
            racing = pool.submit(
                process_batch, session_factory, [Delivery("msg_older", None, json.dumps(older))], settings=settings
            )
            time.sleep(0.5)
            assert not racing.done()  # it waits for the row the other batch is writing
            other_batch.commit()
            # Then it sees that row once it is there: older, so ignored (it wrote nothing)
            assert racing.result(timeout=30) == {"msg_older": "ignored"}
    with session_factory() as session:
        assert session.scalar(select(User.username).where(User.clerk_id == newer["data"]["id"])) == "johndoe"
