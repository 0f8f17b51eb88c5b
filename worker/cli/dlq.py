"""`clerk-sync dlq list|show|replay|discard`: inspect and repair dead events.

A `dead` event waits for an operator: it was permanently invalid, or it used up its
retry budget. ``replay`` gives it a fresh budget and enqueues it again through the
normal path; ``discard`` deletes its row. Both act on the svix-ids named, or with
``--all`` on every dead event matching the filters, after a question on a terminal
(``--yes`` elsewhere). Both write to the ``operator_actions`` audit table.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from worker.cli.common import (
    CliError,
    actor,
    add_command,
    add_operator_flag,
    confirm,
    one_line,
    print_table,
    printable,
    publisher,
    transaction,
)
from worker.ops import inputs

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from shared.config import Settings
    from worker.ops.dead_letters import DeadFilter, Instruction, Result

ERROR_WIDTH = 60


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser("dlq", help="list, show, replay or discard dead events")
    commands = parser.add_subparsers(dest="dlq_command", required=True, metavar="ACTION")

    list_parser = commands.add_parser("list", help="dead events, oldest first")
    _add_filters(list_parser, limit_default=inputs.DEFAULT_LIST_LIMIT)
    list_parser.add_argument("--json", action="store_true", help="a JSON array, one object per event")
    list_parser.set_defaults(handler=run_list)

    show = commands.add_parser("show", help="one event: payload, every attempt's error, timestamps")
    show.add_argument("svix_id", metavar="SVIX_ID", type=svix_id)
    show.add_argument("--json", action="store_true", help="one JSON object")
    show.set_defaults(handler=run_show)

    replay_help = "give dead events a new retry budget and enqueue them again"
    add_command(commands, "replay", help=replay_help, handler=run_replay, arguments=_add_selection)
    discard_help = "delete dead events that will never be applied"
    add_command(commands, "discard", help=discard_help, handler=run_discard, arguments=_add_selection)


def _add_filters(parser: argparse.ArgumentParser, *, limit_default: int | None) -> None:
    parser.add_argument("--type", dest="event_type", metavar="TYPE", help="exact event type, e.g. user.created")
    parser.add_argument("--since", metavar="WHEN", help="received since: ISO date/datetime, or a duration like 2h, 3d")
    parser.add_argument("--error", metavar="TEXT", help="last error contains TEXT (case-insensitive)")
    parser.add_argument(
        "--entity",
        metavar="ID",
        type=entity_id,
        help="about this user, organization, membership, invitation or domain id (or naming it)",
    )
    default = f"default {limit_default}" if limit_default else "default: no limit"
    parser.add_argument(
        "--limit", type=limit, default=limit_default, help=f"at most N events, up to 100000 ({default})"
    )


def _add_selection(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("svix_ids", nargs="*", metavar="SVIX_ID", type=svix_id, help="the dead events to act on")
    parser.add_argument("--all", action="store_true", help="every dead event matching the filters")
    _add_filters(parser, limit_default=None)
    parser.add_argument("--dry-run", action="store_true", help="print what would be done and do nothing")
    parser.add_argument("--yes", action="store_true", help="do --all without asking (needed when not on a terminal)")
    add_operator_flag(parser)


def limit(text: str) -> int:
    try:
        return inputs.parse_limit(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(printable(str(exc).removeprefix("--limit "))) from None


def entity_id(text: str) -> str:
    try:
        return inputs.check_entity_id(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(printable(exc)) from None


def svix_id(text: str) -> str:
    try:
        return inputs.check_svix_id(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(printable(exc)) from None


def filters_from(args: argparse.Namespace) -> DeadFilter:
    from worker.ops.dead_letters import DeadFilter

    # Text filters read as the console reads its fields: surrounding blanks are not part of them.
    texts = {"type": args.event_type, "error": args.error}
    try:
        event_type, error = (inputs.check_text(name, (text or "").strip() or None) for name, text in texts.items())
        since = inputs.parse_since(args.since) if args.since is not None else None
    except ValueError as exc:
        raise CliError(printable(exc), exit_code=2) from None
    return DeadFilter(event_type=event_type, since=since, error=error, entity=args.entity, limit=args.limit)


def run_list(args: argparse.Namespace, settings: Settings) -> int:
    from worker.ops import dead_letters

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
                    one_line(row.last_error, ERROR_WIDTH),
                    row.received_at.strftime("%Y-%m-%d %H:%M:%S"),
                )
                for row in rows
            ],
        )
        if filters.limit is not None and len(rows) == filters.limit:
            print(f"(first {filters.limit}; use --limit to see more)")
    return 0


def run_show(args: argparse.Namespace, settings: Settings) -> int:
    from worker.ops import dead_letters

    with transaction(settings) as session:
        row = dead_letters.get_event(session, args.svix_id)
        if row is None:
            raise CliError(f"no event with svix_id {printable(args.svix_id)}")
        event = dead_letters.detail(row)
    if args.json:
        print(json.dumps(event, indent=2))
    else:
        _print_event(event)
    return 0


def _print_event(event: dict[str, Any]) -> None:
    """An event's page as text: its fields, conflicting redeliveries, errors, then its body."""
    for field in ("svix_id", "status", "event_type", "entity_id", "attempts", "last_error", "svix_timestamp"):
        print(f"{field + ':':<17} {'' if event[field] is None else printable(event[field])}")
    for field in ("received_at", "processed_at", "next_attempt_at", "updated_at", "body_sha256"):
        print(f"{field + ':':<17} {event[field] or ''}")
    conflicts = event["conflicting_redeliveries"]
    if conflicts:
        print(f"conflicting redeliveries ({len(conflicts)}, another body under this svix-id, never applied):")
        for entry in conflicts:
            print(f"  {printable(entry.get('at', ''))}  body sha256 {printable(entry.get('body_sha256', ''))}")
    print(f"errors ({len(event['errors'])}):")
    for number, entry in enumerate(event["errors"], start=1):
        print(f"  {number}. {_error_line(entry)}")
    _print_body(event)


def _error_line(entry: Any) -> str:
    """One entry of an event's errors: an attempt's error, or a note such as a replay."""
    if not isinstance(entry, dict):
        return printable(entry)
    if "error" in entry:
        return f"{printable(entry.get('at', ''))}  {printable(entry['error'])}"
    notes = ", ".join(f"{k}={v}" for k, v in entry.items() if k != "at")
    return f"{printable(entry.get('at', ''))}  ({printable(notes)})"


def _print_body(event: dict[str, Any]) -> None:
    if event["payload"] is not None:
        print("payload:")
        # json.dumps escapes every control character (\u001b), so the payload is safe as is.
        print(json.dumps(event["payload"], indent=2, sort_keys=True))
    elif event["raw_body"] is not None:
        print("raw body (not JSON):")
        print("\n".join(printable(line) for line in event["raw_body"].splitlines()))
    else:
        print("payload: (no longer stored)")


def _selected(args: argparse.Namespace, settings: Settings, verb: str) -> tuple[list[str], DeadFilter | None]:
    """The svix-ids named, or with --all those of the dead events matching the filters (and the filter)."""
    from worker.ops import dead_letters

    filters = filters_from(args)
    if args.all and args.svix_ids:
        raise CliError(f"dlq {verb}: give SVIX_IDs or --all, not both", exit_code=2)
    if not args.all:
        if not args.svix_ids:
            raise CliError(f"dlq {verb}: name SVIX_IDs, or use --all [filters]", exit_code=2)
        if filters.narrows or filters.limit is not None:
            raise CliError(f"dlq {verb}: filters only apply with --all", exit_code=2)
        return list(dict.fromkeys(args.svix_ids)), None
    with transaction(settings) as session:
        return dead_letters.matching_ids(session, filters), filters


def _describe(filters: DeadFilter | None) -> str:
    if filters is None or not filters.as_dict():
        return "every dead event"
    return "dead events matching " + " ".join(f"{key}={value}" for key, value in filters.as_dict().items())


def _prepare(args: argparse.Namespace, settings: Settings, verb: str) -> tuple[list[str], DeadFilter | None] | None:
    """What to act on, after the confirmation of --all (a dry run needs none); None when nothing is to be done."""
    svix_ids, filters = _selected(args, settings, verb)
    if not svix_ids:
        print("no dead events match")
        return None
    if args.all and not args.dry_run:
        confirm(f"{verb} {len(svix_ids)} event(s), {printable(_describe(filters))}?", yes=args.yes)
    return svix_ids, filters


def run_replay(args: argparse.Namespace, settings: Settings) -> int:
    from worker.ops import dead_letters

    app = publisher(settings)

    def replay(session: Session, svix_ids: Sequence[str], instruction: Instruction) -> Result:
        return dead_letters.replay(session, app, svix_ids, instruction)

    try:
        return _act_in_batches(args, settings, "replay", "replayed", replay)
    finally:
        app.close()


def run_discard(args: argparse.Namespace, settings: Settings) -> int:
    from worker.ops import dead_letters

    return _act_in_batches(args, settings, "discard", "discarded", dead_letters.discard)


def _act_in_batches(
    args: argparse.Namespace,
    settings: Settings,
    verb: str,
    done: str,
    operation: Callable[[Session, Sequence[str], Instruction], Result],
) -> int:
    """``operation`` on the selected dead events, a transaction a batch; what is done stays done on a failure.

    A dry run goes the same way, the ids looked up and refused alike, with an instruction that changes nothing.
    """
    from shared.publish import QueueUnavailable
    from worker.ops import dead_letters

    prepared = _prepare(args, settings, verb)
    if prepared is None:
        return 0
    svix_ids, filters = prepared
    instruction = dead_letters.Instruction(actor(args), selection=filters, skip_not_dead=args.all, dry_run=args.dry_run)
    progress = dead_letters.Result()

    def step(session: Session, batch: Sequence[str]) -> Result:
        return operation(session, batch, instruction)

    try:
        dead_letters.in_batches(lambda: transaction(settings), svix_ids, step, progress=progress)
    except dead_letters.OperationError as exc:
        raise CliError(printable(exc)) from None
    except QueueUnavailable as exc:
        raise CliError(
            f"the queue is unavailable ({exc}); {done} {len(progress.done)} of {len(svix_ids)}, the rest are still dead"
        ) from None
    count = len(progress.done)
    skip, heading = (
        ("would skip", f"would {verb} {count} dead event(s):")
        if args.dry_run
        else ("skipped", f"{done} {count} event(s):")
    )
    for skipped in progress.skipped:
        print(f"{skip} {printable(skipped)}: no longer dead")
    _print_ids(heading, progress.done)
    return 0


def _print_ids(heading: str, svix_ids: Sequence[str]) -> None:
    print(heading)
    for svix_id in svix_ids:
        print(f"  {printable(svix_id)}")
