"""A lost broker connection, closed the way Celery 5.7 closes it, never stops the worker.

Celery collects the lost connection (detaching its transport) and then closes it; a close that
has unacknowledged messages to hand back used to fail with an ``AttributeError`` that stopped the
worker ("Unrecoverable error"). Real kombu, real Redis behind a proxy that cuts the connection.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from typing import Any

import pytest
from kombu import Connection, Queue
from kombu.common import ignore_errors
from kombu.transport import resolve_transport

from devkit.waiting import wait_for
from shared.publish import EventPublisher
from tests.support.ledger import statuses
from tests.support.proxy import TcpProxy, via_proxy
from tests.support.signing import user_created
from worker import broker


def _waiting_with_a_held_message(connection: Connection, url: str, queue: Queue) -> None:
    """As a worker's consumer between two tasks: one message delivered and not acknowledged, and a
    BRPOP outstanding for the next."""
    with Connection(url) as publisher:
        publisher.SimpleQueue(queue.name).put({"n": 1})
    held: list[object] = []
    consumer = connection.Consumer(queue, callbacks=[lambda body, message: held.append(message)])
    consumer.consume()
    connection.drain_events(timeout=5)
    assert len(held) == 1
    with contextlib.suppress(socket.timeout):
        connection.drain_events(timeout=0.2)


def _lose(connection: Connection, proxy: TcpProxy) -> None:
    """The broker goes away, and the connection ends as the worker's did in the outage that stopped
    it: Celery's ``collect()`` could not close the consumer's channel (the event loop's poller failed
    first, an error ``collect`` swallows) but detached the transport; then Celery closes the connection."""
    proxy.cut()
    # collect(): the channel's close fails reading the pending BRPOP (swallowed), closing the
    # transport's channels fails too, and the transport is detached
    connection.maybe_close_channel(connection.default_channel)
    connection._do_close_transport()
    # then Celery 5.7 closes the connection, ignoring connection errors only
    ignore_errors(connection, connection.close)


def test_closing_a_lost_connection_with_unacked_messages_raises_nothing_the_consumer_cannot_handle(redis_url):
    # Given the worker's transport installed, and a connection through a proxy holding an unacked message
    broker.install()
    proxy = TcpProxy("127.0.0.1", 6379)
    try:
        url = via_proxy(redis_url, proxy)
        connection = Connection(url)
        _waiting_with_a_held_message(connection, url, Queue("broker-test-held"))
        assert isinstance(connection.transport, broker.Transport)
        assert resolve_transport("rediss") is broker.Transport  # TLS too

        # When the broker goes away and the connection is collected, then closed
        _lose(connection, proxy)
        # Then nothing escaped, and the worker can connect again once Redis is back
        proxy.restore()
        with Connection(url) as again:
            again.ensure_connection(max_retries=3)
    finally:
        proxy.close()


@pytest.mark.e2e
def test_a_worker_survives_repeated_broker_cuts_while_events_flow(processes, settings, session_factory, redis_url):
    # Given a worker reaching Redis through a proxy, and events arriving all the time
    proxy = TcpProxy("127.0.0.1", 6379)
    publisher = EventPublisher(settings)
    sent: list[str] = []
    stop = threading.Event()

    def keep_sending() -> None:
        while not stop.is_set():
            svix_id = f"msg_cuts_{len(sent)}"
            publisher.publish(
                svix_id=svix_id,
                svix_timestamp=int(time.time()),
                body=json.dumps(user_created(f"user_cuts_{len(sent)}")),
            )
            sent.append(svix_id)
            time.sleep(0.005)

    sender = threading.Thread(target=keep_sending, daemon=True)
    try:
        # (short recovery timings: a message lost in a cut is looked for after 10 s, every second)
        worker = processes.start_worker(REDIS_URL=via_proxy(redis_url, proxy), RECOVERY_SECONDS="24")
        processes.start_beat(RECOVERY_SECONDS="24")
        sender.start()
        # When its connection to Redis is cut five times, each while it is busy
        for _ in range(5):
            wait_for(lambda: "event_applied" in worker.log(), timeout=30, what="the worker applying events")
            time.sleep(0.5)
            proxy.cut()
            time.sleep(1.5)
            proxy.restore()
            assert worker.popen.poll() is None, f"the worker exited:\n{worker.log()[-3000:]}"
        stop.set()
        sender.join()

        # Then it is still running, never stopped on an unexpected error, and every event ends processed
        assert worker.popen.poll() is None
        assert "Unrecoverable error" not in worker.log()
        wait_for(
            lambda: all(statuses(session_factory).get(svix_id) == "processed" for svix_id in sent),
            timeout=180,
            what="every event processed after the cuts",
        )
    finally:
        stop.set()
        publisher.close()
        proxy.close()


def test_kombus_own_transport_stops_there(redis_url):
    # Given kombu's stock Redis transport in the same situation (what worker/broker.py is for)
    proxy = TcpProxy("127.0.0.1", 6379)
    try:
        url = via_proxy(redis_url, proxy)
        stock = Connection(url, transport="kombu.transport.redis:Transport")
        _waiting_with_a_held_message(stock, url, Queue("broker-test-stock"))

        # When the broker goes away and the connection is closed as the worker's was
        # Then the close fails with the error that stopped the worker ("Unrecoverable error")
        with pytest.raises(AttributeError, match="hostname"):
            _lose(stock, proxy)
    finally:
        proxy.close()


def test_the_channel_keeps_one_client_per_pool_for_acks_and_unacked_records(redis_url):
    # Given the worker's transport, holding one delivered message not yet acknowledged
    broker.install()
    queue = Queue("broker-test-client")
    with Connection(redis_url) as publisher:
        publisher.SimpleQueue(queue.name).put({"n": 1})
    with Connection(redis_url) as connection:
        held: list[Any] = []
        consumer = connection.Consumer(queue, callbacks=[lambda body, message: held.append(message)])
        consumer.consume()
        connection.drain_events(timeout=5)
        channel = connection.default_channel
        assert isinstance(channel, broker.Channel)

        # Then kombu recorded it as unacknowledged through the channel's one client of its pool
        client = channel._create_client()
        assert channel._create_client() is client and client.connection_pool is channel.pool
        tag = held[0].delivery_tag
        assert client.hexists(channel.unacked_key, tag)

        # When it is acknowledged, the record goes, through the same client
        held[0].ack()
        assert not client.hexists(channel.unacked_key, tag)
        assert channel._create_client() is client

        # And a new pool (after a reconnection) gets a client of its own
        channel._pool = None
        renewed = channel._create_client()
        assert renewed is not client and renewed.connection_pool is channel.pool
        consumer.cancel()
