"""`clerk-sync events --entity ID`: every event that touched one user, organization, membership, invitation or
domain.

Oldest first in Clerk's order (the envelope ``timestamp``), then by arrival; with each
event's status and last error, to answer "why does this row look like this?".
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from typing import TYPE_CHECKING

from worker.cli.common import print_table, printable, transaction
from worker.cli.dlq import entity_id

if TYPE_CHECKING:
    from shared.config import Settings

ERROR_WIDTH = 60


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "events", help="the timeline of events about one user, organization, membership, invitation or domain"
    )
    parser.add_argument(
        "--entity",
        required=True,
        metavar="ID",
        type=entity_id,
        help="a Clerk id: user_..., org_..., orgmem_..., orginv_... or orgdmn_...",
    )
    parser.add_argument("--json", action="store_true", help="a JSON array, oldest first")
    parser.set_defaults(handler=run)


def _clerk_time(millis: int | None) -> str:
    if millis is None:
        return ""
    return dt.datetime.fromtimestamp(millis / 1000, tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def run(args: argparse.Namespace, settings: Settings) -> int:
    from worker.ops import dead_letters, timeline

    with transaction(settings) as session:
        events = timeline.timeline(session, args.entity)
    if args.json:
        print(json.dumps([{**dead_letters.summary(row), "clerk_timestamp_ms": ms} for row, ms in events], indent=2))
        return 0
    if not events:
        print(f"no events about {args.entity}")
        return 0
    print_table(
        ("clerk_time", "type", "status", "svix_id", "entity", "received_at", "conflicts", "last_error"),
        [
            (
                _clerk_time(ms),
                row.event_type,
                row.status,
                row.svix_id,
                row.entity_id,
                row.received_at.strftime("%Y-%m-%d %H:%M:%S"),
                # Redeliveries of the svix-id with another body (never applied): see `dlq show`.
                len(row.conflicts) or "",
                printable(" ".join((row.last_error or "").split()))[:ERROR_WIDTH],
            )
            for row, ms in events
        ],
    )
    return 0
