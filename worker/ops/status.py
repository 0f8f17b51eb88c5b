"""Is the sync keeping up: events per status, the oldest backlog, the queue's depth."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import extract, func, select
from sqlalchemy.orm import Session

from shared.config import Settings
from shared.models import EVENT_STATUSES, WebhookEvent
from shared.redis_client import redis_client

# kombu's Redis transport keeps a queue's messages in one list per priority step
# (the plain name for priority 0) and every delivered-but-unacked one in this hash.
_PRIORITY_SEPARATOR = "\x06\x16"
_PRIORITY_STEPS = (0, 3, 6, 9)
_UNACKED_HASH = "unacked"
_UNACKED_SCAN_LIMIT = 10_000


def status_counts(session: Session) -> dict[str, int]:
    """Rows per status, every status of the contract present (zeros included)."""
    counts = dict.fromkeys(EVENT_STATUSES, 0)
    for status, count in session.execute(select(WebhookEvent.status, func.count()).group_by(WebhookEvent.status)):
        counts[status] = int(count)
    return counts


def oldest_unprocessed_age(session: Session) -> float | None:
    """Seconds since the oldest `pending` or `failed` event arrived; None if there is none."""
    age = session.scalar(
        select(extract("epoch", func.now() - func.min(WebhookEvent.received_at))).where(
            WebhookEvent.status.in_(("pending", "failed"))
        )
    )
    return None if age is None else round(float(age), 3)


@dataclass(frozen=True)
class QueueDepth:
    name: str
    available: bool
    waiting: int | None = None
    unacked: int | None = None
    error: str | None = None


def queue_depth(settings: Settings) -> QueueDepth:
    """Messages waiting in the event queue, and those delivered but not yet acked."""
    name = settings.queue_name
    keys = [name if step == 0 else f"{name}{_PRIORITY_SEPARATOR}{step}" for step in _PRIORITY_STEPS]
    import redis

    client = redis_client(settings.redis_url, timeout=5.0, socket_connect_timeout=2)
    try:
        waiting = sum(int(client.llen(key)) for key in keys)
        unacked = _unacked_for(client, name)
    except redis.RedisError as exc:
        return QueueDepth(name=name, available=False, error=f"{type(exc).__name__}: {exc}")
    finally:
        client.close()
    return QueueDepth(name=name, available=True, waiting=waiting, unacked=unacked)


def _unacked_for(client: Any, queue: str) -> int:
    """Unacked messages routed to ``queue``; the whole hash's size if it is very large."""
    total = int(client.hlen(_UNACKED_HASH))
    if total > _UNACKED_SCAN_LIMIT:
        return total
    count = 0
    for raw in client.hvals(_UNACKED_HASH):
        try:
            _message, _exchange, routing_key = json.loads(raw)
        except (ValueError, TypeError):
            continue
        count += routing_key == queue
    return count
