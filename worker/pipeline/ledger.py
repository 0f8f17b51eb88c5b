"""The `webhook_events` ledger: one row per svix-id, moved through its statuses.

``claim`` inserts a batch's rows, or finds and locks the existing ones, in one statement
and in svix-id order, so two deliveries of one svix-id (a Svix retry racing a
redelivery) serialise and the second sees the first's final status. An event that needs
no applying (a type that is not synced, a body that is not a valid event) is inserted
already final. ``finish`` records the batch's outcomes in one statement.

One write per new event: in the apply transaction a new event's row is inserted as it will
most likely end (``processed``, its attempt counted), and ``finish`` touches only the rows
that end otherwise (ignored, dead, held by a pause) or existed before. Nobody else can see
the row before the commit, so the guess is never observed; the update it saves was never a
HOT one (``status`` and ``updated_at`` are indexed) and cost a new row version and an entry
in each of the ledger's eight indexes (docs/performance.md).

A row keeps the body first received under its svix-id: a redelivery whose body differs
(not merely re-serialised: the stored JSON is compared as JSON) is recorded in
``conflicts`` and never applied.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from shared.events import Event, InvalidEvent, Unsynced, parse
from shared.models import ControlFlag, EventStatus, WebhookEvent
from worker.pipeline.roundtrips import Trips

PAUSED_FLAG = "paused"
# The longest retry delay: doubling stops here (RETRY_MAX_ATTEMPTS may be in the hundreds).
MAX_RETRY_DELAY = dt.timedelta(days=7)


@dataclass(frozen=True)
class Delivery:
    """One message off the queue: the raw event as the ingress received it."""

    svix_id: str
    svix_timestamp: int | None
    body: str


@dataclass(frozen=True)
class Entry:
    """A delivery read once: what it is, and what its ledger row records."""

    delivery: Delivery
    body_sha256: str
    event_type: str | None
    event: Event | None  # a valid synced event, to apply
    status: EventStatus  # as first recorded: pending (to apply), ignored (not synced) or dead (invalid)
    reason: str | None
    payload: str | None  # the body, stored as jsonb; None for unsynced types and unstorable bodies
    raw_body: str | None  # the body as text when it is not storable as jsonb
    entity_id: str | None = None
    user_clerk_id: str | None = None
    organization_clerk_id: str | None = None

    @property
    def svix_id(self) -> str:
        return self.delivery.svix_id


def read(delivery: Delivery) -> Entry:
    """Parse the body once (``shared.events.parse``) and decide how its row starts."""
    sha = hashlib.sha256(delivery.body.encode("utf-8", "surrogatepass")).hexdigest()
    event = _parsed(delivery.body)
    if isinstance(event, InvalidEvent):
        payload, raw_body = (delivery.body, None) if event.storable else (None, _as_text(delivery.body))
        return Entry(
            delivery,
            sha,
            event.event_type,
            None,
            EventStatus.DEAD,
            str(event),
            payload,
            raw_body,
            entity_id=event.entity_id,
            user_clerk_id=event.user_id,
            organization_clerk_id=event.organization_id,
        )
    if isinstance(event, Unsynced):
        reason = f"event type {event.type!r} is not synced"
        return Entry(delivery, sha, event.type, None, EventStatus.IGNORED, reason, payload=None, raw_body=None)
    parents, user_id = event.names
    return Entry(
        delivery,
        sha,
        event.type,
        event,
        EventStatus.PENDING,
        None,
        payload=delivery.body,
        raw_body=None,
        entity_id=event.entity_id,
        user_clerk_id=user_id,
        organization_clerk_id=parents.get("organizations"),
    )


def _parsed(body: str) -> Event | Unsynced | InvalidEvent:
    try:
        return parse(body)
    except InvalidEvent as exc:
        return exc
    except Exception as unexpected:  # parse depends on the body alone: this body would fail every time
        return InvalidEvent(f"the body could not be read ({type(unexpected).__name__})")


def _as_text(body: str) -> str:
    # Postgres text cannot hold NUL; keep the rest of what arrived, readably.
    return body.replace("\x00", "\\u0000")


def without_payload(entry: Entry) -> Entry:
    """The entry with its body kept as text only (Postgres refused it as jsonb)."""
    return replace(entry, payload=None, raw_body=_as_text(entry.delivery.body))


def bare(entry: Entry) -> Entry:
    """The entry with nothing read from its body but the text: for a row Postgres refuses otherwise."""
    return replace(without_payload(entry), event=None, entity_id=None, user_clerk_id=None, organization_clerk_id=None)


@dataclass(frozen=True)
class Claim:
    status: EventStatus  # pending for a row inserted provisionally
    inserted: bool  # this claim created the row
    stored_sha256: str | None

    @property
    def provisional(self) -> bool:
        """Inserted as ``processed`` before applying: ``finish`` corrects it if it ends otherwise."""
        return self.inserted and self.status is EventStatus.PENDING


_CLAIM = text(
    """
    INSERT INTO webhook_events AS w (
        svix_id, event_type, status, attempts, last_error, errors, payload, raw_body, body_sha256,
        svix_timestamp, entity_id, user_clerk_id, organization_clerk_id, received_at, processed_at, updated_at
    )
    SELECT u.svix_id, u.event_type,
           -- Provisionally: an event to apply is recorded as most of them end (see the docstring).
           CASE WHEN u.status = 'pending' AND :provisional THEN 'processed' ELSE u.status END,
           CASE WHEN u.status = 'pending' AND NOT :provisional THEN 0 ELSE 1 END,
           u.reason,
           CASE WHEN u.status = 'dead'
                THEN jsonb_build_array(jsonb_build_object('at', now(), 'error', u.reason))
                ELSE '[]'::jsonb END,
           CAST(u.payload AS jsonb), u.raw_body, u.sha,
           u.svix_timestamp, u.entity_id, u.user_id, u.org_id,
           -- One transaction per batch: keep the arrival order in received_at and processed_at.
           now() + u.position * interval '1 microsecond',
           CASE WHEN u.status = 'pending' AND NOT :provisional THEN NULL
                ELSE statement_timestamp() + u.position * interval '1 microsecond' END,
           now()
    FROM unnest(
        CAST(:svix_id AS text[]), CAST(:event_type AS text[]), CAST(:status AS text[]), CAST(:reason AS text[]),
        CAST(:payload AS text[]), CAST(:raw_body AS text[]), CAST(:sha AS text[]), CAST(:svix_timestamp AS bigint[]),
        CAST(:entity_id AS text[]), CAST(:user_id AS text[]), CAST(:org_id AS text[]), CAST(:position AS int[])
    ) AS u(svix_id, event_type, status, reason, payload, raw_body, sha, svix_timestamp,
           entity_id, user_id, org_id, position)
    ORDER BY u.svix_id
    -- A trivial update on conflict takes the row lock and returns the row in the same trip.
    ON CONFLICT (svix_id) DO UPDATE SET updated_at = now()
    RETURNING w.svix_id, w.status, w.body_sha256, (w.xmax = 0) AS inserted
    """
)


def claim(session: Session, entries: Sequence[Entry]) -> dict[str, Claim]:
    """Insert each entry's row (an event to apply as ``pending``) or lock the existing one;
    svix_id -> its state now."""
    return claims_in(session.execute(_CLAIM, _claim_params(entries, provisional=False)), entries)


def queue_claim(trips: Trips, entries: Sequence[Entry]) -> Any:
    """``claim`` queued on ``trips``, new events to apply inserted provisionally as ``processed``:
    ``claims_in(cursor.fetchall(), entries)`` once sent, and ``finish`` before the commit."""
    return trips.queue(_CLAIM, _claim_params(entries, provisional=True))


def claims_in(rows: Iterable[Any], entries: Sequence[Entry]) -> dict[str, Claim]:
    """svix_id -> its state: a row this claim inserted has the status its entry was read with."""
    first = {e.svix_id: e.status for e in entries}
    return {
        row.svix_id: Claim(
            status=first[row.svix_id] if row.inserted else EventStatus(row.status),
            inserted=row.inserted,
            stored_sha256=row.body_sha256,
        )
        for row in rows
    }


def _claim_params(entries: Sequence[Entry], *, provisional: bool) -> dict[str, Any]:
    return {
        "provisional": provisional,
        "svix_id": [e.svix_id for e in entries],
        "event_type": [e.event_type for e in entries],
        "status": [e.status.value for e in entries],
        "reason": [e.reason for e in entries],
        "payload": [e.payload for e in entries],
        "raw_body": [e.raw_body for e in entries],
        "sha": [e.body_sha256 for e in entries],
        "svix_timestamp": [e.delivery.svix_timestamp for e in entries],
        "entity_id": [e.entity_id for e in entries],
        "user_id": [e.user_clerk_id for e in entries],
        "org_id": [e.organization_clerk_id for e in entries],
        "position": list(range(len(entries))),
    }


_NOTE_CONFLICTS = text(
    """
    UPDATE webhook_events AS w
    SET conflicts = w.conflicts || jsonb_build_array(jsonb_build_object('at', now(), 'body_sha256', u.sha)),
        updated_at = now()
    FROM unnest(CAST(:svix_id AS text[]), CAST(:sha AS text[]), CAST(:payload AS text[]), CAST(:raw_body AS text[]))
         AS u(svix_id, sha, payload, raw_body)
    WHERE w.svix_id = u.svix_id
      -- Our own re-enqueues (sweeps, replays) carry the stored JSON re-serialised: not a conflict.
      AND CASE WHEN w.payload IS NOT NULL THEN w.payload IS DISTINCT FROM CAST(u.payload AS jsonb)
               WHEN w.raw_body IS NOT NULL THEN w.raw_body IS DISTINCT FROM u.raw_body
               ELSE true END
    RETURNING w.svix_id
    """
)


def note_conflicts(trips: Trips, entries: Sequence[Entry]) -> set[str]:
    """Record redeliveries whose body differs from the stored one; the svix-ids that truly conflict."""
    if not entries:
        return set()
    noted = trips.queue(
        _NOTE_CONFLICTS,
        {
            "svix_id": [e.svix_id for e in entries],
            "sha": [e.body_sha256 for e in entries],
            # Compared as JSON when the redelivery is JSON at all; the raw text otherwise.
            "payload": [e.payload if e.payload is not None else _json_or_none(e.delivery.body) for e in entries],
            "raw_body": [e.raw_body if e.raw_body is not None else e.delivery.body for e in entries],
        },
    )
    trips.send()
    return {row.svix_id for row in noted.fetchall()}


def _json_or_none(body: str) -> str | None:
    try:
        json.loads(body)
    except ValueError:
        return None
    return body


_STORED_BODIES = text(
    "SELECT svix_id, payload::text AS payload, raw_body FROM webhook_events WHERE svix_id = ANY(:ids)"
)


def stored_bodies(trips: Trips, svix_ids: Sequence[str]) -> dict[str, str | None]:
    """The body each row keeps (its payload as JSON text, or its raw text); None when not kept."""
    if not svix_ids:
        return {}
    found = trips.queue(_STORED_BODIES, {"ids": list(svix_ids)})
    trips.send()
    return {row.svix_id: row.payload if row.payload is not None else row.raw_body for row in found.fetchall()}


_FINISH = text(
    """
    UPDATE webhook_events AS w
    SET status = u.status,
        -- A provisional row has its attempt counted already (and a held one none).
        attempts = CASE WHEN NOT u.provisional THEN w.attempts + 1 WHEN u.status = 'pending' THEN 0 ELSE w.attempts END,
        last_error = u.reason,
        -- One statement for the batch: keep the arrival order in processed_at too.
        processed_at = CASE WHEN u.status = 'pending' THEN NULL
                            WHEN u.provisional THEN w.processed_at
                            ELSE statement_timestamp() + u.position * interval '1 microsecond' END,
        next_attempt_at = NULL, updated_at = now()
    FROM unnest(
        CAST(:svix_id AS text[]), CAST(:status AS text[]), CAST(:reason AS text[]), CAST(:position AS int[]),
        CAST(:provisional AS boolean[])
    ) AS u(svix_id, status, reason, position, provisional)
    WHERE w.svix_id = u.svix_id
    """
)


def finish(trips: Trips, outcomes: dict[str, tuple[EventStatus, str | None]], claims: dict[str, Claim]) -> None:
    """Queue the final status of each event of this transaction that is not already recorded, in
    ``outcomes``' order (arrival); a provisional row that was held by a pause goes back to pending."""
    changed = [
        (position, svix_id, status, reason)
        for position, (svix_id, (status, reason)) in enumerate(outcomes.items())
        if not (claims[svix_id].provisional and (status, reason) == (EventStatus.PROCESSED, None))
    ]
    if changed:
        trips.queue(
            _FINISH,
            {
                "svix_id": [svix_id for _, svix_id, _, _ in changed],
                "status": [status.value for _, _, status, _ in changed],
                "reason": [reason for _, _, _, reason in changed],
                "position": [position for position, _, _, _ in changed],
                "provisional": [claims[svix_id].provisional for _, svix_id, _, _ in changed],
            },
        )


def _error_entry(error: str) -> str:
    return json.dumps([{"at": dt.datetime.now(dt.UTC).isoformat(), "error": error}])


_RECORD_FAILURE = text(
    """
    UPDATE webhook_events
    SET status = CAST(:status AS text), attempts = :attempts, last_error = :error,
        errors = errors || CAST(:entry AS jsonb), next_attempt_at = :next_attempt_at,
        processed_at = CASE WHEN CAST(:status AS text) = 'dead' THEN now() END, updated_at = now()
    WHERE svix_id = :svix_id
    """
)


def record_failure(
    session: Session,
    entry: Entry,
    *,
    error: str,
    permanent: bool,
    max_attempts: int,
    retry_base_seconds: float,
    spend: bool = True,
) -> EventStatus:
    """Count a failed attempt: `dead` if permanent or out of budget, else `failed` with a due time.

    ``spend=False`` (a deadlock the worker kept meeting) schedules the retry without counting it.
    """
    claim(session, [entry])
    row = session.execute(
        select(WebhookEvent.attempts, WebhookEvent.status)
        .where(WebhookEvent.svix_id == entry.svix_id)
        .with_for_update()
    ).one()
    status = EventStatus(row.status)
    if status in (EventStatus.PROCESSED, EventStatus.IGNORED, EventStatus.DEAD):
        return status  # finished meanwhile by another delivery
    attempts = row.attempts + 1 if spend else row.attempts
    dead = permanent or attempts >= max_attempts
    session.execute(
        _RECORD_FAILURE,
        {
            "svix_id": entry.svix_id,
            "status": EventStatus.DEAD.value if dead else EventStatus.FAILED.value,
            "attempts": attempts,
            "error": error,
            "entry": _error_entry(error),
            "next_attempt_at": None if dead else _next_attempt(max(attempts, 1), retry_base_seconds),
        },
    )
    return EventStatus.DEAD if dead else EventStatus.FAILED


def _next_attempt(attempts: int, base_seconds: float) -> dt.datetime:
    """Exponential backoff with full jitter on the upper half: 30 s, 1, 2, 4 ... min, up to
    ``MAX_RETRY_DELAY`` (an uncapped doubling overflows a date after some 30 attempts)."""
    delay = min(base_seconds * (2 ** min(attempts - 1, 64)), MAX_RETRY_DELAY.total_seconds())
    delay = delay / 2 + random.uniform(0, delay / 2)
    return dt.datetime.now(dt.UTC) + dt.timedelta(seconds=delay)


def is_paused(session: Session) -> bool:
    value = session.scalar(select(ControlFlag.value).where(ControlFlag.name == PAUSED_FLAG))
    return value == "true"


_PAUSED = text("SELECT value = 'true' AS paused FROM clerk_sync_control WHERE name = :name")


def queue_is_paused(trips: Trips) -> Any:
    """``is_paused`` queued on ``trips``: ``paused_in(cursor.fetchall())`` once sent."""
    return trips.queue(_PAUSED, {"name": PAUSED_FLAG})


def paused_in(rows: Iterable[Any]) -> bool:
    return any(row.paused for row in rows)


def set_paused(session: Session, paused: bool) -> None:
    stmt = pg_insert(ControlFlag).values(name=PAUSED_FLAG, value="true" if paused else "false")
    session.execute(
        stmt.on_conflict_do_update(
            index_elements=["name"], set_={"value": stmt.excluded.value, "updated_at": func.now()}
        )
    )
