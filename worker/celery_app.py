"""The worker's Celery app. Configured lazily from settings when the worker starts.

Run it with ``celery -A worker.celery_app worker`` (see the Procfile). It never
imports Flask; the ingress has a publisher of its own (``shared.queue``).
"""

from __future__ import annotations

import os
from typing import Any

import structlog
from celery import Celery, signals
from celery.schedules import schedule

from shared import metrics
from shared.config import ConfigError, exit_on_config_error, get_settings
from shared.db import dispose_engines
from shared.logging import configure_logging
from shared.queue import PURGE_PAYLOADS_TASK, RECONCILE_TASK, SWEEP_TASK, celery_config

# Before the prefork children exist and before prometheus_client is imported: each child
# writes its samples here and the main process's scrape sums them (worker/metrics_server.py).
metrics.ensure_multiproc_dir()

app = Celery("clerk_sync", set_as_current=True, include=["worker.tasks"])


@app.on_configure.connect
def _configure(sender: Celery, **_: Any) -> None:
    """Read settings when Celery first needs its configuration, not at import."""
    try:
        settings = get_settings()
    except ConfigError as exc:
        exit_on_config_error(exc)
        return
    # Before the worker's first words (its root-privileges warning comes before setup_logging).
    configure_logging(log_format=settings.log_format, level=settings.log_level)
    sender.conf.update(celery_config(settings, role="worker"))
    beat: dict[str, Any] = {
        "sweep": {"task": SWEEP_TASK, "schedule": schedule(settings.sweep_interval_seconds)},
        "purge-payloads": {"task": PURGE_PAYLOADS_TASK, "schedule": schedule(3600.0)},
    }
    if settings.reconcile_interval_seconds:
        beat["reconcile"] = {"task": RECONCILE_TASK, "schedule": schedule(float(settings.reconcile_interval_seconds))}
    sender.conf.beat_schedule = beat


@signals.setup_logging.connect
def _setup_logging(**_: Any) -> None:
    """Connecting here stops Celery from installing its own log format."""
    settings = get_settings()
    configure_logging(log_format=settings.log_format, level=settings.log_level)


@signals.celeryd_init.connect
def _json_banner(sender: str, instance: Any, conf: Any, **_: Any) -> None:
    """With JSON logs, the start-up banner is one JSON line instead of ASCII art on stdout."""
    if get_settings().log_format != "json":
        return
    instance.quiet = True
    structlog.get_logger("clerk_sync.worker").info(
        "worker_starting",
        hostname=sender,
        concurrency=getattr(instance, "concurrency", None) or conf.worker_concurrency,
        queues=sorted(queue.name for queue in conf.task_queues or ()),
    )


@signals.worker_process_init.connect
def _fresh_connections(**_: Any) -> None:
    """A prefork child must not share the parent's Postgres sockets."""
    dispose_engines()


@signals.worker_ready.connect
def _serve_metrics(**_: Any) -> None:
    """In the worker's main process only: serve metrics on METRICS_PORT (0 disables)."""
    from worker import metrics_server

    metrics_server.start(get_settings())


@signals.worker_process_shutdown.connect
def _forget_child_metrics(pid: int | None = None, **_: Any) -> None:
    """A prefork child is exiting: drop its live metric files."""
    metrics.mark_process_dead(pid or os.getpid())
