"""Prometheus metrics from the real web and Celery processes, in multiprocess mode.

Each process tree gets its own PROMETHEUS_MULTIPROC_DIR; the test causes a known
number of accepted, rejected and poisoned deliveries and checks that both scrape
points count exactly those.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import replace

import psycopg
import pytest
import requests
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select, text, update

from devkit.waiting import wait_for
from shared import metrics
from shared.models import WebhookEvent
from tests.support.processes import free_port
from tests.support.signing import OTHER_SECRET, load_payload, post_event, user_created
from worker.metrics_server import ScrapeTimeCollector

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> Samples:
    """Every sample of a /metrics page, keyed by (sample name, labels)."""
    response = requests.get(url, timeout=10)
    response.raise_for_status()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: Samples, name: str) -> float:
    return sum(v for (sample, _), v in samples.items() if sample == name)


def test_scrape_points_count_what_happened(processes, session_factory, tmp_path):
    # Given an ingress and a worker, each with its own multiprocess directory
    web = processes.start_web(workers=2, PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "web-metrics"))
    port = free_port()
    processes.start_worker(PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "worker-metrics"), METRICS_PORT=str(port))
    worker_url = f"http://127.0.0.1:{port}/metrics"

    # When N good events, one unsynced type, K forged signatures and one poison body arrive
    good, forged = 5, 3
    http = requests.Session()
    for index in range(good):
        assert post_event(web.url, user_created(f"user_metrics_{index}"), session=http).status_code == 200
    assert post_event(web.url, load_payload("session.created"), session=http).status_code == 200
    for _ in range(forged):
        assert post_event(web.url, load_payload("user.updated"), secret=OTHER_SECRET, session=http).status_code == 401
    assert post_event(web.url, "this is not json", svix_id="msg_metrics_poison", session=http).status_code == 200
    accepted = good + 2

    def all_final():
        with session_factory() as session:
            return (
                session.scalar(select(func.count()).where(WebhookEvent.status.in_(("processed", "ignored", "dead"))))
                == accepted
                and session.scalar(select(func.count()).select_from(WebhookEvent)) == accepted
            )

    wait_for(all_final, timeout=120, what="every accepted event final")

    # Then the ingress counts exactly the accepted and rejected requests, summed over its workers
    ingress = scrape(f"{web.url}/metrics")
    requests_total = "clerk_sync_ingress_requests_total"
    assert value(ingress, requests_total, outcome="enqueued", reason="", status="200") == accepted
    assert value(ingress, requests_total, outcome="rejected", reason="bad_signature", status="401") == forged
    assert total(ingress, requests_total) == accepted + forged
    assert value(ingress, "clerk_sync_ingress_enqueue_seconds_count") == accepted
    # ...and none of the worker's metrics: the ingress never queries Postgres
    assert not [name for name, _ in ingress if name.startswith(("clerk_sync_events", "clerk_sync_dead"))]

    # And the worker counts each delivery once, by type and status, as the ledger says (a batch counts
    # its events just after its commit, so the last batch's may reach the scrape a moment after its rows)
    with session_factory() as session:
        ledger = Counter(
            (metrics.event_type_label(event_type), status)
            for event_type, status in session.execute(select(WebhookEvent.event_type, WebhookEvent.status))
        )
    assert ledger == Counter(
        {("user.created", "processed"): good, ("session.created", "ignored"): 1, ("unknown", "dead"): 1}
    )

    def counted_by_worker() -> tuple[Counter, Samples] | None:
        samples = _scrape_when_up(worker_url)
        if samples is None:
            return None
        counted = Counter(
            {
                (dict(labels)["event_type"], dict(labels)["status"]): int(v)
                for (name, labels), v in samples.items()
                if name == "clerk_sync_events_total" and v
            }
        )
        return (counted, samples) if counted == ledger else None

    _, worker = wait_for(counted_by_worker, timeout=60, what=f"worker metrics on {worker_url} matching the ledger")
    assert total(worker, "clerk_sync_event_processing_seconds_count") == accepted
    assert value(worker, "clerk_sync_event_lag_seconds_count") == good
    assert total(worker, "clerk_sync_event_retries_total") == 0

    # And the scrape-time gauges describe the drained queue and the one dead letter
    assert value(worker, "clerk_sync_database_up") == 1
    assert value(worker, "clerk_sync_broker_up") == 1
    assert value(worker, "clerk_sync_dead_letter_events") == 1
    assert value(worker, "clerk_sync_events_waiting", status="pending") == 0
    assert value(worker, "clerk_sync_events_waiting", status="failed") == 0
    assert value(worker, "clerk_sync_oldest_unprocessed_age_seconds") == 0
    queue_depth = ("clerk_sync_queue_depth", frozenset({("queue", processes.env["CLERK_SYNC_QUEUE"])}))
    assert worker[queue_depth] == 0


def _scrape_when_up(url: str) -> Samples | None:
    try:
        return scrape(url)
    except requests.RequestException:
        return None


def test_scrape_time_gauges_report_waiting_events(settings, session_factory, redis_client):
    # Given a ledger with a failed event received ten minutes ago and two dead ones
    with session_factory.begin() as session:
        session.add_all(
            [
                WebhookEvent(svix_id="msg_gauge_failed", event_type="user.updated", status="failed", attempts=1),
                WebhookEvent(svix_id="msg_gauge_dead_1", event_type="user.updated", status="dead", attempts=8),
                WebhookEvent(svix_id="msg_gauge_dead_2", event_type="user.created", status="dead", attempts=1),
            ]
        )
        session.flush()
        session.execute(
            update(WebhookEvent)
            .where(WebhookEvent.svix_id == "msg_gauge_failed")
            .values(received_at=func.now() - text("interval '10 minutes'"))
        )
    # And three messages waiting in the event queue, no worker consuming it
    redis_client.lpush(settings.queue_name, b"one", b"two", b"three")

    # When the worker's collector is scraped
    registry = CollectorRegistry()
    collector = ScrapeTimeCollector(settings)
    registry.register(collector)
    samples = {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in registry.collect()
        for sample in family.samples
    }
    collector.engine.dispose()

    # Then the gauges read Postgres and Redis as they are now
    assert value(samples, "clerk_sync_database_up") == 1
    assert value(samples, "clerk_sync_broker_up") == 1
    assert value(samples, "clerk_sync_dead_letter_events") == 2
    assert value(samples, "clerk_sync_events_waiting", status="failed") == 1
    assert value(samples, "clerk_sync_events_waiting", status="pending") == 0
    assert value(samples, "clerk_sync_oldest_unprocessed_age_seconds") >= 600
    assert value(samples, "clerk_sync_queue_depth", queue=settings.queue_name) == 3
    assert value(samples, "clerk_sync_queue_depth", queue=f"{settings.queue_name}-control") == 0


def test_scrape_survives_unreachable_stores(settings):
    # Given settings pointing at a Postgres and a Redis that refuse connections
    closed = free_port()
    unreachable = replace(
        settings,
        database_url=f"postgresql://postgres@127.0.0.1:{closed}/nowhere",
        redis_url=f"redis://127.0.0.1:{closed}/0",
    )

    # When the collector is scraped
    registry = CollectorRegistry()
    registry.register(ScrapeTimeCollector(unreachable))
    samples = {(s.name, frozenset(s.labels.items())): s.value for f in registry.collect() for s in f.samples}

    # Then the scrape succeeds and says which store is down, with no made-up numbers
    assert value(samples, "clerk_sync_database_up") == 0
    assert value(samples, "clerk_sync_broker_up") == 0
    assert not [name for name, _ in samples if name.endswith(("dead_letter_events", "queue_depth"))]


def _metrics_backends(database_url: str) -> list[int]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity"
            " WHERE application_name = 'clerk-sync-metrics' AND datname = current_database()"
        ).fetchall()
    return sorted(row[0] for row in rows)


def _collect(registry: CollectorRegistry) -> Samples:
    return {(s.name, frozenset(s.labels.items())): s.value for f in registry.collect() for s in f.samples}


def test_scrapes_reuse_one_pooled_connection(settings, session_factory, database_url):
    # Given the worker's collector
    registry = CollectorRegistry()
    collector = ScrapeTimeCollector(settings)
    registry.register(collector)
    try:
        # When it is scraped three times
        seen = []
        for _ in range(3):
            assert value(_collect(registry), "clerk_sync_database_up") == 1
            seen.append(_metrics_backends(database_url))

        # Then every scrape used the same single Postgres connection
        assert len(seen[0]) == 1
        assert seen == [seen[0]] * 3
    finally:
        collector.engine.dispose()


def test_a_forked_child_leaves_the_scrape_connection_alone(settings, session_factory, database_url):
    # Given a collector whose pooled connection is open
    registry = CollectorRegistry()
    collector = ScrapeTimeCollector(settings)
    registry.register(collector)
    try:
        assert value(_collect(registry), "clerk_sync_database_up") == 1
        before = _metrics_backends(database_url)

        # When the process forks (as Celery's main process does for a new pool process) and the
        # child closes every connection its engine holds before it exits
        child = os.fork()
        if child == 0:
            try:
                collector.engine.dispose()
            finally:
                os._exit(0)
        assert os.waitpid(child, 0)[1] == 0

        # Then the parent's next scrape still runs on the very same connection
        assert value(_collect(registry), "clerk_sync_database_up") == 1
        assert _metrics_backends(database_url) == before
    finally:
        collector.engine.dispose()


def test_the_worker_serves_metrics_on_the_configured_address(processes, tmp_path):
    # Given a worker told to serve its metrics on 127.0.0.2 only
    port = free_port()
    processes.start_worker(METRICS_BIND="127.0.0.2", METRICS_PORT=str(port))

    # When Prometheus scrapes that address
    samples = wait_for(lambda: _scrape_when_up(f"http://127.0.0.2:{port}/metrics"), timeout=30, what="scrape")

    # Then it answers, with the gauges read at scrape time; and nothing listens on 127.0.0.1
    assert value(samples, "clerk_sync_database_up") == 1
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
