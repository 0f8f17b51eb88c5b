"""Messages lost inside Redis (a cut mid-BRPOP, a deleted key) are recovered from the ingress's receipts."""

from __future__ import annotations

import json
import time

from sqlalchemy import select

from devkit.waiting import wait_for
from shared.models import User, WebhookEvent
from shared.publish import EventPublisher
from shared.receipts import receipt_keys
from tests.support.signing import load_payload, post_event
from worker.recovery import sweeper


def recover_lost(settings, session_factory, redis_client) -> int:  # type: ignore[no-untyped-def]
    """One pass of the sweep's lost-message recovery, for receipts older than a minute."""
    with session_factory.begin() as session:
        return sweeper.recover_lost(
            session, EventPublisher(settings), queue_name=settings.queue_name, older_than_seconds=60
        )


def test_the_ingress_writes_a_receipt_with_every_message(settings, redis_client):
    EventPublisher(settings).publish(svix_id="msg_receipt", svix_timestamp=1700000000, body='{"a": 1}')
    receipts, index = receipt_keys(settings.queue_name)
    assert redis_client.llen(settings.queue_name) == 1
    assert json.loads(redis_client.hget(receipts, "msg_receipt")) == [1700000000, '{"a": 1}']
    assert redis_client.zscore(index, "msg_receipt") is not None


def test_recover_lost_forgets_known_events_and_requeues_unknown_ones(settings, session_factory, redis_client):
    # Given two old receipts: one whose event Postgres knows, one whose message vanished
    receipts, index = receipt_keys(settings.queue_name)
    old = time.time() - 600
    for svix_id in ("msg_known", "msg_vanished"):
        redis_client.hset(receipts, svix_id, json.dumps([1700000000, json.dumps(load_payload("user.created"))]))
        redis_client.zadd(index, {svix_id: old})
    with session_factory.begin() as session:
        session.add(WebhookEvent(svix_id="msg_known", event_type="user.created", status="processed", attempts=1))

    # When the sweep looks for lost messages
    requeued = recover_lost(settings, session_factory, redis_client)

    # Then the known one is forgotten and the vanished one is on the queue again, checked again later
    assert requeued == 1
    assert redis_client.hget(receipts, "msg_known") is None
    assert redis_client.hget(receipts, "msg_vanished") is not None
    assert redis_client.zscore(index, "msg_vanished") > old
    assert redis_client.llen(settings.queue_name) == 1


def _publish_aged(settings, redis_client, svix_ids: list[str], *, old: float) -> None:
    """Publish one event per svix-id, as the ingress does, and age their receipts (oldest first)."""
    publisher = EventPublisher(settings)
    body = json.dumps(load_payload("user.created"))
    _, index = receipt_keys(settings.queue_name)
    for age, svix_id in enumerate(svix_ids):
        publisher.publish(svix_id=svix_id, svix_timestamp=1700000000, body=body)
        redis_client.zadd(index, {svix_id: old + age}, xx=True)


def _take_from_head(settings, redis_client) -> None:
    """What a worker killed between kombu's BRPOP and its unacked hash leaves: nothing."""
    assert redis_client.rpop(settings.queue_name) is not None


def test_recover_lost_leaves_receipts_whose_messages_may_still_be_queued(settings, session_factory, redis_client):
    # Given three events accepted long ago (a backlog older than the delay, as in a bulk import),
    # the first of them taken from the head of the queue by a worker that then died
    _publish_aged(settings, redis_client, ["msg_taken", "msg_queued_1", "msg_queued_2"], old=time.time() - 600)
    _take_from_head(settings, redis_client)
    _, index = receipt_keys(settings.queue_name)
    queued_times = [redis_client.zscore(index, s) for s in ("msg_queued_1", "msg_queued_2")]

    # When the sweep looks for lost messages
    requeued = recover_lost(settings, session_factory, redis_client)

    # Then only the receipt older than the head of the queue is enqueued again (its time now new)
    assert requeued == 1
    assert redis_client.llen(settings.queue_name) == 3
    assert redis_client.zscore(index, "msg_taken") > time.time() - 60
    assert [redis_client.zscore(index, s) for s in ("msg_queued_1", "msg_queued_2")] == queued_times


def test_duplicates_in_the_queue_do_not_defer_a_lost_message(settings, session_factory, redis_client):
    # Given a lost message, then a backlog in which one event was delivered twice: its first copy
    # applied (its receipt forgotten), its second copy now at the head of the queue with none
    old = time.time() - 600
    _publish_aged(settings, redis_client, ["msg_lost", "msg_twice", "msg_after"], old=old)
    EventPublisher(settings).publish(svix_id="msg_twice", svix_timestamp=1700000000, body="{}")
    for _ in range(2):  # msg_lost is taken and lost; msg_twice's first copy taken and applied
        _take_from_head(settings, redis_client)
    with session_factory.begin() as session:
        session.add(WebhookEvent(svix_id="msg_twice", event_type="user.created", status="processed", attempts=1))
    receipts, index = receipt_keys(settings.queue_name)
    redis_client.hdel(receipts, "msg_twice")
    redis_client.zrem(index, "msg_twice")
    # (there are now more queued messages than receipts: msg_after and msg_twice's second copy)

    # When the sweep looks for lost messages
    requeued = recover_lost(settings, session_factory, redis_client)

    # Then the lost one is enqueued again all the same, and the queued one is left alone
    assert requeued == 1
    assert redis_client.zscore(index, "msg_lost") > old + 60
    assert redis_client.zscore(index, "msg_after") == old + 2


def test_a_second_delivery_keeps_its_receipts_first_time(settings, redis_client):
    # Given an event accepted once, long ago
    _publish_aged(settings, redis_client, ["msg_redelivered"], old=time.time() - 600)
    _, index = receipt_keys(settings.queue_name)
    first = redis_client.zscore(index, "msg_redelivered")

    # When Svix delivers it again
    EventPublisher(settings).publish(svix_id="msg_redelivered", svix_timestamp=1700000000, body="{}")

    # Then its receipt keeps the time of the oldest message it stands for
    assert redis_client.zscore(index, "msg_redelivered") == first


def test_an_accepted_event_whose_message_vanished_is_applied(processes, session_factory, redis_client, settings):
    # Given an event accepted by the ingress while no worker runs
    web = processes.start_web()
    payload = load_payload("user.created")
    assert post_event(web.url, payload, svix_id="msg_vanished_e2e").status_code == 200

    # When its queue message is lost inside Redis before any worker recorded it
    assert redis_client.delete(settings.queue_name) == 1

    # Then the sweep finds its receipt with no row, enqueues it again, and it is applied
    # Short recovery timings: lost messages are looked for after 10 s, every second
    processes.start_worker(RECOVERY_SECONDS="24")  # the sweep task runs in the worker
    processes.start_beat(RECOVERY_SECONDS="24")

    def processed():
        with session_factory() as session:
            return session.scalar(select(WebhookEvent.status).where(WebhookEvent.svix_id == "msg_vanished_e2e"))

    assert wait_for(processed, timeout=90, what="the vanished event applied") == "processed"
    with session_factory() as session:
        assert session.scalars(select(User.clerk_id)).all() == [payload["data"]["id"]]

    # And once applied, its receipt is forgotten
    receipts, _ = receipt_keys(settings.queue_name)
    wait_for(lambda: redis_client.hlen(receipts) == 0, timeout=60, what="receipt forgotten")
