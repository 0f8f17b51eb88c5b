"""Parse a raw Clerk event body into the few envelope fields the worker needs.

Clerk's envelope is ``{data, object: "event", type, timestamp, instance_id, ...}``.
Anything that is not such an object is a permanent error; missing and extra keys in
``data`` are tolerated (older payload shapes drop some).
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

from worker.pipeline.errors import PermanentEventError

# Clerk sends milliseconds; its OpenAPI examples use seconds. Below this, it's seconds.
_SECONDS_CUTOFF = 10**12


@dataclass(frozen=True)
class Envelope:
    type: str
    data: dict[str, Any]
    timestamp_ms: int | None
    instance_id: str | None
    payload: dict[str, Any]

    @property
    def entity_id(self) -> str:
        return str(self.data["id"])


def to_millis(value: Any) -> int | None:
    """A Clerk timestamp (seconds or milliseconds, number or numeric string) in ms."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    if number != number or number < 0:  # NaN or negative
        return None
    return int(number * 1000) if number < _SECONDS_CUTOFF else int(number)


def millis_to_datetime(ms: int | None) -> dt.datetime | None:
    if ms is None:
        return None
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC)


def decode_body(body: str) -> dict[str, Any]:
    """The body as a JSON object, or PermanentEventError saying why not."""
    try:
        payload = json.loads(body)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise PermanentEventError(f"body is not JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise PermanentEventError("body is not a JSON object")
    return payload


def event_type_of(payload: dict[str, Any]) -> str:
    event_type = payload.get("type")
    if not isinstance(event_type, str) or not event_type:
        raise PermanentEventError("event has no 'type'")
    return event_type[:128]


def parse_envelope(payload: dict[str, Any]) -> Envelope:
    """Validate an event the worker applies; PermanentEventError for what never can."""
    event_type = event_type_of(payload)
    data = payload.get("data")
    if not isinstance(data, dict):
        raise PermanentEventError("event has no 'data' object")
    entity_id = data.get("id")
    if not isinstance(entity_id, str) or not entity_id:
        raise PermanentEventError("event has no 'data.id'")
    if len(entity_id) > 64:
        raise PermanentEventError("'data.id' is longer than 64 characters")
    instance_id = payload.get("instance_id")
    return Envelope(
        type=event_type,
        data=data,
        timestamp_ms=to_millis(payload.get("timestamp")),
        instance_id=instance_id if isinstance(instance_id, str) else None,
        payload=payload,
    )
