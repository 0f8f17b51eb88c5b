"""The receipt protocol: how an event accepted by the ingress is never lost inside Redis.

kombu's Redis transport pops a message (BRPOP) and only then records it as unacked; a
connection cut or a SIGKILL between the two loses the message, and no Postgres row knows
of it yet. Receipts close that gap.

Who does what:

- **The publisher writes** (``shared.publish``, with ``add_commands``): every message it
  LPUSHes goes with a receipt, in the same MULTI/EXEC: ``HSET receipts svix_id [svix_timestamp, body]`` and
  ``ZADD NX receipts-index now svix_id``. Whatever enqueues an event (the ingress, the
  sweeper, a replay, a batch handing its events back) goes through the publisher, so every
  queued message has one. A second delivery of a svix-id keeps the first one's time (NX):
  the time of a receipt is that of the oldest message it may stand for.
- **The worker forgets** (``forget_on``): once the batch holding an event has committed, its
  `webhook_events` row exists and the receipt is dropped. Forgetting is best effort: a
  receipt left behind is forgotten by the next recovery pass.
- **Recovery re-enqueues** (``recover_lost``, run by beat's sweep): a receipt older than
  ``older_than_seconds`` whose svix-id has a `webhook_events` row is forgotten; one
  without a row is enqueued again, and its time set to now (``touch_on``), unless its
  message may still be waiting in the queue. Whoever enqueues an event again touches it.

Invariants:

1. A 2xx from the ingress implies the message and its receipt are both in Redis.
2. A receipt is only removed after Postgres holds the event's row (worker) or was seen
   to hold it (recovery).
3. The queue is first in, first out: BRPOP takes from the head, the publisher pushes at the
   tail. So every receipt older than the receipt of the message at the head of the queue
   belongs to a message that has left the queue: a worker holds it (or held it and died, or
   lost it between BRPOP and kombu's unacked hash). Recovery leaves every newer receipt alone,
   so a backlog longer than ``older_than_seconds`` (a bulk import) is not enqueued twice, and it
   defers nothing taken: a taken message is behind the head the moment it is taken. (A message
   kombu puts back at the head after a worker died is older than the rest: while it waits
   there, recovery waits with it, for as long as the head takes to be consumed.)
4. Recovery never waits on anything but time and the head of the queue: a receipt whose
   message was taken is re-enqueued at most ``older_than_seconds`` plus one sweep interval
   after it was written or last re-enqueued (``shared.timings`` bounds both).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable
from typing import Any

# How many receipts one recovery pass looks at.
RECOVERY_BATCH = 500


def receipt_keys(queue_name: str) -> tuple[str, str]:
    """Redis keys: the hash svix_id -> [svix_timestamp, body], and its age index."""
    return f"clerk-sync:receipts:{queue_name}", f"clerk-sync:receipts-index:{queue_name}"


def add_commands(
    queue_name: str, *, svix_id: str, svix_timestamp: int | None, body_json: str
) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """The receipt's two writes as Redis commands, for the publisher's MULTI beside the LPUSH.

    ``body_json`` is ``json.dumps(body)``, which the publisher has already made for the
    message: the stored value is ``json.dumps([svix_timestamp, body])`` without encoding the
    body a second time (``recover_lost`` reads it back with ``json.loads``).
    """
    receipts, index = receipt_keys(queue_name)
    value = f"[{json.dumps(svix_timestamp)}, {body_json}]"
    return ("HSET", receipts, svix_id, value), ("ZADD", index, "NX", time.time(), svix_id)


def forget_on(pipe: Any, queue_name: str, svix_ids: list[str]) -> None:
    """Queue on ``pipe`` the removal of the receipts of events Postgres now knows about."""
    if svix_ids:
        receipts, index = receipt_keys(queue_name)
        pipe.hdel(receipts, *svix_ids)
        pipe.zrem(index, *svix_ids)


def forget(client: Any, queue_name: str, svix_ids: Iterable[str]) -> None:
    """Drop the receipts of events Postgres now knows about."""
    pipe = client.pipeline(transaction=False)
    forget_on(pipe, queue_name, list(svix_ids))
    pipe.execute()


def touch_on(pipe: Any, queue_name: str, svix_ids: list[str]) -> None:
    """Queue on ``pipe``: these events were just enqueued again, their receipts are new (XX)."""
    if svix_ids:
        _, index = receipt_keys(queue_name)
        pipe.zadd(index, dict.fromkeys(svix_ids, time.time()), xx=True)


Republish = Callable[[str, int | None, str], None]
# Which of these svix-ids have a `webhook_events` row: asked of Postgres by the caller (the
# sweeper), so that this module, which the ingress imports to publish, needs no database code.
Recorded = Callable[[list[str]], set[str]]


def recover_lost(
    client: Any, recorded: Recorded, republish: Republish, *, queue_name: str, older_than_seconds: float
) -> int:
    """Re-enqueue accepted events whose message vanished before any worker recorded them.

    ``recorded(svix_ids)`` says which of them Postgres holds; ``republish(svix_id, svix_timestamp,
    body)`` enqueues one event again. Returns how many were re-enqueued. See invariant 3 for which
    receipts are left alone.
    """
    receipts, index = receipt_keys(queue_name)
    cutoff = min(time.time() - older_than_seconds, _head_receipt_time(client, queue_name))
    oldest = client.zrangebyscore(index, "-inf", f"({cutoff}", start=0, num=RECOVERY_BATCH)
    svix_ids = [raw.decode() for raw in oldest]
    if not svix_ids:
        return 0
    known = recorded(svix_ids)
    forget(client, queue_name, sorted(known))
    lost = [svix_id for svix_id in svix_ids if svix_id not in known]
    requeued = []
    for svix_id, raw in zip(lost, client.hmget(receipts, lost) if lost else [], strict=True):
        if raw is None:  # forgotten meanwhile by a worker
            client.zrem(index, svix_id)
            continue
        svix_timestamp, body = json.loads(raw)
        republish(svix_id, svix_timestamp, body)
        requeued.append(svix_id)
    pipe = client.pipeline(transaction=False)
    touch_on(pipe, queue_name, requeued)
    pipe.execute()
    return len(requeued)


# How far from the head of the queue to look for a message that still has a receipt.
_HEAD_SCAN = 16


def _head_receipt_time(client: Any, queue_name: str) -> float:
    """The receipt time of the first message at the head of the queue that has one (inf: none).

    Messages without a receipt (the second copy of an event already applied) are skipped; if
    the first ``_HEAD_SCAN`` all lack one, nothing is presumed lost this time (-inf).
    """
    _, index = receipt_keys(queue_name)
    head = client.lrange(queue_name, -_HEAD_SCAN, -1)[::-1]  # BRPOP takes from the right
    if not head:
        return math.inf
    ids = [_svix_id_of(entry) for entry in head]
    for score in client.zmscore(index, ids):
        if score is not None:
            return float(score)
    return -math.inf


def _svix_id_of(entry: bytes) -> str:
    """The svix-id of a queue entry: the Celery task id (see ``shared.publish``)."""
    try:
        return str(json.loads(entry)["headers"]["id"])
    except (ValueError, KeyError, TypeError):
        return ""
