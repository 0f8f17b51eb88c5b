#!/usr/bin/env sh
# The `worker` process: settings that belong to the worker command line, not the app.
# WORKER_CONCURRENCY defaults to the number of cores. Each pool process reserves one message and
# its task takes the rest of its batch from the queue (worker/celery_app.py, worker/pipeline/taking.py).
exec celery -A worker.celery_app worker \
  --loglevel "${LOG_LEVEL:-INFO}" \
  --concurrency "${WORKER_CONCURRENCY:-$(nproc 2>/dev/null || echo 2)}" \
  --pool prefork \
  --without-gossip --without-mingle \
  "$@"
