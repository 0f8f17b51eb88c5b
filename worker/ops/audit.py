"""The audit trail: every change an operator makes, written where the change is made.

``record`` is called by the operations themselves (replay, discard, pause, resume), inside
the transaction of the change, so neither the CLI nor the console can change the ledger
without leaving a row in ``operator_actions``, and no row describes a change that was
rolled back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from shared.models import OperatorAction

SOURCES = ("cli", "console")


@dataclass(frozen=True)
class Actor:
    """Who asks for a change: a console account, or the OS user (or ``--operator``) of the CLI."""

    name: str
    source: str

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {self.source!r}")
        if not self.name:
            raise ValueError("an operator needs a name")


def record(
    session: Session,
    actor: Actor,
    *,
    action: str,
    svix_ids: Sequence[str] = (),
    count: int = 0,
    selection: dict[str, Any] | None = None,
) -> OperatorAction:
    """Add one ``operator_actions`` row to the caller's transaction."""
    row = OperatorAction(
        operator=actor.name,
        source=actor.source,
        action=action,
        filter=selection,
        svix_ids=list(svix_ids),
        count=count,
    )
    session.add(row)
    return row


@dataclass
class Entry:
    """The row of one action that runs in several transactions (a bulk replay or discard goes 100
    events a transaction): its first part inserts the row, the others extend it, so one action is
    one row, holding what committed."""

    id: int | None = None


def record_part(
    session: Session,
    entry: Entry,
    actor: Actor,
    *,
    action: str,
    svix_ids: Sequence[str],
    selection: dict[str, Any] | None = None,
) -> None:
    """``record`` for the first part of ``entry``'s action; the row's ids and count extended after it."""
    if entry.id is not None:
        extended = session.execute(
            update(OperatorAction)
            .where(OperatorAction.id == entry.id)
            .values(svix_ids=OperatorAction.svix_ids + list(svix_ids), count=OperatorAction.count + len(svix_ids))
        )
        if extended.rowcount == 1:  # type: ignore[attr-defined]
            return
    # The first part, or the parts before this one rolled back: a row of its own.
    row = record(session, actor, action=action, svix_ids=svix_ids, count=len(svix_ids), selection=selection)
    session.flush()
    entry.id = row.id


def recent(session: Session, *, limit: int = 100, offset: int = 0) -> list[OperatorAction]:
    """The latest actions first."""
    query = select(OperatorAction).order_by(OperatorAction.time.desc(), OperatorAction.id.desc())
    return list(session.scalars(query.limit(limit).offset(offset)))
