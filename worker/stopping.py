"""A pool process that SIGTERM reaches in the middle of a batch finishes that batch first.

honcho, systemd (its default KillMode) and Heroku send SIGTERM to every process of the worker, not
to its main process alone. A pool process holding a batch then died at once (billiard's handler
unwinds it with SystemExit): the batch rolled back, its messages went back on the queue for the
next worker, and the log had an error line and a WorkerLostError traceback per pool process, on an
ordinary stop. The main process's warm shutdown already waits for what its pool holds; now the pool
process waits too. A SIGTERM that arrives during a batch (the event task: not beat's sweep, purge or
reconcile) is held until the batch has ended, when the main process stops the pool as in any warm
shutdown. A second SIGTERM, one that arrives while the process is idle or runs one of beat's jobs,
or one still held when its next task begins (only the pool process was told to stop) is handed to
billiard's handler at once, as before. The hard time limit's SIGTERM cannot be told from another and
is held too; billiard's SIGKILL follows it 0.1 s later, and the batch goes back on the queue.
"""

from __future__ import annotations

import os
import signal
from types import FrameType
from typing import Any

from shared.publish import PROCESS_EVENT_TASK

_state = {"busy": False, "held": False}
# billiard's own SIGTERM handler, which it installs after Celery's worker_process_init has run: ours
# goes in front of it as the pool process's first task begins.
_billiard: dict[str, Any] = {}


def _obey(signum: int, frame: FrameType | None) -> None:
    handler = _billiard.get("handler")
    if callable(handler):
        handler(signum, frame)
        return
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    if _state["busy"] and not _state["held"]:
        _state["held"] = True
        return
    _obey(signum, frame)


def task_starting(sender: Any = None, **_: Any) -> None:
    """Celery's ``task_prerun``, in the pool process: a SIGTERM held since the last batch is obeyed
    before another task begins. Only an event batch holds one: beat's jobs (a reconcile may wait on
    Clerk's API for an hour) stop at once, as they always did; each is the next interval's to redo."""
    if "handler" not in _billiard:
        _billiard["handler"] = signal.signal(signal.SIGTERM, _on_sigterm)
    if _state["held"]:
        _obey(signal.SIGTERM, None)
    _state["busy"] = getattr(sender, "name", None) == PROCESS_EVENT_TASK


def task_ended(**_: Any) -> None:
    """Celery's ``task_postrun``, in the pool process."""
    _state["busy"] = False
