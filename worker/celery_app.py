"""The worker's Celery app. Configured lazily from settings when the worker starts.

Run it with ``celery -A worker.celery_app worker`` (see the Procfile). It never
imports Flask; the ingress has a publisher of its own (``shared.queue``).
"""

from __future__ import annotations

from typing import Any

from celery import Celery, signals
from celery.schedules import schedule

from shared.config import ConfigError, exit_on_config_error, get_settings
from shared.db import dispose_engines
from shared.logging import configure_logging
from shared.queue import PURGE_PAYLOADS_TASK, RECONCILE_TASK, SWEEP_TASK, celery_config

app = Celery("clerk_sync", set_as_current=True, include=["worker.tasks"])


@app.on_configure.connect
def _configure(sender: Celery, **_: Any) -> None:
    """Read settings when Celery first needs its configuration, not at import."""
    try:
        settings = get_settings()
    except ConfigError as exc:
        exit_on_config_error(exc)
        return
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


@signals.worker_process_init.connect
def _fresh_connections(**_: Any) -> None:
    """A prefork child must not share the parent's Postgres sockets."""
    dispose_engines()
