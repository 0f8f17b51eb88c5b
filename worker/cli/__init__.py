"""clerk-sync: the operator's command line (CONTRACT section 6).

Each command lives in a module of its own exposing ``register(subparsers)``; the
list below is the whole table of contents. Exit codes: 0 success, 1 the operation
failed, 2 usage or configuration error; errors are one line on stderr.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from dotenv import load_dotenv

from shared.config import ConfigError, get_settings
from shared.logging import configure_logging
from worker.cli import backfill, dlq, events, pause, reconcile, send, status
from worker.cli.common import CliError

COMMAND_MODULES = (dlq, status, events, pause, backfill, reconcile, send)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clerk-sync", description="Operate clerk-sync: dead letters, status, sync.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # exits 2 on a usage error
    # Variables from ./.env (written by `make run`) for those not already set.
    load_dotenv(Path(".env"), override=False)
    try:
        settings = get_settings()
        # Logs go to stderr so that stdout stays clean for tables and --json.
        configure_logging(log_format=settings.log_format, level="WARNING", stream="ext://sys.stderr")
        return int(args.handler(args, settings) or 0)
    except ConfigError as exc:
        print(f"clerk-sync: configuration error: {exc}", file=sys.stderr)
        return 2
    except CliError as exc:
        print(f"clerk-sync: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("clerk-sync: interrupted", file=sys.stderr)
        return 130
