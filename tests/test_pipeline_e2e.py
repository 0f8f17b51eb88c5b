"""End to end through the real web process, Celery worker, Redis and Postgres."""

from __future__ import annotations

import copy
import os
import random
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import requests
from sqlalchemy import func, select

from devkit.waiting import wait_for
from shared.models import FINAL_STATUSES, User, WebhookEvent
from shared.receipts import receipt_keys
from tests.support.backends import idle_in_a_transaction, waiting_on_a_lock
from tests.support.ledger import ledger_rows, statuses
from tests.support.signing import load_payload, post_event, user_created


def test_signed_event_is_recorded_and_applied(processes, session_factory):
    # Given a running ingress and worker
    web = processes.start_web()
    processes.start_worker()

    # When a signed user.updated arrives twice under one svix-id
    payload = load_payload("user.updated")
    for _ in range(2):
        assert post_event(web.url, payload, svix_id="msg_e2e_one").status_code == 200

    # Then one ledger row ends processed and the user row holds the primary email
    def processed():
        with session_factory() as session:
            return (
                session.scalar(select(WebhookEvent.status).where(WebhookEvent.svix_id == "msg_e2e_one")) == "processed"
            )

    wait_for(processed, timeout=30, what="event processed")
    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(WebhookEvent)) == 1
        user = session.scalars(select(User)).one()
        assert user.email == "john.doe@example.com"


# Realistic event types in rotation; entity k gets one of each (its user, org and membership).
MIX = (
    "user.created",
    "organization.created",
    "organizationMembership.created",
    "user.updated",
    "organization.updated",
    "organizationMembership.updated",
    "session.created",
    "user.deleted",
    "organization.deleted",
)


def mixed_event(index: int) -> tuple[str, dict[str, Any]]:
    """Event ``index`` of a realistic mix: (svix-id, payload) with ids of its own entity."""
    event_type = MIX[index % len(MIX)]
    k = index // len(MIX)
    payload = copy.deepcopy(load_payload(event_type))
    data = payload["data"]
    user_id, org_id = f"user_e2e{k:03d}", f"org_e2e{k:03d}"
    if event_type.startswith("user."):
        data["id"] = user_id
    elif event_type.startswith("organization."):
        data["id"] = org_id
        if "slug" in data:
            data["slug"] = f"acme-{k}"
    elif event_type.startswith("organizationMembership."):
        data["id"] = f"orgmem_e2e{k:03d}"
        data["organization"]["id"] = org_id
        data["public_user_data"]["user_id"] = user_id
    else:
        data["id"] = f"sess_e2e{k:03d}"
        data["user_id"] = user_id
    return f"msg_e2e_{index:04d}", payload


def post_all(url: str, deliveries: list[tuple[str, dict[str, Any]]], *, threads: int = 8) -> list[int]:
    """POST every delivery from ``threads`` threads, each with its own keep-alive session."""
    local = threading.local()

    def send(delivery: tuple[str, dict[str, Any]]) -> int:
        if not hasattr(local, "http"):
            local.http = requests.Session()
        svix_id, payload = delivery
        return post_event(url, payload, svix_id=svix_id, session=local.http, timeout=60).status_code

    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(send, deliveries))


def test_concurrent_duplicated_deliveries_give_one_row_each(processes, session_factory):
    # Given a running ingress and two worker processes competing for the queue
    web = processes.start_web()
    processes.start_worker(concurrency=2)
    processes.start_worker(concurrency=1)

    # And 200 distinct events, a third of them delivered two or three times, in shuffled order
    rng = random.Random(20240528)
    events = [mixed_event(index) for index in range(200)]
    deliveries = list(events)
    for svix_id, payload in events[::3]:
        deliveries.extend([(svix_id, payload)] * rng.choice((1, 2)))
    rng.shuffle(deliveries)
    assert len({svix_id for svix_id, _ in deliveries}) == 200

    # When they are posted concurrently from 8 threads
    statuses = post_all(web.url, deliveries)

    # Then every delivery is accepted
    assert statuses == [200] * len(deliveries)

    # And once drained there is exactly one ledger row per event, each final and applied once
    def drained() -> bool:
        rows = ledger_rows(session_factory)
        return len(rows) == 200 and all(row.status in FINAL_STATUSES for row in rows)

    wait_for(drained, timeout=180, what="200 events at a final status")
    rows = ledger_rows(session_factory)
    assert sorted(row.svix_id for row in rows) == sorted(svix_id for svix_id, _ in events)
    assert {row.status for row in rows} <= {"processed", "ignored"}, [
        (row.svix_id, row.status, row.last_error) for row in rows if row.status not in ("processed", "ignored")
    ]
    assert all(row.attempts == 1 for row in rows)
    by_id = {row.svix_id: row for row in rows}
    for svix_id, payload in events:
        assert by_id[svix_id].event_type == payload["type"]
    assert all(by_id[svix_id].status == "ignored" for svix_id, p in events if p["type"] == "session.created")

    # And whatever the order, every user whose delete was sent is deleted (a delete wins)
    deleted_users = {p["data"]["id"] for _, p in events if p["type"] == "user.deleted"}
    with session_factory() as session:
        users = {user.clerk_id: user for user in session.scalars(select(User))}
    assert deleted_users
    assert all(users[user_id].deleted_at is not None for user_id in deleted_users)


# Short recovery timings (shared/timings.py): a dead worker's messages are visible again after 11 s.
RECOVERY = {"RECOVERY_SECONDS": "24"}


def test_events_held_by_a_killed_worker_are_applied_by_the_next(processes, session_factory, redis_client):
    # Given 300 events accepted by the ingress while no worker runs (several batches), and beat
    queue = processes.env["CLERK_SYNC_QUEUE"]
    web = processes.start_web()
    events = [mixed_event(index) for index in range(300)]
    assert post_all(web.url, events, threads=4) == [200] * len(events)
    processes.start_beat(**RECOVERY)

    # When a single-process worker starts on them and is killed (SIGKILL, whole group) mid-backlog
    first = processes.start_worker(concurrency=1, wait=False, **RECOVERY)

    def finished() -> int:
        return sum(row.status in FINAL_STATUSES for row in ledger_rows(session_factory))

    def mid_batch() -> bool:
        return finished() >= 1 and redis_client.hlen("unacked") >= 2

    wait_for(mid_batch, timeout=120, interval=0.01, what=f"a batch in flight after the first\n{first.log()}")
    first.kill()
    first.popen.wait(timeout=30)
    finished_at_kill = finished()

    # Then the killed worker had left work behind, including messages it held unacknowledged
    assert finished_at_kill < len(events), "the worker finished everything before it was killed"
    assert redis_client.hlen("unacked") >= 1

    # When a new worker starts
    processes.start_worker(concurrency=2, **RECOVERY)

    # Then within the recovery bound every event reaches a final status exactly once: what the dead
    # worker held is restored by kombu, redelivered and acknowledged; nothing stays unacked
    def all_final() -> bool:
        rows = ledger_rows(session_factory)
        done = len(rows) == len(events) and all(row.status in FINAL_STATUSES for row in rows)
        return done and redis_client.hlen("unacked") == 0 and redis_client.llen(queue) == 0

    wait_for(all_final, timeout=24, interval=0.5, what="every event final and acknowledged within the bound")
    rows = ledger_rows(session_factory)
    assert sorted(row.svix_id for row in rows) == sorted(svix_id for svix_id, _ in events)
    assert {row.status for row in rows} <= {"processed", "ignored"}
    assert all(row.attempts == 1 for row in rows)


def test_events_of_a_killed_pool_process_are_requeued_at_once(processes, session_factory, database_url):
    # Given five events waiting, and a worker whose pool process takes them all as one batch and
    # is stuck inside it (the users table is locked)
    web = processes.start_web()
    svix_ids = [f"msg_child_kill_{i}" for i in range(5)]
    for index, svix_id in enumerate(svix_ids):
        payload = load_payload("user.created")
        payload["data"]["id"] = f"user_child_kill_{index}"
        assert post_event(web.url, payload, svix_id=svix_id).status_code == 200
    locker = psycopg.connect(database_url)
    locker.execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
    worker = processes.start_worker(concurrency=1)

    wait_for(lambda: waiting_on_a_lock(database_url), timeout=60, what="the pool process blocked on the lock")

    # When that pool process is killed (not the worker) and the lock is released
    pool_processes = worker.children()
    assert pool_processes, "no pool process found"
    for pid in pool_processes:
        os.kill(pid, signal.SIGKILL)
    locker.rollback()
    locker.close()

    # Then the whole batch is back on the queue at once (the four it took, and Celery's own
    # message), not after the visibility timeout, and every event is applied
    def all_processed():
        with session_factory() as session:
            rows = dict(session.execute(select(WebhookEvent.svix_id, WebhookEvent.status)).all())
        return all(rows.get(svix_id) == "processed" for svix_id in svix_ids)

    wait_for(all_processed, timeout=60, what="events of the killed pool process applied")
    restored = [line for line in worker.log().splitlines() if "batch_restored_after_lost_process" in line]
    assert len(restored) == 1 and '"count": 4' in restored[0], worker.log()[-3000:]


def test_a_worker_killed_three_times_during_a_stream_loses_no_event(
    processes, session_factory, redis_client, database_url
):
    # Given an ingress, beat and a worker, with a recovery bound of 24 s
    bound = float(RECOVERY["RECOVERY_SECONDS"])
    web = processes.start_web()
    processes.start_beat(**RECOVERY)
    worker = processes.start_worker(**RECOVERY)

    # And a stream of 400 events at about 40 a second
    events = [mixed_event(index) for index in range(400)]
    accepted: list[str] = []
    sent = threading.Event()

    def stream() -> None:
        http = requests.Session()
        for index, (svix_id, payload) in enumerate(events):
            if post_event(web.url, payload, svix_id=svix_id, session=http, timeout=60).status_code == 200:
                accepted.append(svix_id)
            if index % 4 == 3:
                time.sleep(0.1)
        sent.set()

    sender = threading.Thread(target=stream)
    sender.start()

    # When, while it flows, the worker is killed (SIGKILL, whole process group) three times a few
    # seconds apart and each time replaced, as a supervisor would: twice while it holds a batch
    # (kept waiting on a lock the test takes on users), once right after an event is accepted
    held_at_kill = []
    for kill in range(3):
        time.sleep(2)
        if kill < 2:
            with psycopg.connect(database_url) as locker:
                locker.execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
                wait_for(lambda: waiting_on_a_lock(database_url), timeout=30, what="a batch held by the worker")
                held_at_kill.append(redis_client.hlen("unacked"))
                worker.kill()
                worker.popen.wait(timeout=30)
                locker.rollback()
        else:
            svix_id, payload = mixed_event(9999)
            assert post_event(web.url, payload, svix_id=svix_id).status_code == 200
            accepted.append(svix_id)
            worker.kill()
            worker.popen.wait(timeout=30)
        worker = processes.start_worker(**RECOVERY)
    sender.join(timeout=120)
    assert sent.is_set()
    recovery_starts = time.monotonic()

    # Then within the recovery bound every accepted event has its row, final, applied once; nothing
    # is left unacknowledged and every receipt is forgotten
    def all_final() -> bool:
        rows = {row.svix_id: row for row in ledger_rows(session_factory)}
        return all(svix_id in rows and rows[svix_id].status in FINAL_STATUSES for svix_id in accepted)

    wait_for(all_final, timeout=bound, interval=0.5, what="every accepted event final within the bound")
    assert time.monotonic() - recovery_starts <= bound
    rows = ledger_rows(session_factory)
    assert sorted(row.svix_id for row in rows) == sorted(accepted)
    assert len(accepted) == len(events) + 1
    assert {row.status for row in rows} <= {"processed", "ignored"}
    assert all(count >= 1 for count in held_at_kill), held_at_kill
    receipts_key, _ = receipt_keys(processes.env["CLERK_SYNC_QUEUE"])
    wait_for(
        lambda: redis_client.hlen("unacked") == 0 and redis_client.hlen(receipts_key) == 0,
        timeout=bound,
        what="nothing left unacknowledged, every receipt forgotten",
    )


def test_a_worker_lost_inside_a_transaction_does_not_hold_its_events_or_others(
    processes, session_factory, database_url
):
    # Given an ingress, beat and a worker, with a recovery bound of 24 s and a retry budget of two
    # quick attempts (RETRY_BASE_SECONDS shortens the hour a budget of eight takes by default)
    bound = float(RECOVERY["RECOVERY_SECONDS"])
    budget = {**RECOVERY, "RETRY_MAX_ATTEMPTS": "2", "RETRY_BASE_SECONDS": "0.5"}
    web = processes.start_web()
    processes.start_beat(**budget)
    lost = processes.start_worker(concurrency=1, **budget)
    user_id = "user_lost_host"
    created = user_created(user_id)
    assert post_event(web.url, created, svix_id="msg_lost_created").status_code == 200
    wait_for(lambda: statuses(session_factory).get("msg_lost_created") == "processed", what="the user created")

    # And the worker's batch for the next update of that user is between its two round trips when its
    # host is lost (SIGSTOP of the whole process group: Postgres keeps the session, as it would for a
    # host that vanished, until TCP keepalive notices it hours later): the batch was kept waiting on
    # the user's row by the test, stopped, then let through, so its first round trip completes and its
    # transaction holds the event's ledger row and the user's locks with nobody left to commit
    def update(n: int) -> dict[str, Any]:
        payload = load_payload("user.updated")
        payload["data"]["id"] = user_id
        payload["data"]["updated_at"] = created["data"]["updated_at"] + n * 1000
        return payload

    try:
        with psycopg.connect(database_url) as locker:
            locker.execute("SELECT 1 FROM users WHERE clerk_id = %s FOR UPDATE", (user_id,))
            assert post_event(web.url, update(1), svix_id="msg_lost_held").status_code == 200
            wait_for(lambda: waiting_on_a_lock(database_url), timeout=30, what="the batch waiting for the row")
            lost.kill(signal.SIGSTOP)
        wait_for(lambda: idle_in_a_transaction(database_url), timeout=30, what="the lost transaction")

        # When another worker takes over and a later update of the same user arrives
        processes.start_worker(concurrency=1, **budget)
        assert post_event(web.url, update(2), svix_id="msg_lost_later").status_code == 200

        # Then within the recovery bound both events are final (the held one `ignored` if the later
        # one was applied first), neither spends its budget to `dead` on the lost transaction's
        # locks, and the user holds the later update
        def both_final() -> bool:
            found = statuses(session_factory)
            assert "dead" not in found.values(), found
            return found.get("msg_lost_later") == "processed" and found.get("msg_lost_held") in FINAL_STATUSES

        wait_for(both_final, timeout=bound, interval=0.5, what="both updates final")
        with session_factory() as session:
            user = session.scalars(select(User).where(User.clerk_id == user_id)).one()
        assert user.clerk_updated_at == update(2)["data"]["updated_at"]
    finally:
        lost.kill(signal.SIGCONT)
