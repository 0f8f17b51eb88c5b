"""Application hooks with real Celery workers: once per distinct applied event, failures isolated.

The hooks are tests/fixtures/hooks/welcome.py: a welcome-mail outbox row on ``user.created``
(reading the address the sync has just written) and a row per call in ``hook_calls``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from devkit.services import ROOT
from devkit.waiting import wait_for
from shared.config import Settings
from shared.publish import EventPublisher
from tests.support.cli import run_cli
from tests.support.hooks import APP_TABLES, WELCOME, user_event
from tests.support.ledger import ledger_row, statuses, wait_until_final
from tests.support.processes import ProcessManager
from tests.support.signing import load_payload

HOOK_FAILED = f"hook_failed: {WELCOME}:send_welcome: ValueError"


@pytest.fixture
def app_db(database_url: str, clean_state: None) -> Iterator[psycopg.Connection[Any]]:
    """The application's own tables, empty, and a connection to read them."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(APP_TABLES)
        yield conn


def hook_env(**extra: str) -> dict[str, str]:
    """A worker that can import the test hook modules (the checkout on its path), and fast retries."""
    return {
        "PYTHONPATH": str(ROOT),
        "RETRY_MAX_ATTEMPTS": "2",
        "RETRY_BASE_SECONDS": "0.5",
        "RECOVERY_SECONDS": "24",  # beat sweeps every second
        **extra,
    }


def publish(settings: Settings, *events: tuple[str, str]) -> None:
    """Put events on the queue as the ingress does: (svix_id, body) each."""
    publisher = EventPublisher(settings)
    try:
        for svix_id, body in events:
            publisher.publish(svix_id=svix_id, svix_timestamp=int(time.time()), body=body)
    finally:
        publisher.close()


def rows(conn: psycopg.Connection[Any], query: str) -> list[tuple[Any, ...]]:
    return conn.execute(query).fetchall()


def entry_point_dir(tmp_path: Path, module: str) -> Path:
    """A directory holding an installed distribution's metadata that declares ``module`` a hook module."""
    dist = tmp_path / "entrypoints" / "acme_hooks-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-hooks\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[clerk_sync.hooks]\nwelcome = {module}\n")
    return dist.parent


def test_hooks_run_once_per_distinct_applied_event_whatever_the_order(
    processes, settings, session_factory, app_db, tmp_path
):
    # Given a worker of one Clerk instance whose hooks come from an installed distribution's entry point
    path = f"{entry_point_dir(tmp_path, WELCOME)}:{ROOT}"
    instance = load_payload("user.created")["instance_id"]
    worker = processes.start_worker(concurrency=1, **hook_env(PYTHONPATH=path, CLERK_INSTANCE_ID=instance))
    assert f"{WELCOME}:send_welcome" in next(line for line in worker.log().splitlines() if "hooks_loaded" in line)
    user = "user_hooks_reordered"

    # When the user's update arrives before its create, the create arrives twice under one
    # svix-id, and an unsynced event and an event of another Clerk instance arrive too
    publish(settings, ("msg_hk_updated", user_event("user.updated", user)))
    wait_until_final(session_factory, 1)
    created = user_event("user.created", user)
    other_instance = json.loads(user_event("user.created", "user_hooks_elsewhere"))
    other_instance["instance_id"] = "ins_another"
    publish(
        settings,
        ("msg_hk_created", created),
        ("msg_hk_created", created),
        ("msg_hk_session", json.dumps(load_payload("session.created"))),
        ("msg_hk_elsewhere", json.dumps(other_instance)),
    )
    wait_until_final(session_factory, 4)
    # ... and the create is delivered once more after it was applied (a Svix retry)
    duplicates_seen = worker.log().count('"event_duplicate"')
    publish(settings, ("msg_hk_created", created))
    wait_for(
        lambda: worker.log().count('"event_duplicate"') > duplicates_seen,
        timeout=30,
        what="the redelivery seen as a duplicate",
    )

    # Then the late create is stale (recorded ignored) yet still a distinct event Clerk sent
    assert statuses(session_factory) == {
        "msg_hk_updated": "processed",
        "msg_hk_created": "ignored",
        "msg_hk_session": "ignored",
        "msg_hk_elsewhere": "ignored",
    }
    assert ledger_row(session_factory, "msg_hk_created").last_error == "older than what the tables hold"
    # And each hook ran once per distinct event: one welcome mail, to the primary address the
    # update wrote (the hook reads the row after the sync applied the event)
    assert rows(app_db, "SELECT kind, user_clerk_id, email FROM outbox") == [("welcome", user, "john.doe@example.com")]
    assert rows(app_db, "SELECT event_type, entity_id FROM hook_calls ORDER BY id") == [
        ("user.updated", user),
        ("user.created", user),
    ]
    # And the hook's own log line says which event and hook it came from
    logged = [json.loads(line) for line in worker.log().splitlines() if '"welcome_queued"' in line]
    assert [(line["svix_id"], line["event_type"], line["hook"]) for line in logged] == [
        ("msg_hk_created", "user.created", f"{WELCOME}:send_welcome")
    ]


def test_a_failing_hook_fails_its_own_event_only_and_a_replay_runs_it_once(
    processes, settings, session_factory, base_env, app_db, tmp_path
):
    # Given three user.created waiting in one batch, the middle one's welcome mail failing
    app_db.execute("INSERT INTO hook_failures VALUES ('user_hooks_broken')")
    users = ["user_hooks_first", "user_hooks_broken", "user_hooks_last"]
    publish(settings, *((f"msg_hk_{i}", user_event("user.created", user)) for i, user in enumerate(users)))

    # When a worker with two attempts per event, and beat for the retry, take them
    worker = processes.start_worker(concurrency=1, **hook_env(CLERK_SYNC_HOOKS=WELCOME))
    processes.start_beat(**hook_env())
    wait_for(lambda: statuses(session_factory).get("msg_hk_1") == "dead", timeout=90, what="dead")

    # Then the batch split, the other two are processed with their hooks' rows, once each
    assert "batch_split" in worker.log()
    assert statuses(session_factory) == {"msg_hk_0": "processed", "msg_hk_1": "dead", "msg_hk_2": "processed"}
    assert sorted(rows(app_db, "SELECT user_clerk_id FROM outbox")) == [("user_hooks_first",), ("user_hooks_last",)]
    assert sorted(rows(app_db, "SELECT entity_id FROM hook_calls")) == [("user_hooks_first",), ("user_hooks_last",)]
    # And the failing event was retried, then dead with the hook named by its class only
    failed = ledger_row(session_factory, "msg_hk_1")
    assert (failed.status, failed.attempts, failed.last_error) == ("dead", 2, HOOK_FAILED)
    assert [entry["error"] for entry in failed.errors] == [HOOK_FAILED, HOOK_FAILED]
    assert "no welcome template" not in worker.log()
    # And nothing of it was committed: neither its sync change nor the hook's writes
    assert rows(app_db, "SELECT clerk_id FROM users ORDER BY clerk_id") == [("user_hooks_first",), ("user_hooks_last",)]

    # When the cause is fixed and an operator replays the dead event
    app_db.execute("DELETE FROM hook_failures")
    replayed = run_cli(dict(base_env), "dlq", "replay", "msg_hk_1", cwd=tmp_path)
    assert replayed.returncode == 0, replayed.stderr
    wait_for(lambda: statuses(session_factory)["msg_hk_1"] == "processed", timeout=90, what="replayed")

    # Then its hooks ran once: one welcome mail, one call, and the user is synced
    assert rows(app_db, "SELECT email FROM outbox WHERE user_clerk_id = 'user_hooks_broken'") == [
        ("john.doe@example.com",)
    ]
    assert rows(app_db, "SELECT count(*) FROM hook_calls WHERE entity_id = 'user_hooks_broken'") == [(1,)]
    assert rows(app_db, "SELECT count(*) FROM users") == [(3,)]


@pytest.mark.parametrize(
    ("hooks_env", "expected"),
    [
        (
            {"CLERK_SYNC_HOOKS": "tests.fixtures.hooks.missing"},
            "CLERK_SYNC_HOOKS: cannot import 'tests.fixtures.hooks.missing' (ModuleNotFoundError: "
            "No module named 'tests.fixtures.hooks.missing')",
        ),
        (
            {"CLERK_SYNC_HOOKS": "tests.fixtures.hooks.unknown_type"},
            "CLERK_SYNC_HOOKS: tests.fixtures.hooks.unknown_type:greet: 'user.create' is not an event type "
            "clerk-sync syncs",
        ),
        (
            {"CLERK_SYNC_HOOKS": f"{WELCOME}, tests.fixtures.hooks.none"},
            "CLERK_SYNC_HOOKS: 'tests.fixtures.hooks.none' registers no hook (decorate its functions with @hook)",
        ),
    ],
)
def test_a_bad_hook_module_stops_the_worker_with_one_line(
    processes: ProcessManager, hooks_env: dict[str, str], expected: str
) -> None:
    # When a worker starts with a hook module it cannot use
    worker = processes.start_worker(wait=False, **hook_env(**hooks_env))
    worker.popen.wait(timeout=60)

    # Then it exits non-zero before it is ready, with one line naming the problem
    assert worker.popen.returncode == 3
    errors = [line for line in worker.log().splitlines() if "configuration error" in line]
    assert errors == [f"clerk-sync: configuration error: {expected}"]
    assert "ready" not in worker.log()


def test_a_bad_entry_point_stops_the_worker_with_one_line(processes: ProcessManager, tmp_path: Path) -> None:
    # When an installed distribution declares a hook module that does not exist
    path = f"{entry_point_dir(tmp_path, 'acme.gone')}:{ROOT}"
    worker = processes.start_worker(wait=False, **hook_env(PYTHONPATH=path))
    worker.popen.wait(timeout=60)

    # Then the worker exits with one line naming the entry point
    assert worker.popen.returncode == 3
    errors = [line for line in worker.log().splitlines() if "configuration error" in line]
    assert errors == [
        "clerk-sync: configuration error: entry point 'welcome' of clerk_sync.hooks: cannot import 'acme.gone' "
        "(ModuleNotFoundError: No module named 'acme')"
    ]
