"""What several commands share: the error type, a session, a publisher, a table printer."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from shared.config import Settings
from shared.db import session_factory
from shared.publish import EventPublisher


class CliError(Exception):
    """A one-line failure to print; ``exit_code`` 1 (operation failed) or 2 (usage)."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@contextmanager
def transaction(settings: Settings) -> Iterator[Session]:
    """One committed transaction, with an unreachable database as a one-line error."""
    try:
        with session_factory(settings).begin() as session:
            yield session
    except OperationalError as exc:
        raise CliError(f"database unavailable: {str(exc.orig).strip().splitlines()[0]}") from None


def publisher(settings: Settings) -> EventPublisher:
    """The publisher replays and resumes enqueue with (5 s timeouts: an operator waits)."""
    return EventPublisher(settings, timeout=5.0)


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A plain aligned table for people; scripts use --json."""
    cells = [[("" if value is None else str(value)) for value in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    print("  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
