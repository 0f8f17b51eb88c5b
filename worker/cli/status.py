"""`clerk-sync status`: is the sync keeping up? Queue depth, events per status, the oldest backlog.

The database part is printed even when Redis cannot be reached; the command then
says the queue is unavailable and exits 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from sqlalchemy.orm import Session

from shared.config import Settings
from worker.cli.common import print_table, transaction
from worker.ops import status
from worker.pipeline import ledger


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser("status", help="queue depth, events per status, oldest unprocessed event, paused")
    parser.add_argument("--json", action="store_true", help="one JSON object")
    parser.set_defaults(handler=run)


def collect(session: Session, settings: Settings) -> dict[str, Any]:
    """Everything `status` reports, as one JSON-ready dict."""
    counts = status.status_counts(session)
    queue = status.queue_depth(settings)
    return {
        "paused": ledger.is_paused(session),
        "counts": counts,
        "dead": counts["dead"],
        "oldest_unprocessed_age_seconds": status.oldest_unprocessed_age(session),
        "queue": {
            "name": queue.name,
            "available": queue.available,
            "waiting": queue.waiting,
            "unacked": queue.unacked,
            "error": queue.error,
        },
    }


def run(args: argparse.Namespace, settings: Settings) -> int:
    with transaction(settings) as session:
        report = collect(session, settings)
    queue = report["queue"]
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        if queue["available"]:
            queue_text = f"{queue['waiting']} waiting, {queue['unacked']} delivered and not yet acked"
        else:
            queue_text = f"unavailable ({queue['error']})"
        age = report["oldest_unprocessed_age_seconds"]
        print(f"paused:             {'yes' if report['paused'] else 'no'}")
        print(f"queue {queue['name']}: {queue_text}")
        print(f"oldest unprocessed: {'none' if age is None else f'{age:.0f} s ago'}")
        print(f"dead letters:       {report['dead']}")
        print()
        print_table(("status", "events"), list(report["counts"].items()))
    if not queue["available"]:
        print("clerk-sync: the queue (Redis) is unavailable", file=sys.stderr)
        return 1
    return 0
