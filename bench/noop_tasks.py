"""The baseline for the worker benchmark: a Celery app with the worker's own settings and a no-op task.

The task is registered under the real task name, so the very same messages (``process_event(svix_id,
svix_timestamp, body)``, task id = svix-id) are consumed; it only does no work. Run it with the flags of
deploy/celery-worker.sh: ``celery -A bench.noop_tasks worker --pool prefork --concurrency N
--without-gossip --without-mingle``.
"""

from __future__ import annotations

from celery import Celery

from shared.config import get_settings
from shared.publish import PROCESS_EVENT_TASK
from worker.celery_app import celery_config

app = Celery("clerk_sync_bench_noop", set_as_current=True)
app.conf.update(celery_config(get_settings()))
# The worker reserves one message per process and takes the rest of its batch itself; a no-op
# task has no batch, so it gets Celery's best per-message rate with a deep prefetch instead (the
# worker's setting until it took batches itself): the baseline is not made slower by our choice.
app.conf.worker_prefetch_multiplier = 64


@app.task(name=PROCESS_EVENT_TASK)
def process_event(svix_id: str, svix_timestamp: int | None, body: str) -> None:
    """Accept the message and do nothing."""
    return None
