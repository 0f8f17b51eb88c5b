"""celery-batches, with two gaps closed.

- ``Batches`` acks a batch's messages when the pool returns its result. If the pool
  process running the batch dies (SIGKILL, OOM), it neither acks nor rejects them: they
  wait out the visibility timeout and keep counting against the worker's prefetch. Here
  a lost batch is rejected with requeue at once, so another process applies it now,
  as Celery does for a plain task with ``task_reject_on_worker_lost``.
- ``Batches`` starts its flush timer with the first message and never again. A broker
  reconnect clears the consumer's timers, so after one, a buffer below ``flush_every``
  was never flushed (until enough messages, or the visibility timeout, came). Celery
  builds a new strategy on every consumer (re)start; here that also resets the timer.
"""

from __future__ import annotations

from collections.abc import Collection
from contextlib import suppress
from typing import Any

from celery.worker.request import Request
from celery_batches import Batches, SimpleRequest, apply_batches_task


class EventBatches(Batches):
    """A Batches task base whose messages are acked after the batch, requeued if its process is lost."""

    def Strategy(self, task: Any, app: Any, consumer: Any) -> Any:
        if self._tref is not None:  # type: ignore[has-type]
            with suppress(Exception):  # the timer it lived on may be gone already
                self._tref.cancel()  # type: ignore[has-type]
            self._tref = None
        return super().Strategy(task, app, consumer)

    def flush(self, requests: Collection[Request]) -> Any:
        batch = list(requests)
        serializable = ([SimpleRequest.from_request(request) for request in batch],)

        def on_return(_: Any) -> None:
            for request in batch:
                request.acknowledge()

        def on_lost(_: Any) -> None:
            for request in batch:
                request.reject(requeue=True)

        return self._pool.apply_async(
            apply_batches_task,
            (self, serializable, 0, None),
            callback=on_return,
            error_callback=on_lost,
        )
