"""The ingress's fast publisher writes exactly the message Celery's send_task writes."""

from __future__ import annotations

import base64
import json

import pytest
import redis

from shared.config import load_settings
from shared.publish import PROCESS_EVENT_TASK, EventPublisher, QueueUnavailable
from worker.celery_app import app as celery_app


def _pop(client: redis.Redis, queue: str) -> dict:
    raw = client.rpop(queue)
    assert raw is not None, "no message in the queue"
    return json.loads(raw)


def test_fast_publisher_matches_send_task(settings, redis_client):
    # Given the same event published both ways
    body = '{"type": "user.created", "data": {"id": "user_1", "email": "ünï@example.com"}}'
    celery_app.send_task(
        PROCESS_EVENT_TASK,
        args=("msg_ref", 1700000000, body),
        task_id="msg_ref",
        queue=settings.queue_name,
        connection=celery_app.connection_for_write(settings.redis_url),
    )
    EventPublisher(settings).publish(svix_id="msg_fast", svix_timestamp=1700000000, body=body)

    # When both messages are read back from Redis
    reference = _pop(redis_client, settings.queue_name)
    fast = _pop(redis_client, settings.queue_name)

    # Then the envelopes have the same shape, and the same task, id and arguments
    assert set(fast) == set(reference)
    assert set(fast["properties"]) - {"argsrepr", "kwargsrepr"} == set(reference["properties"]) - {
        "argsrepr",
        "kwargsrepr",
    }
    assert fast["headers"].keys() == reference["headers"].keys()
    assert fast["headers"]["task"] == reference["headers"]["task"] == "clerk_sync.process_event"
    assert fast["headers"]["id"] == "msg_fast"
    assert fast["properties"]["delivery_info"] == reference["properties"]["delivery_info"]
    for key in ("content-type", "content-encoding"):
        assert fast[key] == reference[key]
    fast_args = json.loads(base64.b64decode(fast["body"]))
    reference_args = json.loads(base64.b64decode(reference["body"]))
    assert fast_args[0] == ["msg_fast", 1700000000, body]
    assert fast_args[1:] == reference_args[1:]
    # The body (PII) never reaches Celery's printable argument strings.
    assert "example.com" not in fast["headers"]["argsrepr"]


def test_fast_publisher_raises_when_redis_is_unreachable():
    settings = load_settings({"REDIS_URL": "redis://127.0.0.1:1/0"})
    publisher = EventPublisher(settings)
    with pytest.raises(QueueUnavailable):
        publisher.publish(svix_id="msg_x", svix_timestamp=1, body="{}")
