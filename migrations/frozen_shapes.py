"""Table shapes the revisions share, frozen like the revisions themselves.

A revision must create the same schema for ever, so nothing here may change once a revision
imports it: a shape that changes later is a new function (or written out in its revision),
never an edit of one below. Checked by migrating a fresh database to head and comparing
``pg_dump --schema-only`` before and after any change here.
"""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa
from alembic import op


def synced_columns() -> list[sa.Column]:
    """The version columns every synced table was created with at revision 0001, in this order
    (shared.models.SyncedMixin as of 0001: clerk_data came with 0004)."""
    return [
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("clerk_id", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("clerk_updated_at", sa.BigInteger(), nullable=True),
        sa.Column("synced_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
    ]


def synced_keys(table: str) -> list[sa.Constraint]:
    """A synced table's primary key (``id``) and its unique ``clerk_id``, named by the naming convention."""
    return [
        sa.PrimaryKeyConstraint("id", name=op.f(f"pk_{table}")),
        sa.UniqueConstraint("clerk_id", name=op.f(f"uq_{table}_clerk_id")),
    ]


def replace_ledger_index(name: str, new_name: str, columns: list[str], where: str | None) -> None:
    """Build ``new_name`` on webhook_events (``columns``, partial when ``where``), then drop ``name``:
    both CONCURRENTLY, outside the revision's transaction, so the workers keep writing meanwhile."""
    with op.get_context().autocommit_block():
        op.create_index(
            new_name,
            "webhook_events",
            columns,
            postgresql_where=sa.text(where) if where else None,
            postgresql_concurrently=True,
            if_not_exists=True,
        )
        op.drop_index(name, table_name="webhook_events", postgresql_concurrently=True, if_exists=True)


def ledger_index_swap(
    name: str, new_name: str, columns: list[str], where: str | None
) -> tuple[Callable[[], None], Callable[[], None]]:
    """A revision's ``upgrade`` and ``downgrade`` when all it does is replace ledger index ``name`` by
    ``new_name`` (``replace_ledger_index``), and back."""

    def upgrade() -> None:
        replace_ledger_index(name, new_name, columns, where)

    def downgrade() -> None:
        replace_ledger_index(new_name, name, columns, None)

    return upgrade, downgrade
