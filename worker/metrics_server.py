"""The worker's scrape point: every child's counters plus gauges read at scrape time.

Started from Celery's ``worker_ready`` signal in the worker's main process only, on
``METRICS_BIND``:``METRICS_PORT`` (0 disables). The gauges come from Postgres (dead letters,
waiting events, oldest unprocessed age) and Redis (queue depth) when Prometheus asks, so they
are true even when no event is flowing; if a store does not answer, its ``*_up`` gauge says 0
and the scrape still succeeds (the first failure of a run is logged, not every scrape).

The scrapes reuse one pooled Postgres connection. The main process forks new pool processes
while it runs (one replaces a process that died), so a child drops its inherited copy of that
pool without closing it (``os.register_at_fork``): the socket stays the parent's alone.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable, Iterator
from typing import Any

import redis
import structlog
from prometheus_client import start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import Engine, create_engine, text

from shared import metrics
from shared.config import Settings
from shared.publish import control_queue
from shared.redis_client import redis_client
from shared.statuses import NOT_DONE_SQL

log = structlog.get_logger("clerk_sync.metrics")

# kombu's Redis transport keeps a priority level's messages under "<queue>\x06\x16<n>".
_PRIORITY_SEPARATOR = "\x06\x16"
_PRIORITY_STEPS = (3, 6, 9)
_REDIS_ERRORS = (redis.RedisError, OSError)

_WAITING_SQL = text(
    f"SELECT status, count(*) AS n, min(received_at) AS oldest FROM webhook_events WHERE {NOT_DONE_SQL} GROUP BY status"  # noqa: S608 - a constant of shared.statuses
)


class ScrapeTimeCollector(Collector):
    """Gauges computed when scraped, from Postgres and Redis, with short timeouts."""

    def __init__(self, settings: Settings) -> None:
        self.queues = (settings.queue_name, control_queue(settings.queue_name))
        self.engine: Engine = create_engine(
            settings.sqlalchemy_url,
            pool_size=1,
            max_overflow=0,
            pool_timeout=2,
            pool_pre_ping=True,  # a connection that died with an outage is replaced, not failed on
            connect_args={
                "connect_timeout": 3,
                "application_name": "clerk-sync-metrics",
                "options": "-c statement_timeout=5000",
            },
        )
        os.register_at_fork(after_in_child=self._forget_inherited_connections)
        self.redis = redis_client(settings.redis_url, timeout=2.0)
        self._reported_down: set[str] = set()

    def _forget_inherited_connections(self) -> None:
        # In a forked child: drop the parent's pooled connection without touching its socket.
        self.engine.dispose(close=False)

    def _down(self, store: str, exc: BaseException) -> None:
        """One warning per outage of a store, not one per scrape."""
        if store not in self._reported_down:
            self._reported_down.add(store)
            log.warning(f"metrics_{store}_unavailable", error=type(exc).__name__)

    def _up(self, store: str) -> None:
        if store in self._reported_down:
            self._reported_down.discard(store)
            log.info(f"metrics_{store}_available")

    def collect(self) -> Iterator[Any]:
        yield from self._store("database", "Postgres", self._read_database, _database_metrics, errors=(Exception,))
        yield from self._store("broker", "Redis", self._read_broker, self._broker_metrics, errors=_REDIS_ERRORS)

    def _store(
        self,
        store: str,
        server: str,
        read: Callable[[], Any],
        report: Callable[[Any], Iterator[Any]],
        *,
        errors: tuple[type[BaseException], ...],
    ) -> Iterator[Any]:
        """The store's ``*_up`` gauge, then what ``report`` makes of ``read``'s answer (nothing if it failed)."""
        up = GaugeMetricFamily(f"{metrics.PREFIX}_{store}_up", f"1 if the worker's scrape reached {server}.")
        try:
            answer = read()
        except errors as exc:  # report it as a gauge, keep serving
            self._down(store, exc)
            up.add_metric([], 0)
            yield up
            return
        self._up(store)
        up.add_metric([], 1)
        yield up
        yield from report(answer)

    def _read_database(self) -> tuple[dict[str, Any], dt.datetime]:
        with self.engine.connect() as conn:
            rows = {row.status: row for row in conn.execute(_WAITING_SQL)}
            now = conn.execute(text("SELECT now()")).scalar_one()
        return rows, now

    def _read_broker(self) -> list[int]:
        pipe = self.redis.pipeline(transaction=False)
        for queue in self.queues:
            pipe.llen(queue)
            for step in _PRIORITY_STEPS:
                pipe.llen(f"{queue}{_PRIORITY_SEPARATOR}{step}")
        return list(pipe.execute())

    def _broker_metrics(self, lengths: list[int]) -> Iterator[Any]:
        depth = GaugeMetricFamily(
            f"{metrics.PREFIX}_queue_depth", "Messages waiting in the Redis queue (LLEN).", labels=["queue"]
        )
        per_queue = 1 + len(_PRIORITY_STEPS)
        for index, queue in enumerate(self.queues):
            depth.add_metric([queue], sum(lengths[index * per_queue : (index + 1) * per_queue]))
        yield depth


def _database_metrics(answer: tuple[dict[str, Any], dt.datetime]) -> Iterator[Any]:
    rows, now = answer
    dead = GaugeMetricFamily(f"{metrics.PREFIX}_dead_letter_events", "Events in status dead, waiting for an operator.")
    waiting = GaugeMetricFamily(
        f"{metrics.PREFIX}_events_waiting", "Events recorded but not final, by status.", labels=["status"]
    )
    oldest = GaugeMetricFamily(
        f"{metrics.PREFIX}_oldest_unprocessed_age_seconds",
        "Age of the oldest pending or failed event (0 when there is none).",
    )
    dead.add_metric([], rows["dead"].n if "dead" in rows else 0)
    ages = [(now - rows[s].oldest).total_seconds() for s in ("pending", "failed") if s in rows]
    for status in ("pending", "failed"):
        waiting.add_metric([status], rows[status].n if status in rows else 0)
    oldest.add_metric([], max([0.0, *ages]))
    yield from (dead, waiting, oldest)


def start(settings: Settings) -> bool:
    """Serve the worker's metrics on METRICS_BIND:METRICS_PORT; False if disabled or the port is taken."""
    if not settings.metrics_port:
        return False
    registry = metrics.registry(ScrapeTimeCollector(settings))
    try:
        start_http_server(settings.metrics_port, addr=settings.metrics_bind, registry=registry)
    except OSError as exc:
        # Another worker on this host has the port: the worker still works, unscraped.
        log.warning(
            "metrics_server_not_started", bind=settings.metrics_bind, port=settings.metrics_port, error=str(exc)
        )
        return False
    log.info(
        "metrics_server_started",
        bind=settings.metrics_bind,
        port=settings.metrics_port,
        multiproc_dir=os.environ.get(metrics.MULTIPROC_ENV),
    )
    return True
