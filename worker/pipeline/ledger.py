"""The `webhook_events` ledger: one row per svix-id, moved through its statuses.

``claim`` inserts the row or finds it, and locks it for the rest of the event's
transaction, so two deliveries of one svix-id (a Svix retry racing a redelivery)
serialise and the second sees the first's final status.
"""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Table, bindparam, func, literal, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from shared.models import ControlFlag, WebhookEvent

PAUSED_FLAG = "paused"


@dataclass(frozen=True)
class Delivery:
    """One message off the queue: the raw event as the ingress received it."""

    svix_id: str
    svix_timestamp: int | None
    body: str


@dataclass(frozen=True)
class Claimed:
    status: str
    attempts: int


def _insert_values(
    delivery: Delivery, payload: dict[str, Any] | None, event_type: str | None, entity_id: str | None
) -> dict[str, Any]:
    return {
        "svix_id": delivery.svix_id,
        "event_type": event_type,
        "payload": payload,
        # Postgres text cannot hold NUL; keep the rest of what arrived, readably.
        "raw_body": None if payload is not None else delivery.body.replace("\x00", "\\u0000"),
        "svix_timestamp": delivery.svix_timestamp,
        "entity_id": entity_id,
        # clock_timestamp(), not now(): events of one batch share a transaction, and
        # their arrival order must survive in received_at.
        "received_at": func.clock_timestamp(),
    }


def claim(
    session: Session,
    delivery: Delivery,
    *,
    payload: dict[str, Any] | None,
    event_type: str | None,
    entity_id: str | None,
) -> Claimed:
    """Insert the event's row or lock the existing one; returns its current state."""
    stmt = pg_insert(WebhookEvent).values(**_insert_values(delivery, payload, event_type, entity_id))
    # A trivial update on conflict takes the row lock and returns the row in one trip.
    upsert = stmt.on_conflict_do_update(
        index_elements=["svix_id"],
        set_={"updated_at": func.now(), "entity_id": func.coalesce(WebhookEvent.entity_id, stmt.excluded.entity_id)},
    ).returning(WebhookEvent.status, WebhookEvent.attempts)
    row = session.execute(upsert).one()
    return Claimed(status=row.status, attempts=row.attempts)


def hold(
    session: Session,
    delivery: Delivery,
    *,
    payload: dict[str, Any] | None,
    event_type: str | None,
    entity_id: str | None,
) -> None:
    """Record the event as pending without applying it (clerk-sync is paused)."""
    stmt = pg_insert(WebhookEvent).values(**_insert_values(delivery, payload, event_type, entity_id))
    session.execute(stmt.on_conflict_do_nothing(index_elements=["svix_id"]))


def finish(session: Session, svix_id: str, *, status: str, reason: str | None) -> None:
    """Final status for an attempt that went through, in the event's own transaction."""
    session.execute(
        update(WebhookEvent)
        .where(WebhookEvent.svix_id == svix_id)
        .values(
            status=status,
            attempts=WebhookEvent.attempts + 1,
            last_error=reason,
            processed_at=func.clock_timestamp(),
            next_attempt_at=None,
            updated_at=func.now(),
        )
    )


def _error_entry(error: str) -> list[dict[str, str]]:
    return [{"at": dt.datetime.now(dt.UTC).isoformat(), "error": error}]


def record_failure(
    session: Session,
    delivery: Delivery,
    *,
    payload: dict[str, Any] | None,
    event_type: str | None,
    entity_id: str | None,
    error: str,
    permanent: bool,
    max_attempts: int,
    retry_base_seconds: float,
) -> str:
    """Count a failed attempt: `dead` if permanent or out of budget, else `failed` with a due time."""
    stmt = pg_insert(WebhookEvent).values(**_insert_values(delivery, payload, event_type, entity_id), status="pending")
    session.execute(stmt.on_conflict_do_nothing(index_elements=["svix_id"]))
    row = session.execute(
        select(WebhookEvent.attempts, WebhookEvent.status)
        .where(WebhookEvent.svix_id == delivery.svix_id)
        .with_for_update()
    ).one()
    if row.status in ("processed", "ignored"):
        return str(row.status)  # another delivery finished it meanwhile
    attempts = row.attempts + 1
    dead = permanent or attempts >= max_attempts
    session.execute(
        update(WebhookEvent)
        .where(WebhookEvent.svix_id == delivery.svix_id)
        .values(
            status="dead" if dead else "failed",
            attempts=attempts,
            last_error=error,
            errors=WebhookEvent.errors + literal(_error_entry(error), WebhookEvent.errors.type),
            next_attempt_at=None if dead else _next_attempt(attempts, retry_base_seconds),
            processed_at=func.now() if dead else None,
            updated_at=func.now(),
        )
    )
    return "dead" if dead else "failed"


def _next_attempt(attempts: int, base_seconds: float) -> dt.datetime:
    """Exponential backoff with full jitter on the upper half: 30 s, 1, 2, 4 ... min."""
    delay = base_seconds * (2 ** (attempts - 1))
    delay = delay / 2 + random.uniform(0, delay / 2)
    return dt.datetime.now(dt.UTC) + dt.timedelta(seconds=delay)


def is_paused(session: Session) -> bool:
    value = session.scalar(select(ControlFlag.value).where(ControlFlag.name == PAUSED_FLAG))
    return value == "true"


def set_paused(session: Session, paused: bool) -> None:
    stmt = pg_insert(ControlFlag).values(name=PAUSED_FLAG, value="true" if paused else "false")
    session.execute(
        stmt.on_conflict_do_update(
            index_elements=["name"], set_={"value": stmt.excluded.value, "updated_at": func.now()}
        )
    )


@dataclass(frozen=True)
class Parsed:
    """A delivery whose body is a JSON object with a type: ready to claim and apply."""

    delivery: Delivery
    payload: dict[str, Any]
    event_type: str
    entity_id: str | None


def claim_many(session: Session, items: list[Parsed]) -> dict[str, str]:
    """``claim`` for a batch in one statement: svix_id -> current status, rows locked.

    Rows are inserted in delivery order, so received_at keeps the order of arrival. Two
    batches holding the same two svix-ids in opposite orders can deadlock; Postgres
    breaks it and the loser falls back to one event per transaction.
    """
    stmt = pg_insert(WebhookEvent).values(
        [_insert_values(i.delivery, i.payload, i.event_type, i.entity_id) for i in items]
    )
    upsert = stmt.on_conflict_do_update(
        index_elements=["svix_id"],
        set_={"updated_at": func.now(), "entity_id": func.coalesce(WebhookEvent.entity_id, stmt.excluded.entity_id)},
    ).returning(WebhookEvent.svix_id, WebhookEvent.status)
    return {row.svix_id: row.status for row in session.execute(upsert)}


def finish_many(session: Session, outcomes: dict[str, tuple[str, str | None]]) -> None:
    """``finish`` for a batch: one pipelined executemany of the same UPDATE."""
    if not outcomes:
        return
    table = cast(Table, WebhookEvent.__table__)
    stmt = (
        update(table)
        .where(table.c.svix_id == bindparam("b_svix_id"))
        .values(
            status=bindparam("b_status"),
            attempts=table.c.attempts + 1,
            last_error=bindparam("b_reason"),
            processed_at=func.clock_timestamp(),
            next_attempt_at=None,
            updated_at=func.now(),
        )
    )
    session.connection().execute(
        stmt,
        [
            {"b_svix_id": svix_id, "b_status": status, "b_reason": reason}
            for svix_id, (status, reason) in outcomes.items()
        ],
    )
