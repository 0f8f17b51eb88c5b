"""The ledger's statuses (CONTRACT section 4), in a module that imports nothing.

Kept apart from ``shared.models`` so that ``clerk-sync status`` can name them without
paying for SQLAlchemy's import.
"""

EVENT_STATUSES = ("pending", "processed", "ignored", "failed", "dead")
FINAL_STATUSES = ("processed", "ignored", "dead")
