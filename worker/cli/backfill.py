"""`clerk-sync backfill [--users] [--organizations] [--memberships]`: import from Clerk's API.

Resumes where an interrupted run stopped (``--restart`` starts over), shows
progress on stderr (a live line on a terminal, log lines otherwise) and prints a
summary table (or ``--json``) on stdout. Its flags come from the resource table, whose
import is not cheap: they are added only when this command (or its --help) is parsed.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from worker.cli.common import CliError, database_error, print_table

if TYPE_CHECKING:
    from shared.config import Settings
    from worker.clerk.backfill import ResourceResult

# Far more than a 429 or a 5xx streak needs; a larger number is a typing mistake.
MAX_RETRIES = 100


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    subparsers.add_parser(
        "backfill",
        help="import existing users, organizations, memberships, invitations and domains from the Clerk Backend API",
        populate=_populate,
    )


def _populate(parser: argparse.ArgumentParser) -> None:
    add_resource_flags(parser)
    parser.add_argument("--restart", action="store_true", help="ignore saved progress and start from the beginning")
    add_api_flags(parser)
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.set_defaults(handler=run)


def add_resource_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per resource of the resource table: --users, --organizations, --memberships ..."""
    from shared.resources import RESOURCES

    for resource in RESOURCES:
        parser.add_argument(f"--{resource.name}", action="store_true", help=f"{resource.name} (default: all)")


def add_api_flags(parser: argparse.ArgumentParser) -> None:
    from worker.clerk.api import MAX_PAGE_SIZE

    parser.add_argument(
        "--page-size", type=page_size, default=MAX_PAGE_SIZE, help=f"objects per request, 1-500 ({MAX_PAGE_SIZE})"
    )
    parser.add_argument(
        "--retries",
        type=retries,
        default=5,
        help=f"retries of a request after a 429, 5xx or timeout, 0-{MAX_RETRIES} (5)",
    )


def page_size(raw: str) -> int:
    from worker.clerk.api import MAX_PAGE_SIZE

    value = int(raw) if raw.isdigit() else 0
    if not 1 <= value <= MAX_PAGE_SIZE:
        raise argparse.ArgumentTypeError(f"must be a whole number from 1 to {MAX_PAGE_SIZE}")
    return value


def retries(raw: str) -> int:
    if not raw.isdigit() or int(raw) > MAX_RETRIES:
        raise argparse.ArgumentTypeError(f"must be a whole number from 0 to {MAX_RETRIES}")
    return int(raw)


def selected_resources(args: argparse.Namespace) -> list[str]:
    """The chosen resources' names in dependency order; none chosen means all."""
    from shared.resources import RESOURCES

    names = [resource.name for resource in RESOURCES]
    return [name for name in names if getattr(args, name)] or names


class Progress:
    """A live line on a terminal; INFO log lines (``backfill_page``) otherwise."""

    def __init__(self) -> None:
        import logging

        self.live = sys.stderr.isatty()
        if not self.live:
            logging.getLogger("clerk_sync.backfill").setLevel(logging.INFO)

    def __call__(self, result: ResourceResult) -> None:
        if not self.live:
            return  # worker.clerk.backfill logs each page
        seen = result.resumed_from + result.fetched
        share = f"{seen}/{result.total} ({min(100, 100 * seen // result.total)}%)" if result.total else str(seen)
        print(f"\r{result.resource:<13} {share}  applied {result.applied}", end="", file=sys.stderr, flush=True)
        if result.complete:
            print(file=sys.stderr, flush=True)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from sqlalchemy.exc import OperationalError

    from shared.db import session_factory
    from worker.clerk.api import ClerkApiError, client_from_settings
    from worker.clerk.backfill import backfill

    resources = selected_resources(args)
    with client_from_settings(settings, attempts=args.retries + 1) as client:
        try:
            results = backfill(
                session_factory(settings),
                client,
                resources,
                settings=settings,
                page_size=args.page_size,
                restart=args.restart,
                on_page=Progress(),
            )
        except ClerkApiError as exc:
            raise CliError(f"backfill stopped, progress saved (run it again to resume): {exc}") from None
        except OperationalError as exc:
            raise database_error(exc) from None
    if args.json:
        print(json.dumps({"resources": {r.resource: r.as_dict() for r in results}}, indent=2))
    else:
        print_table(
            ("resource", "fetched", "applied", "unchanged", "skipped", "resumed_from"),
            [(r.resource, r.fetched, r.applied, r.unchanged, r.skipped, r.resumed_from) for r in results],
        )
    return 0
