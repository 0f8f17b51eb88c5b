"""Dead letters: which dead events an operator means, and replaying or discarding them.

Functions take a session the caller owns and never commit. Replay enqueues after its rows
are updated and flushed but before the caller commits: a worker that receives such a
message waits on the row lock, so it sees the committed state, and a message whose
transaction is rolled back finds its row still `dead` and is a no-op.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import ColumnElement, cast, delete, func, literal, select, update
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Session

from shared.models import WebhookEvent
from shared.publish import EventPublisher
from worker.ops import audit, inputs
from worker.ops.audit import Actor
from worker.ops.timeline import touches_entity
from worker.recovery import sweeper

# Rows changed per transaction by a bulk replay or discard: each batch is enqueued, then committed.
BATCH = 100


class OperationError(Exception):
    """The operation cannot be done as asked; the message is one line for the operator."""


class UnknownEvent(OperationError):
    """A svix-id that names no event: a well-formed request the ledger cannot serve (exit 1, not a usage error)."""


@dataclass(frozen=True)
class DeadFilter:
    """Which dead events an operator means; unset fields do not filter."""

    event_type: str | None = None
    since: dt.datetime | None = None
    error: str | None = None
    entity: str | None = None
    limit: int | None = None

    @property
    def narrows(self) -> bool:
        """True when something other than the limit restricts the selection."""
        return any(v is not None for v in (self.event_type, self.since, self.error, self.entity))

    def as_dict(self) -> dict[str, Any]:
        """The filters that are set, JSON-ready (the audit row's ``filter``)."""
        values = {
            "type": self.event_type,
            "since": _iso(self.since),
            "error": self.error,
            "entity": self.entity,
            "limit": self.limit,
        }
        return {key: value for key, value in values.items() if value is not None}


def _matching(filters: DeadFilter) -> list[ColumnElement[bool]]:
    conditions = [WebhookEvent.status == "dead"]
    if filters.event_type is not None:
        conditions.append(WebhookEvent.event_type == filters.event_type)
    if filters.since is not None:
        conditions.append(WebhookEvent.received_at >= filters.since)
    if filters.error is not None:
        conditions.append(WebhookEvent.last_error.icontains(filters.error, autoescape=True))
    if filters.entity is not None:
        conditions.append(touches_entity(filters.entity))
    return conditions


def list_dead(session: Session, filters: DeadFilter, *, offset: int = 0) -> list[WebhookEvent]:
    """Dead events matching ``filters``, oldest received first; ``offset`` skips a page's worth."""
    query = select(WebhookEvent).where(*_matching(filters)).order_by(WebhookEvent.received_at, WebhookEvent.id)
    if filters.limit is not None:
        query = query.limit(filters.limit)
    return list(session.scalars(query.offset(offset) if offset else query))


def matching_ids(session: Session, filters: DeadFilter) -> list[str]:
    """The svix-ids of ``list_dead``, without loading the rows (a bulk action may name many)."""
    query = select(WebhookEvent.svix_id).where(*_matching(filters)).order_by(WebhookEvent.received_at, WebhookEvent.id)
    return list(session.scalars(query if filters.limit is None else query.limit(filters.limit)))


def count_dead(session: Session, filters: DeadFilter) -> int:
    """How many dead events match ``filters`` (the limit aside)."""
    return int(session.scalar(select(func.count()).select_from(WebhookEvent).where(*_matching(filters))) or 0)


def get_event(session: Session, svix_id: str) -> WebhookEvent | None:
    """The event of ``svix_id``; None also for an id no row can hold (a NUL in a URL), which Postgres would refuse."""
    if not inputs.storable(svix_id):
        return None
    return session.scalar(select(WebhookEvent).where(WebhookEvent.svix_id == svix_id))


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


# What operators see of a ledger row (every column but the stored body), in this order; times in ISO 8601.
SUMMARY_COLUMNS = (
    "svix_id", "event_type", "status", "entity_id", "attempts", "last_error", "errors", "body_sha256",
    "conflicts", "svix_timestamp", "received_at", "processed_at", "next_attempt_at", "updated_at",
)  # fmt: skip
# Redeliveries of this svix-id with another body, never applied: named for what they are.
SUMMARY_NAMES = {"conflicts": "conflicting_redeliveries"}


def summary(row: WebhookEvent) -> dict[str, Any]:
    """Every field of the row except the stored body, ready for JSON."""
    values = ((SUMMARY_NAMES.get(column, column), getattr(row, column)) for column in SUMMARY_COLUMNS)
    return {name: _iso(value) if isinstance(value, dt.datetime) else value for name, value in values}


def detail(row: WebhookEvent) -> dict[str, Any]:
    """``summary`` plus the body as stored: ``payload`` (JSON) or ``raw_body`` (text)."""
    return {**summary(row), "payload": row.payload, "raw_body": row.raw_body}


def _lock_dead(session: Session, svix_ids: Sequence[str], *, skip_not_dead: bool) -> list[WebhookEvent]:
    """The named rows that are dead, locked, oldest first; an OperationError for any other unless skipping."""
    rows = list(
        session.scalars(
            select(WebhookEvent)
            .where(WebhookEvent.svix_id.in_([svix_id for svix_id in svix_ids if inputs.storable(svix_id)]))
            .order_by(WebhookEvent.received_at, WebhookEvent.id)
            .with_for_update()
        )
    )
    found = {row.svix_id for row in rows}
    missing = [svix_id for svix_id in dict.fromkeys(svix_ids) if svix_id not in found]
    if missing and not skip_not_dead:
        raise UnknownEvent(f"no event with svix_id {missing[0]}")
    not_dead = [row for row in rows if row.status != "dead"]
    if not_dead and not skip_not_dead:
        raise OperationError(f"{not_dead[0].svix_id} is {not_dead[0].status}, not dead: nothing to do")
    return [row for row in rows if row.status == "dead"]


@dataclass(frozen=True)
class Instruction:
    """Who asks for a replay or discard, and how: what the audit row records besides the ids."""

    actor: Actor
    # The filter the ids came from (None when they were named), kept in the audit row.
    selection: DeadFilter | None = None
    # Skip named events that are missing or no longer dead (a bulk action races the worker and
    # other operators) instead of refusing the whole batch.
    skip_not_dead: bool = False
    # Check and report as the real action would (the same refusals), but change, enqueue and audit nothing.
    dry_run: bool = False
    # The action's one audit row, however many transactions its batches take.
    audit_entry: audit.Entry = field(default_factory=audit.Entry)


@dataclass
class Result:
    """Which of the named events an operation acted on, and which it skipped."""

    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def _finish(
    session: Session,
    action: str,
    svix_ids: Sequence[str],
    dead: list[WebhookEvent],
    instruction: Instruction,
) -> Result:
    """What ``action`` did to ``dead`` of the named ``svix_ids``, recorded in the audit table when it did anything."""
    done = [row.svix_id for row in dead]
    acted = set(done)
    result = Result(done=done, skipped=[svix_id for svix_id in dict.fromkeys(svix_ids) if svix_id not in acted])
    if done and not instruction.dry_run:
        selection = instruction.selection
        audit.record_part(
            session,
            instruction.audit_entry,
            instruction.actor,
            action=action,
            svix_ids=done,
            selection=None if selection is None else selection.as_dict(),
        )
    return result


def replay(session: Session, publisher: EventPublisher, svix_ids: Sequence[str], instruction: Instruction) -> Result:
    """Give dead events a fresh retry budget and enqueue them again, in order of arrival.

    ``attempts`` restarts from 0 so that the event has the whole budget again; the
    ``errors`` history is kept, with a note of the replay appended.
    """
    dead = _lock_dead(session, svix_ids, skip_not_dead=instruction.skip_not_dead)
    bodies = {row.svix_id: sweeper.body_of(row) for row in dead}
    unreplayable = [svix_id for svix_id, body in bodies.items() if body is None]
    if unreplayable:
        raise OperationError(f"{unreplayable[0]}: its payload is no longer stored (scrubbed), it cannot be replayed")
    if not instruction.dry_run:
        _requeue(session, publisher, dead, bodies)
    return _finish(session, "replay", svix_ids, dead, instruction)


def _requeue(
    session: Session, publisher: EventPublisher, dead: list[WebhookEvent], bodies: dict[str, str | None]
) -> None:
    """Replay's change: each row pending with a fresh budget and a note, then its message enqueued."""
    now = dt.datetime.now(dt.UTC)
    for row in dead:
        note = {"at": now.isoformat(), "event": "replayed", "attempts_before": row.attempts}
        session.execute(
            update(WebhookEvent)
            .where(WebhookEvent.id == row.id)
            .values(
                status="pending",
                attempts=0,
                next_attempt_at=None,
                processed_at=None,
                updated_at=func.now(),
                errors=WebhookEvent.errors + cast(literal(json.dumps([note])), JSONB),
            )
        )
    session.flush()
    for row in dead:
        # QueueUnavailable propagates: the caller rolls the batch back.
        publisher.publish(svix_id=row.svix_id, svix_timestamp=row.svix_timestamp, body=bodies[row.svix_id] or "")


def discard(session: Session, svix_ids: Sequence[str], instruction: Instruction) -> Result:
    """Delete dead events' rows: the operator has decided they will never be applied.

    Only dead rows are deleted. The svix-id is forgotten with its row, so a later
    redelivery of it by Svix would be processed as a new event.
    """
    dead = _lock_dead(session, svix_ids, skip_not_dead=instruction.skip_not_dead)
    if dead and not instruction.dry_run:
        session.execute(delete(WebhookEvent).where(WebhookEvent.id.in_([row.id for row in dead])))
    return _finish(session, "discard", svix_ids, dead, instruction)


Transaction = Callable[[], AbstractContextManager[Session]]


def in_batches(
    transaction: Transaction,
    svix_ids: Sequence[str],
    act: Callable[[Session, Sequence[str]], Result],
    *,
    progress: Result,
) -> Result:
    """Run ``act`` on ``BATCH`` ids at a time, each batch in a transaction of its own.

    ``progress`` holds what has committed so far, also when a later batch raises, so that
    the caller can say how far a bulk action got. ``transaction()`` yields a session whose
    transaction commits when the block ends.
    """
    for start in range(0, len(svix_ids), BATCH):
        with transaction() as session:
            result = act(session, svix_ids[start : start + BATCH])
        progress.done += result.done
        progress.skipped += result.skipped
    return progress
