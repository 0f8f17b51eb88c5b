"""ledger: the received_at index holds only the rows that still hold a body

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03

Its one reader is the hourly payload purge, which looks for processed and ignored events past
retention that still hold a payload or a raw body. Over the whole ledger (a row per event for
ever) that was a walk over every old row each hour, past the statement timeout once the ledger
held tens of millions; the index now holds only the rows with a body (the retention window's,
and dead ones), so the purge reads what it purges, and the index shrinks as bodies are purged.

The new index is built and the old one dropped CONCURRENTLY (``frozen_shapes.replace_ledger_index``,
as for 0005), so the workers keep writing webhook_events meanwhile.
"""

from typing import Sequence, Union

from migrations.frozen_shapes import ledger_index_swap

revision: str = "0007"
down_revision: Union[str, Sequence[str], None] = "0006"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

HOLDING_BODY = "payload IS NOT NULL OR raw_body IS NOT NULL"

upgrade, downgrade = ledger_index_swap(
    "ix_webhook_events_received", "ix_webhook_events_holding_body", ["received_at"], HOLDING_BODY
)
