"""`clerk-sync status`: is the sync keeping up? Queue depth, events per status, the oldest backlog.

The database part is printed even when Redis cannot be reached; the command then
says the queue is unavailable and exits 1. It talks to Postgres through psycopg alone
(see ``worker.ops.status``) so that it answers in a fraction of a second.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from worker.cli.common import database_error, print_table

if TYPE_CHECKING:
    from shared.config import Settings


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser("status", help="queue depth, events per status, oldest unprocessed event, paused")
    parser.add_argument("--json", action="store_true", help="one JSON object")
    parser.set_defaults(handler=run, configures_logging=False)


def run(args: argparse.Namespace, settings: Settings) -> int:
    import psycopg

    from worker.ops import status

    try:
        with status.connect(settings) as conn:
            report = status.report(conn, settings)
    except psycopg.OperationalError as exc:
        raise database_error(exc) from None
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
        estimated = set(report["estimated"])
        rows = [(name, f"~{n} (estimated)" if name in estimated else n) for name, n in report["counts"].items()]
        print_table(("status", "events"), rows)
    if not queue["available"]:
        print("clerk-sync: the queue (Redis) is unavailable", file=sys.stderr)
        return 1
    return 0
