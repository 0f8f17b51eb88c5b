#!/usr/bin/env sh
# The `worker` process: settings that belong to the worker command line, not the app.
# WORKER_CONCURRENCY (default: the number of cores) and LOG_LEVEL are read with the other settings
# (worker/celery_app.py), not passed as flags: a bad value then stops the worker with the one line
# that names it rather than Celery's usage error. Each pool process reserves one message and
# its task takes the rest of its batch from the queue (worker/celery_app.py, worker/pipeline/taking.py).
exec celery -A worker.celery_app worker \
  --pool prefork \
  --without-gossip --without-mingle \
  "$@"
