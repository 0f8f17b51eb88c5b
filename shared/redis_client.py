"""The one way clerk-sync opens a redis-py client (receipts, publishing, health, depth).

kombu spells a unix-socket Redis ``redis+socket://`` (the embedded Redis uses one);
redis-py spells it ``unix://``. Every client goes through ``redis_client`` so that the
rewrite, the timeouts and the no-retry policy live in one place.
"""

from __future__ import annotations

from typing import Any


def redis_py_url(redis_url: str) -> str:
    """REDIS_URL as redis-py reads it."""
    return redis_url.replace("redis+socket://", "unix://", 1)


def redis_client(redis_url: str, *, timeout: float = 1.0, **options: Any) -> Any:
    """A redis-py client that fails fast: ``timeout`` to connect and per command, no retries."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    settings: dict[str, Any] = {
        "socket_connect_timeout": timeout,
        "socket_timeout": timeout,
        "health_check_interval": 25,
        "retry": Retry(NoBackoff(), 0),
    }
    settings.update(options)
    return redis.Redis.from_url(redis_py_url(redis_url), **settings)
