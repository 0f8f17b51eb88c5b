"""The path of an event through the worker: ``tasks`` (thin Celery task) -> ``batch`` (the one
apply path, one transaction) -> ``handlers`` / ``apply`` (convergent writes to the synced tables)
-> ``hooks`` (the application's) -> ``ledger`` (the `webhook_events` row), all in one transaction.
``errors`` says which failures are permanent, transient, or an outage that spends no retry budget.
Beside them: ``taking`` (the rest of a batch, taken straight from the queue), ``roundtrips`` (the
batch's statements in two round trips), ``outage`` (the shared backoff while Postgres is
unreachable) and ``scrub`` (``DELETED_USER_PII=scrub``, in the batch's transaction).
"""
