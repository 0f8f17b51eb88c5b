"""`clerk-sync status` and `clerk-sync events --entity` against real Postgres and Redis."""

from __future__ import annotations

import datetime as dt
import json
import re
import time

import psycopg
import requests

from devkit.services import temporary_database
from shared.publish import EventPublisher
from shared.receipts import receipt_keys
from tests.support.cli import run_cli
from tests.support.console import PASSWORD, console_env, log_in
from tests.support.ledger import add_event
from tests.support.pipeline import deliver_one
from tests.support.processes import free_port
from tests.support.signing import load_payload
from worker.pipeline import ledger
from worker.pipeline.ledger import Delivery


def _accept(settings, count: int) -> None:
    """``count`` events accepted as the ingress accepts them (message and receipt), msg_q0 first."""
    app = EventPublisher(settings)
    try:
        for n in range(count):
            app.publish(svix_id=f"msg_q{n}", svix_timestamp=None, body="{}")
    finally:
        app.close()


def test_status_reports_counts_oldest_age_and_queue_depth(session_factory, settings, redis_client, base_env, tmp_path):
    # Given events in every status but ignored, the oldest unprocessed one two hours old
    with session_factory.begin() as session:
        add_event(session, "msg_p1", "processed", age=dt.timedelta(days=2))  # older, but done
        add_event(session, "msg_p2", "processed")
        add_event(session, "msg_f1", "failed", age=dt.timedelta(hours=2))
        add_event(session, "msg_w1", "pending", age=dt.timedelta(minutes=30))
        add_event(session, "msg_w2", "pending")
        for n in range(3):
            add_event(session, f"msg_d{n}", "dead", age=dt.timedelta(days=5))
    # and four messages waiting in the queue with no worker running, one delivered but unacked
    _accept(settings, 4)
    redis_client.hset("unacked", "tag-1", json.dumps([{"body": ""}, "", settings.queue_name]))
    redis_client.hset("unacked", "tag-2", json.dumps([{"body": ""}, "", "some-other-queue"]))

    # When an operator asks for the status as JSON
    result = run_cli(base_env, "status", "--json", cwd=tmp_path)

    # Then every count, the oldest age and the queue depth are what was set up
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["counts"] == {"pending": 2, "processed": 2, "ignored": 0, "failed": 1, "dead": 3}
    assert report["estimated"] == []  # a ledger this small is counted
    assert report["dead"] == 3
    assert report["paused"] is False
    assert 2 * 3600 <= report["oldest_unprocessed_age_seconds"] < 3 * 3600
    assert report["queue"] == {
        "name": settings.queue_name,
        "available": True,
        "waiting": 4,
        "unacked": 1,
        "error": None,
    }

    # And the table for people says the same, and shows a pause
    with session_factory.begin() as session:
        ledger.set_paused(session, True)
    table = run_cli(base_env, "status", cwd=tmp_path)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert "paused:             yes" in lines
    assert f"queue {settings.queue_name}: 4 waiting, 1 delivered and not yet acked" in lines
    assert "dead letters:       3" in lines
    assert [line.split() for line in lines[-5:]] == [
        ["pending", "2"],
        ["processed", "2"],
        ["ignored", "0"],
        ["failed", "1"],
        ["dead", "3"],
    ]


def test_oldest_unprocessed_counts_accepted_events_no_worker_has_recorded_yet(
    session_factory, settings, redis_client, base_env, tmp_path
):
    # Given no worker running: three events accepted by the ingress (in the queue with their receipts,
    # no ledger row yet), the first ten minutes ago
    _accept(settings, 3)
    _, index = receipt_keys(settings.queue_name)
    redis_client.zadd(index, {"msg_q0": time.time() - 600}, xx=True)
    # and an older receipt a worker has not dropped yet although its event is processed
    with session_factory.begin() as session:
        add_event(session, "msg_done", "processed", age=dt.timedelta(hours=1))
    redis_client.zadd(index, {"msg_done": time.time() - 3600})

    # When an operator asks for the status
    report = json.loads(run_cli(base_env, "status", "--json", cwd=tmp_path).stdout)
    table = run_cli(base_env, "status", cwd=tmp_path)

    # Then the oldest unprocessed event is the one waiting for ten minutes, not "none"
    assert report["counts"]["pending"] == report["counts"]["failed"] == 0
    assert report["queue"]["waiting"] == 3
    assert 600 <= report["oldest_unprocessed_age_seconds"] < 660
    assert re.search(r"^oldest unprocessed: 6\d\d s ago$", table.stdout, re.MULTILINE), table.stdout

    # And once the workers have recorded them, the receipts dropped, there is none again
    redis_client.delete(index)
    assert (
        json.loads(run_cli(base_env, "status", "--json", cwd=tmp_path).stdout)["oldest_unprocessed_age_seconds"] is None
    )


def test_a_large_ledger_counts_done_events_from_statistics_and_the_rest_exactly(processes, base_env, tmp_path):
    # Given a ledger Postgres takes for 100 times its 20,000 rows (the statistics of a big one, without
    # the minutes of writing it): 90 % processed, 10 % ignored, and a few events an operator acts on
    with temporary_database() as url, psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO webhook_events (svix_id, status) SELECT 'msg_' || n,"
            " CASE WHEN n <= 7 THEN 'dead' WHEN n <= 10 THEN 'failed' WHEN n <= 12 THEN 'pending'"
            " WHEN n % 10 = 0 THEN 'ignored' ELSE 'processed' END FROM generate_series(1, 20000) n"
        )
        conn.execute("ALTER TABLE webhook_events SET (autovacuum_enabled = false)")
        conn.execute("ANALYZE webhook_events")
        conn.execute("UPDATE pg_class SET reltuples = reltuples * 100 WHERE oid = 'webhook_events'::regclass")
        env = {**base_env, "DATABASE_URL": url}

        # When an operator asks for the status, and opens the console's overview
        result = run_cli(env, "status", "--json", cwd=tmp_path)
        table = run_cli(env, "status", cwd=tmp_path)
        console = processes.start_console(**console_env(DATABASE_URL=url))
        http = requests.Session()
        assert log_in(http, console.url, PASSWORD).status_code == 302
        overview = http.get(f"{console.url}/", timeout=10).text

    # Then the statuses an operator acts on are exact, and processed and ignored are Postgres's
    # estimate of two million rows, said to be one
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["estimated"] == ["ignored", "processed"]
    counts = report["counts"]
    assert (counts["dead"], counts["failed"], counts["pending"]) == (7, 3, 2)
    assert abs(counts["processed"] - 1_800_000) < 60_000 and abs(counts["ignored"] - 200_000) < 20_000, counts
    rows = {line.split()[0]: line.split()[1:] for line in table.stdout.splitlines()[-5:]}
    assert rows["processed"] == [f"~{counts['processed']}", "(estimated)"]
    assert rows["dead"] == ["7"]
    assert f"~{counts['processed']}</abbr>" in overview
    assert re.search(r'id="count-dead">\s*<span class="number">7</span>', overview), overview


def test_status_without_redis_prints_the_database_part_and_exits_1(session_factory, base_env, tmp_path):
    # Given one failed event and a Redis URL nothing listens on
    with session_factory.begin() as session:
        add_event(session, "msg_f", "failed")
    env = {**base_env, "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}

    # When status is asked for, as JSON and as a table
    as_json = run_cli(env, "status", "--json", cwd=tmp_path)
    as_table = run_cli(env, "status", cwd=tmp_path)

    # Then the counts are there, the queue is reported unavailable, and both exit 1
    assert as_json.returncode == 1 and as_table.returncode == 1
    report = json.loads(as_json.stdout)
    assert report["counts"]["failed"] == 1
    assert report["queue"]["available"] is False and report["queue"]["waiting"] is None
    assert "unavailable" in as_table.stdout
    assert as_table.stderr.strip() == "clerk-sync: the queue (Redis) is unavailable"


def test_events_lists_the_timeline_of_a_user_with_memberships(session_factory, settings, base_env, tmp_path):
    # Given a user's created/updated events, a membership naming the user, an event about
    # someone else, and a delete with no timestamp that ends dead, arriving out of order
    created = load_payload("user.created")
    updated = load_payload("user.updated")
    user_id = created["data"]["id"]
    membership = load_payload("organizationMembership.created")
    membership["data"]["public_user_data"]["user_id"] = user_id
    membership["timestamp"] = created["timestamp"] + 1000  # between created and updated
    broken_delete = {"type": "user.deleted", "object": "event", "data": {"id": user_id, "deleted": True}}
    arrivals = [
        ("msg_t_updated", updated),
        ("msg_t_membership", membership),
        ("msg_t_other", load_payload("organization.created")),
        ("msg_t_created", created),
        ("msg_t_broken", broken_delete),
    ]
    for svix_id, payload in arrivals:
        delivery = Delivery(svix_id=svix_id, svix_timestamp=None, body=json.dumps(payload))
        deliver_one(session_factory, delivery, settings=settings)

    # When the timeline of the user is asked for
    result = run_cli(base_env, "events", "--entity", user_id, "--json", cwd=tmp_path)

    # Then it holds every event about the user, in Clerk's order, with status and error
    assert result.returncode == 0, result.stderr
    timeline = json.loads(result.stdout)
    assert [(e["svix_id"], e["status"]) for e in timeline] == [
        ("msg_t_created", "ignored"),  # the update, seen first, already holds newer data
        ("msg_t_membership", "processed"),
        ("msg_t_updated", "processed"),
        ("msg_t_broken", "dead"),  # no envelope timestamp: ordered by arrival, after the rest
    ]
    assert timeline[1]["entity_id"] == membership["data"]["id"]
    assert timeline[0]["clerk_timestamp_ms"] == created["timestamp"]
    assert "timestamp" in timeline[3]["last_error"]

    # And the table for people lists them in the same order
    table = run_cli(base_env, "events", "--entity", user_id, cwd=tmp_path)
    assert table.returncode == 0, table.stderr
    rows = table.stdout.splitlines()[1:]
    assert [next(word for word in row.split() if word.startswith("msg_")) for row in rows] == [
        event["svix_id"] for event in timeline
    ]
    nobody = run_cli(base_env, "events", "--entity", "user_nobody", cwd=tmp_path)
    assert (nobody.returncode, nobody.stdout.strip()) == (0, "no events about user_nobody")


def test_a_memberships_timeline_holds_the_delete_of_its_organization_that_ended_it(
    session_factory, settings, base_env, tmp_path
):
    # Given a membership, then its organization deleted (which deactivates it), and another user's delete
    membership = load_payload("organizationMembership.created")
    deleted = load_payload("organization.deleted")
    deleted["data"]["id"] = membership["data"]["organization"]["id"]
    other = load_payload("user.deleted")
    other["data"]["id"] = "user_someone_else"
    for svix_id, payload in (("msg_m_created", membership), ("msg_m_org_gone", deleted), ("msg_m_other", other)):
        deliver_one(session_factory, Delivery(svix_id, None, json.dumps(payload)), settings=settings)

    # When the membership's timeline is asked for
    result = run_cli(base_env, "events", "--entity", membership["data"]["id"], "--json", cwd=tmp_path)

    # Then it holds the organization's delete too, and nothing about anyone else
    assert result.returncode == 0, result.stderr
    assert [event["svix_id"] for event in json.loads(result.stdout)] == ["msg_m_created", "msg_m_org_gone"]


def test_events_reads_envelope_times_in_seconds_or_milliseconds_as_the_worker_does(
    session_factory, settings, base_env, tmp_path
):
    # Given two updates of one user: one stamped 2000-01-01 in milliseconds, one 2023 in seconds
    # (the smallest valid time in milliseconds is below 1e12, the threshold read once)
    early, late = load_payload("user.updated"), load_payload("user.updated")
    early["timestamp"], late["timestamp"] = 946_684_800_000, 1_700_000_000
    for svix_id, payload in (("msg_late", late), ("msg_early", early)):
        deliver_one(session_factory, Delivery(svix_id, None, json.dumps(payload)), settings=settings)

    # When the user's timeline is asked for
    result = run_cli(base_env, "events", "--entity", early["data"]["id"], "--json", cwd=tmp_path)

    # Then the event of 2000 comes first, each time read in milliseconds
    assert result.returncode == 0, result.stderr
    assert [(e["svix_id"], e["clerk_timestamp_ms"]) for e in json.loads(result.stdout)] == [
        ("msg_early", 946_684_800_000),
        ("msg_late", 1_700_000_000_000),
    ]


def test_a_dead_event_is_found_by_the_user_and_organization_it_names(session_factory, settings, base_env, tmp_path):
    # Given events the worker refused as invalid: a membership (a created_at that is not a time)
    # naming its user and organization, and an invitation with no updated_at naming its organization
    membership = load_payload("organizationMembership.created")
    membership["data"]["created_at"] = "yesterday"
    user_id = membership["data"]["public_user_data"]["user_id"]
    org_id = membership["data"]["organization"]["id"]
    invitation = load_payload("organizationInvitation.created")
    invitation["data"]["organization_id"] = org_id
    del invitation["data"]["updated_at"]
    for svix_id, payload in (("msg_bad_membership", membership), ("msg_bad_invitation", invitation)):
        status = deliver_one(session_factory, Delivery(svix_id, None, json.dumps(payload)), settings=settings)
        assert status == "dead"

    # When an operator looks for the dead events and the events about the user and the organization
    def svix_ids(*args: str) -> list[str]:
        result = run_cli(base_env, *args, "--json", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        return sorted(event["svix_id"] for event in json.loads(result.stdout))

    # Then each finds the events that name them, as it would valid ones
    assert svix_ids("dlq", "list", "--entity", user_id) == ["msg_bad_membership"]
    assert svix_ids("events", "--entity", user_id) == ["msg_bad_membership"]
    assert svix_ids("dlq", "list", "--entity", org_id) == ["msg_bad_invitation", "msg_bad_membership"]
    assert svix_ids("events", "--entity", org_id) == ["msg_bad_invitation", "msg_bad_membership"]
