"""DELETED_USER_PII=scrub: a deleted user's personal data leaves their row and every stored payload.

Run inside the transaction that applies a batch, for every user the batch names: a delete
scrubs at once, and data arriving after the delete (a late update, a membership carrying
the user's name) is scrubbed in the same transaction that would have stored it.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import text

from shared.resources import USERS
from worker.pipeline.roundtrips import Trips

_DELETED = text(
    "SELECT clerk_id FROM users WHERE clerk_id = ANY(CAST(:ids AS text[])) AND deleted_at IS NOT NULL ORDER BY clerk_id"
)
_CLEAR_ROWS = text(
    f"UPDATE users SET {', '.join(f'{c} = NULL' for c in USERS.pii_columns)}"  # noqa: S608 - fixed column names
    " WHERE clerk_id = ANY(CAST(:ids AS text[]))"
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


def deleted_users_named(trips: Trips, user_ids: Iterable[str]) -> None:
    """Scrub the row and the stored payloads of each of ``user_ids`` that is deleted.

    One round trip more (which of them is deleted, after the batch's writes queued before).
    """
    candidates = sorted(set(user_ids))
    if not candidates:
        return
    found = trips.queue(_DELETED, {"ids": candidates})
    trips.send()
    deleted = [row.clerk_id for row in found.fetchall()]
    if deleted:
        trips.queue(_CLEAR_ROWS, {"ids": deleted})
        trips.queue(_CLEAR_PAYLOADS, {"ids": deleted})
