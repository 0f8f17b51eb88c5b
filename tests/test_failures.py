"""Failure handling, proven with real processes and real outages.

Outages are simulated with a TCP proxy cut in front of Postgres or Redis (the shared
servers keep running); recurring transient failures come from a real lock the test
holds on the users table while the worker's lock_timeout trips.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import psycopg
import requests
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import sessionmaker

from devkit.waiting import wait_for
from shared.db import make_engine
from shared.models import User, WebhookEvent
from shared.publish import EventPublisher
from tests.support.ledger import ledger_row, statuses
from tests.support.processes import free_port
from tests.support.proxy import TcpProxy, via_proxy
from tests.support.signing import load_payload, new_svix_id, post_event, user_created
from worker.pipeline.errors import Failure, classify


def error_of(statement) -> BaseException:  # type: ignore[no-untyped-def]
    try:
        statement()
    except DBAPIError as exc:
        return exc
    raise AssertionError("the statement was expected to fail")


# -- classification against real psycopg errors -----------------------------------------


def test_classify_sorts_real_connection_and_lock_errors(settings, database_url):
    # Given engines to a closed port, to a proxy in front of Postgres, and to Postgres itself
    closed = make_engine(replace(settings, database_url=f"postgresql://postgres@127.0.0.1:{free_port()}/x"))
    proxy = TcpProxy("127.0.0.1", 5432)
    proxied = make_engine(replace(settings, database_url=via_proxy(database_url, proxy)))
    direct = make_engine(replace(settings, db_lock_timeout_seconds=0.2, db_statement_timeout_seconds=0.5))
    try:

        def refused():
            with closed.connect() as conn:
                conn.execute(text("SELECT 1"))

        def dropped_mid_transaction():
            with sessionmaker(proxied).begin() as session:
                session.execute(text("SELECT 1"))
                proxy.cut()
                session.execute(text("SELECT 2"))

        def reset_at_connect():
            with proxied.connect() as conn:
                conn.execute(text("SELECT 1"))

        # When each fails for its own reason
        # Then unreachable Postgres is UNAVAILABLE: the attempt spends no budget
        assert classify(error_of(refused)) is Failure.UNAVAILABLE
        assert classify(error_of(dropped_mid_transaction)) is Failure.UNAVAILABLE
        assert classify(error_of(reset_at_connect)) is Failure.UNAVAILABLE  # proxy still cut
        proxy.restore()

        # And a lock or statement timeout is TRANSIENT: retried with backoff, within the budget
        with psycopg.connect(database_url) as holder:
            holder.execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")

            def lock_wait():
                with direct.connect() as conn:
                    conn.execute(text("SELECT count(*) FROM users"))

            lock_error = error_of(lock_wait)
            holder.rollback()
        assert isinstance(lock_error.orig, psycopg.errors.LockNotAvailable)
        assert classify(lock_error) is Failure.TRANSIENT

        def slow_statement():
            with direct.connect() as conn:
                conn.execute(text("SELECT pg_sleep(5)"))

        slow_error = error_of(slow_statement)
        assert isinstance(slow_error.orig, psycopg.errors.QueryCanceled)
        assert classify(slow_error) is Failure.TRANSIENT
    finally:
        proxy.close()
        for engine in (closed, proxied, direct):
            engine.dispose()


# -- Postgres unreachable while events flow ----------------------------------------------


def _log_events(proc, event: str) -> list[dict]:
    """The JSON log lines of ``proc`` whose event is ``event``."""
    found = []
    for line in proc.log().splitlines():
        if line.startswith("{") and f'"{event}"' in line:
            record = json.loads(line)
            if record.get("event") == event:
                found.append(record)
    return found


def test_postgres_outage_drains_without_dead_events_or_spent_budget(processes, session_factory, database_url):
    # Given an ingress, a worker whose Postgres is behind a proxy, and beat, with short recovery
    # timings: the task's soft time limit is 5 s, a batch waits at most 2 s for Postgres
    proxy = TcpProxy("127.0.0.1", 5432)
    short = {"RECOVERY_SECONDS": "24", "DATABASE_URL": via_proxy(database_url, proxy)}
    try:
        web = processes.start_web()
        worker = processes.start_worker(**short)
        processes.start_beat(**short)
        http = requests.Session()
        sent: list[str] = []

        def send(index: int) -> None:
            svix_id = f"msg_pg_outage_{index}"
            assert (
                post_event(web.url, user_created(f"user_pgout_{index}"), svix_id=svix_id, session=http).status_code
                == 200
            )
            sent.append(svix_id)

        # When 15 events arrive, then Postgres becomes unreachable for 20 s (four soft time limits)
        # while 25 more arrive
        for index in range(15):
            send(index)
        proxy.cut()
        cut_at = time.monotonic()
        for index in range(15, 40):
            send(index)
            time.sleep(0.8)
        wait_for(lambda: time.monotonic() - cut_at >= 20, timeout=30, what="20 s of outage")
        proxy.restore()
        # ...and 10 more after it is back, with one unsynced type among them
        for index in range(40, 49):
            send(index)
        assert post_event(web.url, load_payload("session.created"), svix_id="msg_pg_outage_49").status_code == 200
        sent.append("msg_pg_outage_49")

        # Then every event ends final without an operator: processed, or ignored for the unsynced type
        def drained():
            seen = statuses(session_factory)
            return len(seen) == len(sent) and all(s in ("processed", "ignored", "dead") for s in seen.values()) and seen

        final = wait_for(drained, timeout=180, what="backlog drained after the outage")
        assert set(final) == set(sent)
        assert final.pop("msg_pg_outage_49") == "ignored"
        assert set(final.values()) == {"processed"}

        # And nothing was applied twice or spent budget on the outage: one row each, one attempt each
        with session_factory() as session:
            attempts = dict(session.execute(select(WebhookEvent.svix_id, WebhookEvent.attempts)).all())
            errors = session.scalar(select(func.count()).where(func.jsonb_array_length(WebhookEvent.errors) > 0))
            users = session.scalar(select(func.count()).select_from(User).where(User.clerk_id.like("user_pgout_%")))
        assert set(attempts.values()) == {1}, {k: v for k, v in attempts.items() if v != 1}
        assert errors == 0
        assert users == 49

        # And the worker said so once per backoff step (its two pool processes and the sweeps
        # share one backoff), then once that Postgres was back; no traceback, no time limit
        steps = [record["step"] for record in _log_events(worker, "database_unavailable")]
        assert len(steps) >= 3, worker.log()[-3000:]
        assert steps == list(range(1, len(steps) + 1)), steps
        assert len(_log_events(worker, "database_available")) == 1
        log = worker.log()
        for needle in ("Traceback", "SoftTimeLimitExceeded", "TimeLimitExceeded", "batch_time_limit"):
            assert needle not in log, log[log.index(needle) - 2000 : log.index(needle) + 500]
    finally:
        proxy.close()


# -- Redis unreachable at the ingress ----------------------------------------------------


def test_redis_outage_at_ingress_loses_no_event(processes, session_factory, redis_url):
    # Given an ingress whose Redis is behind a proxy, and a worker on Redis directly
    proxy = TcpProxy("127.0.0.1", 6379)
    try:
        web = processes.start_web(REDIS_URL=via_proxy(redis_url, proxy))
        processes.start_worker()
        http = requests.Session()
        payloads = {f"msg_redis_outage_{i}": user_created(f"user_redisout_{i}") for i in range(30)}
        answers: dict[str, int] = {}

        def send(svix_id: str) -> int:
            answers[svix_id] = post_event(web.url, payloads[svix_id], svix_id=svix_id, session=http).status_code
            return answers[svix_id]

        ids = list(payloads)
        # When 10 events arrive, Redis becomes unreachable for 10 more, and it is back for the last 10
        for svix_id in ids[:10]:
            assert send(svix_id) == 200
        proxy.cut()
        during = [send(svix_id) for svix_id in ids[10:20]]
        proxy.restore()
        for svix_id in ids[20:]:
            send(svix_id)

        # Then every event received during the outage was refused with 503, so Svix retries it
        assert during == [503] * 10

        # And once the test re-posts every refused event (as Svix would), each gets a 2xx
        def resend_refused():
            for svix_id in [s for s, status in answers.items() if status != 200]:
                send(svix_id)
            return all(status == 200 for status in answers.values())

        wait_for(resend_refused, timeout=60, interval=1, what="refused events accepted on retry")

        # And every event ends processed, each applied once
        def drained():
            seen = statuses(session_factory)
            return len(seen) == len(ids) and set(seen.values()) == {"processed"}

        wait_for(drained, timeout=120, what="every event processed after Redis came back")
        with session_factory() as session:
            attempts = set(session.scalars(select(WebhookEvent.attempts)))
            users = session.scalar(select(func.count()).select_from(User).where(User.clerk_id.like("user_redisout_%")))
        assert attempts == {1}
        assert users == len(ids)
    finally:
        proxy.close()


# -- a transient failure that keeps failing ---------------------------------------------


def _start_retrying_worker(processes, *, max_attempts: int) -> None:
    fast = {
        "RETRY_MAX_ATTEMPTS": str(max_attempts),
        "RETRY_BASE_SECONDS": "0.5",
        "RECOVERY_SECONDS": "24",  # sweeps every second
        "DB_LOCK_TIMEOUT_SECONDS": "1",
    }
    processes.start_worker(concurrency=1, **fast)
    processes.start_beat(**fast)


@contextmanager
def _users_locked(database_url: str) -> Iterator[psycopg.Connection]:
    """A lock on ``users`` that every write to it times out on, held until the block ends (or the
    connection given rolls back)."""
    holder = psycopg.connect(database_url)
    try:
        holder.execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
        yield holder
    finally:
        holder.rollback()
        holder.close()


def _row_when(session_factory, svix_id: str, status_holds: Callable[[str], bool], **waiting: Any) -> WebhookEvent:
    """The event's ledger row once its status is one ``status_holds`` accepts (``wait_for``'s options)."""
    return wait_for(
        lambda: (event := ledger_row(session_factory, svix_id)) and status_holds(event.status) and event, **waiting
    )


def _enqueue_user_created(settings, svix_id: str) -> None:
    publisher = EventPublisher(settings)
    try:
        body = json.dumps(user_created("user_locked_1"))
        publisher.publish(svix_id=svix_id, svix_timestamp=int(time.time()), body=body)
    finally:
        publisher.close()


def test_transient_failure_is_retried_and_applied_once_the_lock_is_released(
    processes, session_factory, settings, database_url
):
    # Given a worker with a budget of 3 attempts and a lock the test holds on users
    _start_retrying_worker(processes, max_attempts=3)
    with _users_locked(database_url) as lock:
        # When a user.created arrives and its first attempt times out waiting for the lock
        svix_id = new_svix_id()
        _enqueue_user_created(settings, svix_id)
        failed = _row_when(
            session_factory,
            svix_id,
            lambda status: status == "failed",
            timeout=90,
            interval=0.05,
            what="first attempt failed on the lock",
        )
        lock.rollback()  # the lock is released while budget remains

    # Then the event is recorded failed with its error, and a later attempt applies it
    assert failed.attempts == 1
    assert failed.last_error == "LockNotAvailable (55P03)"
    done = _row_when(
        session_factory,
        svix_id,
        lambda status: status != "failed",
        timeout=90,
        what="retried after the lock was released",
    )
    assert done.status == "processed"
    assert 2 <= done.attempts <= 3
    assert len(done.errors) == done.attempts - 1
    assert all(entry["error"].startswith("LockNotAvailable (55P03)") for entry in done.errors)
    with session_factory() as session:
        assert session.scalars(select(User.clerk_id)).all() == ["user_locked_1"]


def test_transient_failure_ends_dead_after_the_budget(processes, session_factory, settings, database_url):
    # Given a worker with a budget of 2 attempts and a lock the test holds on users throughout
    _start_retrying_worker(processes, max_attempts=2)
    with _users_locked(database_url):
        # When a user.created arrives and every attempt times out waiting for the lock
        svix_id = new_svix_id()
        _enqueue_user_created(settings, svix_id)
        dead = _row_when(
            session_factory, svix_id, lambda status: status == "dead", timeout=120, what="event dead after its budget"
        )

    # Then it is dead after exactly its budget, with every attempt's error kept
    assert dead.attempts == 2
    assert dead.next_attempt_at is None
    assert [entry["error"] for entry in dead.errors] == [dead.last_error] * 2
    assert "LockNotAvailable" in (dead.last_error or "")
    # And nothing was applied
    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(User)) == 0


def test_redis_outage_for_every_process_drains_without_an_operator(processes, session_factory, redis_url):
    # Given web, a worker and beat all reaching Redis through one proxy
    proxy = TcpProxy("127.0.0.1", 6379)
    try:
        broker = via_proxy(redis_url, proxy)
        web = processes.start_web(REDIS_URL=broker)
        # Short recovery timings: lost messages are looked for after 10 s, every second
        processes.start_worker(REDIS_URL=broker, RECOVERY_SECONDS="24")  # the sweep task runs in the worker
        processes.start_beat(REDIS_URL=broker, RECOVERY_SECONDS="24")
        http = requests.Session()
        accepted: list[str] = []

        def deliver(index: int, *, deadline: float) -> None:
            """Post as Svix does: a 503 is retried until a 2xx."""
            svix_id = f"msg_redis_all_{index}"
            while time.monotonic() < deadline:
                response = post_event(web.url, user_created(f"user_redisall_{index}"), svix_id=svix_id, session=http)
                if response.status_code == 200:
                    accepted.append(svix_id)
                    return
                assert response.status_code == 503
                time.sleep(0.5)
            raise AssertionError(f"{svix_id} never accepted")

        # When events flow, Redis is cut for 15 s for everyone, and events keep coming
        for index in range(20):
            deliver(index, deadline=time.monotonic() + 30)
        proxy.cut()
        cut_at = time.monotonic()
        answers = [
            post_event(web.url, user_created(f"user_redisall_{100 + i}"), svix_id=f"msg_redis_cut_{i}", session=http)
            for i in range(5)
        ]
        assert {response.status_code for response in answers} == {503}
        wait_for(lambda: time.monotonic() - cut_at >= 15, timeout=30, what="15 s of outage")
        proxy.restore()
        for index in range(20, 40):
            deliver(index, deadline=time.monotonic() + 60)

        # Then every accepted event ends processed, once, without an operator
        def drained():
            seen = statuses(session_factory)
            return all(seen.get(svix_id) == "processed" for svix_id in accepted) and seen

        final = wait_for(drained, timeout=200, what="every accepted event processed after the outage")
        assert "dead" not in final.values()
        with session_factory() as session:
            attempts = dict(session.execute(select(WebhookEvent.svix_id, WebhookEvent.attempts)).all())
            users = session.scalar(select(func.count()).select_from(User).where(User.clerk_id.like("user_redisall_%")))
        assert {attempts[svix_id] for svix_id in accepted} == {1}
        assert users == len(accepted) == 40
        # The events refused with 503 during the cut were never accepted, so nothing of them exists
        assert not any(svix_id.startswith("msg_redis_cut_") for svix_id in final)
    finally:
        # Stopped while their Redis still answers: one teardown after the proxy had closed waited
        # out the whole 20 s stop timeout (seen once in the suite's timings, not reproduced alone).
        processes.stop_all()
        proxy.close()
