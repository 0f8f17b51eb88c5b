"""ledger: the received_at index holds only the rows that still hold a body

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03

Its one reader is the hourly payload purge, which looks for processed and ignored events past
retention that still hold a payload or a raw body. Over the whole ledger (a row per event for
ever) that was a walk over every old row each hour, past the statement timeout once the ledger
held tens of millions; the index now holds only the rows with a body (the retention window's,
and dead ones), so the purge reads what it purges, and the index shrinks as bodies are purged.

Built CONCURRENTLY, as 0005 did: the workers keep writing webhook_events meanwhile.
"""

from typing import Sequence, Union

from migrations.frozen_shapes import replace_ledger_index

revision: str = "0007"
down_revision: Union[str, Sequence[str], None] = "0006"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

HOLDING_BODY = "payload IS NOT NULL OR raw_body IS NOT NULL"


def upgrade() -> None:
    replace_ledger_index("ix_webhook_events_received", "ix_webhook_events_holding_body", ["received_at"], HOLDING_BODY)


def downgrade() -> None:
    replace_ledger_index("ix_webhook_events_holding_body", "ix_webhook_events_received", ["received_at"], None)
