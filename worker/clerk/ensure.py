"""``ensure_user``: the application's answer to the first-sign-in race.

A user who has just signed up may reach the application before the ``user.created``
webhook has been applied. ``ensure_user`` returns the user's row from the table and,
only when there is none, fetches the user from Clerk's Backend API and upserts it by
the same convergence rules as webhooks (so it never overwrites newer data or
resurrects a deleted user), then returns the row.

    from worker.clerk.ensure import ensure_user

    user = ensure_user(clerk_user_id)          # a shared.models.User, or None
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.config import Settings, get_settings
from shared.db import session_factory
from shared.models import User

# A request handler is waiting: a short timeout and one retry, not a backfill's patience.
_REQUEST_OPTIONS = {"attempts": 2, "backoff_initial": 0.2, "max_retry_after": 2.0, "timeout": (3.0, 10.0)}


def ensure_user(clerk_user_id: str, *, settings: Settings | None = None, session: Session | None = None) -> User | None:
    """The ``users`` row for ``clerk_user_id``, fetched from Clerk first if the table lacks it.

    Returns a ``shared.models.User`` (check ``deleted_at``: a deleted user's row is
    returned as it is), or None when Clerk has no such user (404) or its object is not a valid
    one (skipped as backfill skips it, ``backfill_object_skipped``). With ``session``
    the row is read and written in the caller's transaction, which the caller
    commits; without it, a transaction of its own is committed and the returned
    object is detached with its attributes loaded. Raises
    ``worker.clerk.api.ClerkApiError`` when Clerk cannot be reached, and
    ``shared.config.ConfigError`` when CLERK_SECRET_KEY is unset and a fetch is needed.
    """
    settings = settings or get_settings()
    if session is not None:
        return _ensure(session, clerk_user_id, settings)
    factory = session_factory(settings)
    with factory() as read:
        user = _find(read, clerk_user_id)
    if user is not None:
        return user
    # The HTTP call happens outside any transaction; the upsert gets a short one.
    data = _fetch(clerk_user_id, settings)
    if data is None:
        return None
    with factory.begin() as write:
        return _upsert(write, data, settings)


def _ensure(session: Session, clerk_user_id: str, settings: Settings) -> User | None:
    user = _find(session, clerk_user_id)
    if user is not None:
        return user
    data = _fetch(clerk_user_id, settings)
    return None if data is None else _upsert(session, data, settings)


def _find(session: Session, clerk_user_id: str) -> User | None:
    return session.scalars(select(User).where(User.clerk_id == clerk_user_id)).one_or_none()


def _fetch(clerk_user_id: str, settings: Settings) -> dict | None:  # type: ignore[type-arg]
    # Imported here: shared/ is what the application imports, and the API client
    # (with requests and tenacity) is only needed on a miss.
    from shared.resources import USERS
    from worker.clerk.api import client_from_settings

    with client_from_settings(settings, **_REQUEST_OPTIONS) as client:
        data = client.get_object(USERS, clerk_user_id)
    if data is not None and data.get("id") != clerk_user_id:
        return None  # not the user asked for: treat as unknown rather than store it
    return data


def _upsert(session: Session, data: dict, settings: Settings) -> User | None:  # type: ignore[type-arg]
    from worker.clerk.backfill import apply_objects

    apply_objects(session, "users", [data], settings=settings)
    # The upsert went around the ORM: read the row back, refreshed.
    return session.scalars(
        select(User).where(User.clerk_id == data["id"]).execution_options(populate_existing=True)
    ).one_or_none()
