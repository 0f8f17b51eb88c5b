"""Engine and session factory, built from settings on first use, never at import."""

from __future__ import annotations

from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import Session, sessionmaker

from shared.config import Settings, get_settings

_factories: dict[Settings, sessionmaker[Session]] = {}


def make_engine(settings: Settings, **overrides: object) -> Engine:
    """A pooled engine with short timeouts, so an outage fails fast instead of hanging."""
    options: dict[str, object] = {
        # Bound parameters (emails, names) never reach an exception message or a log line.
        "hide_parameters": True,
        "pool_pre_ping": True,
        "pool_size": 5,
        "max_overflow": 5,
        "connect_args": {
            # An unreachable Postgres fails a probe within this (shared.timings bounds the wait on it).
            "connect_timeout": settings.timings.database_connect_timeout,
            "application_name": "clerk-sync",
            # A blocked lock or a runaway statement fails the attempt (transient) instead of hanging it.
            "options": (
                f"-c lock_timeout={round(settings.db_lock_timeout_seconds * 1000)}"
                f" -c statement_timeout={round(settings.db_statement_timeout_seconds * 1000)}"
            ),
        },
    }
    options.update(overrides)
    return create_engine(settings.sqlalchemy_url, **options)


def session_factory(settings: Settings | None = None) -> sessionmaker[Session]:
    """The process-wide sessionmaker for these settings."""
    settings = settings or get_settings()
    if settings not in _factories:
        _factories[settings] = sessionmaker(bind=make_engine(settings), expire_on_commit=False)
    return _factories[settings]


def dispose_engines() -> None:
    """Forget pooled connections inherited across fork (Celery prefork children)."""
    for factory in _factories.values():
        engine = factory.kw["bind"]
        engine.dispose(close=False)
