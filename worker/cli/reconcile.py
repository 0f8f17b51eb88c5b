"""`clerk-sync reconcile [--fix]`: drift between Clerk's Backend API and the tables.

Exit 0 when there is no drift, 1 when drift was found, also with ``--fix`` (the
report says what was found and repaired), so a cron job alerts either way.
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from worker.cli.backfill import add_api_flags, add_resource_flags, selected_resources
from worker.cli.common import CliError, database_error, print_table

if TYPE_CHECKING:
    from shared.config import Settings
    from worker.clerk.reconcile import Report


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    subparsers.add_parser(
        "reconcile", help="compare the tables with the Clerk Backend API; exit 1 when they drifted", populate=_populate
    )


def _populate(parser: argparse.ArgumentParser) -> None:
    """The flags, added when this command is parsed (the resource table is not cheap to import)."""
    parser.add_argument("--fix", action="store_true", help="repair the drift found (exit code is still 1)")
    parser.add_argument(
        "--allow-mass-delete",
        action="store_true",
        help="with --fix, tombstone vanished rows even when they are over a quarter of a table",
    )
    add_resource_flags(parser)
    add_api_flags(parser)
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from sqlalchemy.exc import OperationalError

    from shared.db import session_factory
    from worker.clerk.api import ClerkApiError, client_from_settings
    from worker.clerk.reconcile import reconcile

    with client_from_settings(settings, attempts=args.retries + 1) as client:
        try:
            report = reconcile(
                session_factory(settings),
                client,
                settings=settings,
                resources=selected_resources(args),
                fix=args.fix,
                allow_mass_delete=args.allow_mass_delete,
                page_size=args.page_size,
            )
        except ClerkApiError as exc:
            raise CliError(f"reconcile failed: {exc}") from None
        except OperationalError as exc:
            raise database_error(exc) from None
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        print_report(report)
    return 1 if report.drift_found else 0


def print_report(report: Report) -> None:
    from worker.clerk.reconcile import KINDS

    rows = []
    for drift in report.resources:
        for kind in KINDS:
            ids = sorted(getattr(drift, kind))
            rows.append((drift.resource, kind, len(ids), " ".join(ids[:5])))
    print_table(("resource", "kind", "count", "sample"), rows)
    for drift in report.resources:
        if drift.refused:
            print(f"refused: {drift.refused}")
    if not report.drift_found:
        print("no drift")
    elif report.fix:
        print(f"drift found and repaired: {sum(d.fixed for d in report.resources)} rows changed")
    else:
        print(f"drift found: {sum(d.total for d in report.resources)} rows; run with --fix to repair")
