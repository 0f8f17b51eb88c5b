"""The last hour, minute by minute: outcomes and end-to-end lag, for the console's overview.

Read from the ledger alone (no metrics server needed): rows changed in the window are found
through the ``updated_at`` index, then
- ``processed``, ``ignored``, ``dead``: events that reached that status in the minute
  (``processed_at``, which a dead event also gets);
- ``failed``: attempts that failed in the minute (each ``errors`` entry), the last attempt of
  an event that went dead included;
- lag: ``processed_at`` minus the svix-timestamp of the delivery, for processed events, the
  same measure as the ``clerk_sync_event_lag_seconds`` histogram (median and maximum).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.orm import Session

OUTCOMES = ("processed", "ignored", "failed", "dead")

_FINALS = text(
    """
    SELECT date_trunc('minute', processed_at) AS minute,
           count(*) FILTER (WHERE status = 'processed') AS processed,
           count(*) FILTER (WHERE status = 'ignored') AS ignored,
           count(*) FILTER (WHERE status = 'dead') AS dead,
           percentile_cont(0.5) WITHIN GROUP (ORDER BY lag) AS lag_p50,
           max(lag) AS lag_max
    FROM (
        SELECT processed_at, status,
               CASE WHEN status = 'processed' AND svix_timestamp IS NOT NULL
                    THEN greatest(0, extract(epoch FROM processed_at) - svix_timestamp) END AS lag
        FROM webhook_events
        -- finish() sets updated_at to its transaction's start, a moment before processed_at.
        WHERE updated_at >= :start - interval '1 minute'
          AND processed_at >= :start
          AND status IN ('processed', 'ignored', 'dead')
    ) AS finals
    GROUP BY 1
    """
)
_FAILURES = text(
    """
    SELECT date_trunc('minute', (entry->>'at')::timestamptz) AS minute, count(*) AS failed
    FROM webhook_events, jsonb_array_elements(errors) AS entry
    WHERE updated_at >= :start
      AND jsonb_array_length(errors) > 0
      AND entry ? 'error'
      AND entry->>'at' ~ '^\\d{4}-\\d\\d-\\d\\dT'
      AND (entry->>'at')::timestamptz >= :start
    GROUP BY 1
    """
)


@dataclass(frozen=True)
class Minute:
    start: dt.datetime
    processed: int = 0
    ignored: int = 0
    failed: int = 0
    dead: int = 0
    lag_p50: float | None = None
    lag_max: float | None = None


def last_hour(session: Session, *, minutes: int = 60) -> list[Minute]:
    """One ``Minute`` per minute of the window, oldest first, the current (partial) minute last."""
    now = session.scalar(text("SELECT date_trunc('minute', now())"))
    assert isinstance(now, dt.datetime)
    start = now - dt.timedelta(minutes=minutes - 1)
    rows: dict[dt.datetime, dict[str, object]] = {}
    for row in session.execute(_FINALS, {"start": start}).mappings():
        rows.setdefault(row["minute"], {}).update(
            processed=row["processed"],
            ignored=row["ignored"],
            dead=row["dead"],
            lag_p50=None if row["lag_p50"] is None else float(row["lag_p50"]),
            lag_max=None if row["lag_max"] is None else float(row["lag_max"]),
        )
    for row in session.execute(_FAILURES, {"start": start}).mappings():
        rows.setdefault(row["minute"], {})["failed"] = row["failed"]
    moments = [start + dt.timedelta(minutes=n) for n in range(minutes)]
    return [Minute(start=moment, **rows.get(moment, {})) for moment in moments]  # type: ignore[arg-type]
