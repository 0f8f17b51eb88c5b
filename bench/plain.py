"""The plain pipeline's consumer: one event at a time, one transaction each; no batching, no Celery.

``python -m bench.plain``: pops one event from ``REF_QUEUE`` into a processing list (BLMOVE, so a
crash loses nothing), records it in a ledger row keyed by svix-id (a duplicate is skipped) and
applies it with convergent upserts in one transaction (``bench.reference_db``), then drops it
from the processing list. The measuring stick of issue 19: clerk-sync must carry at least twice
its rate. Tables in schema ``REF_SCHEMA``.
"""

from __future__ import annotations

import json
import os

import psycopg
import redis

from bench import reference_db


def main() -> None:
    queue = os.environ.get("REF_QUEUE", "bench-reference")
    processing = f"{queue}:processing"
    broker = redis.Redis.from_url(os.environ["REDIS_URL"])
    with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as conn:
        conn.execute(f"SET search_path TO {os.environ.get('REF_SCHEMA', 'bench_plain')}")
        while True:
            item = broker.lindex(processing, -1) or broker.blmove(queue, processing, 1, "RIGHT", "LEFT")
            if item is None:
                continue
            svix_id, _svix_timestamp, body = json.loads(item)
            with conn.transaction(), conn.cursor() as cursor:
                reference_db.apply(cursor, [(svix_id, json.loads(body))])
            broker.lrem(processing, 1, item)


if __name__ == "__main__":
    main()
