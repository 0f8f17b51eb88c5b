"""The receipt protocol: how an event accepted by the ingress is never lost inside Redis.

kombu's Redis transport pops a message (BRPOP) and only then records it as unacked; a
connection cut or a SIGKILL between the two loses the message, and no Postgres row knows
of it yet. Receipts close that gap.

Who does what:

- **The publisher writes** (``shared.publish``): every message it LPUSHes goes with a
  receipt, in the same MULTI/EXEC: ``HSET receipts svix_id [svix_timestamp, body]`` and
  ``ZADD receipts-index now svix_id``. Whatever enqueues an event (the ingress, the
  sweeper, a replay, a requeue) goes through the publisher, so every queued message has one.
- **The worker forgets** (``forget``): once the batch holding an event has committed, its
  `webhook_events` row exists and the receipt is dropped. Forgetting is best effort: a
  receipt left behind is forgotten by the next recovery pass.
- **Recovery re-enqueues** (``recover_lost``, run by beat's sweep): a receipt older than
  ``older_than_seconds`` whose svix-id has a `webhook_events` row is forgotten; one
  without a row is enqueued again (with a fresh receipt time) unless its message may
  still be waiting in the queue.

Invariants:

1. A 2xx from the ingress implies the message and its receipt are both in Redis.
2. A receipt is only removed after Postgres holds the event's row (worker) or was seen
   to hold it (recovery).
3. The queue is first in, first out and every message has a receipt written with it, so
   the newest receipts, as many as there are queued messages, may belong to messages still
   waiting: recovery leaves them alone. Every older receipt without a row belongs to a
   message a worker took and lost (or still holds: re-enqueueing it is a harmless duplicate).
4. Recovery never waits on anything but time: a receipt is re-enqueued at most
   ``older_than_seconds`` plus one sweep interval after it was written or last re-enqueued.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.models import WebhookEvent

# How many receipts one recovery pass looks at.
RECOVERY_BATCH = 500


def receipt_keys(queue_name: str) -> tuple[str, str]:
    """Redis keys: the hash svix_id -> [svix_timestamp, body], and its age index."""
    return f"clerk-sync:receipts:{queue_name}", f"clerk-sync:receipts-index:{queue_name}"


def add(pipe: Any, queue_name: str, *, svix_id: str, svix_timestamp: int | None, body: str) -> None:
    """Queue the receipt's writes on ``pipe`` (the publisher's MULTI, beside the LPUSH)."""
    receipts, index = receipt_keys(queue_name)
    pipe.hset(receipts, svix_id, json.dumps([svix_timestamp, body]))
    pipe.zadd(index, {svix_id: time.time()})


def forget(client: Any, queue_name: str, svix_ids: Iterable[str]) -> None:
    """Drop the receipts of events Postgres now knows about."""
    svix_ids = list(svix_ids)
    if svix_ids:
        receipts, index = receipt_keys(queue_name)
        pipe = client.pipeline(transaction=False)
        pipe.hdel(receipts, *svix_ids)
        pipe.zrem(index, *svix_ids)
        pipe.execute()


Republish = Callable[[str, int | None, str], None]


def recover_lost(
    session: Session, client: Any, republish: Republish, *, queue_name: str, older_than_seconds: float
) -> int:
    """Re-enqueue accepted events whose message vanished before any worker recorded them.

    ``republish(svix_id, svix_timestamp, body)`` enqueues one event again (and writes its
    receipt afresh). Returns how many were re-enqueued. See invariant 3 for which
    receipts are left alone.
    """
    receipts, index = receipt_keys(queue_name)
    cutoff = time.time() - older_than_seconds
    with client.pipeline(transaction=True) as snapshot:
        snapshot.zrangebyscore(index, "-inf", cutoff, start=0, num=RECOVERY_BATCH)
        snapshot.zcard(index)
        snapshot.llen(queue_name)
        oldest, receipt_count, queued = snapshot.execute()
    svix_ids = [raw.decode() for raw in oldest]  # the oldest receipts, by age rank from 0
    if not svix_ids:
        return 0
    known = set(session.scalars(select(WebhookEvent.svix_id).where(WebhookEvent.svix_id.in_(svix_ids))))
    forget(client, queue_name, sorted(known))
    # Only receipts older than every queued message belong to messages a worker has taken.
    taken = max(receipt_count - queued, 0)
    lost = [svix_id for svix_id in svix_ids[:taken] if svix_id not in known]
    requeued = 0
    for svix_id, raw in zip(lost, client.hmget(receipts, lost) if lost else [], strict=True):
        if raw is None:  # forgotten meanwhile by a worker
            client.zrem(index, svix_id)
            continue
        svix_timestamp, body = json.loads(raw)
        republish(svix_id, svix_timestamp, body)
        requeued += 1
    return requeued
