"""The floor pipeline's consumer: the least any correct design must do behind the queue.

``python -m bench.floor``: waits for an event, then takes what else is waiting (up to ``BATCH``)
into a processing list in one atomic step, and in one transaction writes the batch's ledger rows
(duplicates skipped) and applies it with one multi-row upsert per table (``bench.reference_db``),
then drops the processing list. No per-event round trip, no framework. clerk-sync must carry at
least 0.6 times its rate. Tables in schema ``REF_SCHEMA``.
"""

from __future__ import annotations

import json
import os

import psycopg
import redis

from bench import reference_db

BATCH = 100

# Move up to ARGV[1] more waiting entries to the processing list; return them.
_TAKE = """
local items = redis.call('RPOP', KEYS[1], ARGV[1])
if not items then return {} end
for _, item in ipairs(items) do redis.call('LPUSH', KEYS[2], item) end
return items
"""


def main() -> None:
    queue = os.environ.get("REF_QUEUE", "bench-reference")
    processing = f"{queue}:processing"
    broker = redis.Redis.from_url(os.environ["REDIS_URL"])
    take = broker.register_script(_TAKE)
    with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as conn:
        conn.execute(f"SET search_path TO {os.environ.get('REF_SCHEMA', 'bench_floor')}")
        while True:
            items = broker.lrange(processing, 0, -1)  # what a previous run took and did not finish
            if not items:
                first = broker.blmove(queue, processing, 1, "RIGHT", "LEFT")
                if first is None:
                    continue
                items = [first, *take(keys=[queue, processing], args=[BATCH - 1])]
            events = []
            for item in items:
                svix_id, _svix_timestamp, body = json.loads(item)
                events.append((svix_id, json.loads(body)))
            with conn.transaction(), conn.cursor() as cursor:
                reference_db.apply(cursor, events)
            broker.delete(processing)


if __name__ == "__main__":
    main()
