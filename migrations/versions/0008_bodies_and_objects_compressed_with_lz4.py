"""bodies and Clerk's objects compressed with lz4

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03

Postgres compresses a value of more than about 2 kB before storing it: a user's webhook body in
the ledger, the user as ``clerk_data``. With pglz, its default, that compression took about a
sixth of Postgres's CPU per event (docs/performance.md); lz4 does it in a fraction of the time.
Only each column's setting changes: no table is rewritten or scanned, values already stored stay
as they were written (each is read with the method it was stored with), and new ones are written
with lz4. Each ALTER holds its table's lock for a moment.

A server older than PostgreSQL 14, or built without lz4, keeps pglz: the upgrade says so in a
NOTICE (logged as ``migration_notice``, migrations/env.py) and goes on.
"""

from typing import Sequence, Union

from alembic import op

revision: str = "0008"
down_revision: Union[str, Sequence[str], None] = "0007"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

# What can be large: the body as received, and the object (and its metadata) as Clerk sent it.
COLUMNS = {
    "webhook_events": ("payload", "raw_body"),
    "users": ("clerk_data", "public_metadata", "private_metadata", "unsafe_metadata"),
    "organizations": ("clerk_data", "public_metadata", "private_metadata"),
    "organization_memberships": ("clerk_data", "public_metadata", "private_metadata"),
    "organization_invitations": ("clerk_data",),
    "organization_domains": ("clerk_data",),
}


def _compress_with(method: str) -> None:
    alters = [
        f"ALTER TABLE {table} " + ", ".join(f"ALTER COLUMN {column} SET COMPRESSION {method}" for column in columns)
        for table, columns in COLUMNS.items()
    ]
    executes = "\n".join(f"EXECUTE '{alter}';" for alter in alters)
    op.execute(
        f"""
        DO $$
        BEGIN
            IF current_setting('server_version_num')::int < 140000 THEN
                RAISE NOTICE 'clerk-sync: PostgreSQL 14 or newer sets a column''s compression: pglz stays';
                RETURN;
            END IF;
            {executes}
        EXCEPTION WHEN feature_not_supported THEN
            RAISE NOTICE 'clerk-sync: this server was built without lz4: pglz stays';
        END
        $$
        """
    )


def upgrade() -> None:
    _compress_with("lz4")


def downgrade() -> None:
    _compress_with("default")  # the server's default_toast_compression, pglz unless set otherwise
