"""The recovery bound's arithmetic (shared/timings.py) and the settings that carry it out.

CONTRACT section 5: with the default settings, an event held by a worker that dies is applied by
another worker within 2 minutes. These tests check the arithmetic over the defaults, and that
Celery, kombu, beat, Postgres and the receipts are configured with exactly those timings.
"""

from __future__ import annotations

import pytest

from shared.config import get_settings, load_settings
from shared.timings import MINIMUM_BOUND_SECONDS, recovery_timings
from worker.celery_app import app, celery_config

CONTRACT_BOUND_SECONDS = 120


def test_the_default_bound_is_the_contracts_two_minutes():
    assert load_settings({"LOG_FORMAT": "json"}).timings.bound == CONTRACT_BOUND_SECONDS


def test_with_the_defaults_an_event_of_a_dead_worker_is_applied_within_two_minutes():
    timings = load_settings({"LOG_FORMAT": "json"}).timings

    # In kombu's unacked hash: visible after the visibility timeout, found by the next restore
    # scan of a live worker, applied after at most one batch that runs to its hard time limit.
    unacked = timings.visibility_timeout + timings.restore_interval + timings.task_time_limit
    assert unacked == timings.worst_case_unacked() == 90
    assert unacked <= CONTRACT_BOUND_SECONDS

    # Lost between BRPOP and the unacked hash, only in its receipt: presumed lost after
    # lost_message_after, found by the next sweep, which waits at most one batch for a pool
    # process, and the event re-enqueued waits at most one more.
    receipt_only = timings.lost_message_after + timings.sweep_interval + 2 * timings.task_time_limit
    assert receipt_only == timings.worst_case_receipt_only() == 115
    assert receipt_only <= CONTRACT_BOUND_SECONDS

    # And every rule the two sums rest on holds.
    assert timings.check() == []


def test_the_defaults_in_seconds():
    timings = recovery_timings(120)
    assert (timings.restore_interval, timings.visibility_timeout, timings.unacked_mutex_expire) == (5, 55, 10)
    assert (timings.sweep_interval, timings.lost_message_after) == (5, 50)
    assert (timings.task_soft_time_limit, timings.task_time_limit) == (25, 30)
    assert (timings.database_wait, timings.database_connect_timeout) == (10, 5)
    assert timings.statement_timeout_limit == 15
    assert timings.idle_in_transaction_timeout == 30


@pytest.mark.parametrize("bound", [MINIMUM_BOUND_SECONDS, 30, 45, 60, 90, 120, 300, 900, 3600])
def test_the_rules_hold_for_any_bound_a_deployment_may_choose(bound):
    timings = recovery_timings(bound)
    assert timings.check() == []
    assert timings.worst_case_unacked() <= bound
    assert timings.worst_case_receipt_only() <= bound


def test_a_live_worker_never_looks_dead():
    timings = recovery_timings(120)
    # It holds a message at most until the hard time limit kills its batch.
    assert timings.task_time_limit < timings.visibility_timeout
    assert timings.task_time_limit < timings.lost_message_after
    # Its database wait, plus one probe of an unreachable Postgres, ends before the soft limit.
    assert timings.database_wait + timings.database_connect_timeout <= timings.task_soft_time_limit


def test_a_broken_table_is_reported_rule_by_rule():
    from dataclasses import replace

    broken = replace(recovery_timings(120), visibility_timeout=100, task_time_limit=120)
    failed = broken.check()
    assert "path A (unacked hash) fits the bound" in failed
    assert "a live worker's message never becomes visible" in failed


def test_celery_kombu_and_beat_use_the_timings():
    # Given a deployment that chose a bound of its own
    settings = load_settings({"LOG_FORMAT": "json", "RECOVERY_SECONDS": "60"})
    timings = settings.timings

    # When the worker's Celery configuration is built
    config = celery_config(settings)

    # Then kombu's transport, Celery's time limits and prefetch follow the table
    transport = config["broker_transport_options"]
    assert transport["visibility_timeout"] == timings.visibility_timeout == 27.5
    assert transport["unacked_restore_interval"] == timings.restore_interval
    assert transport["unacked_restore_throttle"] == 1
    assert transport["unacked_mutex_expire"] == timings.unacked_mutex_expire
    assert config["task_time_limit"] == timings.task_time_limit
    assert config["task_soft_time_limit"] == timings.task_soft_time_limit
    # One message per pool process: the batch takes the rest itself, so none waits reserved.
    assert config["worker_prefetch_multiplier"] == 1
    # And Postgres's own timeouts agree with the soft time limit
    assert settings.db_statement_timeout_seconds == timings.statement_timeout_limit


def test_beat_sweeps_at_the_sweep_interval():
    schedule = app.conf.beat_schedule  # built from this process's settings
    assert schedule["sweep"]["schedule"].run_every.total_seconds() == get_settings().timings.sweep_interval
