"""The publisher's templated message is the one Celery's send_task writes, and a real worker takes it.

The template is prepared once at start-up (``MessageTemplate.build``); these tests compare a
message rendered from it with ``send_task``'s field by field, check the countdown and the
receipt written in the same transaction, and have a real Celery worker apply one.
"""

from __future__ import annotations

import base64
import datetime as dt
import json

import pytest
import redis

from devkit.waiting import wait_for
from shared.config import load_settings
from shared.publish import PROCESS_EVENT_TASK, EventPublisher, QueueUnavailable
from shared.receipts import receipt_keys
from tests.support.ledger import statuses
from tests.support.signing import load_payload
from worker.celery_app import app as celery_app

# What differs between two messages by design: the task id (the svix-id) wherever Celery
# repeats it, Celery's printable arguments (ours leave the body out), the delivery tag, and
# reply_to (the sending app's id, where RPC results would go: process_event returns none).
PER_MESSAGE_HEADERS = {"id", "root_id", "argsrepr"}
PER_MESSAGE_PROPERTIES = {"correlation_id", "delivery_tag", "reply_to"}


def _pop(client: redis.Redis, queue: str) -> dict:
    raw = client.rpop(queue)
    assert raw is not None, "no message in the queue"
    return json.loads(raw)


def _without(mapping: dict, keys: set[str]) -> dict:
    return {key: value for key, value in mapping.items() if key not in keys}


def test_templated_message_matches_send_task_field_by_field(settings, redis_client):
    # Given the same event published both ways
    body = '{"type": "user.created", "data": {"id": "user_1", "email": "ünï@example.com", "note": "a \\"q\\" {x}"}}'
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

    # Then the envelopes agree on every field but the per-message ones
    assert _without(fast, {"body", "headers", "properties"}) == _without(reference, {"body", "headers", "properties"})
    assert _without(fast["headers"], PER_MESSAGE_HEADERS) == _without(reference["headers"], PER_MESSAGE_HEADERS)
    assert _without(fast["properties"], PER_MESSAGE_PROPERTIES) == _without(
        reference["properties"], PER_MESSAGE_PROPERTIES
    )
    # And those carry this message's own values
    assert fast["headers"]["id"] == fast["headers"]["root_id"] == fast["properties"]["correlation_id"] == "msg_fast"
    assert fast["headers"]["task"] == PROCESS_EVENT_TASK
    assert fast["properties"]["delivery_tag"] != reference["properties"]["delivery_tag"]
    # And the decoded bodies differ only in the task's own arguments, the body byte for byte
    fast_args, fast_kwargs, fast_embed = json.loads(base64.b64decode(fast["body"]))
    _, reference_kwargs, reference_embed = json.loads(base64.b64decode(reference["body"]))
    assert fast_args == ["msg_fast", 1700000000, body]
    assert (fast_kwargs, fast_embed) == (reference_kwargs, reference_embed)
    # And the body (PII) never reaches Celery's printable argument strings
    assert "example.com" not in fast["headers"]["argsrepr"]


def test_each_message_gets_its_own_delivery_tag_and_its_receipt(settings, redis_client):
    publisher = EventPublisher(settings)
    for svix_id in ("msg_a", "msg_b"):
        publisher.publish(svix_id=svix_id, svix_timestamp=None, body='{"n": 1}')
    messages = [_pop(redis_client, settings.queue_name) for _ in range(2)]
    assert [m["headers"]["id"] for m in messages] == ["msg_a", "msg_b"]
    assert len({m["properties"]["delivery_tag"] for m in messages}) == 2
    # The message and its receipt went in one transaction: both exist for each event
    receipts, index = receipt_keys(settings.queue_name)
    assert json.loads(redis_client.hget(receipts, "msg_b")) == [None, '{"n": 1}']
    assert redis_client.zcard(index) == 2


@pytest.mark.parametrize("svix_timestamp", [None, 1700000000])
def test_the_receipt_is_the_json_of_timestamp_and_body_byte_for_byte(settings, redis_client, svix_timestamp):
    # Given a body with what JSON escapes (quotes, backslashes, control and non-ASCII characters)
    body = '{"note": "a \\"q\\" \\\\ {x}", "name": "ünï ☃", "tab": "\t", "nul": "\u0000"}'
    # When it is published (its JSON text made once, for the message and the receipt)
    EventPublisher(settings).publish(svix_id="msg_r", svix_timestamp=svix_timestamp, body=body)
    # Then the receipt holds exactly what json.dumps([svix_timestamp, body]) gives, as recovery reads it
    receipts, _ = receipt_keys(settings.queue_name)
    assert redis_client.hget(receipts, "msg_r") == json.dumps([svix_timestamp, body]).encode()
    _, _, decoded_body = json.loads(base64.b64decode(_pop(redis_client, settings.queue_name)["body"]))[0]
    assert decoded_body == body


def test_countdown_sets_the_eta(settings, redis_client):
    before = dt.datetime.now(dt.UTC)
    EventPublisher(settings).publish(svix_id="msg_later", svix_timestamp=1, body="{}", countdown=30)
    eta = dt.datetime.fromisoformat(_pop(redis_client, settings.queue_name)["headers"]["eta"])
    assert before + dt.timedelta(seconds=29) <= eta <= dt.datetime.now(dt.UTC) + dt.timedelta(seconds=31)


def test_a_real_worker_applies_a_templated_message(settings, processes, session_factory):
    # Given an event put on the queue by the publisher (not through the ingress)
    EventPublisher(settings).publish(
        svix_id="msg_templated", svix_timestamp=1700000000, body=json.dumps(load_payload("user.created"))
    )

    # When a Celery worker runs, then it applies the event as it would one from send_task
    processes.start_worker()

    assert wait_for(
        lambda: statuses(session_factory).get("msg_templated") == "processed",
        timeout=60,
        what="templated event processed",
    )


def test_fast_publisher_raises_when_redis_is_unreachable():
    settings = load_settings({"REDIS_URL": "redis://127.0.0.1:1/0"})
    publisher = EventPublisher(settings)
    with pytest.raises(QueueUnavailable):
        publisher.publish(svix_id="msg_x", svix_timestamp=1, body="{}")
    # And the next publish tries again on a fresh connection, failing the same clean way
    with pytest.raises(QueueUnavailable):
        publisher.publish(svix_id="msg_y", svix_timestamp=1, body="{}")
