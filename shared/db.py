"""Engine and session factory, built from settings on first use, never at import."""

from __future__ import annotations

import time
from functools import partial
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import Session, sessionmaker

from shared.config import Settings, get_settings

_factories: dict[Settings, sessionmaker[Session]] = {}

# A connection back in the pool for longer than this is pinged before it is handed out again.
# One used a moment ago is not: a ping on every checkout was one more round trip per batch, and
# a connection that died meanwhile fails its statement, is invalidated and replaced like any.
PING_AFTER_IDLE_SECONDS = 1.0

# Connections a process keeps open between uses (as many more may be opened at a peak).
POOL_SIZE = 5


def make_engine(settings: Settings, **overrides: object) -> Engine:
    """A pooled engine with short timeouts, so an outage fails fast instead of hanging."""
    options: dict[str, object] = {
        # Bound parameters (emails, names) never reach an exception message or a log line.
        "hide_parameters": True,
        "pool_size": POOL_SIZE,
        "max_overflow": POOL_SIZE,
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
    engine = create_engine(settings.sqlalchemy_url, **options)
    event.listen(engine, "checkin", _note_checkin)
    event.listen(engine, "checkout", partial(_ping_if_idle, engine.dialect))
    return engine


def _note_checkin(dbapi_connection: Any, record: Any) -> None:
    record.info["checked_in"] = time.monotonic()


def _ping_if_idle(dialect: Dialect, dbapi_connection: Any, record: Any, proxy: Any) -> None:
    """SQLAlchemy's pre-ping, only for a connection that sat idle (the pool retries on DisconnectionError)."""
    idle_since = record.info.get("checked_in")
    if idle_since is None or time.monotonic() - idle_since < PING_AFTER_IDLE_SECONDS:
        return
    try:
        dialect.do_ping(dbapi_connection)
    except Exception as exc:
        raise DisconnectionError(str(type(exc).__name__)) from exc


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
