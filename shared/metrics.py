"""Prometheus metrics shared by the ingress and the worker, in multiprocess mode.

Web server workers (granian) and Celery prefork children each write their samples to files in
``PROMETHEUS_MULTIPROC_DIR``; the process that serves a scrape sums them with a
``MultiProcessCollector``. prometheus_client chooses multiprocess mode when it is
first imported, so the entry points (``deploy/web.py``, ``worker/celery_app.py``)
call ``ensure_multiproc_dir()`` before anything imports it, and this module imports it
lazily: the instruments are built on first use, in the process that records.

Callers use the small functions below and never touch prometheus_client themselves.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from functools import cache
from typing import Any

from shared.config import ConfigError, exit_on_config_error

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
PREFIX = "clerk_sync"

# Seconds. Enqueueing is a Redis round trip; applying an event a few queries; the lag
# from Svix's timestamp spans retries and outages.
ENQUEUE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0)
PROCESSING_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
LAG_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0, 21600.0, 86400.0)

_EVENT_TYPE = re.compile(r"^[A-Za-z][A-Za-z0-9_.]{0,63}$")


def ensure_multiproc_dir() -> str:
    """Point ``PROMETHEUS_MULTIPROC_DIR`` at a directory, creating a private one if unset.

    Call it at the top of an entry point, before prometheus_client is imported, so
    the forked children inherit it. A directory created here belongs to this process
    tree and is removed when the process that created it exits.
    """
    path = os.environ.get(MULTIPROC_ENV)
    if path:
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as exc:  # a file there, a parent not writable: one line, not a traceback
            exit_on_config_error(ConfigError(f"{MULTIPROC_ENV}: {path} cannot be a directory ({exc.strerror})"))
        return path
    path = tempfile.mkdtemp(prefix="clerk-sync-metrics-")
    os.environ[MULTIPROC_ENV] = path
    creator = os.getpid()

    def _cleanup() -> None:
        # Forked children run atexit handlers too; only the creator removes the directory.
        if os.getpid() == creator:
            shutil.rmtree(path, ignore_errors=True)

    atexit.register(_cleanup)
    return path


def multiprocess_enabled() -> bool:
    return bool(os.environ.get(MULTIPROC_ENV))


def _values_in_files() -> bool:
    """Whether this process's samples go to files: decided when prometheus_client was imported."""
    from prometheus_client import values

    return values.ValueClass is not values.MutexValue


def mark_process_dead(pid: int) -> None:
    """Forget a dead child's live gauges (Celery process shutdown)."""
    if multiprocess_enabled():
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)


@dataclass(frozen=True)
class _Instruments:
    ingress_requests: Any
    enqueue_seconds: Any
    events: Any
    processing_seconds: Any
    lag_seconds: Any
    retries: Any
    conflicting_redeliveries: Any


_INSTRUMENTS_LOCK = threading.Lock()
_built: _Instruments | None = None


def _instruments() -> _Instruments:
    global _built
    if _built is None:
        # Server threads serve the first requests concurrently: build (and register) only once.
        with _INSTRUMENTS_LOCK:
            _built = _make_instruments()
    return _built


@cache
def _make_instruments() -> _Instruments:
    from prometheus_client import Counter, Histogram

    return _Instruments(
        ingress_requests=Counter(
            f"{PREFIX}_ingress_requests",
            "Webhook requests answered by the ingress, by outcome (enqueued, rejected, unavailable) and reason.",
            ["outcome", "reason", "status"],
        ),
        enqueue_seconds=Histogram(
            f"{PREFIX}_ingress_enqueue_seconds",
            "Time to put a verified event on the queue (successful or not).",
            buckets=ENQUEUE_BUCKETS,
        ),
        events=Counter(
            f"{PREFIX}_events",
            "Deliveries handled by the worker, by event type and the status they ended in "
            "(duplicate: the svix-id was already final).",
            ["event_type", "status"],
        ),
        processing_seconds=Histogram(
            f"{PREFIX}_event_processing_seconds",
            "Time to handle one delivery in the worker, database round trips included.",
            ["event_type"],
            buckets=PROCESSING_BUCKETS,
        ),
        lag_seconds=Histogram(
            f"{PREFIX}_event_lag_seconds",
            "From the svix-timestamp (Svix's send time) to the event's change committed in Postgres.",
            buckets=LAG_BUCKETS,
        ),
        retries=Counter(
            f"{PREFIX}_event_retries",
            "Attempts that will be retried: transient (spends the budget) or database_unavailable (does not).",
            ["event_type", "reason"],
        ),
        conflicting_redeliveries=Counter(
            f"{PREFIX}_conflicting_redeliveries",
            "Redeliveries of an svix-id whose body differed from the one first received (never applied).",
        ),
    )


def event_type_label(event_type: object) -> str:
    """A bounded label: Clerk's type names pass through, anything else is 'invalid'."""
    if event_type is None:
        return "unknown"
    if isinstance(event_type, str) and _EVENT_TYPE.match(event_type):
        return event_type
    return "invalid"


# -- ingress ---------------------------------------------------------------------------


# The ingress's labelled counters, looked up once each: ``labels()`` validates and locks on
# every call, and the ingress counts every request.
_ingress_children: dict[tuple[str, str, int], Any] = {}


def ingress_request(outcome: str, *, reason: str = "", status: int) -> None:
    key = (outcome, reason, status)
    child = _ingress_children.get(key)
    if child is None:
        # A race only looks the same child up twice: ``labels()`` returns one per label set.
        child = _ingress_children[key] = _instruments().ingress_requests.labels(
            outcome=outcome, reason=reason, status=str(status)
        )
    child.inc()


def observe_enqueue(seconds: float) -> None:
    _instruments().enqueue_seconds.observe(seconds)


# -- worker ----------------------------------------------------------------------------


def event_handled(event_type: object, status: str, *, seconds: float, svix_timestamp: int | None) -> None:
    """One delivery finished (its transaction committed) with ``status``."""
    label = event_type_label(event_type)
    instruments = _instruments()
    instruments.events.labels(event_type=label, status=status).inc()
    instruments.processing_seconds.labels(event_type=label).observe(seconds)
    if status == "failed":
        instruments.retries.labels(event_type=label, reason="transient").inc()
    if status == "processed" and svix_timestamp:
        instruments.lag_seconds.observe(max(0.0, time.time() - svix_timestamp))


def conflicting_redelivery() -> None:
    """A redelivery of an svix-id came with another body; the stored body stays the one applied."""
    _instruments().conflicting_redeliveries.inc()


def database_unavailable_retry(event_type: object) -> None:
    """An attempt that could not reach Postgres; the queue retries it without spending budget."""
    _instruments().retries.labels(event_type=event_type_label(event_type), reason="database_unavailable").inc()


# -- exposition ------------------------------------------------------------------------


def registry(*extra_collectors: Any) -> Any:
    """A registry summing every process's files (multiprocess mode), else this process's own."""
    from prometheus_client import REGISTRY, CollectorRegistry, multiprocess

    reg = REGISTRY
    if multiprocess_enabled() and _values_in_files():
        reg = CollectorRegistry()
        multiprocess.MultiProcessCollector(reg)
    for collector in extra_collectors:
        reg.register(collector)
    return reg


def exposition() -> tuple[bytes, int, dict[str, str]]:
    """The ingress's ``GET /metrics``: its own metrics only, never a database query."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    _instruments()  # so a fresh process exposes its (zero) families too
    return generate_latest(registry()), 200, {"Content-Type": CONTENT_TYPE_LATEST}
