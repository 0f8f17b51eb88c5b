"""A batch takes what is waiting, recorded exactly as kombu records its own messages.

Against the real Redis and kombu's own Redis transport: what ``take_waiting`` writes to the unacked
hash is what kombu's ``QoS.append`` writes, kombu's ``restore_visible`` puts it back after the
visibility timeout, ``restore_taken`` puts a lost batch back at once, and an ack leaves nothing.
"""

from __future__ import annotations

import json
import time

from kombu import Connection

from shared.publish import EventPublisher
from shared.receipts import receipt_keys
from worker.pipeline import taking, tasks
from worker.pipeline.ledger import Delivery


def _publish(settings, count: int, *, tag: str = "take") -> list[Delivery]:
    publisher = EventPublisher(settings)
    deliveries = [Delivery(f"msg_{tag}_{i}", 1700000000 + i, json.dumps({"n": i})) for i in range(count)]
    for delivery in deliveries:
        publisher.publish(svix_id=delivery.svix_id, svix_timestamp=delivery.svix_timestamp, body=delivery.body)
    return deliveries


def _kombu_channel(settings, *, visibility_timeout: float):
    """kombu's own Redis channel on the run's Redis, as a Celery worker would have it."""
    connection = Connection(settings.redis_url, transport_options={"visibility_timeout": visibility_timeout})
    return connection, connection.default_channel


def test_take_waiting_records_what_kombu_records(settings, redis_client):
    # Given two events in the queue, and kombu's own consumer taking a third the usual way
    _publish(settings, 2)
    _publish(settings, 1, tag="kombu")
    connection, channel = _kombu_channel(settings, visibility_timeout=3600)
    try:
        message = channel.basic_get(settings.queue_name)  # oldest first: the first of the two
        assert message is not None
        kombu_entry = json.loads(redis_client.hget(taking.UNACKED, message.delivery_tag))

        # When a batch takes what is waiting
        taken = taking.take_waiting(redis_client, settings.queue_name, delivery_tag="own", limit=10)

        # Then it gets the events in queue order, and each is recorded unacked exactly as kombu records
        # its own: [the message as queued, exchange, routing key] under the delivery tag, indexed by time
        assert [item.delivery.svix_id for item in taken] == ["msg_take_1", "msg_kombu_0"]
        assert redis_client.llen(settings.queue_name) == 0
        for item in taken:
            entry = json.loads(redis_client.hget(taking.UNACKED, item.tag))
            assert len(entry) == len(kombu_entry) == 3
            assert entry[0].keys() == kombu_entry[0].keys()
            assert entry[1:] == kombu_entry[1:] == ["", settings.queue_name]
            assert abs(redis_client.zscore(taking.UNACKED_INDEX, item.tag) - time.time()) < 60
        assert taken[0].delivery == Delivery("msg_take_1", 1700000001, '{"n": 1}')
    finally:
        connection.release()


def test_taken_messages_of_a_dead_worker_come_back_through_kombu(settings, redis_client):
    # Given a batch that took three events and died without acking them
    sent = _publish(settings, 3)
    taken = taking.take_waiting(redis_client, settings.queue_name, delivery_tag="dead", limit=10)
    assert len(taken) == 3 and redis_client.llen(settings.queue_name) == 0

    # When kombu's restore scan runs in a live worker, once they are older than the visibility timeout
    connection, channel = _kombu_channel(settings, visibility_timeout=0.5)
    try:
        time.sleep(1)
        channel.qos.restore_visible(num=None, interval=1)

        # Then all three are back in the queue and unacked is empty
        assert redis_client.llen(settings.queue_name) == 3
        assert redis_client.hlen(taking.UNACKED) == 0
        assert redis_client.zcard(taking.UNACKED_INDEX) == 0
        # And a batch takes them again as the same events
        again = taking.take_waiting(redis_client, settings.queue_name, delivery_tag="next", limit=10)
        assert {item.delivery for item in again} == set(sent)
    finally:
        connection.release()


def test_a_lost_batch_is_restored_at_once_to_the_head_of_the_queue(settings, redis_client):
    # Given a batch that took two events, and one more event arriving after
    _publish(settings, 2)
    taking.take_waiting(redis_client, settings.queue_name, delivery_tag="lost", limit=10)
    _publish(settings, 1, tag="later")

    # When its pool process is lost and the main process restores what it took
    restored = taking.restore_taken(redis_client, settings.queue_name, delivery_tag="lost")

    # Then both are back, at the head (before the later one), and nothing is left unacked
    assert restored == 2
    queued = [json.loads(entry)["headers"]["id"] for entry in redis_client.lrange(settings.queue_name, 0, -1)]
    head_first = queued[::-1]
    assert sorted(head_first[:2]) == ["msg_take_0", "msg_take_1"]
    assert head_first[2] == "msg_later_0"
    assert redis_client.hlen(taking.UNACKED) == 0
    assert not redis_client.exists(taking.taken_key("lost"))
    # And restoring again restores nothing twice
    assert taking.restore_taken(redis_client, settings.queue_name, delivery_tag="lost") == 0


def test_restore_skips_what_kombu_restored_already(settings, redis_client):
    # Given a batch whose messages kombu's restore scan has already put back
    _publish(settings, 2)
    taking.take_waiting(redis_client, settings.queue_name, delivery_tag="both", limit=10)
    connection, channel = _kombu_channel(settings, visibility_timeout=0.2)
    try:
        time.sleep(0.5)
        channel.qos.restore_visible(num=None, interval=1)
    finally:
        connection.release()

    # When the main process restores the lost batch as well
    restored = taking.restore_taken(redis_client, settings.queue_name, delivery_tag="both")

    # Then nothing is queued twice
    assert restored == 0
    assert redis_client.llen(settings.queue_name) == 2


def test_an_acked_batch_leaves_nothing_behind(settings, redis_client):
    # Given a batch that took three events
    _publish(settings, 3)
    taken = taking.take_waiting(redis_client, settings.queue_name, delivery_tag="done", limit=10)

    # When it acks them after its commit
    pipe = redis_client.pipeline(transaction=False)
    taking.acknowledge(pipe, delivery_tag="done", taken=taken)
    pipe.execute()

    # Then kombu's unacked hash and index, and the batch's record, are empty
    assert redis_client.hlen(taking.UNACKED) == 0
    assert redis_client.zcard(taking.UNACKED_INDEX) == 0
    assert not redis_client.exists(taking.taken_key("done"))


def test_take_waiting_takes_at_most_the_limit_and_nothing_from_an_empty_queue(settings, redis_client):
    _publish(settings, 5)
    assert len(taking.take_waiting(redis_client, settings.queue_name, delivery_tag="a", limit=3)) == 3
    assert len(taking.take_waiting(redis_client, settings.queue_name, delivery_tag="b", limit=3)) == 2
    assert taking.take_waiting(redis_client, settings.queue_name, delivery_tag="c", limit=3) == []


def test_a_message_that_is_not_an_event_is_left_to_kombu(settings, redis_client):
    # Given a message of another task on the event queue, between two events
    _publish(settings, 1, tag="before")
    stray = json.loads(redis_client.lindex(settings.queue_name, 0))
    stray["headers"]["task"] = "some.other_task"
    stray["properties"]["delivery_tag"] = "stray-tag"
    redis_client.lpush(settings.queue_name, json.dumps(stray))
    _publish(settings, 1, tag="after")

    # When a batch takes what is waiting
    taken = taking.take_waiting(redis_client, settings.queue_name, delivery_tag="mixed", limit=10)

    # Then it applies the two events and leaves the stray one unacked, for kombu to hand back to Celery
    assert [item.delivery.svix_id for item in taken] == ["msg_before_0", "msg_after_0"]
    assert redis_client.hexists(taking.UNACKED, "stray-tag")


def test_junk_on_the_queue_is_left_for_celery_and_loses_nothing(settings, redis_client):
    # Given an event, then something that is not a kombu message at all
    _publish(settings, 1, tag="good")
    redis_client.lpush(settings.queue_name, b"\xff not json")

    # When a batch takes what is waiting
    taken = taking.take_waiting(redis_client, settings.queue_name, delivery_tag="junk", limit=10)

    # Then it takes the event, and the junk goes back to the head of the queue untouched
    assert [item.delivery.svix_id for item in taken] == ["msg_good_0"]
    assert redis_client.lrange(settings.queue_name, 0, -1) == [b"\xff not json"]


def test_the_round_trip_that_acks_a_batch_takes_the_next_one(settings, redis_client):
    # Given a batch that took two events, and three more arriving while it was applied
    _publish(settings, 2, tag="first")
    first = taking.take_waiting(redis_client, settings.queue_name, delivery_tag="loop", limit=10)
    arrived = _publish(settings, 3, tag="next")
    receipts_key, _ = receipt_keys(settings.queue_name)

    # When the batch has committed: ack, forget its receipts and take the next, in one round trip
    taken, deliveries = tasks._finish(
        redis_client, settings, "loop", first, [item.delivery for item in first], take_more=True
    )

    # Then the next batch is what arrived, held exactly as any taken message: the first batch's
    # messages and receipts are gone, the new ones are unacked and recorded for a lost process
    assert deliveries == arrived
    assert set(redis_client.hkeys(taking.UNACKED)) == {item.tag.encode() for item in taken}
    assert redis_client.hlen(taking.taken_key("loop")) == 3
    assert set(redis_client.hkeys(receipts_key)) == {d.svix_id.encode() for d in arrived}
    assert redis_client.llen(settings.queue_name) == 0

    # And once that budget is spent the last batch is acked and nothing more is taken
    _publish(settings, 1, tag="later")
    assert tasks._finish(redis_client, settings, "loop", taken, deliveries, take_more=False) == ([], [])
    assert redis_client.hlen(taking.UNACKED) == 0 and not redis_client.exists(taking.taken_key("loop"))
    assert redis_client.llen(settings.queue_name) == 1
