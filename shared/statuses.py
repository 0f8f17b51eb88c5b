"""The ledger's statuses (CONTRACT section 4), in a module that imports nothing heavy.

Kept apart from ``shared.models`` (which re-exports them) so that ``clerk-sync status`` can
name them without paying for SQLAlchemy's import.
"""

import enum


class EventStatus(enum.StrEnum):
    """Where an event stands (CONTRACT section 4); the values are what `webhook_events.status` holds."""

    PENDING = "pending"  # recorded, not applied yet (held by a pause, or its message is on the way)
    PROCESSED = "processed"  # its change is in the synced tables
    IGNORED = "ignored"  # nothing to apply: not synced, or older than what the tables hold
    FAILED = "failed"  # an attempt failed; a retry is scheduled (next_attempt_at)
    DEAD = "dead"  # permanently invalid, or out of retries: waits for an operator


EVENT_STATUSES = tuple(status.value for status in EventStatus)
# An event in one of these is done: a redelivery of its svix-id changes nothing.
FINAL_STATUSES = frozenset({EventStatus.PROCESSED, EventStatus.IGNORED, EventStatus.DEAD})
# Not applied yet, or waiting for an operator: the few rows every reader by status asks for, and all
# that the ledger's partial index ix_webhook_events_not_done holds (its predicate is NOT_DONE_SQL).
NOT_DONE_STATUSES = (EventStatus.PENDING, EventStatus.FAILED, EventStatus.DEAD)
NOT_DONE_SQL = "status IN ({})".format(", ".join(f"'{status.value}'" for status in NOT_DONE_STATUSES))
