"""Hooks declared, loaded and run in-process: the registration API, its errors, and the apply path.

The worker processes themselves are in tests/test_hooks.py; here ``process_batch`` runs on the
real database with hook modules from tests/fixtures/hooks/.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import select, text

from devkit.services import ROOT
from shared.config import ConfigError, Settings, load_settings
from shared.models import User
from tests.support.hooks import APP_TABLES, WELCOME, user_event
from tests.support.signing import load_payload
from worker.hooks import HookDefinitionError, hook, load
from worker.pipeline.batch import process_batch
from worker.pipeline.errors import DatabaseUnavailable
from worker.pipeline.ledger import Delivery, set_paused


def with_hooks(base_env: dict[str, str], modules: str) -> Settings:
    return load_settings({**base_env, "CLERK_SYNC_HOOKS": modules})


@pytest.fixture
def app_tables(database_url: str, session_factory: Any) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(APP_TABLES)


def calls(session_factory: Any) -> list[tuple[str, str]]:
    with session_factory() as session:
        return [tuple(row) for row in session.execute(text("SELECT event_type, entity_id FROM hook_calls ORDER BY id"))]


def test_a_module_registers_its_hooks_by_event_type_in_the_order_they_are_declared():
    table = load((WELCOME, WELCOME))
    assert {event_type: [h.name for h in hooks] for event_type, hooks in table.items()} == {
        "user.created": [f"{WELCOME}:send_welcome", f"{WELCOME}:record_call"],
        "user.updated": [f"{WELCOME}:record_call"],
        "user.deleted": [f"{WELCOME}:record_call"],
        "organizationMembership.created": [f"{WELCOME}:record_call"],
    }


def test_a_hook_names_at_least_one_event_type_that_is_synced():
    def greet(event: Any, session: Any) -> None:
        """A hook under test."""

    with pytest.raises(HookDefinitionError, match=r"greet: @hook names no event type"):
        hook()(greet)
    with pytest.raises(HookDefinitionError, match=r"greet: 'session.created' is not an event type clerk-sync syncs"):
        hook("user.created", "session.created")(greet)


@pytest.mark.parametrize(
    ("modules", "message"),
    [
        (
            "tests.fixtures.hooks.broken",
            "CLERK_SYNC_HOOKS: importing 'tests.fixtures.hooks.broken' raised RuntimeError",
        ),
        ("tests.fixtures.hooks.none", "CLERK_SYNC_HOOKS: 'tests.fixtures.hooks.none' registers no hook"),
    ],
)
def test_a_module_that_fails_or_registers_nothing_is_one_line_without_its_message(modules: str, message: str):
    with pytest.raises(ConfigError) as raised:
        load((modules,))
    assert str(raised.value).startswith(message)
    assert "hunter2" not in str(raised.value) and "\n" not in str(raised.value)


def test_the_setting_names_modules_separated_by_commas_or_spaces(base_env):
    assert with_hooks(base_env, " myapp.hooks, billing.seats  myapp.hooks").hook_modules == (
        "myapp.hooks",
        "billing.seats",
    )
    assert load_settings(base_env).hook_modules == ()
    with pytest.raises(ConfigError, match=r"^CLERK_SYNC_HOOKS: 'myapp/hooks.py' is not a module name"):
        with_hooks(base_env, "myapp/hooks.py")


def test_a_stale_event_in_the_same_batch_still_runs_its_hooks_once(session_factory, base_env, app_tables):
    # Given one batch: the update, the older create delivered twice, an unsynced event
    settings = with_hooks(base_env, WELCOME)
    user = "user_batch_hooks"
    created = Delivery("msg_c", 1700000000, user_event("user.created", user))
    deliveries = [
        Delivery("msg_u", 1700000000, user_event("user.updated", user)),
        created,
        created,
        Delivery("msg_s", 1700000000, json.dumps(load_payload("session.created"))),
    ]

    # When it is applied, and applied again
    assert process_batch(session_factory, deliveries, settings=settings) == {
        "msg_u": "processed",
        "msg_c": "ignored",
        "msg_s": "ignored",
    }
    process_batch(session_factory, deliveries, settings=settings)

    # Then each distinct synced event reached its hooks once, after the batch's changes were written
    assert calls(session_factory) == [("user.updated", user), ("user.created", user)]
    with session_factory() as session:
        assert session.execute(text("SELECT user_clerk_id, email FROM outbox")).all() == [
            (user, "john.doe@example.com")
        ]


def test_events_held_by_a_pause_run_their_hooks_when_applied(session_factory, base_env, app_tables):
    settings = with_hooks(base_env, WELCOME)
    delivery = Delivery("msg_p", 1700000000, user_event("user.created", "user_paused_hooks"))
    with session_factory.begin() as session:
        set_paused(session, True)
    assert process_batch(session_factory, [delivery], settings=settings) == {"msg_p": "pending"}
    assert calls(session_factory) == []
    with session_factory.begin() as session:
        set_paused(session, False)
    assert process_batch(session_factory, [delivery], settings=settings) == {"msg_p": "processed"}
    assert calls(session_factory) == [("user.created", "user_paused_hooks")]


@pytest.mark.parametrize(
    ("event_type", "last_error"),
    [
        ("user.created", "hook_failed: tests.fixtures.hooks.misbehaving:commit_early: HookEndedTransaction"),
        (
            "user.updated",
            "hook_failed: tests.fixtures.hooks.misbehaving:read_missing_table: UndefinedTable (42P01)",
        ),
    ],
)
def test_a_hook_that_commits_or_fails_in_sql_fails_its_event_and_commits_nothing(
    session_factory, base_env, event_type: str, last_error: str
):
    # Given a hook that commits the session, and one whose query fails
    settings = with_hooks(base_env, "tests.fixtures.hooks.misbehaving")
    delivery = Delivery("msg_m", 1700000000, user_event(event_type, "user_misbehaving"))

    # When its event is applied
    assert process_batch(session_factory, [delivery], settings=settings) == {"msg_m": "failed"}

    # Then the event failed, the hook named, and the sync's change was not committed
    with session_factory() as session:
        assert session.scalar(text("SELECT last_error FROM webhook_events WHERE svix_id = 'msg_m'")) == last_error
        assert session.scalars(select(User.clerk_id)).all() == []


def test_a_hook_that_loses_the_database_is_an_outage_that_spends_no_attempt(session_factory, base_env):
    settings = with_hooks(base_env, "tests.fixtures.hooks.misbehaving")
    delivery = Delivery("msg_gone", 1700000000, user_event("user.deleted", "user_misbehaving"))

    # When the hook's connection dies, the batch is an outage: nothing recorded, the caller keeps it
    with pytest.raises(DatabaseUnavailable, match=r"^hook_failed: tests.fixtures.hooks.misbehaving:lose_the_conn"):
        process_batch(session_factory, [delivery], settings=settings)
    with session_factory() as session:
        assert session.scalar(text("SELECT count(*) FROM webhook_events")) == 0


def test_the_documented_example_is_the_tested_one_and_queues_one_welcome_mail(session_factory, base_env, database_url):
    # Given the outbox table and the hook module exactly as docs/hooks.md shows them
    page = (ROOT / "docs" / "hooks.md").read_text()
    example = (Path(__file__).parent / "fixtures" / "hooks" / "docs_example.py").read_text()
    assert f"```python\n{example}```" in page
    outbox = re.search(r"```sql\n(.*?)```", page, re.S)
    assert outbox is not None
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS outbox")
        conn.execute(outbox[1])
    settings = with_hooks(base_env, "tests.fixtures.hooks.docs_example")
    user, gone = "user_docs_example", "user_docs_gone"

    # When a user's update arrives before its create, a second distinct create follows, and
    # another user's create arrives after their delete
    for svix_id, event_type, user_id in [
        ("msg_u", "user.updated", user),
        ("msg_c", "user.created", user),
        ("msg_c2", "user.created", user),
        ("msg_gone_d", "user.deleted", gone),
        ("msg_gone_c", "user.created", gone),
    ]:
        delivery = Delivery(svix_id, 1700000000, user_event(event_type, user_id))
        assert process_batch(session_factory, [delivery], settings=settings)[svix_id] in ("processed", "ignored")

    # Then one welcome mail is queued, to the primary address, and none to the deleted user
    with session_factory() as session:
        assert session.execute(text("SELECT kind, user_clerk_id, email, sent_at FROM outbox")).all() == [
            ("welcome", user, "john.doe@example.com", None)
        ]
