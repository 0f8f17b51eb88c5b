"""ledger: body hash, conflicting redeliveries, the user and organization an event names

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02

Existing rows keep their data: the names are filled from stored payloads (a membership's user and
organization); the body hash stays null for rows received before this revision (their exact bytes
are not stored), so a redelivery of such an svix-id is never reported as a conflict.
"""

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: Union[str, Sequence[str], None] = "0001"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.add_column("webhook_events", sa.Column("body_sha256", sa.String(length=64), nullable=True))
    op.add_column(
        "webhook_events",
        sa.Column("conflicts", postgresql.JSONB(), server_default=sa.text("'[]'::jsonb"), nullable=False),
    )
    op.add_column("webhook_events", sa.Column("user_clerk_id", sa.String(length=64), nullable=True))
    op.add_column("webhook_events", sa.Column("organization_clerk_id", sa.String(length=64), nullable=True))
    op.execute(
        """
        UPDATE webhook_events
        SET user_clerk_id = left(payload #>> '{data,public_user_data,user_id}', 64),
            organization_clerk_id = left(payload #>> '{data,organization,id}', 64)
        WHERE payload IS NOT NULL AND event_type LIKE 'organizationMembership.%'
        """
    )
    op.create_index(
        "ix_webhook_events_user",
        "webhook_events",
        ["user_clerk_id"],
        postgresql_where=sa.text("user_clerk_id IS NOT NULL"),
    )
    op.create_index(
        "ix_webhook_events_organization",
        "webhook_events",
        ["organization_clerk_id"],
        postgresql_where=sa.text("organization_clerk_id IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_webhook_events_organization", table_name="webhook_events")
    op.drop_index("ix_webhook_events_user", table_name="webhook_events")
    op.drop_column("webhook_events", "organization_clerk_id")
    op.drop_column("webhook_events", "user_clerk_id")
    op.drop_column("webhook_events", "conflicts")
    op.drop_column("webhook_events", "body_sha256")
