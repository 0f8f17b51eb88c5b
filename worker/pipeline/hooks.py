"""The application's hooks (``worker.hooks``), run inside the batch's transaction after the sync.

``batch`` calls ``run`` once the batch's changes are written and before its ledger rows are
finished, with every event that reached the apply step: each distinct event Clerk sent for this
instance, whether it changed the tables (``processed``) or was older than them (recorded
``ignored`` as stale, yet an event the application may still react to: a ``user.created`` seen
after its ``user.updated`` still owes its welcome mail). Duplicates, event types not synced,
events of another instance, events held by a pause and invalid bodies never get here.

A hook that raises, commits or ends the transaction becomes ``HookFailed`` naming it: the batch
rolls back (the sync's changes too) and is applied again event by event, so only its own event
fails, and is retried like any failure until it is ``dead``.
"""

from __future__ import annotations

import contextvars
from collections.abc import Sequence
from functools import cache
from typing import Any

import structlog
from sqlalchemy import event as orm_event
from sqlalchemy.orm import Session

from shared.config import Settings
from shared.events import Event
from worker import hooks
from worker.pipeline.errors import HookFailed

# The hook running now, if any: a commit then would make part of a batch permanent.
_running: contextvars.ContextVar[str | None] = contextvars.ContextVar("clerk_sync_hook", default=None)


class HookEndedTransaction(Exception):
    """The hook committed or rolled back the session: the event's transaction is not the hook's to end."""


@cache
def _table(modules: tuple[str, ...]) -> hooks.HookTable:
    return hooks.load(modules)


def installed(settings: Settings) -> hooks.HookTable:
    """The hooks of the entry point group and of CLERK_SYNC_HOOKS, imported once per process.

    The worker calls this at start, before its pool forks, so that a bad module stops it there.
    """
    return _table(settings.hook_modules)


def run(session: Session, events: Sequence[tuple[str, Event]], *, settings: Settings) -> None:
    """Each hook registered for each event's type, in order, in the caller's transaction.

    ``events`` are (svix_id, event) in arrival order; a hook's own log lines carry the svix_id,
    the event type and the hook's name.
    """
    table = installed(settings)
    if not table:
        return
    for svix_id, event in events:
        for registered in table.get(event.type, ()):
            with structlog.contextvars.bound_contextvars(svix_id=svix_id, event_type=event.type, hook=registered.name):
                _call(registered, event, session)


def _call(registered: hooks.Hook, event: Event, session: Session) -> None:
    transaction = session.get_transaction()
    token = _running.set(registered.name)
    try:
        registered.function(event, session)
        if session.get_transaction() is not transaction:
            raise HookEndedTransaction
        session.flush()  # its ORM writes fail here, in its name, not at the batch's commit
    except Exception as exc:
        raise HookFailed(registered.name, exc) from exc
    finally:
        _running.reset(token)


@orm_event.listens_for(Session, "before_commit")
def _no_commit_inside_a_hook(session: Session, *_: Any) -> None:
    if _running.get() is not None:
        raise HookEndedTransaction
