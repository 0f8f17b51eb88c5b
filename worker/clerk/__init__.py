"""The Clerk Backend API side: a retrying client (``api``), ``backfill`` of what existed before
the webhooks, ``reconcile`` of drift, and ``ensure_user`` for the application's first-sign-in race.
Every object read from the API is applied by the same convergence rules as webhooks.
"""
