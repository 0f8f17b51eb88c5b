"""ledger: the status index holds only the rows that are not done

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02

Every reader of ``ix_webhook_events_status_due`` asks for pending, failed or dead rows (the
sweeper, the dead-letter queue, the status and metrics counts); processed and ignored rows,
nearly all of the ledger, are read by time (``received_at``, ``updated_at``) or by entity. The
index now leaves them out, so recording a processed event costs one index entry fewer, and the
index stays as small as the backlog instead of growing with the ledger's history.

Built CONCURRENTLY, as 0003 did: the workers keep writing webhook_events meanwhile.
"""

from typing import Sequence, Union

from migrations.frozen_shapes import replace_ledger_index

revision: str = "0005"
down_revision: Union[str, Sequence[str], None] = "0004"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

NOT_DONE = "status IN ('pending', 'failed', 'dead')"


def upgrade() -> None:
    replace_ledger_index("ix_webhook_events_status_due", "ix_webhook_events_not_done", ["status", "next_attempt_at"], NOT_DONE)


def downgrade() -> None:
    replace_ledger_index("ix_webhook_events_not_done", "ix_webhook_events_status_due", ["status", "next_attempt_at"], None)
