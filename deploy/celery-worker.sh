#!/usr/bin/env sh
# The `worker` process: settings that belong to the worker command line, not the app.
# WORKER_CONCURRENCY defaults to the number of cores; prefetch is 1 per process
# (set in shared/queue.py) so a dead worker strands at most one event per process.
exec celery -A worker.celery_app worker \
  --loglevel "${LOG_LEVEL:-INFO}" \
  --concurrency "${WORKER_CONCURRENCY:-$(nproc 2>/dev/null || echo 2)}" \
  --pool prefork \
  --without-gossip --without-mingle \
  "$@"
