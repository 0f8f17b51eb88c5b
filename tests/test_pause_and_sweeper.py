"""Pause holds events, resume applies them in order, and the sweeper recovers lost messages."""

from __future__ import annotations

import datetime as dt
import getpass

from sqlalchemy import select

from devkit.waiting import wait_for
from shared.models import Organization, User, WebhookEvent
from shared.publish import EventPublisher
from tests.support.broker import queued_ids
from tests.support.cli import TESTER, run_cli
from tests.support.ledger import add_event, audit_rows, statuses
from tests.support.signing import load_payload, post_event
from worker.ops import control
from worker.pipeline import ledger
from worker.recovery import sweeper


def test_pause_holds_events_and_resume_applies_them_in_arrival_order(processes, session_factory, base_env, tmp_path):
    # Given a running ingress and a single worker, and an operator who pauses
    web = processes.start_web()
    processes.start_worker(concurrency=1)
    paused = run_cli(base_env, "pause", cwd=tmp_path)
    assert paused.returncode == 0, paused.stderr
    assert "paused" in paused.stdout
    # (pausing again changes nothing, and is no change for the audit table)
    again = run_cli(base_env, "pause", cwd=tmp_path)
    assert (again.returncode, again.stdout.splitlines()[0]) == (0, "already paused"), again.stderr

    # When four events arrive while paused
    names = ["user.created", "organization.created", "user.updated", "organizationMembership.created"]
    svix_ids = [f"msg_paused_{n}" for n in range(len(names))]
    for svix_id, name in zip(svix_ids, names, strict=True):
        assert post_event(web.url, load_payload(name), svix_id=svix_id).status_code == 200

    # Then each is recorded pending with its payload, and nothing is applied
    wait_for(
        lambda: statuses(session_factory) == dict.fromkeys(svix_ids, "pending"), timeout=90, what="four events held"
    )
    with session_factory() as session:
        assert session.scalars(select(User)).all() == []
        assert session.scalars(select(Organization)).all() == []
        assert all(row.payload for row in session.scalars(select(WebhookEvent)))

    # When the operator resumes
    resumed = run_cli(base_env, "resume", "--operator", "alice", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "released 4 held event(s)" in resumed.stdout
    # and both changes are in the audit table: the OS user paused, alice resumed four held events
    assert [(row.operator, row.source, row.action, row.count) for row in audit_rows(session_factory)] == [
        (getpass.getuser(), "cli", "pause", 0),
        ("alice", "cli", "resume", 4),
    ]

    # Then all are processed, one after the other in the order they arrived
    wait_for(
        lambda: statuses(session_factory) == dict.fromkeys(svix_ids, "processed"),
        timeout=90,
        what="held events processed",
    )
    with session_factory() as session:
        rows = list(session.scalars(select(WebhookEvent).order_by(WebhookEvent.received_at)))
        assert [row.svix_id for row in rows] == svix_ids
        assert [row.svix_id for row in sorted(rows, key=lambda row: row.processed_at)] == svix_ids
        assert session.scalars(select(User.email)).one() == "john.doe@example.com"  # user.updated's primary


def test_beat_re_enqueues_events_whose_messages_were_lost(processes, session_factory, redis_client, settings):
    # Given an ingress with no worker yet: an event is enqueued, then its message is
    # lost from Redis while its row says `failed`, due for another attempt
    web = processes.start_web()
    organization = load_payload("organization.created")
    assert post_event(web.url, organization, svix_id="msg_lost_failed").status_code == 200
    assert queued_ids(redis_client, settings.queue_name) == ["msg_lost_failed"]
    redis_client.delete(settings.queue_name)
    with session_factory.begin() as session:
        session.add(
            WebhookEvent(
                svix_id="msg_lost_failed",
                event_type="organization.created",
                status="failed",
                attempts=1,
                last_error="OperationalError: server closed the connection",
                errors=[{"at": "2024-01-01T00:00:00+00:00", "error": "OperationalError: server closed the connection"}],
                payload=organization,
                next_attempt_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=5),
            )
        )
    # and an event held by a pause whose flag is then cleared without releasing it
    with session_factory.begin() as session:
        control.pause(session, actor=TESTER)
    sweeping = {"RECOVERY_SECONDS": "24", "STALE_PENDING_SECONDS": "2"}  # sweeps every second
    processes.start_worker(**sweeping)
    assert post_event(web.url, load_payload("user.created"), svix_id="msg_held").status_code == 200
    wait_for(lambda: statuses(session_factory).get("msg_held") == "pending", timeout=90, what="event held")
    with session_factory.begin() as session:
        ledger.set_paused(session, False)
    assert redis_client.llen(settings.queue_name) == 0  # neither message is anywhere in the queue

    # When beat runs sweeps every second
    processes.start_beat(**sweeping)

    # Then both events are enqueued again and end processed
    wait_for(
        lambda: statuses(session_factory) == {"msg_lost_failed": "processed", "msg_held": "processed"},
        timeout=120,
        what="lost events swept and processed",
    )
    with session_factory() as session:
        assert session.scalars(select(Organization.clerk_id)).all() == [organization["data"]["id"]]
        assert len(session.scalars(select(User)).all()) == 1


def test_sweep_enqueues_due_failed_and_stale_pending_only(session_factory, settings, redis_client):
    # Given failed, pending, dead and processed events in every timing
    now = dt.datetime.now(dt.UTC)
    past, future = now - dt.timedelta(minutes=1), now + dt.timedelta(minutes=10)
    long_ago = now - dt.timedelta(minutes=5)
    with session_factory.begin() as session:
        add_event(session, "msg_failed_due", "failed", next_attempt_at=past, received_at=long_ago)
        add_event(session, "msg_failed_later", "failed", next_attempt_at=future)
        add_event(session, "msg_dead", "dead", received_at=long_ago, updated_at=long_ago)
        add_event(session, "msg_processed", "processed", received_at=long_ago, updated_at=long_ago)
        add_event(session, "msg_pending_stale", "pending", updated_at=long_ago)
        add_event(session, "msg_pending_fresh", "pending")
        add_event(session, "msg_failed_scrubbed", "failed", next_attempt_at=past,
                  payload={"type": "user.created", "scrubbed": True, "data": {"id": "user_s"}})  # fmt: skip
    app = EventPublisher(settings)
    try:
        # When a sweep runs
        with session_factory.begin() as session:
            swept = sweeper.sweep(session, app, stale_pending_seconds=60)
        # and another right after it
        with session_factory.begin() as session:
            swept_again = sweeper.sweep(session, app, stale_pending_seconds=60)
    finally:
        app.close()

    # Then only the due failed and the stale pending events were enqueued, once, oldest first
    assert (swept, swept_again) == (2, 0)
    assert queued_ids(redis_client, settings.queue_name) == ["msg_failed_due", "msg_pending_stale"]
    with session_factory() as session:
        rows = {row.svix_id: row for row in session.scalars(select(WebhookEvent))}
    assert rows["msg_failed_due"].status == "failed" and rows["msg_failed_due"].next_attempt_at > now
    assert rows["msg_dead"].status == "dead" and rows["msg_dead"].next_attempt_at is None
    # A row whose payload is gone cannot be retried: it is dead with a reason, not swept forever
    assert rows["msg_failed_scrubbed"].status == "dead"
    assert rows["msg_failed_scrubbed"].last_error == sweeper.NO_BODY_ERROR


def test_sweep_does_nothing_while_paused_and_release_keeps_arrival_order(session_factory, settings, redis_client):
    # Given events held by a pause, arrived in a known order, and a due failed one
    now = dt.datetime.now(dt.UTC)
    order = ["msg_h3", "msg_h1", "msg_h2"]
    with session_factory.begin() as session:
        ledger.set_paused(session, True)
        for n, svix_id in enumerate(order):
            add_event(session, svix_id, "pending", received_at=now - dt.timedelta(seconds=30 - n))
        add_event(session, "msg_failed", "failed", next_attempt_at=now - dt.timedelta(minutes=1))
    app = EventPublisher(settings)
    try:
        # When a sweep runs while paused, nothing is enqueued
        with session_factory.begin() as session:
            assert sweeper.sweep(session, app, stale_pending_seconds=1) == 0
        assert redis_client.llen(settings.queue_name) == 0

        # When the flag is cleared and held events are released
        with session_factory.begin() as session:
            assert control.unpause(session, actor=TESTER) is True
        with session_factory.begin() as session:
            assert control.held_count(session) == 3
            released = control.release_held(session, app, stale_pending_seconds=60)
    finally:
        app.close()

    # Then the held ones are enqueued in arrival order and are no longer counted as held
    assert released == 3
    assert queued_ids(redis_client, settings.queue_name) == order
    with session_factory() as session:
        assert control.held_count(session) == 0
