"""`clerk-sync dlq list|show|replay|discard`: inspect and repair dead events.

A `dead` event waits for an operator: it was permanently invalid, or it used up its
retry budget. ``replay`` gives it a fresh budget and enqueues it again through the
normal path; ``discard`` deletes its row. Both act on the svix-ids named, or with
``--all`` on every dead event matching the filters.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence

from sqlalchemy.orm import Session

from shared.config import Settings
from shared.publish import QueueUnavailable
from worker.cli.common import CliError, print_table, publisher, transaction
from worker.ops import dead_letters
from worker.ops.dead_letters import DeadFilter, OperationError

# Rows changed per transaction by --all: each batch is enqueued, then committed.
BATCH = 100
ERROR_WIDTH = 60


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser("dlq", help="list, show, replay or discard dead events")
    commands = parser.add_subparsers(dest="dlq_command", required=True, metavar="ACTION")

    list_parser = commands.add_parser("list", help="dead events, oldest first")
    _add_filters(list_parser, limit_default=dead_letters.DEFAULT_LIST_LIMIT)
    list_parser.add_argument("--json", action="store_true", help="a JSON array, one object per event")
    list_parser.set_defaults(handler=run_list)

    show = commands.add_parser("show", help="one event: payload, every attempt's error, timestamps")
    show.add_argument("svix_id", metavar="SVIX_ID")
    show.add_argument("--json", action="store_true", help="one JSON object")
    show.set_defaults(handler=run_show)

    replay = commands.add_parser("replay", help="give dead events a new retry budget and enqueue them again")
    _add_selection(replay)
    replay.set_defaults(handler=run_replay)

    discard = commands.add_parser("discard", help="delete dead events that will never be applied")
    _add_selection(discard)
    discard.add_argument("--yes", action="store_true", help="confirm --all without filters (every dead event)")
    discard.set_defaults(handler=run_discard)


def _add_filters(parser: argparse.ArgumentParser, *, limit_default: int | None) -> None:
    parser.add_argument("--type", dest="event_type", metavar="TYPE", help="exact event type, e.g. user.created")
    parser.add_argument("--since", metavar="WHEN", help="received since: ISO date/datetime, or a duration like 2h, 3d")
    parser.add_argument("--error", metavar="TEXT", help="last error contains TEXT (case-insensitive)")
    parser.add_argument("--entity", metavar="ID", help="about this user/org/membership id (memberships included)")
    default = f"default {limit_default}" if limit_default else "default: no limit"
    parser.add_argument("--limit", type=_positive_int, default=limit_default, help=f"at most N events ({default})")


def _add_selection(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("svix_ids", nargs="*", metavar="SVIX_ID", help="the dead events to act on")
    parser.add_argument("--all", action="store_true", help="every dead event matching the filters")
    _add_filters(parser, limit_default=None)
    parser.add_argument("--dry-run", action="store_true", help="print what would be done and do nothing")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def filters_from(args: argparse.Namespace) -> DeadFilter:
    since = None
    if args.since is not None:
        try:
            since = dead_letters.parse_since(args.since)
        except ValueError as exc:
            raise CliError(str(exc), exit_code=2) from None
    return DeadFilter(event_type=args.event_type, since=since, error=args.error, entity=args.entity, limit=args.limit)


def _one_line(text: str | None, width: int) -> str:
    flat = " ".join((text or "").split())
    return flat if len(flat) <= width else flat[: width - 3] + "..."


def run_list(args: argparse.Namespace, settings: Settings) -> int:
    filters = filters_from(args)
    with transaction(settings) as session:
        rows = dead_letters.list_dead(session, filters)
        if args.json:
            print(json.dumps([dead_letters.summary(row) for row in rows], indent=2))
            return 0
        if not rows:
            print("no dead events")
            return 0
        print_table(
            ("svix_id", "type", "entity", "attempts", "last_error", "received_at"),
            [
                (
                    row.svix_id,
                    row.event_type,
                    row.entity_id,
                    row.attempts,
                    _one_line(row.last_error, ERROR_WIDTH),
                    row.received_at.strftime("%Y-%m-%d %H:%M:%S"),
                )
                for row in rows
            ],
        )
        if filters.limit is not None and len(rows) == filters.limit:
            print(f"(first {filters.limit}; use --limit to see more)")
    return 0


def run_show(args: argparse.Namespace, settings: Settings) -> int:
    with transaction(settings) as session:
        row = dead_letters.get_event(session, args.svix_id)
        if row is None:
            raise CliError(f"no event with svix_id {args.svix_id}")
        event = dead_letters.detail(row)
    if args.json:
        print(json.dumps(event, indent=2))
        return 0
    for field in ("svix_id", "status", "event_type", "entity_id", "attempts", "last_error", "svix_timestamp"):
        print(f"{field + ':':<17} {'' if event[field] is None else event[field]}")
    for field in ("received_at", "processed_at", "next_attempt_at", "updated_at", "body_sha256"):
        print(f"{field + ':':<17} {event[field] or ''}")
    conflicts = event["conflicting_redeliveries"]
    if conflicts:
        print(f"conflicting redeliveries ({len(conflicts)}, another body under this svix-id, never applied):")
        for entry in conflicts:
            print(f"  {entry.get('at', '')}  body sha256 {entry.get('body_sha256', '')}")
    print(f"errors ({len(event['errors'])}):")
    for number, entry in enumerate(event["errors"], start=1):
        if not isinstance(entry, dict):
            print(f"  {number}. {entry}")
        elif "error" in entry:
            print(f"  {number}. {entry.get('at', '')}  {entry['error']}")
        else:  # a note such as a replay, not an attempt
            notes = ", ".join(f"{k}={v}" for k, v in entry.items() if k != "at")
            print(f"  {number}. {entry.get('at', '')}  ({notes})")
    if event["payload"] is not None:
        print("payload:")
        print(json.dumps(event["payload"], indent=2, sort_keys=True))
    elif event["raw_body"] is not None:
        print("raw body (not JSON):")
        print(event["raw_body"])
    else:
        print("payload: (no longer stored)")
    return 0


def _selected_ids(args: argparse.Namespace, settings: Settings, verb: str) -> tuple[list[str], DeadFilter]:
    """The svix-ids named, or with --all those of the dead events matching the filters."""
    filters = filters_from(args)
    if args.all and args.svix_ids:
        raise CliError(f"dlq {verb}: give SVIX_IDs or --all, not both", exit_code=2)
    if not args.all:
        if not args.svix_ids:
            raise CliError(f"dlq {verb}: name SVIX_IDs, or use --all [filters]", exit_code=2)
        if filters.narrows or filters.limit is not None:
            raise CliError(f"dlq {verb}: filters only apply with --all", exit_code=2)
        return list(dict.fromkeys(args.svix_ids)), filters
    with transaction(settings) as session:
        return [row.svix_id for row in dead_letters.list_dead(session, filters)], filters


def _in_batches(
    settings: Settings,
    svix_ids: Sequence[str],
    action: Callable[..., dead_letters.Result],
    *,
    skip_not_dead: bool,
    done: list[str],
    skipped: list[str],
) -> None:
    """Run ``action`` batch by batch, each in a transaction of its own; ``done`` holds what committed."""
    for start in range(0, len(svix_ids), BATCH):
        with transaction(settings) as session:
            result = action(session, svix_ids[start : start + BATCH], skip_not_dead=skip_not_dead)
        done += result.done
        skipped += result.skipped


def run_replay(args: argparse.Namespace, settings: Settings) -> int:
    svix_ids, _ = _selected_ids(args, settings, "replay")
    if not svix_ids:
        print("no dead events match")
        return 0
    if args.dry_run:
        _print_ids(f"would replay {len(svix_ids)} dead event(s):", svix_ids)
        return 0
    app = publisher(settings)
    replayed: list[str] = []
    skipped: list[str] = []

    def replay(session: Session, batch: Sequence[str], *, skip_not_dead: bool) -> dead_letters.Result:
        return dead_letters.replay(session, app, batch, skip_not_dead=skip_not_dead)

    try:
        _in_batches(settings, svix_ids, replay, skip_not_dead=args.all, done=replayed, skipped=skipped)
    except OperationError as exc:
        raise CliError(str(exc)) from None
    except QueueUnavailable as exc:
        raise CliError(
            f"the queue is unavailable ({exc}); replayed {len(replayed)} of {len(svix_ids)}, the rest are still dead"
        ) from None
    finally:
        app.close()
    for svix_id in skipped:
        print(f"skipped {svix_id}: no longer dead")
    _print_ids(f"replayed {len(replayed)} event(s):", replayed)
    return 0


def run_discard(args: argparse.Namespace, settings: Settings) -> int:
    svix_ids, filters = _selected_ids(args, settings, "discard")
    if not svix_ids:
        print("no dead events match")
        return 0
    if args.dry_run:
        _print_ids(f"would discard {len(svix_ids)} dead event(s):", svix_ids)
        return 0
    if args.all and not filters.narrows and not args.yes:
        raise CliError(
            f"dlq discard --all without filters would delete all {len(svix_ids)} dead events; add --yes to confirm",
            exit_code=2,
        )
    discarded: list[str] = []
    skipped: list[str] = []
    try:
        _in_batches(settings, svix_ids, dead_letters.discard, skip_not_dead=args.all, done=discarded, skipped=skipped)
    except OperationError as exc:
        raise CliError(str(exc)) from None
    for svix_id in skipped:
        print(f"skipped {svix_id}: no longer dead")
    _print_ids(f"discarded {len(discarded)} event(s):", discarded)
    return 0


def _print_ids(heading: str, svix_ids: Sequence[str]) -> None:
    print(heading)
    for svix_id in svix_ids:
        print(f"  {svix_id}")
