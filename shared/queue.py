"""The queue both sides agree on: task name, message shape, and Celery settings.

The ingress publishes and never imports the worker; the worker consumes. The message
is ``process_event(svix_id, svix_timestamp, body)`` with the svix-id as task id, so a
redelivery or a manual replay of one event is recognisable everywhere.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from typing import Any

from celery import Celery
from kombu import Queue
from kombu.serialization import dumps

from shared.config import Settings

PROCESS_EVENT_TASK = "clerk_sync.process_event"
SWEEP_TASK = "clerk_sync.sweep"
PURGE_PAYLOADS_TASK = "clerk_sync.purge_payloads"
RECONCILE_TASK = "clerk_sync.reconcile"

# Longer than any task (statement timeout 30 s) and any countdown (<= 60 s), so a
# message held by a live worker is never handed out twice; short enough that one
# held by a worker that died is handed to another within 2 minutes.
VISIBILITY_TIMEOUT_SECONDS = 90
MAX_COUNTDOWN_SECONDS = 60

# The worker applies events in batches: up to BATCH_SIZE per transaction, or what
# arrived within BATCH_INTERVAL_SECONDS. Each worker process reserves BATCH_SIZE * 2
# messages (one batch being applied, one filling); all are acked only after their
# batch committed, and redelivered after the visibility timeout if the worker dies.
BATCH_SIZE = 32
BATCH_INTERVAL_SECONDS = 0.05


def celery_config(settings: Settings, *, role: str) -> dict[str, Any]:
    """Celery settings for ``role`` "worker" (consumer, beat, CLI) or "publisher" (ingress).

    The publisher fails fast (1 s connect and socket timeouts, no publish retries)
    so a Redis outage becomes a 503 within 2 seconds instead of a hung request.
    """
    transport: dict[str, Any] = {
        "visibility_timeout": VISIBILITY_TIMEOUT_SECONDS,
        "socket_connect_timeout": 1 if role == "publisher" else 5,
        "socket_timeout": 1 if role == "publisher" else 10,
        "socket_keepalive": True,
        "health_check_interval": 25,
        # Look for messages of dead workers every 5 s (kombu's default scans every 100 s).
        "unacked_restore_interval": 5,
        "unacked_restore_throttle": 1,
        "unacked_mutex_expire": 30,
    }
    if role == "publisher":
        # Connection establishment: one quick try, then give up (kombu failover opts).
        transport.update({"max_retries": 1, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.2})
    return {
        "broker_url": settings.redis_url,
        "broker_transport_options": transport,
        # Celery reads the visibility timeout here too when a result backend is Redis.
        "result_backend_transport_options": {"visibility_timeout": VISIBILITY_TIMEOUT_SECONDS},
        "broker_connection_timeout": 1 if role == "publisher" else 5,
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": 0 if role == "publisher" else None,  # None: forever
        "broker_pool_limit": 10,
        "task_publish_retry": role != "publisher",
        "task_default_queue": settings.queue_name,
        "task_create_missing_queues": True,
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_ignore_result": True,
        "result_backend": None,
        # Delivery guarantees: ack only after the task finished; a worker killed
        # mid-task leaves its messages to be redelivered; each process reserves
        # two batches (see BATCH_SIZE above), no more.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure_or_timeout": True,
        "worker_prefetch_multiplier": BATCH_SIZE * 2,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "worker_enable_soft_shutdown_on_idle": True,
        "worker_soft_shutdown_timeout": 10.0,
        "worker_hijack_root_logger": False,
        "worker_redirect_stdouts": False,
        "task_time_limit": 60,
        "task_soft_time_limit": 45,
        "enable_utc": True,
        "timezone": "UTC",
        # Periodic jobs get a queue of their own so a backlog never delays a sweep.
        "task_queues": (Queue(settings.queue_name), Queue(control_queue(settings))),
        "task_routes": {
            PROCESS_EVENT_TASK: {"queue": settings.queue_name},
            SWEEP_TASK: {"queue": control_queue(settings)},
            PURGE_PAYLOADS_TASK: {"queue": control_queue(settings)},
            RECONCILE_TASK: {"queue": control_queue(settings)},
        },
    }


def control_queue(settings: Settings) -> str:
    return f"{settings.queue_name}-control"


def make_celery(settings: Settings, *, role: str, name: str = "clerk_sync") -> Celery:
    app = Celery(name, set_as_current=False)
    app.conf.update(celery_config(settings, role=role))
    return app


def enqueue_event(
    app: Celery, *, svix_id: str, svix_timestamp: int | None, body: str, countdown: float | None = None
) -> None:
    """Put one event on the queue; raises on any broker failure (the caller decides)."""
    app.send_task(
        PROCESS_EVENT_TASK,
        args=(svix_id, svix_timestamp, body),
        task_id=svix_id,
        countdown=min(countdown, MAX_COUNTDOWN_SECONDS) if countdown else None,
        # Celery logs and ships argsrepr around; the body holds PII, so only its size goes there.
        argsrepr=repr((svix_id, svix_timestamp, f"<body: {len(body)} chars>")),
        kwargsrepr="{}",
    )


def receipt_keys(queue_name: str) -> tuple[str, str]:
    """Redis keys of the ingress's receipts: a hash svix_id -> [svix_timestamp, body], and its age index.

    kombu's Redis transport pops a message (BRPOP) and only then records it as unacked;
    a connection cut between the two loses the message, and no Postgres row knows of
    it yet. The ingress writes a receipt with every message; the worker deletes the
    receipts of a batch once it has committed; beat's sweep re-enqueues any receipt
    that is old and has no `webhook_events` row (``worker.sweeper.recover_lost``).
    """
    return f"clerk-sync:receipts:{queue_name}", f"clerk-sync:receipts-index:{queue_name}"


def redis_client(redis_url: str, *, timeout: float = 1.0) -> Any:
    """A redis-py client for what Celery does not do for us (receipts, health, depth)."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    url = redis_url.replace("redis+socket://", "unix://", 1)
    return redis.Redis.from_url(
        url,
        socket_connect_timeout=timeout,
        socket_timeout=timeout,
        health_check_interval=25,
        retry=Retry(NoBackoff(), 0),
    )


def forget_receipts(client: Any, queue_name: str, svix_ids: list[str]) -> None:
    """Drop the receipts of events Postgres now knows about."""
    if svix_ids:
        receipts, index = receipt_keys(queue_name)
        pipe = client.pipeline(transaction=False)
        pipe.hdel(receipts, *svix_ids)
        pipe.zrem(index, *svix_ids)
        pipe.execute()


class EventPublisher:
    """The ingress's publisher: one LPUSH per event on a persistent Redis connection.

    ``send_task`` costs about 0.6 ms a call, most of it routing, signals and kombu's
    Redis transport building a new client object for every put; a raw LPUSH costs
    0.15 ms. This publisher keeps what matters of the former and the speed of the
    latter: the message is built by Celery (``as_task_v2``) and serialized by kombu,
    then wrapped in the envelope kombu's Redis transport stores (what
    ``Channel.prepare_message`` and ``_inplace_augment_message`` produce), so a
    Celery worker cannot tell it from ``send_task``'s. The queue's bindings are
    declared by the worker; a test compares both messages field by field.
    """

    def __init__(self, app: Celery, settings: Settings) -> None:
        self._app = app
        self._queue = settings.queue_name
        # Fail fast, as the Celery publisher does: an outage is a 503 within 2 s.
        self._redis = redis_client(settings.redis_url, timeout=1.0)

    def publish(self, *, svix_id: str, svix_timestamp: int | None, body: str) -> None:
        """Put one event on the queue; raises redis.RedisError/OSError if Redis can't take it."""
        args = (svix_id, svix_timestamp, body)
        message = self._app.amqp.as_task_v2(
            svix_id,
            PROCESS_EVENT_TASK,
            args=args,
            argsrepr=repr((svix_id, svix_timestamp, f"<body: {len(body)} chars>")),
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
        receipts, index = receipt_keys(self._queue)
        # One MULTI/EXEC: the message and its receipt exist together or not at all.
        pipe = self._redis.pipeline(transaction=True)
        pipe.lpush(self._queue, json.dumps(envelope))
        pipe.hset(receipts, svix_id, json.dumps([svix_timestamp, body]))
        pipe.zadd(index, {svix_id: time.time()})
        pipe.execute()
