"""Log lines of the real processes: one JSON object each, event context bound, no secrets or PII."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from typing import Any

import psycopg
import pytest
from sqlalchemy import select

from devkit.waiting import wait_for
from shared.models import WebhookEvent
from shared.publish import control_queue
from tests.support.signing import OTHER_SECRET, SECRET, load_payload, post_event, post_events


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every non-empty line parsed; fails naming the first line that is not one JSON object."""
    records = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            pytest.fail(f"log line is not JSON: {line!r}")
        assert isinstance(record, dict), line
        records.append(record)
    return records


def emails_of(payload: dict[str, Any]) -> list[str]:
    return [address["email_address"] for address in payload["data"].get("email_addresses", [])]


def test_process_logs_are_json_with_event_context_and_no_secrets(processes, session_factory):
    # Given web and worker logging JSON at DEBUG, the most talkative level
    web = processes.start_web(LOG_FORMAT="json", LOG_LEVEL="DEBUG")
    worker = processes.start_worker(LOG_FORMAT="json", LOG_LEVEL="DEBUG")
    created, updated = load_payload("user.created"), load_payload("user.updated")
    emails = emails_of(created) + emails_of(updated)
    assert emails

    def processed(count: int) -> bool:
        with session_factory() as session:
            statuses = session.scalars(select(WebhookEvent.status)).all()
        return statuses == ["processed"] * count

    # When events are accepted and applied, and one is rejected for its signature (the update is
    # sent once the create is applied: two pool processes could apply it first, and the create
    # would then end ignored as older, which is right but not what this test reads)
    assert post_event(web.url, created, svix_id="msg_log_created").status_code == 200
    wait_for(lambda: processed(1), timeout=90, what="the create processed")
    assert post_event(web.url, updated, svix_id="msg_log_updated").status_code == 200
    assert post_event(web.url, updated, svix_id="msg_log_forged", secret=OTHER_SECRET).status_code == 401
    wait_for(lambda: processed(2), timeout=90, what="both events processed")
    # (Read once both have stopped: their shutdown lines count too.)
    web.stop()
    worker.stop()
    web_log, worker_log = web.log(), worker.log()

    # Then every line of both processes is one JSON object
    web_records, worker_records = json_lines(web_log), json_lines(worker_log)
    assert web_records
    assert worker_records

    # And the ingress's lines about each event carry its svix_id
    web_by_id = {r.get("svix_id"): r for r in web_records if r.get("event") in ("webhook_enqueued", "webhook_rejected")}
    assert {"msg_log_created", "msg_log_updated", "msg_log_forged"} <= set(web_by_id)
    assert web_by_id["msg_log_forged"]["event"] == "webhook_rejected"

    # And the worker's lines about each event carry its svix_id and event_type
    applied_lines = [r for r in worker_records if r.get("event") == "event_applied"]
    assert {(r["svix_id"], r["event_type"]) for r in applied_lines} == {
        ("msg_log_created", "user.created"),
        ("msg_log_updated", "user.updated"),
    }
    for record in worker_records:
        if record.get("svix_id"):
            assert record.get("event_type"), record

    # And neither the webhook secret nor any email address appears in any line
    secret_key = SECRET.removeprefix("whsec_")
    for line in web_log.splitlines() + worker_log.splitlines():
        assert secret_key not in line
        for email in emails:
            assert email not in line, line


def test_a_database_error_on_an_event_logs_no_value_of_it(processes, session_factory, database_url):
    # Given a worker at DEBUG, an application's unique index on users.email and a trigger that
    # mentions the email in its own error message, and a user holding the address
    email = "known.person@example.com"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("CREATE UNIQUE INDEX test_unique_email ON users (email)")
        conn.execute(
            "CREATE FUNCTION test_shout() RETURNS trigger AS $$ BEGIN IF NEW.first_name = 'Shout' THEN "
            "RAISE EXCEPTION 'refusing %', NEW.email; END IF; RETURN NEW; END $$ LANGUAGE plpgsql"
        )
        conn.execute("CREATE TRIGGER test_shout BEFORE INSERT ON users FOR EACH ROW EXECUTE FUNCTION test_shout()")
    try:
        web = processes.start_web(LOG_FORMAT="json", LOG_LEVEL="DEBUG")
        first = load_payload("user.created")
        first["data"]["email_addresses"][0]["email_address"] = email

        # When a second user arrives with the same address (UniqueViolation, whose DETAIL holds it),
        # and a third the trigger refuses with the address in its message
        clash = json.loads(json.dumps(first))
        clash["data"]["id"] = "user_clash"
        shout = json.loads(json.dumps(first))
        shout["data"]["id"], shout["data"]["first_name"] = "user_shout", "Shout"
        arrivals = {"msg_pii_first": first, "msg_pii_clash": clash, "msg_pii_shout": shout}
        assert set(post_events(web.url, arrivals).values()) == {200}
        # One pool process, started once all three wait: one batch takes them in order, so the first
        # holds the address (two processes could apply the clash first: arrival order is no promise)
        worker = processes.start_worker(concurrency=1, LOG_FORMAT="json", LOG_LEVEL="DEBUG", RETRY_MAX_ATTEMPTS="1")

        def settled() -> dict[str, str]:
            with session_factory() as session:
                rows = dict(session.execute(select(WebhookEvent.svix_id, WebhookEvent.status)).all())
            return rows if len(rows) == 3 and "pending" not in rows.values() else {}

        statuses = wait_for(settled, timeout=90, what="three events settled")
        logs = web.log() + worker.log()
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute("DROP INDEX IF EXISTS test_unique_email; DROP TRIGGER IF EXISTS test_shout ON users")

    # Then the failures are recorded by class, and the address is in no log line and no error
    assert statuses == {"msg_pii_first": "processed", "msg_pii_clash": "dead", "msg_pii_shout": "dead"}
    assert email not in logs
    assert "UniqueViolation (23505) constraint test_unique_email table users" in logs
    with session_factory() as session:
        assert all(email not in (row.last_error or "") for row in session.scalars(select(WebhookEvent)))


def test_beat_logs_json_without_a_line_per_routine_send(processes, settings, redis_client):
    # Given beat as the Procfile starts it, sweeping every second, and no worker to take the sweeps
    beat = processes.start_beat(RECOVERY_SECONDS="24")

    # When it has sent several sweeps
    sweeps = control_queue(settings.queue_name)
    wait_for(lambda: redis_client.llen(sweeps) >= 3, timeout=60, what="three sweeps sent")

    # Then its output is JSON lines only (no banner), it says it started, and no line per send
    records = json_lines(beat.log())
    assert any(record["event"] == "beat: Starting..." for record in records)
    assert not [record for record in records if "Sending due task" in record["event"]]


def test_the_worker_log_stays_json_when_a_pool_process_is_lost_and_when_it_stops(processes):
    # Given a worker logging JSON
    worker = processes.start_worker(LOG_FORMAT="json", concurrency=1)
    pool = worker.children()
    assert len(pool) == 1, pool

    # When its pool process is killed outright (as the OOM killer would) and a new one replaces it
    os.kill(pool[0], signal.SIGKILL)

    def replaced() -> bool:
        now = worker.children()
        return "exited with" in worker.log() and bool(now) and now != pool

    wait_for(replaced, timeout=30, what="a new pool process")
    # ...and the worker is then told to stop, as honcho, Heroku and systemd do (SIGTERM)
    worker.stop()
    assert worker.popen.returncode == 0, worker.log()[-2000:]

    # Then every line it wrote is one JSON object, billiard's and the shutdown's included
    records = json_lines(worker.log())
    assert any("exited with 'signal 9 (SIGKILL)'" in str(r.get("event")) for r in records)
    assert [r["how"] for r in records if r.get("event") == "worker_shutting_down"] == ["warm"]


def test_celerys_pool_logger_writes_json_and_never_its_debug_lines(base_env):
    # Given a process logging JSON at DEBUG, as the worker configures it
    probe = (
        "from shared.logging import configure_logging; configure_logging(log_format='json', level='DEBUG');"
        "from billiard import util; util.get_logger();"
        # When billiard (Celery's pool) logs an error, and a debug line that would carry a job's arguments
        "util.error('Process %r exited with %r', 'ForkPoolWorker-1', 'signal 9 (SIGKILL)');"
        "util.debug('Unknown job state: %s (args=%s)', 'x', 'alice@example.com')"
    )
    result = subprocess.run([sys.executable, "-c", probe], env=base_env, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    # Then the error is one JSON line and the debug line is not written at all
    records = json_lines(result.stdout + result.stderr)
    assert [r["event"] for r in records] == ["Process 'ForkPoolWorker-1' exited with 'signal 9 (SIGKILL)'"]
    assert "alice@example.com" not in result.stdout + result.stderr


def test_an_overlong_svix_id_is_logged_cut_short(processes):
    # Given the web process, and a delivery whose svix-id is 12,000 characters (anyone can send one:
    # it is refused before the signature is checked)
    web = processes.start_web(LOG_FORMAT="json")
    svix_id = "msg_" + "x" * 12_000
    response = post_event(web.url, load_payload("user.created"), svix_id=svix_id)

    # Then it is refused, and its log line names the id by its first 255 characters, not kilobytes
    assert (response.status_code, response.json()) == (400, {"error": "svix_id_too_long"})
    wait_for(lambda: "svix_id_too_long" in web.log(), timeout=10, what="the refusal logged")
    (refusal,) = [record for record in json_lines(web.log()) if record.get("reason") == "svix_id_too_long"]
    assert refusal["svix_id"] == svix_id[:255]
