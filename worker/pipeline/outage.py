"""While Postgres is unreachable: one warning per worker per backoff step, and no tracebacks.

Each pool process holding a batch would otherwise retry on a schedule of its own and log each
failure. The processes of one worker share a backoff instead, in memory mapped by the main
process before the pool forks (``install``): when an attempt fails, the first process to report
the step it tried at advances the backoff and logs ``database_unavailable`` once; the others
see the step has moved on and stay silent. Every process waits for the same next probe time.
``database_available`` is logged once when an attempt succeeds again. Both go by the step an
attempt was made at: an attempt begun before another process reported a failure says nothing
about Postgres since, so its success does not end the outage (a sweep that committed just as the
connection was cut would otherwise end it, and the next failure would report step 1 again).

A batch waits for its turn at most ``database_wait`` (``shared.timings``), then hands its events
back to the queue, so a wait never meets the task's soft time limit.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager

import structlog

log = structlog.get_logger("clerk_sync.worker")

FIRST_STEP_SECONDS = 0.5


class DatabaseBackoff:
    """Backoff state shared by the processes forked after it was made: step, next probe, start."""

    def __init__(self, *, cap_seconds: float) -> None:
        self.cap_seconds = cap_seconds
        # step (0: Postgres answers), next probe (time.monotonic(): one clock for every process), start
        self._state = multiprocessing.RawArray(ctypes.c_double, 3)
        self._lock = multiprocessing.Lock()

    @property
    def step(self) -> int:
        return int(self._state[0])

    def wait_turn(self, deadline: float) -> bool:
        """Sleep until the next probe is due; False at once if it is due after ``deadline``."""
        due = self._state[1]
        if due > deadline:
            return False
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        return True

    def failed(self, step_tried: int, *, error: str, waiting_events: int) -> None:
        """An attempt made at ``step_tried`` could not reach Postgres."""
        with self._locked():
            if self.step != step_tried:
                return  # another process of this worker has reported this step
            step = step_tried + 1
            delay = min(self.cap_seconds, FIRST_STEP_SECONDS * 2 ** (step - 1)) * random.uniform(0.5, 1.0)
            self._state[0], self._state[1] = step, time.monotonic() + delay
            if step == 1:
                self._state[2] = time.time()
        log.warning(
            "database_unavailable", step=step, retry_in_seconds=round(delay, 1), error=error, waiting=waiting_events
        )

    def succeeded(self, step_tried: int) -> None:
        """An attempt made at ``step_tried`` reached Postgres: the outage, if there was one, is over
        unless a failure was reported since the attempt began (the next probe decides)."""
        if not self.step:
            return
        with self._locked():
            steps, started = self.step, self._state[2]
            if not steps or steps != step_tried:
                return
            self._state[0] = self._state[1] = self._state[2] = 0.0
        log.info("database_available", steps=steps, outage_seconds=round(time.time() - started, 1))

    @contextmanager
    def _locked(self) -> Iterator[None]:
        # A process killed while holding the lock must not stall the others: after a second,
        # go on without it (at worst two processes log one step).
        acquired = self._lock.acquire(timeout=1.0)
        try:
            yield
        finally:
            if acquired:
                self._lock.release()


_backoff: DatabaseBackoff | None = None


def install(*, cap_seconds: float) -> DatabaseBackoff:
    """Make the worker's backoff; call in the main process before the pool forks."""
    global _backoff
    _backoff = DatabaseBackoff(cap_seconds=cap_seconds)
    return _backoff


def backoff(*, cap_seconds: float) -> DatabaseBackoff:
    """The worker's backoff (a process of its own when none was installed: solo pool, tests)."""
    return _backoff or install(cap_seconds=cap_seconds)
