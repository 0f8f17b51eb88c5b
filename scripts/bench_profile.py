"""Where the time goes, in-process (no Celery, no HTTP): `python scripts/bench_profile.py [--events N]`.

- worker: ``process_delivery`` for a realistic event mix on a throwaway database, with SQL statements
  and round trips counted per event, and a cProfile of the hottest functions;
- ingress: the per-request cost of Svix verification, of ``enqueue_event`` (Celery send_task on the
  publisher app, as the ingress does) and of a reused kombu Producer publishing the same message.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

from bench_events import SECRET, generate, realistic_user_updated, sign  # noqa: E402
from sqlalchemy import event as sa_event  # noqa: E402
from svix.webhooks import Webhook  # noqa: E402

from shared.config import load_settings  # noqa: E402
from shared.db import session_factory  # noqa: E402
from shared.logging import configure_logging  # noqa: E402
from shared.queue import PROCESS_EVENT_TASK, enqueue_event, make_celery  # noqa: E402
from tests.support.services import REDIS_BASE_URL, redis_db_index, temporary_database  # noqa: E402
from worker.ledger import Delivery  # noqa: E402
from worker.process import process_delivery  # noqa: E402


def profile_worker(db_url: str, redis_url: str, count: int) -> None:
    settings = load_settings(
        {"DATABASE_URL": db_url, "REDIS_URL": redis_url, "LOG_FORMAT": "json", "LOG_LEVEL": "WARNING"}
    )
    # Log as the worker does (JSON, INFO): stdout is where the lines go; run with >/dev/null to hide them.
    configure_logging(log_format="json", level="INFO")
    factory = session_factory(settings)
    engine = factory.kw["bind"]
    statements = {"n": 0}
    sa_event.listen(engine, "before_cursor_execute", lambda *a, **k: statements.__setitem__("n", statements["n"] + 1))
    events = generate(count, duplicate_fraction=0.2, seed=7, tag="p")
    now = int(time.time())
    process_delivery(factory, Delivery(events[0].svix_id, now, events[0].body), settings=settings)  # warm-up
    statements["n"] = 0
    profiler = cProfile.Profile()
    began = time.perf_counter()
    profiler.enable()
    for event in events[1:]:
        process_delivery(factory, Delivery(event.svix_id, now, event.body), settings=settings)
    profiler.disable()
    elapsed = time.perf_counter() - began
    n = len(events) - 1
    print(
        f"worker: {n} deliveries in {elapsed:.2f} s = {n / elapsed:.0f}/s in one process, "
        f"{elapsed / n * 1000:.2f} ms each, {statements['n'] / n:.2f} SQL statements each "
        "(+ BEGIN/COMMIT and the pool's pre-ping SELECT 1 per checkout)",
        file=sys.stderr,
    )
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(30)
    print(out.getvalue()[:9000], file=sys.stderr)
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(15)
    print(out.getvalue()[:5000], file=sys.stderr)


def profile_ingress(redis_url: str, count: int) -> None:
    settings = load_settings({"REDIS_URL": redis_url, "CLERK_WEBHOOK_SECRET": SECRET, "LOG_FORMAT": "json"})
    body = realistic_user_updated()
    signed = [sign(body, f"msg_prof{i:020d}") for i in range(count)]
    verifier = Webhook(SECRET)
    began = time.perf_counter()
    for headers in signed:
        verifier.verify(body, headers)
    verify = (time.perf_counter() - began) / count * 1e6
    publisher = make_celery(settings, role="publisher", name="clerk_sync_ingress")
    enqueue_event(publisher, svix_id="msg_warm", svix_timestamp=1, body=body)
    began = time.perf_counter()
    for headers in signed:
        enqueue_event(publisher, svix_id=headers["svix-id"], svix_timestamp=1, body=body)
    send_task = (time.perf_counter() - began) / count * 1e6
    # The same protocol-2 message, built once per event, published through one reused Producer, no declare.
    amqp = publisher.amqp
    began = time.perf_counter()
    with publisher.connection_for_write() as conn:
        producer = conn.Producer(serializer="json")
        for headers in signed:
            message = amqp.create_task_message(
                headers["svix-id"], PROCESS_EVENT_TASK, (headers["svix-id"], 1, body), {}
            )
            producer.publish(
                message.body,
                exchange="",
                routing_key=settings.queue_name,
                headers=message.headers,
                properties=message.properties,
                retry=False,
                declare=None,
            )
    producer_us = (time.perf_counter() - began) / count * 1e6
    profiler = cProfile.Profile()
    profiler.enable()
    for headers in signed[: count // 2]:
        enqueue_event(publisher, svix_id=headers["svix-id"] + "x", svix_timestamp=1, body=body)
    profiler.disable()
    print(
        f"ingress per request: svix verify {verify:.0f} us, enqueue_event (Celery send_task) {send_task:.0f} us, "
        f"reused kombu Producer publish {producer_us:.0f} us"
    )
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(25)
    print(out.getvalue()[:7000], file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--only", choices=("worker", "ingress"))
    args = parser.parse_args()
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    with temporary_database() as db_url, redis_db_index() as index:
        redis_url = f"{REDIS_BASE_URL}/{index}"
        if args.only != "worker":
            profile_ingress(redis_url, args.events)
        if args.only != "ingress":
            profile_worker(db_url, redis_url, args.events)


if __name__ == "__main__":
    main()
