"""The worker's Celery app. Configured lazily from settings when the worker starts.

Run it with ``celery -A worker.celery_app worker`` (see the Procfile). Every Celery
setting lives here (``celery_config``). It never imports Flask; nothing publishes through
Celery: events go on the queue through ``shared.publish``.
"""

from __future__ import annotations

import os
from typing import Any

import structlog
from celery import Celery, signals
from celery.schedules import schedule
from kombu import Queue

from shared import metrics
from shared.config import ConfigError, Settings, exit_on_config_error, get_settings
from shared.db import dispose_engines
from shared.logging import configure_logging
from shared.publish import PROCESS_EVENT_TASK, PURGE_PAYLOADS_TASK, RECONCILE_TASK, SWEEP_TASK, control_queue
from worker import broker, stopping

# Before any broker connection: a lost connection must not stop the worker (worker/broker.py).
broker.install()


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery settings of the worker, beat and the no-op benchmark worker.

    Every timing comes from ``settings.timings`` (``shared.timings``: the recovery bound's
    arithmetic). Each pool process reserves one message; the task takes the rest of its batch
    from the queue itself (``worker.pipeline.taking``).
    """
    timings = settings.timings
    transport: dict[str, Any] = {
        "visibility_timeout": timings.visibility_timeout,
        "socket_connect_timeout": 5,
        "socket_timeout": 10,
        "socket_keepalive": True,
        "health_check_interval": 25,
        # Each worker looks for messages of dead workers this often (kombu: every 100 s).
        "unacked_restore_interval": timings.restore_interval,
        "unacked_restore_throttle": 1,
        "unacked_mutex_expire": timings.unacked_mutex_expire,
    }
    # The cores this process may run on (what nproc counts), not Celery's default, every core of the host.
    concurrency = settings.worker_concurrency or len(os.sched_getaffinity(0))
    return {
        # WORKER_CONCURRENCY, read here: a command-line flag would reach Celery unvalidated.
        "worker_concurrency": concurrency,
        "broker_url": settings.redis_url,
        "broker_transport_options": transport,
        # Celery reads the visibility timeout here too when a result backend is Redis.
        "result_backend_transport_options": {"visibility_timeout": timings.visibility_timeout},
        "broker_connection_timeout": 5,
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,  # forever
        "broker_pool_limit": 10,
        "task_default_queue": settings.queue_name,
        "task_create_missing_queues": True,
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_ignore_result": True,
        "result_backend": None,
        # Delivery guarantees: ack only after the task finished; a worker killed
        # mid-task leaves its messages to be redelivered; one message reserved per process.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure_or_timeout": True,
        "worker_prefetch_multiplier": 1,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "worker_enable_soft_shutdown_on_idle": True,
        "worker_soft_shutdown_timeout": 10.0,
        "worker_hijack_root_logger": False,
        "worker_redirect_stdouts": False,
        "task_time_limit": timings.task_time_limit,
        "task_soft_time_limit": timings.task_soft_time_limit,
        "enable_utc": True,
        "timezone": "UTC",
        # Periodic jobs get a queue of their own so a backlog never delays a sweep.
        "task_queues": (Queue(settings.queue_name), Queue(control_queue(settings.queue_name))),
        "task_routes": {
            PROCESS_EVENT_TASK: {"queue": settings.queue_name},
            SWEEP_TASK: {"queue": control_queue(settings.queue_name)},
            PURGE_PAYLOADS_TASK: {"queue": control_queue(settings.queue_name)},
            RECONCILE_TASK: {"queue": control_queue(settings.queue_name)},
        },
    }


# Before the prefork children exist and before prometheus_client is imported: each child
# writes its samples here and the main process's scrape sums them (worker/metrics_server.py).
metrics.ensure_multiproc_dir()

app = Celery(
    "clerk_sync",
    set_as_current=True,
    include=["worker.pipeline.tasks", "worker.recovery.tasks", "worker.clerk.tasks"],
)


def _configuration() -> dict[str, Any]:
    """Read settings when Celery first needs its configuration, not at import.

    Registered with ``app.add_defaults``: Celery calls it once, while it loads its
    configuration, so nothing here may read ``app.conf`` (Celery 5.7 recurses on that).
    """
    try:
        settings = get_settings()
    except ConfigError as exc:
        exit_on_config_error(exc)
    # Before the worker's first words (its root-privileges warning comes before setup_logging).
    configure_logging(log_format=settings.log_format, level=settings.log_level)
    beat: dict[str, Any] = {
        "sweep": {"task": SWEEP_TASK, "schedule": schedule(settings.timings.sweep_interval)},
        "purge-payloads": {"task": PURGE_PAYLOADS_TASK, "schedule": schedule(3600.0)},
    }
    if settings.reconcile_interval_seconds:
        beat["reconcile"] = {"task": RECONCILE_TASK, "schedule": schedule(float(settings.reconcile_interval_seconds))}
    return {**celery_config(settings), "beat_schedule": beat}


app.add_defaults(_configuration)


@signals.setup_logging.connect
def _setup_logging(**_: Any) -> None:
    """Connecting here stops Celery from installing its own log format."""
    settings = get_settings()
    configure_logging(log_format=settings.log_format, level=settings.log_level)


@signals.celeryd_init.connect
def _start_and_stop_lines(sender: str, instance: Any, conf: Any, **_: Any) -> None:
    """With JSON logs, the start-up banner is one JSON line instead of ASCII art on stdout; in
    either format, the shutdown is said as a log line (``_quiet_shutdown_handlers``)."""
    _quiet_shutdown_handlers(instance)
    if get_settings().log_format != "json":
        return
    instance.quiet = True
    structlog.get_logger("clerk_sync.worker").info(
        "worker_starting",
        hostname=sender,
        concurrency=getattr(instance, "concurrency", None) or conf.worker_concurrency,
        queues=sorted(queue.name for queue in conf.task_queues or ()),
    )


def _quiet_shutdown_handlers(instance: Any) -> None:
    """Celery's SIGTERM and SIGQUIT handlers print "worker: Warm shutdown (MainProcess)" raw on
    stdout; installed again without it, and ``_log_shutdown`` says it as one JSON line."""
    from celery.apps import worker as celery_worker

    install_platform_tweaks = instance.install_platform_tweaks

    def install_quietly(worker: Any) -> None:
        install_platform_tweaks(worker)
        celery_worker.install_worker_term_handler(worker, verbose=False)
        celery_worker.install_worker_term_hard_handler(worker, verbose=False)

    instance.install_platform_tweaks = install_quietly


# The worker's main process, known before the pool forks (``_remember_main_process``).
_main_pid: dict[str, int] = {}


@signals.worker_init.connect
def _remember_main_process(**_: Any) -> None:
    _main_pid["pid"] = os.getpid()


@signals.worker_shutting_down.connect
def _log_shutdown(sig: str, how: str, exitcode: int, **_: Any) -> None:
    """What Celery would have printed on stdout (``_quiet_shutdown_handlers``), as a log line.

    Said by the main process only: a pool process forked a moment before a SIGTERM to the whole
    group (as honcho and systemd send) runs Celery's handler too, still named MainProcess.
    """
    if _main_pid.get("pid", os.getpid()) == os.getpid():
        structlog.get_logger("clerk_sync.worker").info("worker_shutting_down", how=how.lower(), signal=sig)


@signals.worker_init.connect
def _shared_backoff(**_: Any) -> None:
    """In the main process, before the pool forks: the database backoff its processes share."""
    from worker.pipeline import outage

    outage.install(cap_seconds=get_settings().timings.database_wait)


@signals.worker_init.connect
def _load_hooks(**_: Any) -> None:
    """In the main process, before the pool forks: the application's hooks, or one line and exit."""
    from worker.pipeline import hooks

    try:
        table = hooks.installed(get_settings())
    except ConfigError as exc:
        exit_on_config_error(exc)
    if table:
        names = sorted({registered.name for listed in table.values() for registered in listed})
        structlog.get_logger("clerk_sync.worker").info("hooks_loaded", hooks=names, event_types=sorted(table))


@signals.worker_init.connect
def _wait_until_migrated(**_: Any) -> None:
    """In the main process, before it consumes (after every check that can refuse to start): a
    database behind this code's schema is waited for."""
    from shared.schema import wait_until_migrated

    wait_until_migrated(get_settings(), "worker")


@signals.worker_process_init.connect
def _fresh_connections(**_: Any) -> None:
    """A prefork child must not share the parent's Postgres sockets."""
    dispose_engines()


# A SIGTERM sent to the whole worker (honcho, systemd, Heroku) lets each pool process finish its event
# batch; one running beat's sweep, purge or reconcile stops at once (worker/stopping.py).
signals.task_prerun.connect(stopping.task_starting)
signals.task_postrun.connect(stopping.task_ended)


@signals.worker_ready.connect
def _serve_metrics(**_: Any) -> None:
    """In the worker's main process only: serve metrics on METRICS_PORT (0 disables)."""
    from worker import metrics_server

    metrics_server.start(get_settings())


@signals.worker_process_shutdown.connect
def _forget_child_metrics(pid: int | None = None, **_: Any) -> None:
    """A prefork child is exiting: drop its live metric files."""
    metrics.mark_process_dead(pid or os.getpid())
