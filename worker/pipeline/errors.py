"""Named error classes, and the one place that decides what kind a failure is.

- ``InvalidEvent`` (``shared.events``) and ``PermanentEventError``: the event can never be
  applied (not a valid event, a value Postgres can never take). Dead at once.
- ``DatabaseUnavailable``: Postgres cannot be reached, so not even the failure can be
  recorded. The message stays in the queue and the attempt spends no budget.
- ``RETRY_NOW``: a deadlock or serialization failure; retried in-process at once, and
  never counted against the event's budget.
- ``HookFailed``: an application hook raised (``worker.pipeline.hooks``). Transient, whatever
  it raised, unless it is the database going away or a deadlock, which keep their kind.
- Anything else is transient: recorded as ``failed`` and retried with backoff until
  the attempt budget is spent.

``describe`` turns any of them into the one line stored in ``last_error`` and logged: the
class, the SQLSTATE and the constraint, column or table a database error names. Never a
message a database or library builds from values (an email in a DETAIL line), never a payload.
"""

from __future__ import annotations

import enum
import traceback
from pathlib import Path

import psycopg
from sqlalchemy.exc import DBAPIError

from shared.events import InvalidEvent

# SQLSTATE classes: 08 connection exception, 57P0x the server going away, 53 resources.
_UNAVAILABLE_SQLSTATES = ("08", "57P01", "57P02", "57P03", "53300")
# 22 data exception (bad value), 23 integrity violation, 54 program limit exceeded (a value too
# large for an index entry, nesting too deep): no retry will ever fix them.
_PERMANENT_SQLSTATE_CLASSES = ("22", "23", "54")
_RETRY_NOW_SQLSTATES = ("40001", "40P01")  # serialization failure, deadlock detected
HOOK_FAILED = "hook_failed"


class PermanentEventError(Exception):
    """The event is invalid for good; it goes to `dead` without retries. Its message holds no values."""


class DatabaseUnavailable(Exception):
    """Postgres is unreachable; the queue keeps the message and retries it."""


class HookFailed(Exception):
    """An application hook raised: its event fails like any other error, with the hook named."""

    def __init__(self, hook: str, cause: BaseException) -> None:
        super().__init__(hook)
        self.hook = hook
        self.cause = cause


class Failure(enum.Enum):
    PERMANENT = "permanent"
    UNAVAILABLE = "unavailable"
    RETRY_NOW = "retry_now"
    TRANSIENT = "transient"


def classify(exc: BaseException) -> Failure:
    """Sort an exception raised while applying an event into a Failure kind."""
    if isinstance(exc, PermanentEventError | InvalidEvent):
        return Failure.PERMANENT
    if isinstance(exc, DatabaseUnavailable):
        return Failure.UNAVAILABLE
    if isinstance(exc, HookFailed):
        kind = classify(exc.cause)
        return kind if kind in (Failure.UNAVAILABLE, Failure.RETRY_NOW) else Failure.TRANSIENT
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
    """One line for `last_error` and the logs: what failed and where, never a value."""
    if isinstance(exc, PermanentEventError | InvalidEvent | DatabaseUnavailable):
        return str(exc)[:500]
    if isinstance(exc, HookFailed):
        # The hook's name and what it raised: a database error as below, anything else by its class only.
        cause = describe(exc.cause) if _database_error(exc.cause) else type(exc.cause).__name__
        return f"{HOOK_FAILED}: {exc.hook}: {cause}"[:500]
    orig = exc.orig if isinstance(exc, DBAPIError) else exc
    if isinstance(orig, psycopg.Error):
        parts = [type(orig).__name__]
        if orig.sqlstate:
            parts.append(f"({orig.sqlstate})")
        diag = orig.diag
        for label, name in (
            ("constraint", diag.constraint_name),
            ("table", diag.table_name),
            ("column", diag.column_name),
        ):
            if name:
                parts.append(f"{label} {name}")
        return " ".join(parts)
    # Anything else is a bug: where it happened helps, its message (built from values) might not.
    frames = traceback.extract_tb(orig.__traceback__) if orig is not None else []
    where = f" at {Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""
    return f"{type(orig).__name__}{where}"


def _database_error(exc: BaseException) -> bool:
    return isinstance(exc.orig if isinstance(exc, DBAPIError) else exc, psycopg.Error)
