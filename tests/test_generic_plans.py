"""The batch's statements run on generic plans (``roundtrips``): each must still read by index at scale.

A batch sets ``plan_cache_mode = force_generic_plan`` for its transaction, so Postgres plans each
prepared statement once, without seeing the arrays it is given. On tables of a realistic size every
such plan must find its rows through an index, never by reading a whole table.
"""

from __future__ import annotations

import re

import psycopg
from sqlalchemy.dialects import postgresql
from sqlalchemy.sql.elements import TextClause

from devkit.services import temporary_database
from shared.resources import RESOURCES
from worker.pipeline import apply, ledger, scrub

ROWS = 50_000
_PLACEHOLDER = re.compile(r"%\((\w+)\)s")


def _statements() -> dict[str, TextClause]:
    statements = {
        "ledger claim": ledger._CLAIM,
        "ledger finish": ledger._FINISH,
        "ledger conflicts": ledger._NOTE_CONFLICTS,
        "ledger stored bodies": ledger._STORED_BODIES,
        "advisory locks": apply._ADVISORY_LOCKS,
        # DELETED_USER_PII=scrub runs in the same transaction (the domains' affiliation address has
        # no index: organization_domains holds a few rows per organization)
        "scrub: deleted users": scrub._DELETED,
        "scrub: addresses": scrub._ADDRESSES,
        "scrub: users": scrub._CLEAR_ROWS,
        "scrub: memberships": scrub._CLEAR_MEMBERSHIPS,
        "scrub: invitations": scrub._CLEAR_INVITATIONS,
        "scrub: stored payloads": scrub._CLEAR_PAYLOADS,
    }
    for resource in RESOURCES:
        statements[f"{resource.name} lock"] = apply._lock_statement(resource)
        statements[f"{resource.name} upsert"] = apply._upsert_statement(resource)
        statements[f"{resource.name} tombstones"] = apply._tombstone_statement(resource)
        if resource.parent_columns:
            statements[f"{resource.name} follow deleted parents"] = apply._deactivate_if_parent_deleted_statement(
                resource
            )
        for parent in resource.parent_columns:
            statements[f"{resource.name} deactivate by {parent}"] = apply._deactivate_by_parent_statement(
                resource, parent
            )
    return statements


def _generic_plan(conn: psycopg.Connection, clause: TextClause) -> str:
    sql = str(clause.compile(dialect=postgresql.psycopg.dialect()))
    names: list[str] = []

    def numbered(match: re.Match[str]) -> str:
        if match.group(1) not in names:
            names.append(match.group(1))
        return f"${names.index(match.group(1)) + 1}"

    conn.execute(f"PREPARE batch_statement AS {_PLACEHOLDER.sub(numbered, sql)}")
    try:
        nulls = ", ".join("NULL" for _ in names)
        rows = conn.execute(f"EXPLAIN (COSTS OFF) EXECUTE batch_statement({nulls})").fetchall()
    finally:
        conn.execute("DEALLOCATE batch_statement")
    return "\n".join(row[0] for row in rows)


def test_every_batch_statement_reads_by_index_on_a_generic_plan():
    # Given tables of a realistic size
    with temporary_database() as url, psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO users (clerk_id) SELECT 'user_' || g FROM generate_series(1, %s) g", (ROWS,))
        conn.execute(
            "INSERT INTO organizations (clerk_id) SELECT 'org_' || g FROM generate_series(1, %s) g", (ROWS // 10,)
        )
        for resource in RESOURCES:
            if resource.parent_columns:
                columns = ", ".join(resource.parent_columns.values())
                values = ", ".join(
                    f"'{'user_' if parent == 'users' else 'org_'}' || (g % {ROWS // 10})"
                    for parent in resource.parent_columns
                )
                conn.execute(
                    f"INSERT INTO {resource.table_name} (clerk_id, {columns})"  # noqa: S608 - fixed names
                    f" SELECT '{resource.name}_' || g, {values} FROM generate_series(1, {ROWS}) g"
                )
        conn.execute(
            "INSERT INTO webhook_events (svix_id, event_type, status, attempts)"
            " SELECT 'msg_' || g, 'user.updated', 'processed', 1 FROM generate_series(1, %s) g",
            (ROWS,),
        )
        conn.execute("ANALYZE")
        conn.execute("SET plan_cache_mode = force_generic_plan")

        # When each statement of the batch path is planned as a batch plans it
        plans = {name: _generic_plan(conn, clause) for name, clause in _statements().items()}

    # Then none reads a whole table (the pause flag's table of a few rows is not among them)
    assert {name: plan for name, plan in plans.items() if "Seq Scan" in plan} == {}
    # and the statements that look rows up do it through an index
    assert all("Index" in plans[name] for name in plans if "lock" in name and name != "advisory locks")
