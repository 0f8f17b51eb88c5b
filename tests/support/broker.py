"""What waits in the run's Celery queue on Redis, read without a worker."""

from __future__ import annotations

import json

import redis


def queued_ids(redis_client: redis.Redis, queue: str) -> list[str]:
    """Task ids (the svix-ids) waiting in ``queue``, oldest first (kombu LPUSHes, workers BRPOP)."""
    return [json.loads(raw)["headers"]["id"] for raw in reversed(redis_client.lrange(queue, 0, -1))]
