"""Convergence end to end: the real web process, two Celery workers, Redis and Postgres.

A few hundred events over many users, organizations and memberships are posted
shuffled, duplicated and concurrently, with old events replayed at the end; once the
queue is drained the tables must equal the reference model of devkit/history.py,
and what the application wrote in the meantime (``plan``) must still be there.
"""

from __future__ import annotations

import json
import random
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import func, select, text

from devkit.history import Event, random_history, reference_tables, snapshot
from devkit.waiting import wait_for
from shared.models import User, WebhookEvent
from tests.support.signing import load_payload, post_event


def _post_all(url: str, events: list[Event]) -> None:
    """Post concurrently, as Svix does; every post must be accepted."""

    def post(event: Event) -> int:
        return post_event(url, event.payload, svix_id=event.svix_id, timeout=30).status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        codes = list(pool.map(post, events))
    assert set(codes) == {200}, codes


def _final_count(session_factory) -> int:  # type: ignore[no-untyped-def]
    """Ledger rows that are done; fails at once if any event failed or died."""
    with session_factory() as session:
        counts = dict(session.execute(select(WebhookEvent.status, func.count()).group_by(WebhookEvent.status)).all())
    assert not counts.get("dead") and not counts.get("failed"), counts
    return counts.get("processed", 0) + counts.get("ignored", 0)


def test_shuffled_duplicated_concurrent_stream_converges(processes, session_factory):
    # Given an ingress and two workers of two processes each
    web = processes.start_web()
    processes.start_worker(concurrency=2)
    processes.start_worker(concurrency=2)

    # And a history of a few hundred events, delivered shuffled with duplicates (same svix-id)
    rng = random.Random(5)
    history = random_history(rng, users=20, orgs=5, memberships=30, updates=190, deletes=9, invitations=12, domains=6)
    events = history.events
    stream = events + [e for e in events if rng.random() < 0.25]
    rng.shuffle(stream)
    first_half, second_half = stream[: len(stream) // 2], stream[len(stream) // 2 :]

    # When the first half is posted
    _post_all(web.url, first_half)

    # And the application upgrades some of the users and organizations already synced
    seen = {e.entity_id for e in first_half}
    upgraded_users = sorted(e for e in seen if e.startswith("user_"))[:5]
    upgraded_orgs = sorted(e for e in seen if e.startswith("org_"))[:2]

    def synced() -> bool:
        with session_factory() as session:
            users = session.scalar(
                text("SELECT count(*) FROM users WHERE clerk_id = ANY(:ids)"), {"ids": upgraded_users}
            )
            orgs = session.scalar(
                text("SELECT count(*) FROM organizations WHERE clerk_id = ANY(:ids)"), {"ids": upgraded_orgs}
            )
        return (users, orgs) == (len(upgraded_users), len(upgraded_orgs))

    wait_for(synced, timeout=120, what="the first half's users and organizations")
    with session_factory.begin() as session:
        session.execute(text("UPDATE users SET plan = 'pro' WHERE clerk_id = ANY(:ids)"), {"ids": upgraded_users})
        session.execute(
            text("UPDATE organizations SET plan = 'pro' WHERE clerk_id = ANY(:ids)"), {"ids": upgraded_orgs}
        )

    # And the second half is posted, then old events replayed: new svix-ids with old data, and same svix-ids again
    _post_all(web.url, second_half)
    oldest_first = sorted(events, key=lambda e: e.at)
    replays = [e.replayed() for e in oldest_first[: len(events) // 3 : 3]]
    _post_all(web.url, replays + rng.sample(events, 30))
    everything = events + replays

    # Then, once drained, one ledger row per svix-id, all final, and the tables equal the model
    wait_for(lambda: _final_count(session_factory) == len(everything), timeout=180, what="the queue to drain")
    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(WebhookEvent)) == len(everything)
        actual = snapshot(session)
        plans = dict(
            session.execute(
                text("SELECT clerk_id, plan FROM users UNION ALL SELECT clerk_id, plan FROM organizations")
            ).all()
        )
    expected = reference_tables(everything)
    assert actual == expected
    assert len(expected["organization_memberships"]) > 30
    assert any(row["deleted_at"] for row in expected["users"].values())

    # And the application's plan survived every event, while nothing else became 'pro'
    assert {clerk_id for clerk_id, plan in plans.items() if plan == "pro"} == set(upgraded_users + upgraded_orgs)


def test_scrub_through_the_pipeline(processes, session_factory):
    # Given a worker configured to scrub deleted users' PII
    web = processes.start_web()
    processes.start_worker(DELETED_USER_PII="scrub")
    user_id = "user_2g7np7Hrk0SN6kj5EDMLDaKNL0S"

    # When a user is updated and deleted, and an older create arrives after the delete
    for count, name in enumerate(("user.updated", "user.deleted", "user.created"), start=1):
        assert post_event(web.url, load_payload(name), svix_id=f"msg_scrub_{name}").status_code == 200
        wait_for(lambda n=count: _final_count(session_factory) == n, timeout=120, what=f"{name} applied")

    # Then the row keeps its tombstone and non-personal fields, and no stored payload has the PII
    with session_factory() as session:
        user = session.scalars(select(User).where(User.clerk_id == user_id)).one()
        payloads = session.scalars(select(WebhookEvent.payload)).all()
    assert (user.email, user.first_name, user.last_name, user.username, user.image_url) == (None,) * 5
    assert user.deleted_at is not None
    assert user.public_metadata == {"department": "engineering"}
    stored = json.dumps(payloads)
    assert "john.doe@example.com" not in stored
    assert "Doe" not in stored
