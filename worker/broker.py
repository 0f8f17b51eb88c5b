"""kombu's Redis transport, with a closed connection reported as a connection error (and one
client per connection pool rather than one per acknowledgement).

Celery 5.7 handles a lost broker connection by collecting it (which detaches the transport
from it) and then closing it. If the worker held unacknowledged messages at that moment, the
close tries to hand them back through the detached transport, and kombu fails with an
``AttributeError`` (it reads the broker's address from the connection that is gone). Nothing
expects that error: the worker's consumer stops with "Unrecoverable error" and the whole
worker exits on a Redis blip (seen in tests/test_failures.py, and in kombu issues #582 and
#970 for older paths to the same line).

Here the same situation raises redis-py's ``ConnectionError``, which every one of those
paths already ignores or retries: the consumer reconnects as after any outage. The messages
it could not hand back stay in kombu's unacked hash, and ``restore_visible`` (any worker,
every ``unacked_restore_interval``) returns them to the queue after the visibility timeout,
as it does for a killed worker's. Receipts (``shared.receipts``) still cover the rest.

Installed for the ``redis`` and ``rediss`` schemes (``redis://``, kombu's ``redis+socket://``, and
TLS) by ``worker.celery_app`` before any connection is made.
"""

from __future__ import annotations

from typing import Any

import kombu.transport as kombu_transport
import redis
from kombu.transport import TRANSPORT_ALIASES
from kombu.transport import redis as kombu_redis

NAME = f"{__name__}:Transport"


class Channel(kombu_redis.Channel):
    _pool_client: Any = None

    def _connparams(self, asynchronous: bool = False) -> dict[str, Any]:
        if self.connection.client is None:  # the transport was detached: its connection is closed
            raise redis.ConnectionError("the broker connection was closed")
        return super()._connparams(asynchronous=asynchronous)  # type: ignore[no-any-return]

    def _create_client(self, asynchronous: bool = False) -> Any:
        """The client of the channel's pool, built once per pool.

        kombu builds a redis-py client for every acknowledgement and every message it records as
        unacknowledged, and redis-py builds its table of reply callbacks with each: 4.5 % of the
        worker's CPU per lone event (docs/performance.md). Each command still takes a connection
        from the pool, as before; the asynchronous client (BRPOP) is kombu's as it was.
        """
        if asynchronous:
            return super()._create_client(asynchronous=True)
        pool = self.pool
        if self._pool_client is None or self._pool_client.connection_pool is not pool:
            self._pool_client = super()._create_client()
        return self._pool_client


class Transport(kombu_redis.Transport):
    Channel = Channel


SCHEMES = ("redis", "rediss")


def install() -> None:
    """Make REDIS_URL's schemes resolve to this transport in this process, even where kombu has
    resolved them before (it keeps each resolution in a cache of its own)."""
    resolved = getattr(kombu_transport, "_transport_cache", {})
    for scheme in SCHEMES:
        TRANSPORT_ALIASES[scheme] = NAME
        resolved.pop(scheme, None)
