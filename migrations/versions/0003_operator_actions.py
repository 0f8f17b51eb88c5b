"""operator_actions: the audit table of operators' changes

Every replay, discard, pause and resume, from the console or the CLI (CONTRACT section 7).
Also an index on webhook_events.updated_at for the console's chart of the last hour.

Revision ID: 0003
Revises: 0002
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

revision: str = '0003'
down_revision: Union[str, Sequence[str], None] = '0002'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table(
        'operator_actions',
        sa.Column('id', sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column('time', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
        sa.Column('operator', sa.Text(), nullable=False),
        sa.Column('source', sa.String(length=16), nullable=False),
        sa.Column('action', sa.String(length=16), nullable=False),
        sa.Column('filter', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column('svix_ids', postgresql.ARRAY(sa.Text()), server_default=sa.text("'{}'"), nullable=False),
        sa.Column('count', sa.Integer(), server_default='0', nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_operator_actions')),
    )
    op.create_index('ix_operator_actions_time', 'operator_actions', ['time'], unique=False)
    # CONCURRENTLY: the workers keep writing webhook_events while the index is built.
    with op.get_context().autocommit_block():
        op.create_index(
            'ix_webhook_events_updated', 'webhook_events', ['updated_at'], unique=False,
            postgresql_concurrently=True, if_not_exists=True,
        )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.drop_index('ix_webhook_events_updated', table_name='webhook_events', postgresql_concurrently=True)
    op.drop_index('ix_operator_actions_time', table_name='operator_actions')
    op.drop_table('operator_actions')
