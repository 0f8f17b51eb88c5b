"""Where the worker's time goes: py-spy over every process of a real worker draining a backlog.

``python -m bench.profile [--events 6000] [--rate R] [--gil] [--root PATH] [--raw FILE]``: a throwaway
database and Redis db index (as ``make bench``), a realistic backlog (devkit/history.py) published the
way the ingress publishes it, then the Procfile's ``worker`` command started on it under ``py-spy
record --subprocesses`` until every event has its ledger row. With ``--rate`` the events are
published one by one at that rate while the worker runs instead: what a lone event costs. Prints
the drain rate and a table of CPU samples per event by where they were taken (the innermost frame's
library), and the functions with the most samples of their own. py-spy may take a thread waiting on a
socket for a busy one: with ``--gil`` only samples of a thread holding the GIL count, which is closer
to CPU (C code that releases the GIL is left out). ``--root`` profiles another
checkout (the commit before a change), so a before/after pair is two runs of this script on one machine.
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

from bench.capacity import _events, procfile  # noqa: E402
from bench.procs import spawn  # noqa: E402
from bench.run import environment, exit_on_sigterm, log  # noqa: E402

RATE_HZ = 200

# Innermost frame's file -> where the time went (first match wins).
CATEGORIES = (
    ("waiting on Postgres", re.compile(r"psycopg/(connection|waiting)\.py.*\b(wait|wait_conn|_wait)")),
    ("psycopg (client side)", re.compile(r"psycopg/")),
    ("SQLAlchemy", re.compile(r"sqlalchemy/")),
    ("clerk-sync (worker/, shared/)", re.compile(r"\((worker|shared)/")),
    ("JSON", re.compile(r"json/|orjson|cjson")),
    ("logging (structlog, logging)", re.compile(r"structlog/|logging/")),
    ("Redis client", re.compile(r"redis/")),
    ("prometheus_client", re.compile(r"prometheus_client/")),
    ("Celery, kombu, billiard", re.compile(r"celery/|kombu/|billiard/|vine/")),
)


def categorise(leaf: str) -> str:
    for name, pattern in CATEGORIES:
        if pattern.search(leaf):
            return name
    return "other (stdlib, ...)"


def summarise(raw: Path, events: int) -> str:
    """A Markdown table: samples per event by category, and the top functions by own samples."""
    by_category: collections.Counter[str] = collections.Counter()
    by_function: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        leaf = stack.split(";")[-1]
        samples = int(count)
        total += samples
        by_category[categorise(leaf)] += samples
        by_function[leaf] += samples
    per_event_ms = 1000 / RATE_HZ / events
    lines = ["| where (innermost frame) | CPU ms per event | share |", "| --- | ---: | ---: |"]
    for name, samples in by_category.most_common():
        lines.append(f"| {name} | {samples * per_event_ms:.2f} | {samples / total:.0%} |")
    lines.append(f"| **total** | **{total * per_event_ms:.2f}** | |")
    lines += ["", "| function (own samples) | share |", "| --- | ---: |"]
    for leaf, samples in by_function.most_common(15):
        lines.append(f"| `{leaf[:110]}` | {samples / total:.1%} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=6000, help="backlog size (default 6000)")
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout whose worker to profile")
    parser.add_argument("--raw", type=Path, default=ROOT / "bench" / "profile-raw.txt", help="py-spy's raw output")
    parser.add_argument(
        "--rate",
        type=float,
        help="publish the events at this steady rate while the worker runs (lone events, not a backlog)",
    )
    parser.add_argument(
        "--gil",
        action="store_true",
        help="count only samples of threads holding the GIL: CPU, without the waits py-spy may count",
    )
    args = parser.parse_args(argv)
    exit_on_sigterm()
    from shared.publish import EventPublisher

    with environment() as h:
        h.reset()
        history = _events(random.randrange(10**6), prefix="prof")
        events = [next(history) for _ in range(args.events)]
        publisher = EventPublisher(h.settings, timeout=10.0)
        now = int(time.time())
        if args.rate is None:
            for event in events:
                publisher.publish(svix_id=event.svix_id, svix_timestamp=now, body=event.body)
        env = {**h.env, "PYTHONPATH": str(args.root)}
        worker = spawn(
            "worker", ["sh", "-c", "exec " + procfile()["worker"]], env=env, cwd=args.root, log_dir=h.log_dir
        )
        h.started.append(worker)
        if args.rate is not None:
            h.wait_ready(worker)
        py_spy = str(Path(sys.executable).parent / "py-spy")
        record = ["record", "--pid", str(worker.pid), "--subprocesses", "--format", "raw", "--rate", str(RATE_HZ)]
        if args.gil:
            record.append("--gil")
        spy = subprocess.Popen(
            [py_spy, *record, "--nonblocking", "-o", str(args.raw)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        began = time.monotonic()
        if args.rate is not None:  # one at a time, each due at began + i / rate
            for i, event in enumerate(events):
                time.sleep(max(0.0, began + i / args.rate - time.monotonic()))
                publisher.publish(svix_id=event.svix_id, svix_timestamp=now, body=event.body)
        publisher.close()
        while h.final_count()[0] < len(events):
            if time.monotonic() - began > 600 or not worker.alive():
                raise RuntimeError(f"drain stalled at {h.final_count()}: {worker.log()[-2000:]}")
            time.sleep(0.1)
        seconds = time.monotonic() - began
        os.kill(spy.pid, 2)  # SIGINT: py-spy writes its file and exits
        spy.wait(timeout=60)
        worker.stop()
    log(f"{args.root}: {len(events)} events drained in {seconds:.1f} s = {len(events) / seconds:.0f} events/s")
    print(summarise(args.raw, len(events)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
