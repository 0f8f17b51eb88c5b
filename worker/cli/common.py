"""What several commands share: the parser, the error type, a session, a publisher, safe printing.

Nothing heavy is imported at module level: ``clerk-sync --help`` and ``clerk-sync status``
must start in a fraction of a second, so SQLAlchemy, svix and the like are imported by
the functions that need them.
"""

from __future__ import annotations

import argparse
import getpass
import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, NoReturn

from shared.terminal import driver_reason, printable

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from shared.config import Settings
    from shared.publish import EventPublisher
    from worker.ops.audit import Actor

_OPERATOR_NAME = re.compile(r"^[\w.@+-]{1,64}$")


class CliError(Exception):
    """A one-line failure to print; ``exit_code`` 1 (operation failed) or 2 (usage)."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class Parser(argparse.ArgumentParser):
    """argparse with the house's error shape (one line on stderr, exit code 2), and lazy sub-commands.

    ``populate`` (a keyword of ``add_parser``) adds a sub-command's arguments only when that
    sub-command is parsed or its help is shown, for arguments whose definition needs a heavy
    import (the resource table): ``clerk-sync --help`` and the other commands never pay for it.
    """

    def __init__(self, *args: Any, populate: Callable[[argparse.ArgumentParser], None] | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._populate = populate
        self._required_commands: list[argparse.Action] = []

    def add_subparsers(self, **kwargs: Any) -> Any:
        """Sub-commands whose absence is checked after parsing (``parse_known_args``), not by argparse:
        argparse reports a missing command before an unknown option, so ``clerk-sync --bogus`` said
        that COMMAND is required rather than naming ``--bogus``."""
        action = super().add_subparsers(**{**kwargs, "required": False})
        if kwargs.get("required"):
            self._required_commands.append(action)
        return action

    def _populated(self) -> None:
        if self._populate is not None:
            populate, self._populate = self._populate, None
            populate(self)

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        self._populated()
        namespace, extras = super().parse_known_args(args, namespace)
        if not extras:  # an unknown option is the error to report, and parse_args names it
            for action in self._required_commands:
                if getattr(namespace, action.dest, None) is None:
                    self.error(f"the following arguments are required: {action.metavar}")
        return namespace, extras

    def format_help(self) -> str:
        self._populated()
        return super().format_help()

    def format_usage(self) -> str:
        self._populated()
        return super().format_usage()

    def error(self, message: str) -> NoReturn:
        command = self.prog.removeprefix("clerk-sync").strip() or "usage"
        print(f"clerk-sync: {command}: {printable(message)} (see --help)", file=sys.stderr)
        raise SystemExit(2)


def one_line(text: str | None, width: int) -> str:
    """``text`` on one printable line of at most ``width`` characters (``...`` where cut): a cell, a quote."""
    flat = printable(" ".join((text or "").split()))
    return flat if len(flat) <= width else flat[: width - 3] + "..."


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A plain aligned table for people; scripts use --json. Cells are made ``printable``."""
    cells = [[("" if value is None else printable(value)) for value in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    print("  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def database_error(exc: Exception) -> CliError:
    """An unreachable or failing database as one line (the driver's first line, no parameters)."""
    return CliError(f"database unavailable: {driver_reason(exc)}")


# Postgres's undefined_table and undefined_column: the tables are not the ones this code expects.
_NOT_MIGRATED_SQLSTATES = frozenset({"42P01", "42703"})


def as_database_error(exc: BaseException) -> CliError | None:
    """Any other error of the database, as one line; None when ``exc`` is not the database's.

    Named as the worker names it (class, SQLSTATE, constraint, table, column), never by the
    database's message: a data error or an application's trigger quotes the row's values there.
    Looked up in ``sys.modules``: a command that never imported the driver raised none of its errors.
    """
    psycopg = sys.modules.get("psycopg")
    sqlalchemy_exc = sys.modules.get("sqlalchemy.exc")
    if not (
        (psycopg is not None and isinstance(exc, psycopg.Error))
        or (sqlalchemy_exc is not None and isinstance(exc, sqlalchemy_exc.DBAPIError))
    ):
        return None
    original = getattr(exc, "orig", None) or exc
    if getattr(original, "sqlstate", None) in _NOT_MIGRATED_SQLSTATES:
        return CliError(f"the database is not migrated ({driver_reason(exc)}): run `alembic upgrade head`")
    from worker.pipeline.errors import describe

    return CliError(f"database error: {describe(exc)}")


@contextmanager
def transaction(settings: Settings) -> Iterator[Session]:
    """One committed transaction, with an unreachable database as a one-line error."""
    from sqlalchemy.exc import OperationalError

    from shared.db import session_factory

    try:
        with session_factory(settings).begin() as session:
            yield session
    except OperationalError as exc:
        raise database_error(exc) from None


def publisher(settings: Settings) -> EventPublisher:
    """The publisher replays and resumes enqueue with (5 s timeouts: an operator waits)."""
    from shared.publish import EventPublisher

    return EventPublisher(settings, timeout=5.0)


def add_command(
    subparsers: argparse._SubParsersAction,  # type: ignore[type-arg]
    name: str,
    *,
    help: str,
    handler: Callable[..., int],
    arguments: Callable[[argparse.ArgumentParser], None] | None = None,
) -> argparse.ArgumentParser:
    """A sub-command that runs ``handler``, with the arguments ``arguments`` adds."""
    parser = subparsers.add_parser(name, help=help)
    if arguments is not None:
        arguments(parser)
    parser.set_defaults(handler=handler)
    return parser


def add_operator_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--operator",
        type=operator_name,
        metavar="NAME",
        help="who is acting, for the operator_actions audit table (default: the OS user)",
    )


def operator_name(text: str) -> str:
    if not _OPERATOR_NAME.match(text):
        raise argparse.ArgumentTypeError("an operator name is 1-64 letters, digits or . @ + - _")
    return text


def actor(args: argparse.Namespace) -> Actor:
    """The audit's operator: ``--operator``, else the OS user running the command."""
    from worker.ops.audit import Actor

    name = getattr(args, "operator", None)
    if not name:
        try:
            name = getpass.getuser()
        except (KeyError, OSError):  # a uid without a passwd entry (some containers)
            name = f"uid:{os.getuid()}"
    return Actor(name=name, source="cli")


def confirm(question: str, *, yes: bool, flag: str = "--yes") -> None:
    """Ask on a terminal; elsewhere ``--yes`` must have been given. CliError when not confirmed."""
    if yes:
        return
    if not sys.stdin.isatty():
        raise CliError(f"{question.rstrip('?')}: not confirmed; add {flag} to do it without a terminal", exit_code=2)
    print(f"{question} [y/N] ", end="", file=sys.stderr, flush=True)
    answer = sys.stdin.readline().strip().lower()
    if answer not in ("y", "yes"):
        raise CliError("not confirmed: nothing changed")
