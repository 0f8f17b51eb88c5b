"""Named error classes, and the one place that decides what kind a failure is.

- ``PermanentEventError``: the event can never be applied (not JSON, no ``data.id``,
  a value Postgres can never take). Dead at once, with a readable reason.
- ``DatabaseUnavailable``: Postgres cannot be reached, so not even the failure can be
  recorded. The message stays in the queue and the attempt spends no budget.
- ``RetryNow``: a deadlock or serialization failure; retried in-process at once.
- Anything else is transient: recorded as ``failed`` and retried with backoff until
  the attempt budget is spent.
"""

from __future__ import annotations

import enum

import psycopg
from sqlalchemy.exc import DBAPIError

# SQLSTATE classes: 08 connection exception, 57P0x the server going away, 53 resources.
_UNAVAILABLE_SQLSTATES = ("08", "57P01", "57P02", "57P03", "53300")
# 22 data exception (bad value), 23 integrity violation: no retry will ever fix them.
_PERMANENT_SQLSTATE_CLASSES = ("22", "23")
_RETRY_NOW_SQLSTATES = ("40001", "40P01")  # serialization failure, deadlock detected


class PermanentEventError(Exception):
    """The event is invalid for good; it goes to `dead` without retries."""


class DatabaseUnavailable(Exception):
    """Postgres is unreachable; the queue keeps the message and retries it."""


class Failure(enum.Enum):
    PERMANENT = "permanent"
    UNAVAILABLE = "unavailable"
    RETRY_NOW = "retry_now"
    TRANSIENT = "transient"


def classify(exc: BaseException) -> Failure:
    """Sort an exception raised while applying an event into a Failure kind."""
    if isinstance(exc, PermanentEventError):
        return Failure.PERMANENT
    if isinstance(exc, DatabaseUnavailable):
        return Failure.UNAVAILABLE
    orig = exc.orig if isinstance(exc, DBAPIError) else exc
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return Failure.UNAVAILABLE
    if isinstance(orig, psycopg.Error):
        sqlstate = orig.sqlstate or ""
        if sqlstate in _RETRY_NOW_SQLSTATES:
            return Failure.RETRY_NOW
        if sqlstate[:2] in _PERMANENT_SQLSTATE_CLASSES:
            return Failure.PERMANENT
        if not sqlstate and isinstance(orig, psycopg.OperationalError | psycopg.InterfaceError):
            return Failure.UNAVAILABLE  # connect failed or connection lost mid-query
        if sqlstate.startswith(_UNAVAILABLE_SQLSTATES):
            return Failure.UNAVAILABLE
    return Failure.TRANSIENT


def describe(exc: BaseException) -> str:
    """A one-line, readable error for `last_error`; never the payload."""
    orig = exc.orig if isinstance(exc, DBAPIError) else exc
    text = str(orig).strip().splitlines()[0] if str(orig).strip() else ""
    return f"{type(orig).__name__}: {text}"[:500]
