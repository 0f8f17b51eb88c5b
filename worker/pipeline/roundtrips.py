"""Several statements in one round trip to Postgres: psycopg's pipeline mode under a session.

A batch used to wait for Postgres about ten times in a row (a ping, BEGIN, the claim, the pause
flag, the advisory locks, the row locks table by table, the writes, the finish, COMMIT). On a
machine whose cores are busy every wait costs a context switch in the worker and one in Postgres,
and a lone event spent ~20 ms waiting (docs/performance.md). ``Trips.queue`` sends a statement
without waiting for it; ``Trips.send`` waits once for everything queued; ``transaction`` sends
BEGIN with the first round trip and COMMIT with the last, so a batch is two round trips. The
transaction plans its prepared statements generically (``_GENERIC_PLANS``): planning each anew
for every batch cost more than running it.

Statements are the same ``text()`` clauses the session would run, compiled once for the
session's dialect. Errors come out as ``session.execute`` raises them (SQLAlchemy's
``DBAPIError`` subclasses, parameters hidden), and a broken connection is invalidated, so
``errors.classify`` and the pool treat them as before.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from functools import cache
from typing import Any, cast

import psycopg
from psycopg import pq
from psycopg.rows import namedtuple_row
from sqlalchemy import text
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import TextClause


@cache
def _compiled(clause: TextClause, dialect: Dialect) -> str:
    """The clause as psycopg takes it, every parameter sent in binary: an array of JSON bodies as
    text would be quoted and escaped by psycopg and parsed back by Postgres, byte by byte."""
    return _PLACEHOLDER.sub(r"%(\1)b", str(clause.compile(dialect=dialect)))


_PLACEHOLDER = re.compile(r"%\((\w+)\)s")
# The batch's statements are the same few, prepared by psycopg after a few runs; their parameters
# are arrays whose contents do not change the best plan (index lookups by clerk_id). Postgres would
# still plan them anew for every batch (a custom plan: up to 0.2 ms each, more than running them).
# tests/test_generic_plans.py checks that every one of them still reads by index at scale.
_GENERIC_PLANS = b"SET LOCAL plan_cache_mode = force_generic_plan"
# Back to the server's own setting, for statements that are not ours (an application's hooks).
DEFAULT_PLANS = text("RESET plan_cache_mode")


def idle_timeout(seconds: float) -> str:
    """The transaction ends, and its locks go, if its client stays silent this long between two
    statements: a worker whose host was lost mid-transaction (shared.timings)."""
    return f"SET LOCAL idle_in_transaction_session_timeout = {max(1, round(seconds * 1000))}"


class Trips:
    """Statements queued on the session's connection; their rows are there after ``send``."""

    def __init__(self, session: Session, connection: Connection, driver: psycopg.Connection[Any]) -> None:
        self.session = session  # for what runs ``suspended``
        self._connection = connection
        self._driver = driver
        self._mode: AbstractContextManager[psycopg.Pipeline] | None = None
        self._pipeline: psycopg.Pipeline | None = None

    def queue(self, clause: TextClause, params: dict[str, Any] | None = None) -> psycopg.Cursor[Any]:
        """Send ``clause`` without waiting; its cursor's rows can be read after ``send``."""
        cursor = self._driver.cursor(row_factory=namedtuple_row)
        with translated(self._connection, self._driver):
            cursor.execute(_compiled(clause, self._connection.dialect), params or {})
        return cursor

    def command(self, sql: bytes) -> None:
        with translated(self._connection, self._driver):
            self._driver.execute(sql)

    def send(self) -> None:
        """One round trip: wait for everything queued so far."""
        assert self._pipeline is not None
        with translated(self._connection, self._driver):
            self._pipeline.sync()

    @contextmanager
    def suspended(self) -> Iterator[None]:
        """Out of pipeline mode for a while (everything queued is sent first): the session's own
        statements, an application's hook, run in the same transaction as usual."""
        self._leave()
        yield  # what the block raises ends the transaction: no pipeline to go back to
        self._enter()

    def _enter(self) -> None:
        with translated(self._connection, self._driver):
            self._mode = self._driver.pipeline()
            self._pipeline = self._mode.__enter__()

    def _leave(self, exc: BaseException | None = None) -> None:
        """Leave pipeline mode: a Sync, and the wait for everything still queued."""
        mode, self._mode, self._pipeline = self._mode, None, None
        if mode is not None:
            with translated(self._connection, self._driver):
                mode.__exit__(type(exc) if exc else None, exc, exc.__traceback__ if exc else None)


@contextmanager
def translated(connection: Connection, driver: psycopg.Connection[Any]) -> Iterator[None]:
    """psycopg's errors as SQLAlchemy raises them; a lost connection leaves the pool."""
    try:
        yield
    except psycopg.Error as exc:
        lost = driver.broken or connection.dialect.is_disconnect(cast(Any, exc), connection.connection, None)
        if lost and not connection.invalidated:
            # As SQLAlchemy does for a disconnect it meets itself: every pooled connection older
            # than this one is replaced at its next checkout (they most likely died with it).
            connection.engine.pool._invalidate(connection.connection, exc)
            connection.invalidate(exc)
        raise DBAPIError.instance(
            None,
            None,
            exc,
            psycopg.Error,
            hide_parameters=True,
            connection_invalidated=lost,
            dialect=connection.dialect,
        ) from exc


def _driver(connection: Connection) -> psycopg.Connection[Any]:
    driver = connection.connection.driver_connection
    assert isinstance(driver, psycopg.Connection)
    return driver


@contextmanager
def pipelined(session: Session) -> Iterator[Trips]:
    """Statements in the session's current transaction, sent together; the rest on leaving."""
    connection = session.connection()
    trips = Trips(session, connection, _driver(connection))
    trips._enter()
    try:
        yield trips
    except BaseException as exc:
        trips._leave(exc)
        raise
    trips._leave()


@contextmanager
def transaction(session: Session, *, idle_timeout_seconds: float) -> Iterator[Trips]:
    """One transaction of its own, in pipeline mode: BEGIN goes out with the first round trip and
    COMMIT with the last one, when the block ends; an error rolls it back and propagates. Postgres
    ends it if the client stays silent ``idle_timeout_seconds`` between two round trips.

    The session must not have begun a transaction on its connection yet (a fresh session).
    """
    connection = session.connection()
    driver = _driver(connection)
    if driver.info.transaction_status != pq.TransactionStatus.IDLE:
        raise RuntimeError("roundtrips.transaction needs a connection outside any transaction")
    # Without autocommit psycopg would send its own BEGIN and wait for it before the first statement.
    driver.autocommit = True
    try:
        with pipelined(session) as trips:
            trips.command(b"BEGIN")
            trips.command(_GENERIC_PLANS)
            trips.command(idle_timeout(idle_timeout_seconds).encode())
            yield trips
            trips.command(b"COMMIT")
            # Leaving the pipeline sends the COMMIT and waits for it.
    except BaseException:
        if not driver.broken:
            with suppress(psycopg.Error):
                driver.rollback()
        raise
    finally:
        try:
            driver.autocommit = False
        except psycopg.Error as exc:  # still in a transaction, or broken: never hand it out again
            if not connection.invalidated:
                connection.invalidate(exc)
