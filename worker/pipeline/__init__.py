"""The path of an event through the worker: ``tasks`` (thin Celery task) -> ``batch`` (the one
apply path, one transaction) -> ``handlers`` / ``apply`` (convergent writes to the synced tables)
-> ``ledger`` (the `webhook_events` row, in the same transaction). ``errors`` says which
failures are permanent, transient, or an outage that spends no retry budget.
"""
