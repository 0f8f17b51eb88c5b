"""Is the database migrated to the schema this code was written for? Asked as a process starts.

A worker or console started before the release step (``alembic upgrade head``), or beside it (as an
orchestrator starts a migration job and the new processes together), would otherwise run and fail
every event, or every page, on a missing table or column. It waits instead, saying every minute
what to run, and starts once the database is migrated; events wait safely in the queue meanwhile.
An unreachable database is no reason to wait here (an outage is waited out like any other), and a
revision this code does not know is taken as a newer one (code rolled back after a migration):
both are logged as warnings and the process starts.
"""

from __future__ import annotations

import signal
import time
from types import FrameType
from typing import Any

import psycopg
import structlog

from shared.config import Settings

# This code's migrations (migrations/versions), oldest first: the last is the schema it needs.
# Written out, not read from Alembic, which would run every migration module at each start;
# tests/test_schema_check.py checks it is Alembic's chain.
REVISIONS = ("0001", "0002", "0003", "0004", "0005", "0006", "0007", "0008", "0009")
UPGRADE_HINT = "run `alembic upgrade head` (the Procfile's release)"
# How often a process waiting for the migration looks again, and says so.
RECHECK_SECONDS = 2.0
LOG_EVERY_SECONDS = 60.0


def behind(revision: str | None) -> str | None:
    """Why code needing ``REVISIONS[-1]`` cannot run on a database at ``revision`` (None: never
    migrated); None when it can (at the head, or at a revision this code does not know)."""
    head = REVISIONS[-1]
    if revision is None:
        return f"the database has no clerk-sync schema: {UPGRADE_HINT}"
    if revision != head and revision in REVISIONS:
        return f"the database schema is at revision {revision}, this code needs {head}: {UPGRADE_HINT}"
    return None


def database_revision(conn: psycopg.Connection[Any]) -> str | None:
    """The revision Alembic recorded, or None when it recorded none (no ``alembic_version`` or no row)."""
    exists = conn.execute("SELECT to_regclass('alembic_version') IS NOT NULL").fetchone()
    if not exists or not exists[0]:
        return None
    row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    return None if row is None else str(row[0])


class _Stopped(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _stop(signum: int, _frame: FrameType | None) -> None:
    raise _Stopped(signum)


def wait_until_migrated(settings: Settings, process: str) -> None:
    """Return once the database is at this code's schema (or newer, or not answering); until then
    look again every ``RECHECK_SECONDS`` and log why, at once and then every minute.

    SIGTERM or SIGINT while it waits (the process stopped before the release ran: nothing has
    started yet) ends the process with one ``schema_wait_stopped`` line and exit code 0, instead
    of dying of the signal without a word, or a KeyboardInterrupt traceback."""
    log = structlog.get_logger("clerk_sync.schema").bind(process=process)
    previous = {signum: signal.signal(signum, _stop) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        _wait(settings, log)
    except _Stopped as stopped:
        log.info("schema_wait_stopped", signal=signal.Signals(stopped.signum).name)
        raise SystemExit(0) from None
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _wait(settings: Settings, log: Any) -> None:
    began = time.monotonic()
    logged_at: float | None = None
    while True:
        try:
            with psycopg.connect(
                settings.libpq_url,
                connect_timeout=settings.timings.database_connect_timeout,
                application_name="clerk-sync",
            ) as conn:
                revision = database_revision(conn)
        except psycopg.Error as exc:
            log.warning("schema_not_checked", error=type(exc).__name__)
            return
        reason = behind(revision)
        if reason is None:
            break
        now = time.monotonic()
        if logged_at is None or now - logged_at >= LOG_EVERY_SECONDS:
            log.warning("schema_behind", reason=reason, waited_seconds=round(now - began))
            logged_at = now
        time.sleep(RECHECK_SECONDS)
    if revision not in REVISIONS:
        log.warning("schema_revision_unknown", database_revision=revision, code_head=REVISIONS[-1])
    elif logged_at is not None:
        log.info("schema_migrated", revision=revision, waited_seconds=round(time.monotonic() - began))
