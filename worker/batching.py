"""celery-batches, with the one delivery guarantee it leaves out.

``Batches`` acks a batch's messages when the pool returns its result. If the pool
process running the batch dies (SIGKILL, OOM), it neither acks nor rejects them: they
wait out the visibility timeout and keep counting against the worker's prefetch. Here
a lost batch is rejected with requeue at once, so another process applies it now,
as Celery does for a plain task with ``task_reject_on_worker_lost``.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from celery.worker.request import Request
from celery_batches import Batches, SimpleRequest, apply_batches_task


class EventBatches(Batches):
    """A Batches task base whose messages are acked after the batch, requeued if its process is lost."""

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
