"""ties between two versions of one updated_at ordered by the event's timestamp

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04

Two events may carry different data with one ``updated_at`` (two changes within Clerk's
millisecond, or within the second of the older shapes that send seconds). Clerk's order between
them is the envelope's ``timestamp``: each synced row now records the timestamp of the event
whose data it holds (``clerk_event_at``, milliseconds), and the later event wins a tie whatever
order they arrive in. A nullable column without a default: no table is rewritten, and rows
written before it (or from the Backend API, which sends no envelope) hold null, which loses
every tie.
"""

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: Union[str, Sequence[str], None] = "0008"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

TABLES = ("users", "organizations", "organization_memberships", "organization_invitations", "organization_domains")


def upgrade() -> None:
    for table in TABLES:
        op.add_column(table, sa.Column("clerk_event_at", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    for table in TABLES:
        op.drop_column(table, "clerk_event_at")
