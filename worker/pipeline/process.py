"""Apply one delivered event: dedupe, dispatch, record; one transaction per event.

``process_delivery`` is what the Celery task calls, and what tests call directly
with a real session factory. It returns the event's resulting status, or raises
``DatabaseUnavailable`` when Postgres cannot even record a failure, so the task
leaves the message in the queue without spending the event's retry budget.
"""

from __future__ import annotations

import time
from typing import Any

import structlog
from sqlalchemy.exc import DataError
from sqlalchemy.orm import Session, sessionmaker
from tenacity import (
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

from shared import metrics
from shared.config import Settings
from worker.pipeline import apply, ledger
from worker.pipeline.envelope import decode_body, event_type_of, parse_envelope
from worker.pipeline.errors import DatabaseUnavailable, Failure, PermanentEventError, classify, describe
from worker.pipeline.handlers import HANDLERS, Outcome

log = structlog.get_logger("clerk_sync.worker")


def process_delivery(factory: sessionmaker[Session], delivery: ledger.Delivery, *, settings: Settings) -> str:
    """Apply ``delivery`` once and return the status its row ends in."""
    started = time.perf_counter()
    payload: dict[str, Any] | None = None
    event_type: str | None = None
    entity_id: str | None = None
    try:
        payload = decode_body(delivery.body)
        parsed = parse_delivery(delivery, payload)
        event_type, entity_id = parsed.event_type, parsed.entity_id
        structlog.contextvars.bind_contextvars(event_type=event_type)
        for attempt in deadlock_retries():
            with attempt, factory.begin() as session:
                status = _apply(session, delivery, payload, event_type, entity_id, settings)
            if not attempt.retry_state.outcome.failed:  # type: ignore[union-attr]  # committed
                outcome = "duplicate" if session.info.get("duplicate") else status
                metrics.event_handled(
                    event_type, outcome, seconds=time.perf_counter() - started, svix_timestamp=delivery.svix_timestamp
                )
                return status
    except Exception as exc:  # sorted by classify(); nothing is swallowed
        kind = classify(exc)
        if kind is Failure.UNAVAILABLE:
            log.warning("database_unavailable", error=describe(exc))
            raise DatabaseUnavailable(describe(exc)) from exc
        error = str(exc) if isinstance(exc, PermanentEventError) else describe(exc)
        if kind is not Failure.PERMANENT:
            log.warning("event_attempt_failed", error=error, exc_info=kind is Failure.TRANSIENT)
        status = _record_failure(
            factory,
            delivery,
            payload,
            event_type,
            entity_id,
            error,
            permanent=kind is Failure.PERMANENT,
            settings=settings,
        )
        metrics.event_handled(event_type, status, seconds=time.perf_counter() - started, svix_timestamp=None)
        return status
    raise AssertionError("unreachable: tenacity either returns or reraises")


def parse_delivery(delivery: ledger.Delivery, payload: dict[str, Any] | None = None) -> ledger.Parsed:
    """The body as an event with a type; PermanentEventError when it is not one."""
    payload = decode_body(delivery.body) if payload is None else payload
    event_type = event_type_of(payload)
    data = payload.get("data")
    entity_id = data["id"][:64] if isinstance(data, dict) and isinstance(data.get("id"), str) else None
    return ledger.Parsed(delivery=delivery, payload=payload, event_type=event_type, entity_id=entity_id)


def deadlock_retries() -> Retrying:
    """A few quick in-process attempts for deadlocks and serialization failures."""
    return Retrying(
        retry=retry_if_exception(lambda exc: classify(exc) is Failure.RETRY_NOW),
        stop=stop_after_attempt(5),
        wait=wait_random_exponential(multiplier=0.05, max=1),
        reraise=True,
    )


def _apply(
    session: Session,
    delivery: ledger.Delivery,
    payload: dict[str, Any],
    event_type: str,
    entity_id: str | None,
    settings: Settings,
) -> str:
    if ledger.is_paused(session):
        ledger.hold(session, delivery, payload=payload, event_type=event_type, entity_id=entity_id)
        log.info("event_held_paused")
        return "pending"
    claimed = ledger.claim(session, delivery, payload=payload, event_type=event_type, entity_id=entity_id)
    if claimed.status in ("processed", "ignored", "dead"):
        log.info("event_duplicate", status=claimed.status)
        session.info["duplicate"] = True  # read by process_delivery for the metrics
        return claimed.status
    outcome = _dispatch(session, payload, event_type, settings)
    ledger.finish(session, delivery.svix_id, status=outcome.status, reason=outcome.reason)
    if settings.deleted_user_pii == "scrub":
        _scrub_if_user_deleted(session, payload)
    log.info("event_applied", status=outcome.status, reason=outcome.reason)
    return outcome.status


def _dispatch(session: Session, payload: dict[str, Any], event_type: str, settings: Settings) -> Outcome:
    handler = HANDLERS.get(event_type)
    if handler is None:
        return Outcome("ignored", f"event type {event_type!r} is not synced")
    envelope = parse_envelope(payload)
    if settings.clerk_instance_id and envelope.instance_id and envelope.instance_id != settings.clerk_instance_id:
        log.warning("event_from_other_instance", instance_id=envelope.instance_id)
        return Outcome("ignored", f"from Clerk instance {envelope.instance_id}, not {settings.clerk_instance_id}")
    return handler(session, envelope, settings)


def _scrub_if_user_deleted(session: Session, payload: dict[str, Any]) -> None:
    """A late event about a scrubbed user must not keep the PII it carries."""
    data = payload.get("data") or {}
    user_data = data.get("public_user_data") if isinstance(data, dict) else None
    user_id = user_data.get("user_id") if isinstance(user_data, dict) else data.get("id")
    if isinstance(user_id, str) and user_id.startswith("user_") and apply.is_user_deleted(session, user_id):
        apply.scrub_user_events(session, user_id)


def _record_failure(
    factory: sessionmaker[Session],
    delivery: ledger.Delivery,
    payload: dict[str, Any] | None,
    event_type: str | None,
    entity_id: str | None,
    error: str,
    *,
    permanent: bool,
    settings: Settings,
) -> str:
    def record(stored_payload: dict[str, Any] | None) -> str:
        with factory.begin() as session:
            return ledger.record_failure(
                session,
                delivery,
                payload=stored_payload,
                event_type=event_type,
                entity_id=entity_id,
                error=error,
                permanent=permanent,
                max_attempts=settings.max_attempts,
                retry_base_seconds=settings.retry_base_seconds,
            )

    try:
        try:
            status = record(payload)
        except DataError:
            # The payload itself is what Postgres refuses (e.g. \u0000 in jsonb): keep the raw text.
            status = record(None)
    except Exception as exc:
        if classify(exc) is Failure.UNAVAILABLE:
            raise DatabaseUnavailable(describe(exc)) from exc
        raise
    log.warning("event_failed", status=status, error=error)
    return status
