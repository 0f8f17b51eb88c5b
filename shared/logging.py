"""Logging configured once: structlog in front of the standard library.

granian, Celery and library records pass through the same ProcessorFormatter, so
every line has one shape: one JSON object in production, colours on a terminal.
Per-event context (``svix_id``, ``event_type``, ``task_id``) is bound with
structlog's contextvars and cleared after each event.
"""

from __future__ import annotations

import logging
import logging.config
from typing import Any

import structlog

_configured = False


def _shared_processors() -> list[structlog.types.Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.stdlib.ExtraAdder(),
    ]


def processor_formatter(log_format: str = "json") -> structlog.stdlib.ProcessorFormatter:
    """The one formatter: structlog's events and every library's records rendered alike."""
    renderer = _renderer(log_format)
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_shared_processors(),
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
        ],
    )


def logging_dict(*, log_format: str = "json", level: str = "INFO", stream: str = "ext://sys.stdout") -> dict[str, Any]:
    """The stdlib logging config, plain data (JSON too): gunicorn and granian take it as well."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"structlog": {"()": f"{__name__}.processor_formatter", "log_format": log_format}},
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "formatter": "structlog",
                "stream": stream,
            }
        },
        "filters": {"routine_beat_sends": {"()": f"{__name__}.RoutineBeatSends"}},
        "root": {"handlers": ["default"], "level": level},
        "loggers": {
            # gunicorn installs its own handlers; let its records reach ours instead.
            "gunicorn.error": {"handlers": [], "propagate": True, "level": level},
            "gunicorn.access": {"handlers": [], "propagate": True, "level": "WARNING"},
            # granian (the web server) names its own logger so; its access log stays off.
            "_granian": {"handlers": [], "propagate": True, "level": level},
            "granian.access": {"handlers": [], "propagate": True, "level": "WARNING"},
            "celery": {"level": level},
            "celery.beat": {"level": level, "filters": ["routine_beat_sends"]},
            # Celery's per-task lines carry no svix_id; ours say the same with it.
            "celery.app.trace": {"level": "WARNING"},
            "celery.worker.strategy": {"level": "WARNING"},
            # At DEBUG it prints each task's raw arguments: the event body, PII included.
            "celery.pool": {"level": "INFO"},
            "kombu": {"level": "WARNING"},
            # billiard (Celery's pool) logs here with propagation off, e.g. "Process ... exited with
            # 'signal 9 (SIGKILL)'": without a handler of its own, Python printed that as bare text.
            # Never DEBUG: some of its debug lines print a job's arguments (the event body, PII).
            "multiprocessing": {"handlers": ["default"], "propagate": False, "level": _at_least_info(level)},
            "alembic": {"level": level},
        },
    }


def _at_least_info(level: str) -> str:
    return "INFO" if logging.getLevelName(level.upper()) < logging.INFO else level


class RoutineBeatSends(logging.Filter):
    """Beat logs every send at INFO, the sweep's every few seconds: those lines show at DEBUG only."""

    def filter(self, record: logging.LogRecord) -> bool:
        if str(record.msg).startswith("Scheduler: Sending due task"):
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


class _NamedWriteLogger(structlog.WriteLogger):
    """structlog's own line writer, named like a stdlib logger (``add_logger_name`` reads ``.name``)."""

    def __init__(self, name: str, file: Any) -> None:
        super().__init__(file)
        self.name = name


def _renderer(log_format: str) -> structlog.types.Processor:
    return structlog.dev.ConsoleRenderer() if log_format == "console" else structlog.processors.JSONRenderer()


def configure_logging(
    *,
    log_format: str = "json",
    level: str = "INFO",
    force: bool = False,
    stream: str = "ext://sys.stdout",
    direct: bool = False,
) -> None:
    """Route structlog and stdlib logging through one formatter; idempotent.

    ``direct`` (the ingress, which logs a line per accepted event): structlog renders its own
    events with the same processors and writes each line itself, skipping the two stdlib
    records and the formatter's copy that cost a request about 70 µs; other libraries' records
    still take the stdlib route. The lines look the same either way.
    """
    global _configured
    if _configured and not force:
        return
    logging.config.dictConfig(logging_dict(log_format=log_format, level=level, stream=stream))
    # The logging HOWTO's optimisations: no record field that these skip is ever rendered,
    # and each saves work on every line (the ingress logs one per accepted event).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    # Python warnings (e.g. Celery's "running as root") become log records, not raw stderr text.
    logging.captureWarnings(True)
    if direct:
        file = logging.config.BaseConfigurator({}).resolve(stream.removeprefix("ext://"))
        structlog.configure(
            processors=[*_shared_processors(), structlog.processors.format_exc_info, _renderer(log_format)],
            logger_factory=lambda name="", *_: _NamedWriteLogger(name, file),
            wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
            cache_logger_on_first_use=True,
        )
    else:
        structlog.configure(
            processors=[
                *_shared_processors()[:1],
                structlog.stdlib.filter_by_level,
                *_shared_processors()[1:],
                structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
            ],
            logger_factory=structlog.stdlib.LoggerFactory(),
            wrapper_class=structlog.stdlib.BoundLogger,
            cache_logger_on_first_use=True,
        )
    _configured = True


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.get_logger(name)
