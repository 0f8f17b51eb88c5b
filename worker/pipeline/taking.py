"""Take what is waiting: the rest of a batch, straight from the queue, as kombu would hold it.

Celery hands each pool process one message at a time (prefetch one). The task then takes up
to ``limit - 1`` more messages from the Redis list in one atomic step, a Lua script that pops
them and records each in kombu's unacked hash and index exactly as kombu's own
``QoS.append`` does (``HSET unacked <tag> [message, exchange, routing_key]``, ``ZADD
unacked_index <now> <tag>``). So a batch is what is waiting when a worker is free, a lone event
is applied at once, and nothing taken this way can be lost:

- if the whole worker dies, kombu's ``restore_visible`` in any live worker puts these messages
  back after the visibility timeout, like any other unacked message (``shared.timings``);
- if only the pool process dies (or is killed at the hard time limit), the main process
  restores them at once (``EventRequest.on_failure``): the script also keeps them in a hash named
  after the delivery tag of the message Celery handed over;
- once their batch has committed they are acked: removed from kombu's hash and index, and that
  hash is dropped.

The queue holds only event messages (periodic jobs have a queue of their own) and no enqueue
path sets an ETA on them, so a message taken here is always one to apply now.
"""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass
from functools import cache
from typing import Any

import structlog
from billiard.einfo import ExceptionWithTraceback
from billiard.exceptions import WorkerLostError
from celery.exceptions import TimeLimitExceeded
from celery.worker.request import Request
from kombu.transport.redis import Channel

from shared.publish import PROCESS_EVENT_TASK
from worker.pipeline.ledger import Delivery

log = structlog.get_logger("clerk_sync.worker")

# kombu's key names (we set none of the transport options that rename them).
UNACKED = Channel.unacked_key
UNACKED_INDEX = Channel.unacked_index_key

# How long a lost batch's record of what it took may outlive it: kombu has restored it by then.
_TAKEN_TTL_SECONDS = 3600

_TAKE = """
local queue, unacked, index, taken = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local limit, now, ttl = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local items = redis.call('RPOP', queue, limit)
if not items then return {} end
local took = {}
for _, item in ipairs(items) do
  local ok, message = pcall(cjson.decode, item)
  local properties = ok and type(message) == 'table' and message['properties']
  local tag = type(properties) == 'table' and properties['delivery_tag']
  local info = type(properties) == 'table' and properties['delivery_info']
  if type(tag) == 'string' and type(info) == 'table' then
    redis.call('HSET', unacked, tag,
      '[' .. item .. ',' .. cjson.encode(info['exchange']) .. ',' .. cjson.encode(info['routing_key']) .. ']')
    redis.call('ZADD', index, now, tag)
    redis.call('HSET', taken, tag, item)
    took[#took + 1] = item
  else
    -- not a kombu message: back to the head of the queue, for Celery to refuse as it would
    redis.call('RPUSH', queue, item)
  end
end
redis.call('EXPIRE', taken, ttl)
return took
"""

# kombu's restore_by_tag for every message the batch took and kombu has not restored yet, in one
# step: each goes back to the head of the queue (RPUSH: BRPOP takes it next).
_RESTORE = """
local queue, unacked, index, taken = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local entries = redis.call('HGETALL', taken)
local restored = 0
for i = 1, #entries, 2 do
  local tag, item = entries[i], entries[i + 1]
  if redis.call('HDEL', unacked, tag) == 1 then
    redis.call('ZREM', index, tag)
    redis.call('RPUSH', queue, item)
    restored = restored + 1
  end
end
redis.call('DEL', taken)
return restored
"""


@dataclass(frozen=True)
class Taken:
    """One message taken from the queue by a batch: its kombu delivery tag and its event."""

    tag: str
    delivery: Delivery


def taken_key(delivery_tag: str) -> str:
    """tag -> message, for what the batch started by Celery's message ``delivery_tag`` took."""
    return f"clerk-sync:taken:{delivery_tag}"


def _keys(queue_name: str, delivery_tag: str) -> list[str]:
    return [queue_name, UNACKED, UNACKED_INDEX, taken_key(delivery_tag)]


def take_waiting(client: Any, queue_name: str, *, delivery_tag: str, limit: int) -> list[Taken]:
    """Pop up to ``limit`` waiting messages, recorded unacked as kombu would; [] if none wait."""
    if limit <= 0:
        return []
    take = _script(client, _TAKE)
    return read_taken(take(keys=_keys(queue_name, delivery_tag), args=_take_args(limit)))


def take_on(pipe: Any, queue_name: str, *, delivery_tag: str, limit: int) -> None:
    """``take_waiting`` queued on ``pipe`` (EVAL: a pipeline never waits for a script load);
    ``read_taken`` its reply."""
    pipe.eval(_TAKE, 4, *_keys(queue_name, delivery_tag), *_take_args(limit))


def _take_args(limit: int) -> list[Any]:
    return [limit, repr(time.time()), _TAKEN_TTL_SECONDS]


def read_taken(raw: list[bytes]) -> list[Taken]:
    """The events of what the take script returned."""
    taken = []
    for item in raw:
        try:
            taken.append(_taken(item))
        except (ValueError, KeyError, TypeError) as exc:
            # Not an event message: left unacked, so kombu hands it back to Celery after the
            # visibility timeout, which deals with it as with any message it cannot run.
            log.warning("queue_entry_not_an_event", error=str(exc)[:200])
    return taken


def _taken(item: bytes) -> Taken:
    """The event a queue entry carries (the envelope of shared.publish / kombu's Redis transport)."""
    envelope = json.loads(item)
    properties, headers = envelope["properties"], envelope["headers"]
    if headers.get("task") != PROCESS_EVENT_TASK:
        raise ValueError(f"task {headers.get('task')!r} on the event queue")
    args, _kwargs, _embed = json.loads(base64.b64decode(envelope["body"]))
    return Taken(tag=properties["delivery_tag"], delivery=Delivery(*args))


def acknowledge(pipe: Any, *, delivery_tag: str, taken: list[Taken]) -> None:
    """Queue on ``pipe`` what kombu's ``QoS.ack`` does for each taken message, and drop the record."""
    tags = [item.tag for item in taken]
    if tags:
        pipe.zrem(UNACKED_INDEX, *tags)
        pipe.hdel(UNACKED, *tags)
    pipe.delete(taken_key(delivery_tag))


def restore_taken(client: Any, queue_name: str, *, delivery_tag: str) -> int:
    """Put a lost batch's taken messages back at the head of the queue; how many were restored."""
    return int(_script(client, _RESTORE)(keys=_keys(queue_name, delivery_tag)))


@cache
def _script(client: Any, source: str) -> Any:
    """The script registered once per client: EVALSHA from then on (redis-py reloads it if needed)."""
    return client.register_script(source)


class EventRequest(Request):
    """Celery's request, which also restores the messages its batch took if its process is lost.

    Celery requeues the message it handed over when the pool process dies
    (``task_reject_on_worker_lost``) or is killed at the hard time limit
    (``task_acks_on_failure_or_timeout=False``); this does the same at once for the rest of
    the batch, instead of leaving them to kombu's visibility timeout.
    """

    def on_failure(self, exc_info: Any, send_failed_event: bool = True, return_ok: bool = False) -> Any:
        exc = exc_info.exception
        if isinstance(exc, ExceptionWithTraceback):  # how billiard hands over a lost process's error
            exc = exc.exc
        if isinstance(exc, WorkerLostError | TimeLimitExceeded):
            self._restore_taken()
        return super().on_failure(exc_info, send_failed_event=send_failed_event, return_ok=return_ok)

    def _restore_taken(self) -> None:
        from shared.config import get_settings
        from worker.pipeline.tasks import redis_for

        settings = get_settings()
        try:
            restored = restore_taken(
                redis_for(settings.redis_url), settings.queue_name, delivery_tag=self.message.delivery_tag
            )
        except Exception as exc:  # kombu's visibility timeout restores them anyway
            log.warning("batch_restore_failed", error=type(exc).__name__)
            return
        if restored:
            log.warning("batch_restored_after_lost_process", count=restored)
