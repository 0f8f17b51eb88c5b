"""Alembic environment: careful migrations for a table the application joins against.

Each migration runs in its own transaction with a lock timeout (never queue behind a
long query and block every reader), under an advisory lock so two `release` steps
racing each other run the migrations once.
"""

from __future__ import annotations

import contextlib
import sys

import structlog
from alembic import context
from psycopg.errors import Diagnostic
from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import OperationalError

from shared.config import ConfigError, exit_on_config_error, get_settings
from shared.db import make_engine
from shared.logging import configure_logging
from shared.models import Base
from shared.terminal import driver_reason

MIGRATION_LOCK_ID = 0x636C65726B  # "clerk"

log = structlog.get_logger("clerk_sync.migrations")
# What starts the NOTICEs a migration raises for the operator (``_log_own_notice``).
NOTICE_PREFIX = "clerk-sync: "

target_metadata = Base.metadata


def run_migrations_offline() -> None:
    context.configure(
        url=get_settings().sqlalchemy_url,
        target_metadata=target_metadata,
        literal_binds=True,
        transaction_per_migration=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    settings = get_settings()
    configure_logging(log_format=settings.log_format, level=settings.log_level)
    connectable = context.config.attributes.get("connection") or make_engine(settings, pool_size=1)
    if hasattr(connectable, "connect"):
        with _connect(connectable) as connection:
            _migrate_or_say_why(connection)
    else:
        _migrate(connectable)


def _connect(engine: Engine) -> Connection:
    """A connection, or one line and exit 1 when the database does not answer: a deploy's release log
    says what is wrong (the driver's first line, which names host and port, never the password), not a
    traceback of a hundred lines."""
    try:
        return engine.connect()
    except OperationalError as exc:
        print(
            f"clerk-sync: database unavailable: {driver_reason(exc)}; nothing was migrated", file=sys.stderr, flush=True
        )
        raise SystemExit(1) from None


def _migrate_or_say_why(connection: Connection) -> None:
    """``_migrate``, or one line and exit 1 when the database stops it: the connection lost, or a lock
    or statement timeout (a long transaction of the application's holds a table). Each migration is
    its own transaction: those before the one stopped stay applied, and release can simply run again."""
    try:
        _migrate(connection)
    except OperationalError as exc:
        print(
            f"clerk-sync: migration stopped: {driver_reason(exc)}; the migrations before it are applied,"
            " run release again",
            file=sys.stderr,
            flush=True,
        )
        raise SystemExit(1) from None


def _log_own_notice(notice: Diagnostic) -> None:
    """What a migration tells the operator (0008: a server without lz4 keeps pglz) is a NOTICE
    starting ``NOTICE_PREFIX``, which psycopg would drop: a log line each. Other notices (an
    application's trigger, say) are not logged: they may quote a row."""
    message = notice.message_primary or ""
    if message.startswith(NOTICE_PREFIX):
        log.info("migration_notice", message=message.removeprefix(NOTICE_PREFIX))


def _migrate(connection) -> None:  # type: ignore[no-untyped-def]
    connection.connection.driver_connection.add_notice_handler(_log_own_notice)
    connection.execute(text("SET lock_timeout = '5s'"))
    connection.execute(text("SET statement_timeout = '5min'"))
    connection.execute(text("SELECT pg_advisory_lock(:id)"), {"id": MIGRATION_LOCK_ID})
    connection.commit()
    try:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            transaction_per_migration=True,
        )
        with context.begin_transaction():
            context.run_migrations()
    finally:
        # The lock ends with the session anyway: a connection lost mid-migration has nothing to unlock.
        with contextlib.suppress(OperationalError):
            connection.execute(text("SELECT pg_advisory_unlock(:id)"), {"id": MIGRATION_LOCK_ID})
            connection.commit()


try:
    if context.is_offline_mode():
        run_migrations_offline()
    else:
        run_migrations_online()
except ConfigError as exc:
    exit_on_config_error(exc)
