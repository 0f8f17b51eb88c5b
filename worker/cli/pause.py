"""`clerk-sync pause` / `clerk-sync resume`: hold applying events, then apply what was held.

While paused the ingress keeps accepting and enqueueing; workers record each event
as `pending` (payload kept) and apply nothing. ``resume`` clears the flag, then
enqueues the held events in order of arrival. If Redis cannot take them, they stay
`pending` and the sweeper enqueues them once it can. Both write to ``operator_actions``.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from worker.cli.common import CliError, actor, add_command, add_operator_flag, publisher, transaction

if TYPE_CHECKING:
    from shared.config import Settings


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    add_command(
        subparsers,
        "pause",
        help="hold applying events (the ingress keeps accepting them)",
        handler=run_pause,
        arguments=add_operator_flag,
    )
    add_command(
        subparsers,
        "resume",
        help="apply events again, starting with those held while paused",
        handler=run_resume,
        arguments=add_operator_flag,
    )


def run_pause(args: argparse.Namespace, settings: Settings) -> int:
    from worker.ops import control

    with transaction(settings) as session:
        was_paused = control.pause(session, actor=actor(args))
    if was_paused:
        print("already paused")
    else:
        print("paused: workers now record incoming events as pending without applying them")
    print("run `clerk-sync resume` to apply them")
    return 0


def run_resume(args: argparse.Namespace, settings: Settings) -> int:
    from shared.publish import QueueUnavailable
    from worker.ops import control

    app = publisher(settings)
    try:
        resumed = control.resume(
            lambda: transaction(settings),
            app,
            actor=actor(args),
            stale_pending_seconds=settings.stale_pending_seconds,
        )
    except QueueUnavailable as exc:
        raise CliError(
            f"resumed, but the queue is unavailable ({exc}): held events stay pending "
            "and the sweeper enqueues them once Redis is back"
        ) from None
    finally:
        app.close()
    print("resumed" if resumed.was_paused else "was not paused")
    print(f"released {resumed.released} held event(s) in order of arrival")
    return 0
