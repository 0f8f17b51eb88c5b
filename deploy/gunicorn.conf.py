"""gunicorn settings for the `web` process.

Settings are validated here, in the arbiter, before any worker forks: a missing or
malformed variable stops the whole process with one line and exit code 3. (An
import-time SystemExit inside a worker would only make the arbiter restart it.)
"""

import os
import sys

from shared import metrics
from shared.config import ConfigError, load_settings
from shared.logging import logging_dict

# Before any worker imports prometheus_client: every worker writes its samples here and
# GET /metrics sums them. Unset, a private temporary directory is made for this arbiter.
metrics.ensure_multiproc_dir()

try:
    _settings = load_settings()
    _settings.require_webhook_secrets()
except ConfigError as _exc:
    print(f"clerk-sync: configuration error: {_exc}", file=sys.stderr, flush=True)
    sys.exit(3)

bind = f"{os.environ.get('HOST', '0.0.0.0')}:{os.environ.get('PORT', '8000')}"  # noqa: S104 - a server listens
# Threads keep connections alive (Svix reuses them) and hide the short Redis round trip.
worker_class = "gthread"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
threads = int(os.environ.get("WEB_THREADS", "8"))
keepalive = 75
# Svix gives up on a request after 15 s; an ingress request takes milliseconds.
timeout = 30
graceful_timeout = 20
max_requests = 0
accesslog = None
logconfig_dict = logging_dict(log_format=_settings.log_format, level=_settings.log_level)
# Large-enough headers for Svix's multi-signature rotation headers, bounded anyway.
limit_request_field_size = 16384


def child_exit(server, worker):  # type: ignore[no-untyped-def]
    """A gunicorn worker died or was replaced: drop its live metric files."""
    metrics.mark_process_dead(worker.pid)
