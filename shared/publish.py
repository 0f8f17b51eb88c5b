"""The one publisher: every event put on the queue goes through ``EventPublisher.publish``.

The message is Celery's ``process_event(svix_id, svix_timestamp, body)`` with the svix-id
as task id, so a redelivery or a replay of one event is recognisable everywhere. The
ingress, the sweeper, replays and requeues all publish here, so every message carries a
receipt (``shared.receipts``) and a broker failure always surfaces as ``QueueUnavailable``.

Why it is built this way (the ingress pays for every microsecond of it):

- **A template prepared at start-up.** Celery (``as_task_v2``) and kombu's serializer
  build one message with placeholder values, wrapped in the envelope kombu's Redis
  transport stores (what ``Channel.prepare_message`` and ``_inplace_augment_message``
  produce). That JSON text becomes two ``str.format`` patterns; a publish only fills in
  the JSON-encoded svix-id, timestamp, body, printable arguments, eta and delivery tag.
  A worker cannot tell the result from ``send_task``'s: tests/test_publisher.py compares
  both field by field and has a real worker consume it.
- **One round trip.** ``MULTI``, the ``LPUSH``, the receipt's writes and ``EXEC`` are
  packed into one send on a pooled connection and their replies read back: the message
  and its receipt exist together or not at all, for one network round trip.
- **The body JSON-encoded once**: the message and the receipt (``receipts.add_commands``)
  both embed the same ``json.dumps(body)``, and the commands are plain tuples handed to
  hiredis's packer (no redis-py pipeline recording them first).
- **A pool sized to the server's threads**: each thread keeps one connection of its own
  (``_ThreadConnections``), so a request never waits for, checks out or opens a connection.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import math
import os
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from shared import receipts
from shared.config import Settings
from shared.redis_client import redis_client

PROCESS_EVENT_TASK = "clerk_sync.process_event"
SWEEP_TASK = "clerk_sync.sweep"
PURGE_PAYLOADS_TASK = "clerk_sync.purge_payloads"
RECONCILE_TASK = "clerk_sync.reconcile"

# MULTI and EXEC as the Redis protocol spells them.
_MULTI, _EXEC = b"*1\r\n$5\r\nMULTI\r\n", b"*1\r\n$4\r\nEXEC\r\n"
# A placeholder that no JSON value of a real message can contain (NUL is escaped as \u0000).
_SLOT = "\x00slot:{}\x00"


# At maxmemory (deploy/redis.conf: noeviction) Redis refuses every write, the workers' too: one
# could not even connect (kombu writes when it starts consuming), and a full queue would never
# drain. So the publisher refuses events once Redis holds this share of its maxmemory, leaving
# the rest to the workers' bookkeeping; it reads Redis's memory at most once per interval.
BROKER_FULL_SHARE = 0.8
MEMORY_CHECK_SECONDS = 0.1


class QueueUnavailable(Exception):
    """The broker would not take a message; nothing was enqueued. One line, no payload."""


def control_queue(queue_name: str) -> str:
    """Periodic jobs get a queue of their own so a backlog never delays a sweep."""
    return f"{queue_name}-control"


def _argsrepr(svix_id: str, svix_timestamp: int | None, body: str) -> str:
    # Celery logs and ships argsrepr around; the body holds PII, so only its size goes there.
    return repr((svix_id, svix_timestamp, f"<body: {len(body)} chars>"))


def _format_pattern(json_text: str, slots: Iterable[str]) -> str:
    """``json_text`` as a ``str.format`` pattern: braces escaped, each quoted placeholder a field."""
    pattern = json_text.replace("{", "{{").replace("}", "}}")
    for name in slots:
        placeholder = json.dumps(_SLOT.format(name))
        if placeholder not in pattern:
            raise RuntimeError(f"message template: Celery's message has no place for {name}")
        pattern = pattern.replace(placeholder, "{" + name + "}")
    return pattern


@dataclass(frozen=True)
class MessageTemplate:
    """The queue entry of ``process_event`` as two patterns: Celery's body and kombu's envelope."""

    body_pattern: str  # fields: svix_id, svix_timestamp, body (each already JSON)
    envelope_pattern: str  # fields: payload, svix_id, eta, argsrepr, delivery_tag (each already JSON)

    @classmethod
    def build(cls, queue_name: str) -> MessageTemplate:
        """Let Celery and kombu build one message with placeholders, and keep its shape."""
        from celery import Celery
        from kombu.serialization import dumps

        names = ("svix_id", "svix_timestamp", "body", "payload", "eta", "argsrepr", "delivery_tag")
        slot = {name: _SLOT.format(name) for name in names}
        # A bare app: only its message builder is used, never its connection.
        app = Celery("clerk_sync_publisher", set_as_current=False)
        message = app.amqp.as_task_v2(
            slot["svix_id"],
            PROCESS_EVENT_TASK,
            args=(slot["svix_id"], slot["svix_timestamp"], slot["body"]),
            argsrepr=slot["argsrepr"],
            kwargsrepr="{}",
            ignore_result=None,  # as send_task: the worker then follows the task's own setting
        )
        message.headers["eta"] = slot["eta"]
        content_type, content_encoding, data = dumps(message.body, serializer="json")
        envelope = {
            "body": slot["payload"],
            "content-encoding": content_encoding,
            "content-type": content_type,
            "headers": message.headers,
            "properties": {
                **message.properties,
                "delivery_mode": 2,
                "delivery_info": {"exchange": "", "routing_key": queue_name},
                "priority": 0,
                "body_encoding": "base64",
                "delivery_tag": slot["delivery_tag"],
            },
        }
        body_text = data.decode() if isinstance(data, bytes) else data
        return cls(
            body_pattern=_format_pattern(body_text, names[:3]),
            envelope_pattern=_format_pattern(json.dumps(envelope), ("svix_id", *names[3:])),
        )

    def render(
        self, *, svix_id: str, svix_timestamp: int | None, body: str, eta: str | None, body_json: str | None = None
    ) -> str:
        """The queue entry for one event (JSON text), as kombu's Redis transport stores it.

        ``body_json`` is ``json.dumps(body)`` when the caller has it already (the publisher
        uses it for the receipt too).
        """
        svix_id_json = json.dumps(svix_id)
        payload = self.body_pattern.format(
            svix_id=svix_id_json,
            svix_timestamp=json.dumps(svix_timestamp),
            body=json.dumps(body) if body_json is None else body_json,
        )
        return self.envelope_pattern.format(
            payload='"' + base64.b64encode(payload.encode()).decode() + '"',
            svix_id=svix_id_json,
            eta=json.dumps(eta),
            argsrepr=json.dumps(_argsrepr(svix_id, svix_timestamp, body)),
            delivery_tag='"' + str(uuid.uuid4()) + '"',
        )


class _ThreadConnections(threading.local):
    """One Redis connection per thread: a pool as large as the server's threads, without checkout.

    A pooled checkout costs about 20 µs here (a lock and a readability poll); a request
    thread only ever needs one connection at a time, so it keeps its own. A thread that
    ends takes its connection with it; a forked child makes its own.
    """

    owner_pid: int = 0
    connection: Any = None


class EventPublisher:
    """LPUSHes ``process_event`` messages built from a template, each with its receipt, in one round trip."""

    def __init__(self, settings: Settings, *, timeout: float = 1.0) -> None:
        import hiredis
        import redis

        # hiredis packs in C what redis-py's packer does in Python (a fifth of the time).
        self._pack = hiredis.pack_command
        self._errors = (redis.RedisError, OSError)
        # A connection closed by the other side (not a timeout: a hung Redis is not waited for twice).
        self._dropped = (redis.ConnectionError, ConnectionError)
        self._response_error = redis.ResponseError
        self._queue = settings.queue_name
        self._template = MessageTemplate.build(settings.queue_name)
        # Fail fast: an outage is a 503 within 2 s at the ingress, one line elsewhere.
        self._redis = redis_client(settings.redis_url, timeout=timeout)
        self._local = _ThreadConnections()
        self._memory_checked_at = -math.inf  # time.monotonic() of the last look at Redis's memory
        self._full = False

    @property
    def redis(self) -> Any:
        return self._redis

    def message(
        self,
        *,
        svix_id: str,
        svix_timestamp: int | None,
        body: str,
        countdown: float | None = None,
        body_json: str | None = None,
    ) -> str:
        """The queue entry for one event, as kombu's Redis transport would store it."""
        eta = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=countdown)).isoformat() if countdown else None
        return self._template.render(
            svix_id=svix_id, svix_timestamp=svix_timestamp, body=body, eta=eta, body_json=body_json
        )

    def publish(self, *, svix_id: str, svix_timestamp: int | None, body: str, countdown: float | None = None) -> None:
        """Put one event and its receipt on the queue; QueueUnavailable if Redis can't take them."""
        if self._broker_full():
            raise QueueUnavailable("BrokerFull")
        body_json = json.dumps(body)  # once: the message and the receipt both carry it
        entry = self.message(
            svix_id=svix_id, svix_timestamp=svix_timestamp, body=body, countdown=countdown, body_json=body_json
        )
        receipt = receipts.add_commands(
            self._queue, svix_id=svix_id, svix_timestamp=svix_timestamp, body_json=body_json
        )
        self._transaction((("LPUSH", self._queue, entry), *receipt))

    def republish(self, svix_id: str, svix_timestamp: int | None, body: str) -> None:
        """``publish`` in the positional shape ``receipts.recover_lost`` calls."""
        self.publish(svix_id=svix_id, svix_timestamp=svix_timestamp, body=body)

    def _broker_full(self) -> bool:
        """Whether Redis holds ``BROKER_FULL_SHARE`` of its maxmemory, as last read (at most once per
        ``MEMORY_CHECK_SECONDS``; threads racing to read it merely read it twice)."""
        now = time.monotonic()
        if now - self._memory_checked_at < MEMORY_CHECK_SECONDS:
            return self._full
        self._memory_checked_at = now
        try:
            memory = self._redis.info("memory")
        except self._response_error:  # INFO refused (a managed Redis may rename it): never look again
            self._memory_checked_at, self._full = math.inf, False
            return False
        except self._errors as exc:  # unreachable: so is the queue, say so without a second timeout
            raise QueueUnavailable(type(exc).__name__) from None
        limit = int(memory.get("maxmemory") or 0)
        self._full = bool(limit) and int(memory.get("used_memory") or 0) >= BROKER_FULL_SHARE * limit
        return self._full

    def _connection(self) -> Any:
        local = self._local
        if local.connection is None or local.owner_pid != os.getpid():
            pool = self._redis.connection_pool
            local.connection = pool.connection_class(**pool.connection_kwargs)
            local.owner_pid = os.getpid()
        return local.connection

    def _transaction(self, commands: tuple[tuple[Any, ...], ...]) -> None:
        """MULTI, ``commands``, EXEC in one send; QueueUnavailable unless every command succeeded."""
        packed = b"".join([_MULTI, *[self._pack(command) for command in commands], _EXEC])
        connection = self._connection()
        try:
            replies = self._send(connection, packed, len(commands))
        except self._dropped:
            # The thread's connection was dropped while it idled (Redis restarted, a proxy or
            # CLIENT KILL closed it): once more, on a fresh one. A transaction that did run before
            # the drop is then queued twice, which the worker's dedupe on svix-id absorbs.
            try:
                replies = self._send(connection, packed, len(commands))
            except self._errors as exc:
                raise QueueUnavailable(type(exc).__name__) from None
        except self._errors as exc:
            raise QueueUnavailable(type(exc).__name__) from None
        if replies is None or any(isinstance(reply, Exception) for reply in replies):
            raise QueueUnavailable("TransactionFailed")

    def _send(self, connection: Any, packed: bytes, count: int) -> Any:
        """MULTI, ``count`` commands and EXEC sent as one; EXEC's replies. On any error the connection
        is closed (replies may still be unread): the next use starts on a fresh one."""
        try:
            # (Re)connects if needed, and PINGs a connection idle past its health-check interval.
            connection.send_packed_command([packed])
            for _ in range(count + 1):  # +OK for MULTI, +QUEUED for each command
                connection.read_response()
            return connection.read_response()
        except self._errors:
            connection.disconnect()
            raise

    def refusal(self) -> str | None:
        """Why Redis would not take an event now ("unreachable", "refuses_writes", "full"), or None:
        the ingress's readiness.

        A write is tried, not a PING: a read-only replica, a Redis at maxmemory or one whose
        snapshots fail (MISCONF) answers PING but refuses every publish. The key expires by itself.
        """
        try:
            self._redis.set(f"clerk-sync:readiness:{self._queue}", "1", px=60_000)
        except self._response_error:
            return "refuses_writes"
        except self._errors:
            return "unreachable"
        if self._memory_checked_at != math.inf:  # read it now, not as last read (unless INFO is refused)
            self._memory_checked_at = -math.inf
        try:
            return "full" if self._broker_full() else None
        except QueueUnavailable:
            return "unreachable"

    def close(self) -> None:
        if self._local.connection is not None:
            self._local.connection.disconnect()
        self._redis.close()
