"""`clerk-sync console-password [--name NAME]`: print a hash for a console account.

The password is asked twice on a terminal, or read as one line from stdin (for scripts);
it is never an argument, so it stays out of shell history and `ps`. The output goes into
``CONSOLE_USERS`` as ``name:hash``.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import TYPE_CHECKING

from worker.cli.common import CliError, operator_name

if TYPE_CHECKING:
    from shared.config import Settings


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser("console-password", help="hash a password for a console account (CONSOLE_USERS)")
    parser.add_argument("--name", type=operator_name, help="print NAME:hash, ready for CONSOLE_USERS")
    parser.set_defaults(handler=run, needs_settings=False)


def read_password() -> str:
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("password: ")
    if getpass.getpass("again: ") != first:
        raise CliError("the two passwords differ", exit_code=2)
    return first


def run(args: argparse.Namespace, settings: Settings | None) -> int:
    from shared.passwords import hash_password

    try:
        password_hash = hash_password(read_password())
    except ValueError as exc:
        raise CliError(str(exc), exit_code=2) from None
    print(f"{args.name}:{password_hash}" if args.name else password_hash)
    return 0
