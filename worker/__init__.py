"""The worker side: everything that runs after the ingress has put an event on the queue.

- ``celery_app``: the Celery app and every Celery setting;
- ``broker``: kombu's Redis transport, made to survive a lost connection the way Celery 5.7 closes it;
- ``hooks``: the application hooks' API (``@hook``) and their loading at the worker's start;
- ``stopping``: a pool process that SIGTERM reaches in the middle of a batch finishes it first;
- ``pipeline/``: the event task and the one apply path, from a queue message to a ledger row;
- ``recovery/``: beat's jobs that make sure nothing accepted is lost or stuck;
- ``clerk/``: the Clerk Backend API side: backfill, reconcile, ``ensure_user``;
- ``ops/``: what operators do to the ledger (the CLI and the console call it);
- ``cli/``: the ``clerk-sync`` command line: argument parsing and printing only;
- ``metrics_server``: the worker's Prometheus scrape point.
"""
