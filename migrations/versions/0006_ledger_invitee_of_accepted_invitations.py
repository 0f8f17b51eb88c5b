"""ledger: an accepted invitation's event names the user who accepted it

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02

The worker now records the invitee of an `organizationInvitation.accepted` event in
`webhook_events.user_clerk_id` (so `clerk-sync events --entity user_...` finds the acceptance);
rows recorded before are filled from their stored payload, as 0002 did for memberships. Only
those rows are touched; a payload already purged or scrubbed has nothing to read and stays as it is.
"""

from typing import Sequence, Union

from alembic import op

revision: str = "0006"
down_revision: Union[str, Sequence[str], None] = "0005"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

# The invitee, as the worker reads it now (shared.resources: the invitation's user_clerk_id).
FILL_INVITEES = """
    UPDATE webhook_events
    SET user_clerk_id = left(payload #>> '{data,user_id}', 64)
    WHERE event_type = 'organizationInvitation.accepted' AND user_clerk_id IS NULL
      AND payload #>> '{data,user_id}' IS NOT NULL
"""


def upgrade() -> None:
    op.execute(FILL_INVITEES)


def downgrade() -> None:
    pass  # the column stays; what was filled in is true of those events
