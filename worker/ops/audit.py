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

from sqlalchemy import select
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
) -> None:
    """Add one ``operator_actions`` row to the caller's transaction."""
    session.add(
        OperatorAction(
            operator=actor.name,
            source=actor.source,
            action=action,
            filter=selection,
            svix_ids=list(svix_ids),
            count=count,
        )
    )


def recent(session: Session, *, limit: int = 100, offset: int = 0) -> list[OperatorAction]:
    """The latest actions first."""
    query = select(OperatorAction).order_by(OperatorAction.time.desc(), OperatorAction.id.desc())
    return list(session.scalars(query.limit(limit).offset(offset)))
