"""The one publisher: every event put on the queue goes through ``EventPublisher.publish``.

The message is Celery's ``process_event(svix_id, svix_timestamp, body)`` with the svix-id
as task id, so a redelivery or a replay of one event is recognisable everywhere. The
ingress, the sweeper, replays and requeues all publish here, so every message carries a
receipt (``shared.receipts``) and a broker failure always surfaces as ``QueueUnavailable``.

``send_task`` costs about 0.6 ms a call, most of it routing, signals and kombu's Redis
transport building a client object for every put; one pipelined MULTI/EXEC costs a
fraction of that. The message is built by Celery (``as_task_v2``) and serialized by
kombu, then wrapped in the envelope kombu's Redis transport stores (what
``Channel.prepare_message`` and ``_inplace_augment_message`` produce), so a worker
cannot tell it from ``send_task``'s; a test compares both field by field.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import uuid
from typing import Any

from shared import receipts
from shared.config import Settings
from shared.redis_client import redis_client

PROCESS_EVENT_TASK = "clerk_sync.process_event"
SWEEP_TASK = "clerk_sync.sweep"
PURGE_PAYLOADS_TASK = "clerk_sync.purge_payloads"
RECONCILE_TASK = "clerk_sync.reconcile"


class QueueUnavailable(Exception):
    """The broker would not take a message; nothing was enqueued. One line, no payload."""


def control_queue(queue_name: str) -> str:
    """Periodic jobs get a queue of their own so a backlog never delays a sweep."""
    return f"{queue_name}-control"


def _argsrepr(svix_id: str, svix_timestamp: int | None, body: str) -> str:
    # Celery logs and ships argsrepr around; the body holds PII, so only its size goes there.
    return repr((svix_id, svix_timestamp, f"<body: {len(body)} chars>"))


class EventPublisher:
    """Builds Celery messages for the event task and LPUSHes them with their receipts."""

    def __init__(self, settings: Settings, *, timeout: float = 1.0) -> None:
        from celery import Celery

        self._queue = settings.queue_name
        # A bare app: only its message builder is used, never its connection.
        self._app = Celery("clerk_sync_publisher", set_as_current=False)
        # Fail fast: an outage is a 503 within 2 s at the ingress, one line elsewhere.
        self._redis = redis_client(settings.redis_url, timeout=timeout)

    @property
    def redis(self) -> Any:
        return self._redis

    def message(self, *, svix_id: str, svix_timestamp: int | None, body: str, countdown: float | None = None) -> str:
        """The queue entry for one event, as kombu's Redis transport would store it."""
        from kombu.serialization import dumps

        eta = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=countdown) if countdown else None
        message = self._app.amqp.as_task_v2(
            svix_id,
            PROCESS_EVENT_TASK,
            args=(svix_id, svix_timestamp, body),
            eta=eta,
            argsrepr=_argsrepr(svix_id, svix_timestamp, body),
            kwargsrepr="{}",
        )
        content_type, content_encoding, data = dumps(message.body, serializer="json")
        envelope = {
            "body": base64.b64encode(data.encode() if isinstance(data, str) else data).decode(),
            "content-encoding": content_encoding,
            "content-type": content_type,
            "headers": message.headers,
            "properties": {
                **message.properties,
                "delivery_mode": 2,
                "delivery_info": {"exchange": "", "routing_key": self._queue},
                "priority": 0,
                "body_encoding": "base64",
                "delivery_tag": str(uuid.uuid4()),
            },
        }
        return json.dumps(envelope)

    def publish(self, *, svix_id: str, svix_timestamp: int | None, body: str, countdown: float | None = None) -> None:
        """Put one event and its receipt on the queue; QueueUnavailable if Redis can't take them."""
        import redis

        entry = self.message(svix_id=svix_id, svix_timestamp=svix_timestamp, body=body, countdown=countdown)
        # One MULTI/EXEC: the message and its receipt exist together or not at all.
        pipe = self._redis.pipeline(transaction=True)
        pipe.lpush(self._queue, entry)
        receipts.add(pipe, self._queue, svix_id=svix_id, svix_timestamp=svix_timestamp, body=body)
        try:
            pipe.execute()
        except (redis.RedisError, OSError) as exc:
            raise QueueUnavailable(type(exc).__name__) from None

    def republish(self, svix_id: str, svix_timestamp: int | None, body: str) -> None:
        """``publish`` in the positional shape ``receipts.recover_lost`` calls."""
        self.publish(svix_id=svix_id, svix_timestamp=svix_timestamp, body=body)

    def ping(self) -> bool:
        """True when Redis answers (the ingress's readiness)."""
        import redis

        try:
            return bool(self._redis.ping())
        except (redis.RedisError, OSError):
            return False

    def close(self) -> None:
        self._redis.close()
