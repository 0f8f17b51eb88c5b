"""`clerk-sync pause` / `clerk-sync resume`: hold applying events, then apply what was held.

While paused the ingress keeps accepting and enqueueing; workers record each event
as `pending` (payload kept) and apply nothing. ``resume`` clears the flag, then
enqueues the held events in order of arrival. If Redis cannot take them, they stay
`pending` and the sweeper enqueues them once it can.
"""

from __future__ import annotations

import argparse

from shared.config import Settings
from shared.publish import QueueUnavailable
from worker.cli.common import CliError, publisher, transaction
from worker.ops import control


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    pause = subparsers.add_parser("pause", help="hold applying events (the ingress keeps accepting them)")
    pause.set_defaults(handler=run_pause)
    resume = subparsers.add_parser("resume", help="apply events again, starting with those held while paused")
    resume.set_defaults(handler=run_resume)


def run_pause(args: argparse.Namespace, settings: Settings) -> int:
    with transaction(settings) as session:
        was_paused = control.pause(session)
    if was_paused:
        print("already paused")
    else:
        print("paused: workers now record incoming events as pending without applying them")
    print("run `clerk-sync resume` to apply them")
    return 0


def run_resume(args: argparse.Namespace, settings: Settings) -> int:
    # The flag is committed first: a worker must see it cleared before a released
    # message reaches it, or it would hold that event again.
    with transaction(settings) as session:
        was_paused = control.unpause(session)
    app = publisher(settings)
    try:
        with transaction(settings) as session:
            released = control.release_held(session, app, stale_pending_seconds=settings.stale_pending_seconds)
    except QueueUnavailable as exc:
        raise CliError(
            f"resumed, but the queue is unavailable ({exc}): held events stay pending "
            "and the sweeper enqueues them once Redis is back"
        ) from None
    finally:
        app.close()
    print("resumed" if was_paused else "was not paused")
    print(f"released {released} held event(s) in order of arrival")
    return 0
