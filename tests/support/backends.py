"""This database's Postgres backends as pg_stat_activity shows them: what a test waits for before
it kills, freezes or cuts the process behind one."""

from __future__ import annotations

import psycopg


def _pids(database_url: str, condition: str) -> list[int]:
    # A connection of its own, outside any transaction: pg_stat_activity is a snapshot per transaction.
    with psycopg.connect(database_url, autocommit=True) as observer:
        rows = observer.execute(
            f"SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND {condition}"  # noqa: S608 - the two constants below
        ).fetchall()
    return [pid for (pid,) in rows]


def waiting_on_a_lock(database_url: str) -> list[int]:
    """The backends waiting for a lock (a batch, a migration, blocked by one the test holds)."""
    return _pids(database_url, "wait_event_type = 'Lock'")


def idle_in_a_transaction(database_url: str) -> list[int]:
    """clerk-sync's backends whose transaction waits for their client (a frozen or lost worker)."""
    return _pids(database_url, "application_name = 'clerk-sync' AND state = 'idle in transaction'")
