"""The one apply path: a batch of deliveries in one transaction, each keeping its own status.

A single event is a batch of one. Each body is parsed once (``ledger.read``); the rows are
claimed in one statement; events that are not valid, or of a type that is not synced, are
recorded final by that statement and nothing of them reaches the synced tables; the rest
are turned into changes by their handlers and applied together (``apply.apply_changes``),
the application's hooks run for them (``hooks``), and they are finished in one statement.
A commit costs an fsync, ten times the work of applying an event: a batch pays it once.

Failure isolation: a deadlock is retried at once, without spending any event's budget; any
other error rolls the batch back and each event is applied again as a batch of its own, so
one poison event never costs another its status. ``DatabaseUnavailable`` means Postgres
cannot even record a failure: nothing is recorded and the caller keeps the messages.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import structlog
from sqlalchemy import text
from sqlalchemy.exc import DataError
from sqlalchemy.orm import Session, sessionmaker
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_random_exponential

from shared import metrics
from shared.config import Settings
from shared.events import Event
from shared.models import FINAL_STATUSES, EventStatus
from worker.pipeline import apply, hooks, ledger, roundtrips
from worker.pipeline.apply import Change
from worker.pipeline.errors import DatabaseUnavailable, Failure, classify, describe
from worker.pipeline.handlers import HANDLERS
from worker.pipeline.ledger import Claim, Delivery, Entry

log = structlog.get_logger("clerk_sync.worker")

# In-process attempts of a batch that keeps meeting deadlocks before it splits, and of one event
# before its retry is scheduled (never counted against its budget).
DEADLOCK_ATTEMPTS = 5


def process_batch(
    factory: sessionmaker[Session], deliveries: Sequence[Delivery], *, settings: Settings
) -> dict[str, str]:
    """Apply ``deliveries``; svix_id -> the status each ends in. Raises DatabaseUnavailable."""
    first_of_each = {d.svix_id: d for d in reversed(deliveries)}  # a duplicate within the batch is a no-op
    entries = [ledger.read(d) for d in deliveries if first_of_each.get(d.svix_id) is d]
    results = _process(factory, entries, settings=settings)
    # ...unless its body differs: claimed once the first is recorded, its conflict is noted as any other's.
    others = [d for d in deliveries if d.body != first_of_each[d.svix_id].body]
    return {**results, **process_batch(factory, others, settings=settings)} if others else results


def deadlock_retries() -> Retrying:
    """A few quick in-process attempts for deadlocks and serialization failures."""
    return Retrying(
        retry=retry_if_exception(lambda exc: classify(exc) is Failure.RETRY_NOW),
        stop=stop_after_attempt(DEADLOCK_ATTEMPTS),
        wait=wait_random_exponential(multiplier=0.05, max=1),
        reraise=True,
    )


def _process(factory: sessionmaker[Session], entries: list[Entry], *, settings: Settings) -> dict[str, str]:
    if not entries:
        return {}
    started = time.perf_counter()
    try:
        for attempt in deadlock_retries():
            with attempt:
                done = _apply(factory, entries, settings=settings)
    except Exception as exc:  # sorted by classify(); nothing is swallowed
        kind = classify(exc)
        if kind is Failure.UNAVAILABLE:
            raise DatabaseUnavailable(describe(exc)) from None
        if len(entries) > 1:
            log.info("batch_split", size=len(entries), error=describe(exc))
            results: dict[str, str] = {}
            for entry in entries:
                results.update(_process(factory, [entry], settings=settings))
            return results
        return {entries[0].svix_id: _record_failure(factory, entries[0], exc, kind, settings=settings)}
    _report(done, seconds=(time.perf_counter() - started) / len(entries))
    return {entry.svix_id: outcome.status.value for entry, outcome in done}


@dataclass(frozen=True)
class _Outcome:
    status: EventStatus
    label: str  # for metrics: the status, or "duplicate"
    reason: str | None = None
    conflict: bool = False


def _apply(factory: sessionmaker[Session], entries: list[Entry], *, settings: Settings) -> list[tuple[Entry, _Outcome]]:
    """One transaction: claim, apply what needs applying, finish."""
    try:
        with factory.begin() as session:
            return _apply_in(session, entries, settings=settings)
    except DataError:
        # A body Postgres refuses as jsonb (it accepted nothing of the batch): keep such bodies as text.
        # Another value it refuses (too long for its column) is the event's own failure, body kept.
        if len(entries) != 1 or entries[0].payload is None or _storable(factory, entries[0].payload):
            raise
        entry = ledger.without_payload(entries[0])
        if entry.status is EventStatus.PENDING:
            entry = _refused(entry, "invalid_payload: the body is JSON that Postgres cannot store as jsonb")
        with factory.begin() as session:
            return _apply_in(session, [entry], settings=settings)


def _storable(factory: sessionmaker[Session], payload: str) -> bool:
    """Whether Postgres takes ``payload`` as jsonb (asked only after a batch of one met a DataError)."""
    try:
        with factory.begin() as session:
            session.execute(_AS_JSONB, {"payload": payload})
    except DataError:
        return False
    return True


_AS_JSONB = text("SELECT CAST(:payload AS jsonb) IS NULL")


def _refused(entry: Entry, reason: str) -> Entry:
    return replace(entry, event=None, status=EventStatus.DEAD, reason=reason)


class _OtherBodies(Exception):
    """A redelivery conflicts with its stored body: what was locked for it may not be what gets applied."""


def _apply_in(session: Session, entries: list[Entry], *, settings: Settings) -> list[tuple[Entry, _Outcome]]:
    try:
        return _transaction(session, entries, settings=settings, lock_early=True)
    except _OtherBodies:  # rolled back: again, locking only once the bodies to apply are known
        return _transaction(session, entries, settings=settings, lock_early=False)


def _transaction(
    session: Session, entries: list[Entry], *, settings: Settings, lock_early: bool
) -> list[tuple[Entry, _Outcome]]:
    """Two round trips (``roundtrips``): BEGIN, claim, pause flag and every lock; then the writes,
    the finish and COMMIT. The locks are those of every valid event of the batch, taken in the
    global order (``apply``) after the claim; a duplicate's locks are merely not needed.
    """
    with roundtrips.transaction(session, idle_timeout_seconds=settings.timings.idle_in_transaction_timeout) as trips:
        claimed = ledger.queue_claim(trips, entries)
        paused_flag = ledger.queue_is_paused(trips)
        early = apply.lock(trips, [c for _, c in _changes(entries, settings)]) if lock_early else None
        trips.send()
        claims = ledger.claims_in(claimed.fetchall(), entries)
        # A redelivery whose body is not the one stored is never applied: the stored one is.
        conflicting = ledger.note_conflicts(
            trips, [e for e in entries if claims[e.svix_id].stored_sha256 not in (None, e.body_sha256)]
        )
        if conflicting and early is not None:
            raise _OtherBodies
        endings = _Endings(conflicting)
        pending = _to_apply(trips, entries, claims, endings)
        if pending and ledger.paused_in(paused_flag.fetchall()):
            log.info("events_held_paused", count=len(pending))
            for entry in pending:
                # A new row went in provisionally as processed: it is recorded pending after all.
                endings.end(entry.svix_id, EventStatus.PENDING, None, record=claims[entry.svix_id].provisional)
            pending = []
        _ignore_foreign(pending, endings, settings)
        applying = _changes(pending, settings)
        if early is None:
            locks = apply.lock(trips, [c for _, c in applying])
            trips.send()
        else:
            locks = early
        results = apply.write(
            trips,
            [c for _, c in applying],
            locks.rows(),
            scrub_pii=settings.deleted_user_pii == "scrub",
            sync_private_metadata=settings.sync_private_metadata,
        )
        _run_hooks(session, trips, applying, settings)
        for (entry, _), applied in zip(applying, results, strict=True):
            endings.end(
                entry.svix_id, EventStatus.PROCESSED if applied.changed else EventStatus.IGNORED, applied.reason
            )
        finished = endings.finished
        ledger.finish(trips, {e.svix_id: finished[e.svix_id] for e in entries if e.svix_id in finished}, claims)
    return [(entry, endings.outcomes[entry.svix_id]) for entry in entries]


@dataclass
class _Endings:
    """How each event of a batch ends: its outcome (its log line and metric after the commit) and,
    where its ledger row must change, the status and reason ``ledger.finish`` records."""

    conflicting: set[str]  # svix-ids redelivered with another body than the stored one
    outcomes: dict[str, _Outcome] = field(default_factory=dict)
    finished: dict[str, tuple[EventStatus, str | None]] = field(default_factory=dict)

    def end(
        self, svix_id: str, status: EventStatus, reason: str | None, *, label: str | None = None, record: bool = True
    ) -> None:
        self.outcomes[svix_id] = _Outcome(status, label or status.value, reason, svix_id in self.conflicting)
        if record:
            self.finished[svix_id] = (status, reason)


def _to_apply(
    trips: roundtrips.Trips, entries: list[Entry], claims: dict[str, Claim], endings: _Endings
) -> list[Entry]:
    """The events to apply, each as stored (a conflicting redelivery is applied with its stored body);
    the others' endings: already final (a duplicate), or dead (a body that is no valid event)."""
    stored = ledger.stored_bodies(trips, [s for s in endings.conflicting if claims[s].status not in FINAL_STATUSES])
    pending: list[Entry] = []
    for entry in entries:
        claim = claims[entry.svix_id]
        if claim.status in FINAL_STATUSES:
            label = None if claim.inserted else "duplicate"
            endings.end(entry.svix_id, claim.status, entry.reason, label=label, record=False)
            continue
        if entry.svix_id in endings.conflicting:
            entry = _as_stored(entry, stored.get(entry.svix_id))
        if entry.event is None:  # a row left not final by an earlier delivery, and a body that is no event
            endings.end(entry.svix_id, EventStatus.DEAD, entry.reason)
            continue
        endings.end(entry.svix_id, EventStatus.PENDING, None, record=False)
        pending.append(entry)
    return pending


def _as_stored(entry: Entry, body: str | None) -> Entry:
    """A conflicting redelivery, read again from the body its row keeps."""
    entry = ledger.read(Delivery(entry.svix_id, entry.delivery.svix_timestamp, body)) if body else entry
    if body is None or entry.event is None:
        return _refused(entry, "the stored body can no longer be applied (scrubbed, or not a valid event)")
    return entry


def _ignore_foreign(pending: list[Entry], endings: _Endings, settings: Settings) -> None:
    """Events of another Clerk instance end ignored (``_changes`` leaves them out)."""
    for entry in pending:
        event = entry.event
        assert event is not None
        if _foreign(event, settings):
            reason = f"from Clerk instance {event.instance_id}, not {settings.clerk_instance_id}"
            endings.end(entry.svix_id, EventStatus.IGNORED, reason)


def _run_hooks(
    session: Session, trips: roundtrips.Trips, applying: list[tuple[Entry, Change]], settings: Settings
) -> None:
    """The application's hooks, in this transaction, on the session as usual (out of pipeline mode:
    one round trip more). One that raises fails the batch, which then splits."""
    hooked = [(e.svix_id, e.event) for e, _ in applying if e.event is not None]
    if hooked and hooks.installed(settings):
        with trips.suspended():
            # The application's statements are planned as the server is configured, not as ours.
            session.execute(roundtrips.DEFAULT_PLANS)
            hooks.run(session, hooked, settings=settings)


def _foreign(event: Event, settings: Settings) -> bool:
    """An event of another Clerk instance than the configured one: recorded ignored."""
    return bool(settings.clerk_instance_id and event.instance_id and event.instance_id != settings.clerk_instance_id)


def _changes(entries: list[Entry], settings: Settings) -> list[tuple[Entry, Change]]:
    """What each valid event of this instance says about its row (``handlers``)."""
    return [
        (entry, HANDLERS[entry.event.type](entry.event))
        for entry in entries
        if entry.event is not None and not _foreign(entry.event, settings)
    ]


def _report(done: list[tuple[Entry, _Outcome]], *, seconds: float) -> None:
    """After the commit: one log line and one metric per event."""
    for entry, outcome in done:
        fields = {"svix_id": entry.svix_id, "event_type": entry.event_type}
        if outcome.conflict:
            metrics.conflicting_redelivery()
            log.warning("event_conflicting_redelivery", body_sha256=entry.body_sha256, **fields)
        if outcome.label == "duplicate":
            log.info("event_duplicate", status=outcome.status.value, **fields)
        elif outcome.status is EventStatus.DEAD:
            log.warning("event_dead", error=outcome.reason, **fields)
        elif outcome.status is EventStatus.PENDING:
            log.info("event_held", **fields)
        else:
            log.info("event_applied", status=outcome.status.value, reason=outcome.reason, **fields)
        metrics.event_handled(
            entry.event_type, outcome.label, seconds=seconds, svix_timestamp=entry.delivery.svix_timestamp
        )


def _record_failure(
    factory: sessionmaker[Session], entry: Entry, exc: BaseException, kind: Failure, *, settings: Settings
) -> str:
    """One event failed on its own: count the attempt (or not, for a deadlock) in a fresh transaction."""
    error = describe(exc)
    fields = {"svix_id": entry.svix_id, "event_type": entry.event_type, "error": error}
    log.warning("event_attempt_failed", **fields)
    try:
        with factory.begin() as session:
            session.execute(text(roundtrips.idle_timeout(settings.timings.idle_in_transaction_timeout)))
            status = ledger.record_failure(
                session,
                entry,
                error=error,
                permanent=kind is Failure.PERMANENT,
                max_attempts=settings.max_attempts,
                retry_base_seconds=settings.retry_base_seconds,
                spend=kind is not Failure.RETRY_NOW,
            )
    except Exception as failure:
        refused = classify(failure)
        if refused is Failure.UNAVAILABLE:
            raise DatabaseUnavailable(describe(failure)) from None
        if refused is Failure.RETRY_NOW or entry == ledger.bare(entry):
            raise
        # Postgres refuses the ledger row itself (a value it cannot hold, an application's trigger):
        # record the attempt with nothing of the body but its text, rather than try it for ever.
        log.warning("event_row_refused", svix_id=entry.svix_id, event_type=entry.event_type, error=describe(failure))
        return _record_failure(factory, ledger.bare(entry), exc, kind, settings=settings)
    if status is EventStatus.DEAD:
        log.warning("event_dead", **fields)
    metrics.event_handled(entry.event_type, status.value, seconds=0.0, svix_timestamp=None)
    return status.value
