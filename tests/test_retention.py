"""Payload retention (PAYLOAD_RETENTION_DAYS): the hourly purge drops the bodies of processed and
ignored events past retention, oldest first, in short transactions, through an index of the rows
that still hold one; dead, waiting and recent events keep theirs."""

from __future__ import annotations

import datetime as dt
import json

import psycopg
from celery import Celery
from sqlalchemy import text

from devkit.waiting import wait_for
from shared.publish import PURGE_PAYLOADS_TASK, control_queue
from tests.support.ledger import add_event
from worker.recovery import sweeper

OLD = dt.timedelta(days=40)


def _bodies(session_factory) -> dict[str, tuple[bool, bool]]:  # type: ignore[no-untyped-def]
    """svix_id -> (holds a payload, holds a raw body), as SQL sees them (JSON's null is not NULL)."""
    with session_factory() as session:
        rows = session.execute(
            text("SELECT svix_id, payload IS NOT NULL, raw_body IS NOT NULL FROM webhook_events")
        ).all()
    return {svix_id: (payload, raw_body) for svix_id, payload, raw_body in rows}


def test_the_purge_drops_old_done_bodies_oldest_first_and_keeps_the_rest(session_factory) -> None:
    # Given old processed and ignored events (one kept only as raw text, one purged by an earlier
    # version, which left JSON's null), and events that keep their body
    with session_factory.begin() as session:
        add_event(session, "msg_old_1", "processed", age=OLD + dt.timedelta(days=4))
        add_event(session, "msg_old_2", "ignored", age=OLD + dt.timedelta(days=3))
        add_event(session, "msg_old_3", "processed", age=OLD + dt.timedelta(days=2), raw_body="not json")
        add_event(session, "msg_purged_before", "processed", age=OLD + dt.timedelta(days=1))
        add_event(session, "msg_dead", "dead", age=OLD)
        add_event(session, "msg_pending", "pending", age=OLD)
        add_event(session, "msg_recent", "processed", age=dt.timedelta(days=29))
        session.execute(text("UPDATE webhook_events SET payload = NULL WHERE svix_id = 'msg_old_3'"))
        session.execute(text("UPDATE webhook_events SET payload = 'null'::jsonb WHERE svix_id = 'msg_purged_before'"))

    # When the purge runs in chunks of two
    counts, purged = [], []
    for _ in range(3):
        with session_factory.begin() as session:
            counts.append(sweeper.purge_payloads(session, retention_days=30, limit=2))
        purged.append({svix_id for svix_id, kept in _bodies(session_factory).items() if kept == (False, False)})

    # Then the two oldest go first, then the other two, then nothing is left to do; a purged
    # payload is SQL's NULL
    assert counts == [2, 2, 0]
    assert purged[0] == {"msg_old_1", "msg_old_2"}
    assert _bodies(session_factory) == {
        "msg_old_1": (False, False),
        "msg_old_2": (False, False),
        "msg_old_3": (False, False),
        "msg_purged_before": (False, False),
        "msg_dead": (True, False),
        "msg_pending": (True, False),
        "msg_recent": (True, False),
    }


def test_the_purge_reads_only_rows_that_hold_a_body(database_url: str) -> None:
    # Given a planner told to avoid reading the whole table
    with psycopg.connect(database_url) as conn:
        conn.execute("SET enable_seqscan = off")
        # When the purge's condition is planned
        plan = "\n".join(
            row[0]
            for row in conn.execute(
                "EXPLAIN SELECT id FROM webhook_events WHERE status IN ('processed', 'ignored')"
                " AND received_at < now() - interval '30 days'"
                " AND (payload IS NOT NULL OR raw_body IS NOT NULL) ORDER BY received_at LIMIT 1000"
            )
        )
    # Then the index of rows holding a body serves it
    assert "ix_webhook_events_holding_body" in plan, plan


def test_the_hourly_task_purges_a_backlog_chunk_after_chunk(processes, session_factory, settings) -> None:  # type: ignore[no-untyped-def]
    # Given more old processed events than one chunk, and a dead one
    backlog = 2 * sweeper.PURGE_CHUNK + 500
    with psycopg.connect(settings.libpq_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO webhook_events (svix_id, event_type, status, payload, received_at)"
            " SELECT 'msg_bulk_' || n, 'user.updated', 'processed', %s::jsonb, now() - interval '40 days'"
            " FROM generate_series(1, %s) n",
            (json.dumps({"type": "user.updated", "data": {"id": "user_a"}}), backlog),
        )
    with session_factory.begin() as session:
        add_event(session, "msg_dead", "dead", age=OLD)

    # When beat's purge job reaches a worker
    worker = processes.start_worker(concurrency=1)
    sender = Celery(broker=settings.redis_url, set_as_current=False)
    sender.send_task(PURGE_PAYLOADS_TASK, queue=control_queue(settings.queue_name))
    sender.close()

    # Then one run purges the whole backlog, in chunks, and the dead event keeps its payload
    wait_for(lambda: "payloads_purged" in worker.log(), timeout=60, what=f"the purge\n{worker.log()}")
    (line,) = [json.loads(text) for text in worker.log().splitlines() if '"payloads_purged"' in text]
    assert line["count"] == backlog
    bodies = _bodies(session_factory)
    assert bodies.pop("msg_dead") == (True, False)
    assert set(bodies.values()) == {(False, False)} and len(bodies) == backlog
