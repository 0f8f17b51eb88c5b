"""DELETED_USER_PII=scrub: a deleted user's personal data leaves their row and every stored payload.

Run inside the transaction that applies a batch, for every user the batch names: a delete
scrubs at once, and data arriving after the delete (a late update, a membership carrying
the user's name, an accepted invitation naming the user) is scrubbed in the same
transaction that would have stored it.

What is scrubbed: the user's PII columns and clerk_data; the clerk_data of their
memberships (it holds their name and address); the invitations addressed to any of their
email addresses or accepted by them (address and clerk_data); the affiliation address of the
organization domains verified through one of their addresses; and the stored payloads of all of
these events. An invitation to one of the addresses whose event arrives after the
scrub, without naming the user, is kept: the address is no longer known to match it.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import text
from sqlalchemy.orm import Session

from shared.resources import DOMAINS, INVITATIONS, MEMBERSHIPS, USERS, Resource


def _clear(resource: Resource) -> str:
    """``column = <empty>`` for each PII column: '{}' where the column may not be null."""
    table = resource.model.__table__  # type: ignore[attr-defined]
    empty = {True: "NULL", False: "'{}'"}
    return ", ".join(f"{column} = {empty[table.c[column].nullable]}" for column in resource.pii_columns)


_DELETED = text(
    "SELECT clerk_id FROM users WHERE clerk_id = ANY(CAST(:ids AS text[])) AND deleted_at IS NOT NULL ORDER BY clerk_id"
)
# Every address the user held, read before their row is cleared: the primary one and the rest.
_ADDRESSES = text(
    """
    SELECT lower(address) FROM (
        SELECT email AS address FROM users WHERE clerk_id = ANY(CAST(:ids AS text[]))
        UNION
        SELECT e->>'email_address' FROM users, jsonb_array_elements(
            CASE WHEN jsonb_typeof(clerk_data->'email_addresses') = 'array' THEN clerk_data->'email_addresses'
                 ELSE '[]'::jsonb END) AS e
        WHERE clerk_id = ANY(CAST(:ids AS text[]))
    ) AS a WHERE address IS NOT NULL
    """
)
_CLEAR_ROWS = text(
    f"UPDATE users SET {_clear(USERS)} WHERE clerk_id = ANY(CAST(:ids AS text[]))"  # noqa: S608 - fixed column names
)
_CLEAR_MEMBERSHIPS = text(
    f"UPDATE {MEMBERSHIPS.table_name} SET {_clear(MEMBERSHIPS)}"  # noqa: S608 - fixed names
    f" WHERE {MEMBERSHIPS.user_column} = ANY(CAST(:ids AS text[])) AND clerk_data IS NOT NULL"
)
_CLEAR_INVITATIONS = text(
    f"""
    UPDATE {INVITATIONS.table_name} SET {_clear(INVITATIONS)}
    WHERE ({INVITATIONS.user_column} = ANY(CAST(:ids AS text[])) OR lower(email) = ANY(CAST(:emails AS text[])))
      AND (email IS NOT NULL OR clerk_data IS NOT NULL)
    RETURNING clerk_id
    """  # noqa: S608 - fixed names
)
# The address a domain's affiliation was verified with is a member's own (clerk_data only).
_CLEAR_DOMAINS = text(
    f"""
    UPDATE {DOMAINS.table_name} SET clerk_data = clerk_data - 'affiliation_email_address'
    WHERE lower(clerk_data->>'affiliation_email_address') = ANY(CAST(:emails AS text[]))
    RETURNING clerk_id
    """  # noqa: S608 - fixed names
)
# A stub keeps what an operator needs to recognise the event, nothing personal.
_CLEAR_PAYLOADS = text(
    """
    UPDATE webhook_events
    SET payload = jsonb_build_object('type', event_type, 'scrubbed', true, 'data', jsonb_build_object('id', entity_id)),
        raw_body = NULL
    WHERE (entity_id = ANY(CAST(:ids AS text[])) OR user_clerk_id = ANY(CAST(:ids AS text[])))
      AND (raw_body IS NOT NULL OR (payload IS NOT NULL AND NOT payload ? 'scrubbed'))
    """
)


def deleted_users_named(session: Session, user_ids: Iterable[str]) -> None:
    """Scrub the row, the related rows and the stored payloads of each of ``user_ids`` that is deleted."""
    candidates = sorted(set(user_ids))
    if not candidates:
        return
    deleted = list(session.scalars(_DELETED, {"ids": candidates}))
    if not deleted:
        return
    emails = sorted(set(session.scalars(_ADDRESSES, {"ids": deleted})))
    session.execute(_CLEAR_ROWS, {"ids": deleted})
    session.execute(_CLEAR_MEMBERSHIPS, {"ids": deleted})
    invitations = sorted(session.scalars(_CLEAR_INVITATIONS, {"ids": deleted, "emails": emails}))
    domains = sorted(session.scalars(_CLEAR_DOMAINS, {"emails": emails}))
    session.execute(_CLEAR_PAYLOADS, {"ids": deleted + invitations + domains})
