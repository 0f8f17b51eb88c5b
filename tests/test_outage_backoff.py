"""The database backoff a worker's processes share (worker/pipeline/outage.py), with real forked processes.

The end-to-end outage test (tests/test_failures.py) expects one ``database_unavailable`` per step and
one ``database_available``; it once saw step 1 twice: a sweep that had begun before the connection
was cut finished after another process reported the failure, and ended the outage.
"""

from __future__ import annotations

import multiprocessing

from structlog.testing import capture_logs

from worker.pipeline.outage import DatabaseBackoff


def _fail_in_another_process(backoff: DatabaseBackoff, step_tried: int) -> None:
    process = multiprocessing.get_context("fork").Process(
        target=backoff.failed, args=(step_tried,), kwargs={"error": "connection refused", "waiting_events": 1}
    )
    process.start()
    process.join(timeout=10)
    assert process.exitcode == 0


def test_a_success_begun_before_a_reported_failure_does_not_end_the_outage():
    backoff = DatabaseBackoff(cap_seconds=2.0)
    with capture_logs() as logged:
        # Given an attempt begun while Postgres answered (step 0) in this process
        begun_at = backoff.step
        # When another process of the worker reports a failed attempt at that step
        _fail_in_another_process(backoff, begun_at)
        assert backoff.step == 1
        # ...and only then the first attempt's success is reported
        backoff.succeeded(begun_at)
        # Then the outage goes on: the next probe decides
        assert backoff.step == 1
        assert not [entry for entry in logged if entry["event"] == "database_available"]

        # And a probe made at the current step that succeeds ends it, said once
        backoff.succeeded(backoff.step)
        assert backoff.step == 0
        backoff.succeeded(0)
    available = [entry for entry in logged if entry["event"] == "database_available"]
    assert [entry["steps"] for entry in available] == [1]


def test_a_failure_is_said_once_per_step_whichever_process_reports_it():
    backoff = DatabaseBackoff(cap_seconds=2.0)
    with capture_logs() as logged:
        # Given two attempts made at step 0, one in another process
        _fail_in_another_process(backoff, 0)
        # When both fail, and then an attempt at step 1 fails too
        backoff.failed(0, error="connection refused", waiting_events=1)
        backoff.failed(backoff.step, error="connection refused", waiting_events=1)
    # Then this process said only step 2 (the other said step 1, which it logged itself)
    assert backoff.step == 2
    assert [entry["step"] for entry in logged if entry["event"] == "database_unavailable"] == [2]
