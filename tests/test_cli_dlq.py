"""`clerk-sync dlq`: dead events made by real processes, inspected, replayed and discarded."""

from __future__ import annotations

import datetime as dt
import getpass
import json
import os
import subprocess
from typing import Any

import pytest
from sqlalchemy import select

from devkit.services import bin_path
from devkit.waiting import wait_for
from shared.models import User, WebhookEvent
from shared.publish import EventPublisher
from tests.support.cli import TESTER, one_line_error, run_cli
from tests.support.ledger import add_event, audit_rows, statuses, wait_until_final
from tests.support.processes import free_port
from tests.support.signing import load_payload, post_events
from worker.ops import dead_letters
from worker.ops.dead_letters import DeadFilter, Instruction, OperationError, UnknownEvent
from worker.ops.inputs import parse_since


def test_dead_events_are_listed_shown_replayed_and_discarded(
    processes, session_factory, base_env, blocking_trigger, tmp_path
):
    # Given an ingress, a worker with a budget of one attempt, and a trigger that rejects one user
    user_created = load_payload("user.created")
    user_id = user_created["data"]["id"]
    blocking_trigger.block(user_id)
    web = processes.start_web()
    processes.start_worker(RETRY_MAX_ATTEMPTS="1")

    # When a signed event with no data.id, a body that is not JSON, the blocked user's
    # user.created and an unsynced session.created arrive
    poison = {"type": "user.created", "object": "event", "timestamp": 1716883200012, "data": {"first_name": "X"}}
    arrivals = {
        "msg_dlq_poison": poison,
        "msg_dlq_notjson": "this is not json",
        "msg_dlq_blocked": user_created,
        "msg_dlq_ignored": load_payload("session.created"),
    }
    assert set(post_events(web.url, arrivals).values()) == {200}

    # Then the three bad ones end dead with readable errors, the unsynced one ignored
    assert wait_until_final(session_factory, 4) == {
        "msg_dlq_poison": "dead",
        "msg_dlq_notjson": "dead",
        "msg_dlq_blocked": "dead",
        "msg_dlq_ignored": "ignored",
    }
    env = dict(base_env)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return run_cli(env, *args, cwd=tmp_path)

    # dlq list: a table for people...
    table = cli("dlq", "list")
    assert table.returncode == 0, table.stderr
    assert table.stdout.splitlines()[0].split() == [
        "SVIX_ID",
        "TYPE",
        "ENTITY",
        "ATTEMPTS",
        "LAST_ERROR",
        "RECEIVED_AT",
    ]
    for svix_id in ("msg_dlq_poison", "msg_dlq_notjson", "msg_dlq_blocked"):
        assert svix_id in table.stdout
    assert "msg_dlq_ignored" not in table.stdout
    # The trigger's error by class and SQLSTATE: a database's own message may carry values
    assert "RaiseException (P0001)" in table.stdout

    # ... and JSON for machines, every field but the payload
    listed = json.loads(cli("dlq", "list", "--json").stdout)
    by_id = {event["svix_id"]: event for event in listed}
    assert set(by_id) == {"msg_dlq_poison", "msg_dlq_notjson", "msg_dlq_blocked"}
    assert all("payload" not in event and "raw_body" not in event for event in listed)
    assert by_id["msg_dlq_poison"]["last_error"] == "invalid_payload: data.id is missing"
    assert by_id["msg_dlq_notjson"]["last_error"] == "invalid_payload: the body is not JSON"
    assert by_id["msg_dlq_blocked"]["last_error"] == "RaiseException (P0001)"
    assert by_id["msg_dlq_blocked"]["entity_id"] == user_id
    assert by_id["msg_dlq_blocked"]["attempts"] == 1

    # Each filter narrows the list
    def listed_ids(*filters: str) -> list[str]:
        result = cli("dlq", "list", "--json", *filters)
        assert result.returncode == 0, result.stderr
        return [event["svix_id"] for event in json.loads(result.stdout)]

    assert listed_ids("--type", "user.created") == ["msg_dlq_poison", "msg_dlq_blocked"]
    assert listed_ids("--type", " user.created ") == ["msg_dlq_poison", "msg_dlq_blocked"]  # as the console reads it
    assert listed_ids("--error", "raiseexception") == ["msg_dlq_blocked"]
    assert listed_ids("--entity", user_id) == ["msg_dlq_blocked"]
    assert len(listed_ids("--since", "1h")) == 3
    assert listed_ids("--since", "1970-01-01") == listed_ids()
    assert len(listed_ids("--limit", "1")) == 1
    bad_since = cli("dlq", "list", "--since", "last tuesday")
    assert bad_since.returncode == 2
    assert "--since" in one_line_error(bad_since)
    assert cli("dlq", "list", "--limit", "0").returncode == 2

    # dlq show: the payload, every attempt's error, the status
    shown = cli("dlq", "show", "msg_dlq_poison")
    assert shown.returncode == 0, shown.stderr
    assert "dead" in shown.stdout
    assert "invalid_payload: data.id is missing" in shown.stdout
    assert '"first_name": "X"' in shown.stdout
    assert "this is not json" in cli("dlq", "show", "msg_dlq_notjson").stdout
    shown_json = json.loads(cli("dlq", "show", "msg_dlq_blocked", "--json").stdout)
    assert shown_json["payload"]["data"]["id"] == user_id
    assert [entry["error"] for entry in shown_json["errors"]] == ["RaiseException (P0001)"]
    unknown = cli("dlq", "show", "msg_nobody")
    assert unknown.returncode == 1
    assert "msg_nobody" in one_line_error(unknown)

    # When the cause is fixed and a dry run comes first, nothing changes
    blocking_trigger.lift()
    dry = cli("dlq", "replay", "--all", "--type", "user.created", "--error", "P0001", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "would replay 1" in dry.stdout and "msg_dlq_blocked" in dry.stdout
    assert statuses(session_factory)["msg_dlq_blocked"] == "dead"

    # Then a replay brings the event to processed with a new budget, its history kept
    replayed = cli("dlq", "replay", "msg_dlq_blocked")
    assert replayed.returncode == 0, replayed.stderr
    assert "replayed 1" in replayed.stdout
    wait_for(
        lambda: statuses(session_factory)["msg_dlq_blocked"] == "processed", timeout=90, what="replayed event processed"
    )
    with session_factory() as session:
        assert session.scalars(select(User.clerk_id)).all() == [user_id]
        row = session.scalars(select(WebhookEvent).where(WebhookEvent.svix_id == "msg_dlq_blocked")).one()
        assert row.attempts == 1
        assert row.errors[0]["error"] == "RaiseException (P0001)"
        assert row.errors[1]["event"] == "replayed"

    # A replay of what is not dead, or of nothing named, is refused
    again = cli("dlq", "replay", "msg_dlq_blocked")
    assert again.returncode == 1
    assert "not dead" in one_line_error(again)
    assert cli("dlq", "replay").returncode == 2
    assert cli("dlq", "replay", "msg_dlq_poison", "--all").returncode == 2

    # Discard removes only what it names
    discarded = cli("dlq", "discard", "msg_dlq_notjson")
    assert discarded.returncode == 0, discarded.stderr
    assert statuses(session_factory) == {
        "msg_dlq_poison": "dead",
        "msg_dlq_blocked": "processed",
        "msg_dlq_ignored": "ignored",
    }

    # and --all, off a terminal, needs --yes
    refused = cli("dlq", "discard", "--all")
    assert refused.returncode == 2
    assert "--yes" in one_line_error(refused)
    assert "msg_dlq_poison" in statuses(session_factory)
    confirmed = cli("dlq", "discard", "--all", "--yes", "--operator", "bob")
    assert confirmed.returncode == 0, confirmed.stderr
    assert statuses(session_factory) == {"msg_dlq_blocked": "processed", "msg_dlq_ignored": "ignored"}

    # And the audit table holds each change: who, what, which filter, which events
    assert [(r.operator, r.action, r.filter, r.svix_ids, r.count) for r in audit_rows(session_factory)] == [
        (getpass.getuser(), "replay", None, ["msg_dlq_blocked"], 1),
        (getpass.getuser(), "discard", None, ["msg_dlq_notjson"], 1),
        ("bob", "discard", {}, ["msg_dlq_poison"], 1),
    ]


def test_dead_letter_filters(session_factory):
    # Given dead events of several types, ages, errors and entities, and some not dead
    now = dt.datetime.now(dt.UTC)
    membership = load_payload("organizationMembership.created")
    member_id = membership["data"]["public_user_data"]["user_id"]
    org_id = membership["data"]["organization"]["id"]
    with session_factory.begin() as session:
        add_event(session, "msg_old", "dead", event_type="user.updated", received_at=now - dt.timedelta(days=3),
                  last_error="OperationalError: timeout", entity_id="user_a")  # fmt: skip
        add_event(session, "msg_mem", "dead", event_type="organizationMembership.created", payload=membership,
                  received_at=now - dt.timedelta(hours=5), last_error="DataError: bad value",
                  entity_id=membership["data"]["id"], user_clerk_id=member_id, organization_clerk_id=org_id)  # fmt: skip
        add_event(session, "msg_new", "dead", event_type="user.created", received_at=now - dt.timedelta(minutes=5),
                  last_error="users_guard: user_b is ON HOLD", entity_id=member_id)  # fmt: skip
        add_event(session, "msg_done", "processed", event_type="user.created", entity_id=member_id)

    def ids(**filters: Any) -> list[str]:
        with session_factory() as session:
            return [row.svix_id for row in dead_letters.list_dead(session, DeadFilter(**filters))]

    # Then every filter selects what it says, oldest first, dead only
    assert ids() == ["msg_old", "msg_mem", "msg_new"]
    assert ids(event_type="user.created") == ["msg_new"]
    assert ids(event_type="user") == []  # exact, not a prefix
    assert ids(since=parse_since("1d")) == ["msg_mem", "msg_new"]
    assert ids(since=parse_since("30m")) == ["msg_new"]
    assert ids(since=parse_since((now - dt.timedelta(days=4)).date().isoformat())) == [
        "msg_old",
        "msg_mem",
        "msg_new",
    ]
    assert ids(error="on hold") == ["msg_new"]
    assert ids(error="%") == []  # a literal substring, not a LIKE pattern
    assert ids(entity=member_id) == ["msg_mem", "msg_new"]  # its own event and a membership naming it
    assert ids(entity=org_id) == ["msg_mem"]
    assert ids(entity="user_a", error="timeout") == ["msg_old"]
    assert ids(limit=2) == ["msg_old", "msg_mem"]


def test_parse_since_accepts_durations_and_iso_and_rejects_the_rest():
    now = dt.datetime(2024, 5, 10, 12, 0, tzinfo=dt.UTC)
    assert parse_since("2h", now=now) == dt.datetime(2024, 5, 10, 10, 0, tzinfo=dt.UTC)
    assert parse_since("3d", now=now) == dt.datetime(2024, 5, 7, 12, 0, tzinfo=dt.UTC)
    assert parse_since("1w", now=now) == dt.datetime(2024, 5, 3, 12, 0, tzinfo=dt.UTC)
    assert parse_since("2024-05-01") == dt.datetime(2024, 5, 1, tzinfo=dt.UTC)
    assert parse_since("2024-05-01T08:30:00Z") == dt.datetime(2024, 5, 1, 8, 30, tzinfo=dt.UTC)
    assert parse_since("2024-05-01T08:30:00+02:00") == dt.datetime(2024, 5, 1, 6, 30, tzinfo=dt.UTC)
    for bad in ("yesterday", "2h ago", "-3d", "", "2024-13-01"):
        with pytest.raises(ValueError, match="--since"):
            parse_since(bad)


def test_replay_and_discard_act_only_on_named_dead_events(session_factory, settings, redis_client):
    # Given two dead events, a processed one, and a dead one whose payload was scrubbed
    with session_factory.begin() as session:
        add_event(session, "msg_a", "dead", received_at=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=2),
                  errors=[{"at": "t", "error": "e1"}])  # fmt: skip
        add_event(session, "msg_b", "dead")
        add_event(session, "msg_ok", "processed", attempts=1)
        add_event(
            session, "msg_scrubbed", "dead", payload={"type": "user.created", "scrubbed": True, "data": {"id": "u"}}
        )
    app = EventPublisher(settings)
    try:
        # When a replay names a processed event or an unknown one, nothing happens
        for named in (["msg_a", "msg_ok"], ["msg_a", "msg_nobody"], ["msg_scrubbed"]):
            with pytest.raises(OperationError), session_factory.begin() as session:
                dead_letters.replay(session, app, named, Instruction(TESTER))
        with pytest.raises(UnknownEvent), session_factory.begin() as session:
            dead_letters.replay(session, app, ["msg_nobody"], Instruction(TESTER))
        assert redis_client.llen(settings.queue_name) == 0

        # When --all style replay skips what is no longer dead
        with session_factory.begin() as session:
            result = dead_letters.replay(
                session, app, ["msg_b", "msg_a", "msg_ok"], Instruction(TESTER, skip_not_dead=True)
            )
    finally:
        app.close()

    # Then the dead ones are pending with a fresh budget, enqueued oldest first
    assert result.done == ["msg_a", "msg_b"] and result.skipped == ["msg_ok"]
    with session_factory() as session:
        rows = {row.svix_id: row for row in session.scalars(select(WebhookEvent))}
    assert (rows["msg_a"].status, rows["msg_a"].attempts, rows["msg_a"].next_attempt_at) == ("pending", 0, None)
    assert rows["msg_a"].errors[0] == {"at": "t", "error": "e1"}
    assert rows["msg_a"].errors[1]["attempts_before"] == 8
    assert rows["msg_ok"].status == "processed"
    messages = [json.loads(raw) for raw in reversed(redis_client.lrange(settings.queue_name, 0, -1))]
    assert [m["headers"]["id"] for m in messages] == ["msg_a", "msg_b"]
    assert {m["headers"]["task"] for m in messages} == {"clerk_sync.process_event"}

    # And discard deletes only the dead rows it names
    with pytest.raises(OperationError), session_factory.begin() as session:
        dead_letters.discard(session, ["msg_scrubbed", "msg_ok"], Instruction(TESTER))
    with session_factory.begin() as session:
        assert dead_letters.discard(session, ["msg_scrubbed"], Instruction(TESTER)).done == ["msg_scrubbed"]
    with session_factory() as session:
        assert sorted(session.scalars(select(WebhookEvent.svix_id))) == ["msg_a", "msg_b", "msg_ok"]


def test_a_dry_run_refuses_and_reports_what_the_real_run_would(session_factory, base_env, tmp_path):
    # Given a dead event, an ignored one and a dead one whose payload was scrubbed
    with session_factory.begin() as session:
        add_event(session, "msg_dead1", "dead")
        add_event(session, "msg_ignored", "ignored")
        add_event(session, "msg_scrubbed", "dead", payload={"type": "user.created", "scrubbed": True})

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return run_cli(base_env, "dlq", *args, cwd=tmp_path)

    # When each refused action is dry run first, then run
    for argv, refusal in (
        (["replay", "msg_nope", "msg_dead1"], "no event with svix_id msg_nope"),
        (["discard", "msg_dead1", "msg_nope"], "no event with svix_id msg_nope"),
        (["replay", "msg_ignored"], "msg_ignored is ignored, not dead: nothing to do"),
        (["discard", "msg_ignored", "msg_dead1"], "msg_ignored is ignored, not dead: nothing to do"),
        (["replay", "msg_scrubbed"], "msg_scrubbed: its payload is no longer stored"),
    ):
        dry, real = cli(*argv, "--dry-run"), cli(*argv)

        # Then the dry run refuses as the real run does: the same line, exit 1, nothing on stdout
        assert (dry.returncode, dry.stdout, dry.stderr) == (1, "", real.stderr), argv
        assert real.returncode == 1 and refusal in one_line_error(real), argv

    # And what the real run would do is what the dry run lists, without doing it or auditing it
    would = cli("replay", "msg_dead1", "msg_dead1", "--dry-run")
    assert (would.returncode, would.stdout) == (0, "would replay 1 dead event(s):\n  msg_dead1\n"), would.stderr
    would = cli("discard", "msg_scrubbed", "msg_dead1", "--dry-run")
    assert would.stdout.splitlines()[0] == "would discard 2 dead event(s):", would.stderr
    assert statuses(session_factory) == {"msg_dead1": "dead", "msg_ignored": "ignored", "msg_scrubbed": "dead"}
    assert audit_rows(session_factory) == []
    assert cli("discard", "msg_scrubbed", "msg_dead1").stdout.splitlines()[0] == "discarded 2 event(s):"


def test_replay_without_redis_fails_and_leaves_events_dead(session_factory, base_env, tmp_path):
    # Given a dead event and a Redis URL nothing listens on
    with session_factory.begin() as session:
        add_event(session, "msg_stuck", "dead")
    env = {**base_env, "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}

    # When its replay is dry run, Redis is not needed
    dry = run_cli(env, "dlq", "replay", "msg_stuck", "--dry-run", cwd=tmp_path)
    assert (dry.returncode, dry.stdout) == (0, "would replay 1 dead event(s):\n  msg_stuck\n"), dry.stderr

    # When it is replayed
    result = run_cli(env, "dlq", "replay", "msg_stuck", cwd=tmp_path)

    # Then the command fails in one line and the event is still dead, with its budget spent
    assert result.returncode == 1
    assert "queue is unavailable" in one_line_error(result)
    assert "still dead" in result.stderr
    with session_factory() as session:
        row = session.scalars(select(WebhookEvent)).one()
        assert (row.status, row.attempts) == ("dead", 8)


def test_database_unreachable_is_one_line_exit_1(base_env, tmp_path):
    env = {**base_env, "DATABASE_URL": f"postgresql://postgres@127.0.0.1:{free_port()}/nothing"}
    result = run_cli(env, "dlq", "list", cwd=tmp_path)
    assert result.returncode == 1
    assert "database unavailable" in one_line_error(result)


@pytest.mark.parametrize("argv", [["dlq", "list", "--json"], ["dlq", "show", "msg_piped"]])
def test_a_reader_that_stops_reading_ends_the_command_quietly(argv, session_factory, base_env, tmp_path):
    # Given a dead event, and a stdout whose reader is gone (`clerk-sync dlq list --json | true`)
    with session_factory.begin() as session:
        add_event(session, "msg_piped", "dead")
    reader, writer = os.pipe()
    os.close(reader)

    # When the command writes to it (the installed script, as a shell pipeline runs it)
    try:
        result = subprocess.run(
            [bin_path("clerk-sync"), *argv], stdout=writer, stderr=subprocess.PIPE, env=base_env, cwd=tmp_path,
            text=True, timeout=120, check=False,
        )  # fmt: skip
    finally:
        os.close(writer)

    # Then it ends with exit 1 and not a word: no traceback, no "Exception ignored" at exit
    assert (result.returncode, result.stderr) == (1, "")


def test_a_bulk_action_over_several_batches_is_one_audit_row(session_factory, base_env, tmp_path):
    # Given more dead events than one transaction takes
    count = dead_letters.BATCH * 2 + 5
    with session_factory.begin() as session:
        for index in range(count):
            add_event(session, f"msg_bulk_{index:03}", "dead", event_type="user.updated")
    # When they are discarded by a filter, a transaction a batch
    result = run_cli(base_env, "dlq", "discard", "--all", "--type", "user.updated", "--yes", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    # Then the action is one row naming every event it discarded
    [row] = audit_rows(session_factory)
    assert (row.action, row.count, row.filter["type"]) == ("discard", count, "user.updated")
    assert sorted(row.svix_ids) == [f"msg_bulk_{index:03}" for index in range(count)]
