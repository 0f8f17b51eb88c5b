"""wider coverage: more of each object, clerk_data, organization invitations and domains

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02

Existing rows keep their data. The new columns are nullable or have a constant default (an
instant change in PostgreSQL 11+, no table rewrite); rows synced before this revision hold
null/defaults in them, and clerk_data null, until Clerk sends a newer version of the object or
`clerk-sync reconcile --fix` refreshes them (a live row without clerk_data counts as stale).
"""

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from migrations.frozen_shapes import synced_columns, synced_keys

revision: str = "0004"
down_revision: Union[str, Sequence[str], None] = "0003"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

SYNCED = ("users", "organizations", "organization_memberships")


def _jsonb(name: str, default: str | None = None) -> sa.Column:
    if default is None:
        return sa.Column(name, postgresql.JSONB(), nullable=True)
    return sa.Column(name, postgresql.JSONB(), server_default=sa.text(f"'{default}'::jsonb"), nullable=False)


def _texts(*names: str) -> list[sa.Column]:
    """Nullable text columns, in the order named."""
    return [sa.Column(name, sa.Text(), nullable=True) for name in names]


def _synced_columns() -> list[sa.Column]:
    """What every synced table has (shared.models.SyncedMixin): 0001's columns, then clerk_data."""
    return [*synced_columns(), _jsonb("clerk_data")]


def _create_organization_table(table: str, index_prefix: str, *columns: sa.Column) -> None:
    """A synced table of an organization's objects, indexed by organization (no foreign key: one may
    arrive before its organization); ``columns`` come after the organization's id."""
    op.create_table(
        table,
        *_synced_columns(),
        sa.Column("organization_clerk_id", sa.String(length=64), nullable=True),
        *columns,
        *synced_keys(table),
    )
    op.create_index(f"ix_{index_prefix}_organization", table, ["organization_clerk_id"])


def upgrade() -> None:
    for table in SYNCED:
        op.add_column(table, _jsonb("clerk_data"))
        op.add_column(table, _jsonb("private_metadata"))

    op.add_column("users", sa.Column("external_id", sa.Text(), nullable=True))
    op.add_column("users", sa.Column("phone_number", sa.Text(), nullable=True))
    op.add_column("users", sa.Column("banned", sa.Boolean(), server_default=sa.text("false"), nullable=False))
    op.add_column("users", sa.Column("locked", sa.Boolean(), server_default=sa.text("false"), nullable=False))
    op.add_column("users", sa.Column("last_sign_in_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("users", sa.Column("last_active_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("users", _jsonb("unsafe_metadata", "{}"))

    op.add_column("organizations", sa.Column("members_count", sa.Integer(), nullable=True))
    op.add_column("organizations", sa.Column("max_allowed_memberships", sa.Integer(), nullable=True))
    op.add_column("organizations", sa.Column("created_by", sa.String(length=64), nullable=True))

    op.add_column("organization_memberships", _jsonb("permissions", "[]"))
    op.add_column("organization_memberships", _jsonb("public_metadata", "{}"))

    _create_organization_table(
        "organization_invitations",
        "invitations",
        *_texts("email", "role", "status"),
        sa.Column("user_clerk_id", sa.String(length=64), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_invitations_email", "organization_invitations", [sa.text("lower(email)")])
    op.create_index(
        "ix_invitations_user",
        "organization_invitations",
        ["user_clerk_id"],
        postgresql_where=sa.text("user_clerk_id IS NOT NULL"),
    )

    _create_organization_table(
        "organization_domains",
        "domains",
        *_texts("name", "enrollment_mode", "verification_status"),
    )
    op.create_index("ix_domains_name", "organization_domains", ["name"])


def downgrade() -> None:
    op.drop_table("organization_domains")
    op.drop_table("organization_invitations")
    op.drop_column("organization_memberships", "public_metadata")
    op.drop_column("organization_memberships", "permissions")
    for column in ("created_by", "max_allowed_memberships", "members_count"):
        op.drop_column("organizations", column)
    for column in ("unsafe_metadata", "last_active_at", "last_sign_in_at", "locked", "banned", "phone_number"):
        op.drop_column("users", column)
    op.drop_column("users", "external_id")
    for table in SYNCED:
        op.drop_column(table, "private_metadata")
        op.drop_column(table, "clerk_data")
