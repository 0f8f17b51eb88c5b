"""Beat's periodic reconcile: drift between Clerk and the tables, reported in the logs."""

from __future__ import annotations

import structlog

from shared.config import ConfigError, get_settings
from shared.db import session_factory
from shared.publish import RECONCILE_TASK
from worker.celery_app import app

log = structlog.get_logger("clerk_sync.tasks")


# acks_late off: a reconcile may outlast the broker's visibility timeout, and one
# lost run is simply the next interval's job. Reads only: it never runs --fix.
@app.task(name=RECONCILE_TASK, ignore_result=True, acks_late=False, time_limit=3600, soft_time_limit=3540)
def reconcile() -> dict[str, int]:
    """Report drift between Clerk and the tables in the logs (RECONCILE_INTERVAL_SECONDS)."""
    from worker.clerk.api import ClerkApiError, client_from_settings
    from worker.clerk.reconcile import reconcile as run_reconcile

    settings = get_settings()
    try:
        with client_from_settings(settings) as client:
            report = run_reconcile(session_factory(settings), client, settings=settings)
    except (ConfigError, ClerkApiError) as exc:
        log.error("reconcile_failed", error=str(exc))
        return {}
    counts = report.counts()
    if report.drift_found:
        log.warning("reconcile_drift_found", **counts)
    else:
        log.info("reconcile_no_drift", **counts)
    return counts
