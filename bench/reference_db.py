"""The tables and the convergent upserts of the two reference pipelines (bench/plain.py, bench/floor.py).

Each reference pipeline has a schema of its own in the benchmark's database, shaped like
clerk-sync's: a ledger keyed by svix-id (unique) with the same indexes, and users, organizations
and memberships with a version column (Clerk's ``updated_at`` in ms) and a tombstone. The writes
converge the way CONTRACT section 5 asks (newer data wins, a delete wins and is never undone, a
membership of a deleted user or organization is inactive), so applying an event twice changes
nothing. One statement per table takes any number of rows (``jsonb_to_recordset``): the plain
pipeline sends it one row, the floor a whole batch.

Not part of clerk-sync: measuring sticks only. No retries, no dead letters, no validation.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

DDL = """
CREATE SCHEMA IF NOT EXISTS {schema};
SET search_path TO {schema};
CREATE TABLE IF NOT EXISTS ledger (
    id bigserial PRIMARY KEY, svix_id varchar(255) NOT NULL UNIQUE, event_type varchar(128),
    status varchar(16) NOT NULL, attempts integer NOT NULL DEFAULT 1, payload jsonb,
    entity_id varchar(64), next_attempt_at timestamptz,
    received_at timestamptz NOT NULL DEFAULT now(), processed_at timestamptz);
CREATE INDEX IF NOT EXISTS ledger_not_done ON ledger (status, next_attempt_at)
    WHERE status IN ('pending', 'failed', 'dead');
CREATE INDEX IF NOT EXISTS ledger_entity ON ledger (entity_id);
CREATE INDEX IF NOT EXISTS ledger_received ON ledger (received_at);
CREATE TABLE IF NOT EXISTS users (
    id bigserial PRIMARY KEY, clerk_id varchar(64) NOT NULL UNIQUE, email text, first_name text,
    last_name text, username text, image_url text, public_metadata jsonb NOT NULL DEFAULT '{{}}',
    plan text NOT NULL DEFAULT 'free', clerk_updated_at bigint, deleted_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(), updated_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE IF NOT EXISTS organizations (
    id bigserial PRIMARY KEY, clerk_id varchar(64) NOT NULL UNIQUE, name text, slug text,
    image_url text, public_metadata jsonb NOT NULL DEFAULT '{{}}', plan text NOT NULL DEFAULT 'free',
    clerk_updated_at bigint, deleted_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(), updated_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE IF NOT EXISTS organization_memberships (
    id bigserial PRIMARY KEY, clerk_id varchar(64) NOT NULL UNIQUE, organization_clerk_id varchar(64),
    user_clerk_id varchar(64), role text, clerk_updated_at bigint, deleted_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(), updated_at timestamptz NOT NULL DEFAULT now());
CREATE INDEX IF NOT EXISTS memberships_org ON organization_memberships (organization_clerk_id);
CREATE INDEX IF NOT EXISTS memberships_user ON organization_memberships (user_clerk_id);
"""

TABLES = ("ledger", "users", "organizations", "organization_memberships")

# Per table: the data columns and their SQL types (jsonb_to_recordset needs them).
COLUMNS = {
    "users": {
        "email": "text",
        "first_name": "text",
        "last_name": "text",
        "username": "text",
        "image_url": "text",
        "public_metadata": "jsonb",
    },
    "organizations": {"name": "text", "slug": "text", "image_url": "text", "public_metadata": "jsonb"},
    "organization_memberships": {"organization_clerk_id": "text", "user_clerk_id": "text", "role": "text"},
}


def _upsert(table: str) -> str:
    """Rows (clerk_id, data..., version, deleted_at): newer data wins, the earliest delete wins."""
    columns = COLUMNS[table]
    record = ", ".join(
        ["clerk_id text", *(f"{c} {t}" for c, t in columns.items()), "version bigint", "deleted_at timestamptz"]
    )
    newer = "(t.clerk_updated_at IS NULL OR t.clerk_updated_at < EXCLUDED.clerk_updated_at)"
    sets = ", ".join(f"{c} = CASE WHEN {newer} THEN EXCLUDED.{c} ELSE t.{c} END" for c in columns)
    deleted = "r.deleted_at"
    if table == "organization_memberships":
        # A membership of a user or organization deleted already is inactive from the start.
        deleted = (
            "LEAST(r.deleted_at, (SELECT deleted_at FROM users u WHERE u.clerk_id = r.user_clerk_id),"
            " (SELECT deleted_at FROM organizations o WHERE o.clerk_id = r.organization_clerk_id))"
        )
    coalesce_data = ", ".join(f"COALESCE(r.{c}, '{{}}')" if t == "jsonb" else f"r.{c}" for c, t in columns.items())
    return f"""
        INSERT INTO {table} AS t (clerk_id, {", ".join(columns)}, clerk_updated_at, deleted_at)
        SELECT r.clerk_id, {coalesce_data}, r.version, {deleted}
        FROM jsonb_to_recordset(%(rows)s::jsonb) AS r({record})
        ON CONFLICT (clerk_id) DO UPDATE SET {sets},
            clerk_updated_at = GREATEST(t.clerk_updated_at, EXCLUDED.clerk_updated_at),
            deleted_at = LEAST(t.deleted_at, EXCLUDED.deleted_at),
            updated_at = now()
    """  # noqa: S608 - names come from COLUMNS above, values are bound


UPSERT = {table: _upsert(table) for table in COLUMNS}

# A deleted user or organization makes its memberships inactive, whenever they arrive.
CASCADE = {
    "users": """
        UPDATE organization_memberships m SET deleted_at = LEAST(m.deleted_at, d.at), updated_at = now()
        FROM jsonb_to_recordset(%(rows)s::jsonb) AS d(clerk_id text, at timestamptz)
        WHERE m.user_clerk_id = d.clerk_id AND (m.deleted_at IS NULL OR m.deleted_at > d.at)""",
    "organizations": """
        UPDATE organization_memberships m SET deleted_at = LEAST(m.deleted_at, d.at), updated_at = now()
        FROM jsonb_to_recordset(%(rows)s::jsonb) AS d(clerk_id text, at timestamptz)
        WHERE m.organization_clerk_id = d.clerk_id AND (m.deleted_at IS NULL OR m.deleted_at > d.at)""",
}

# Ledger rows for new svix-ids; the ones returned are new (duplicates are skipped).
RECORD = """
    INSERT INTO ledger (svix_id, event_type, status, payload, entity_id, processed_at)
    SELECT r.svix_id, r.event_type, r.status, r.payload, r.entity_id, clock_timestamp()
    FROM jsonb_to_recordset(%(rows)s::jsonb) AS r(svix_id text, event_type text, status text, payload jsonb,
                                                  entity_id text)
    ON CONFLICT (svix_id) DO NOTHING
    RETURNING svix_id
"""

_TABLE_OF = {"user": "users", "organization": "organizations", "organizationMembership": "organization_memberships"}


def _ms(value: Any) -> int:
    """Clerk's seconds (up to 2100-01-01) or milliseconds, in milliseconds (the rule of
    shared.clerk_objects.millis, written out: the references use none of clerk-sync's code)."""
    number = int(value)
    return number * 1000 if number <= 4_102_444_800 else number


def changes(payload: dict[str, Any]) -> tuple[str, dict[str, Any] | None, dict[str, Any] | None]:
    """(table or "", the row to upsert or None, the parent delete to cascade or None) for one event."""
    family, _, action = str(payload.get("type", "")).rpartition(".")
    table = _TABLE_OF.get(family, "")
    if not table:
        return "", None, None
    data = payload["data"]
    row: dict[str, Any] = {"clerk_id": data["id"], "deleted_at": None}
    if action == "deleted":
        row["deleted_at"] = _timestamp(_ms(payload["timestamp"]))
    if action != "deleted" or table == "organization_memberships":
        row["version"] = _ms(data.get("updated_at") or data.get("created_at") or 0)
        row.update(_data(table, data))
    parent_deleted = action == "deleted" and table != "organization_memberships"
    cascade = {"clerk_id": data["id"], "at": row["deleted_at"]} if parent_deleted else None
    return table, row, cascade


def _timestamp(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat()


def _data(table: str, data: dict[str, Any]) -> dict[str, Any]:
    if table == "users":
        wanted = data.get("primary_email_address_id")
        email = next((a.get("email_address") for a in data.get("email_addresses") or [] if a.get("id") == wanted), None)
        return {
            "email": email,
            "first_name": data.get("first_name"),
            "last_name": data.get("last_name"),
            "username": data.get("username"),
            "image_url": data.get("image_url"),
            "public_metadata": data.get("public_metadata") or {},
        }
    if table == "organizations":
        return {
            "name": data.get("name"),
            "slug": data.get("slug"),
            "image_url": data.get("image_url"),
            "public_metadata": data.get("public_metadata") or {},
        }
    return {
        "organization_clerk_id": (data.get("organization") or {}).get("id"),
        "user_clerk_id": (data.get("public_user_data") or {}).get("user_id"),
        "role": data.get("role"),
    }


def apply(cursor: Any, events: list[tuple[str, dict[str, Any]]]) -> int:
    """Record and apply ``(svix_id, payload)`` events in the caller's transaction; how many were new.

    One statement for the ledger, then at most one upsert per table and one cascade per parent
    table, whatever the number of events. Within the batch, rows of one entity are merged as the
    tables would merge them (one statement cannot touch a row twice).
    """
    records = []
    for svix_id, payload in events:
        family = str(payload.get("type", "")).rpartition(".")[0]
        synced = family in _TABLE_OF
        data = payload.get("data") or {}
        records.append(
            {
                "svix_id": svix_id,
                "event_type": payload.get("type"),
                "status": "processed" if synced else "ignored",
                "payload": payload if synced else None,
                "entity_id": data.get("id"),
            }
        )
    cursor.execute(RECORD, {"rows": json.dumps(records)})
    new = {row[0] for row in cursor.fetchall()}
    rows: dict[str, dict[str, dict[str, Any]]] = {table: {} for table in COLUMNS}
    cascades: dict[str, dict[str, dict[str, Any]]] = {"users": {}, "organizations": {}}
    for svix_id, payload in events:
        if svix_id not in new:
            continue
        table, row, cascade = changes(payload)
        if not table or row is None:
            continue
        _merge(rows[table], row)
        if cascade:
            earlier = cascades[table].get(cascade["clerk_id"])
            if earlier is None or cascade["at"] < earlier["at"]:
                cascades[table][cascade["clerk_id"]] = cascade
    for table in ("users", "organizations", "organization_memberships"):  # parents first
        if rows[table]:
            cursor.execute(UPSERT[table], {"rows": json.dumps(list(rows[table].values()))})
        if cascades.get(table):
            cursor.execute(CASCADE[table], {"rows": json.dumps(list(cascades[table].values()))})
    return len(new)


def _merge(rows: dict[str, dict[str, Any]], row: dict[str, Any]) -> None:
    """Fold ``row`` into the batch's row for its entity: newer data, earliest delete."""
    held = rows.get(row["clerk_id"])
    if held is None:
        rows[row["clerk_id"]] = dict(row)
        return
    if row.get("version") is not None and (held.get("version") is None or row["version"] > held["version"]):
        deleted_at = held["deleted_at"]
        held.update(row)
        held["deleted_at"] = deleted_at
    if row["deleted_at"] is not None and (held["deleted_at"] is None or row["deleted_at"] < held["deleted_at"]):
        held["deleted_at"] = row["deleted_at"]
