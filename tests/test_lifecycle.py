"""The Procfile's processes as an operator starts and stops them: each stops whole, and says so in one line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from typing import Any

import psycopg
import pytest
import redis

from devkit.waiting import wait_for
from shared.config import Settings
from shared.publish import EventPublisher
from tests.support.backends import waiting_on_a_lock
from tests.support.broker import queued_ids
from tests.support.console import console_env
from tests.support.fake_clerk import SECRET_KEY, FakeClerkServer, make_instance
from tests.support.ledger import ledger_rows, statuses
from tests.support.processes import ProcessManager, alive
from tests.support.signing import user_created

# CONTRACT section 5: an event held by a worker that dies is applied by another within this (the default).
RECOVERY_SECONDS = 120


def session_members(leader: int) -> list[int]:
    """Every process still running in the session ``leader`` started (its children's children too)."""
    found = subprocess.run(["pgrep", "-s", str(leader)], capture_output=True, text=True, check=False)
    return [pid for pid in map(int, found.stdout.split()) if alive(pid)]


@pytest.mark.parametrize("name", ["worker", "console"])
def test_a_process_told_to_stop_by_its_pid_stops_whole(processes: ProcessManager, name: str) -> None:
    # Given the process started as honcho starts it (`sh -c` with its Procfile line)
    if name == "console":
        proc = processes.start_console(**console_env())
    else:
        proc = processes.start_procfile(name, WORKER_CONCURRENCY="1")
        wait_for(lambda: "ready" in proc.log(), timeout=60, what=f"the worker ready\n{proc.log()}")

    # When the pid its supervisor knows, and only it, is told to stop (`kill PID`, the pid honcho prints,
    # systemd's KillMode=mixed, a container's stop)
    os.kill(proc.popen.pid, signal.SIGTERM)

    # Then that pid was the server itself: it stops as it does on any SIGTERM, exit code 0, and
    # nothing it started keeps running without it
    assert proc.popen.wait(timeout=30) == 0, proc.log()
    wait_for(lambda: not session_members(proc.popen.pid), timeout=30, what=f"{name}'s processes gone")


def test_a_worker_stopped_as_honcho_stops_it_finishes_the_batch_it_holds(
    processes: ProcessManager, settings: Settings, session_factory: Any, database_url: str
) -> None:
    # Given five events waiting, and the worker (one pool process) holding them as one batch, kept
    # inside it by a lock the test holds on users
    events = {f"msg_stop_{index}": user_created(f"user_stop_{index}") for index in range(5)}
    publisher = EventPublisher(settings)
    for svix_id, payload in events.items():
        publisher.publish(svix_id=svix_id, svix_timestamp=None, body=json.dumps(payload))
    with psycopg.connect(database_url) as locker:
        locker.execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
        worker = processes.start_procfile("worker", WORKER_CONCURRENCY="1")
        wait_for(lambda: waiting_on_a_lock(database_url), timeout=60, what=f"the batch held\n{worker.log()}")

        # When SIGTERM reaches every process of the worker (honcho, systemd and Heroku signal them
        # all, not only the main one), and then the lock goes
        worker.kill(signal.SIGTERM)
        wait_for(lambda: "worker_shutting_down" in worker.log(), timeout=30, what="the warm shutdown begun")
        locker.rollback()

    # Then the worker stops as a warm shutdown does, once the batch it held has ended: exit code 0, every
    # event applied once, none left on the queue, and no pool process lost (no error, no traceback)
    assert worker.popen.wait(timeout=60) == 0, worker.log()
    assert statuses(session_factory) == dict.fromkeys(events, "processed"), worker.log()
    assert all(row.attempts == 1 for row in ledger_rows(session_factory))
    assert queued_ids(redis.Redis.from_url(settings.redis_url), settings.queue_name) == []
    errors = [line for line in worker.log().splitlines() if '"level": "error"' in line or "Traceback" in line]
    assert errors == [], worker.log()


def test_a_worker_stopped_as_honcho_stops_it_in_the_middle_of_a_reconcile_stops_at_once(
    processes: ProcessManager,
) -> None:
    # Given a worker (one pool process) running beat's reconcile, kept waiting by Clerk's rate limit
    # (every page answered 429 with Retry-After 60: minutes of waiting before the run gives up)
    clerk = make_instance(users=3, organizations=1, members_per_org=1)
    clerk.fail(429, "/v1/users", retry_after="60", times=None)
    with FakeClerkServer(clerk) as server:
        env = {"CLERK_SECRET_KEY": SECRET_KEY, "CLERK_API_URL": server.url, "RECONCILE_INTERVAL_SECONDS": "2"}
        worker = processes.start_procfile("worker", WORKER_CONCURRENCY="1", **env)
        processes.start_beat(**env)
        wait_for(lambda: clerk.requests_to("/v1/users", 429), timeout=60, what=f"the reconcile waiting\n{worker.log()}")

        # When SIGTERM reaches every process of the worker (honcho, systemd, Heroku)
        worker.kill(signal.SIGTERM)

        # Then the reconcile is not waited for (it is read-only, and the next interval's to run again): the
        # worker stops with exit code 0 long before another worker would have to take over its events
        assert worker.popen.wait(timeout=RECOVERY_SECONDS) == 0, worker.log()
