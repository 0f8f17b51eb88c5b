"""`worker.clerk.ensure.ensure_user`: the row if present, else fetched from Clerk and stored."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import func, insert, select

from shared.config import load_settings
from shared.models import User
from tests.support.fake_clerk import FakeClerk, FakeClerkServer, make_user, primary_email_of
from worker.clerk.api import ClerkApiError
from worker.clerk.ensure import ensure_user


@pytest.fixture
def clerk():
    clerk = FakeClerk(users=[make_user(n) for n in range(4)])
    with FakeClerkServer(clerk) as server:
        clerk.url = server.url  # type: ignore[attr-defined]
        yield clerk


@pytest.fixture
def api_settings(base_env, clerk):
    return load_settings(
        {**base_env, "CLERK_SECRET_KEY": "sk_test_fakeclerk0000000000000000", "CLERK_API_URL": clerk.url}
    )


def user_count(session_factory) -> int:
    with session_factory() as session:
        return session.scalar(select(func.count()).select_from(User))


def test_user_not_in_table_is_fetched_and_stored(clerk, api_settings, session_factory):
    data = clerk.users[3]  # two email addresses, the primary one second

    user = ensure_user(data["id"], settings=api_settings)

    assert user is not None
    assert (user.clerk_id, user.email, user.first_name) == (data["id"], primary_email_of(data), data["first_name"])
    assert user.clerk_updated_at == data["updated_at"]
    assert [s.path for s in clerk.seen] == [f"/v1/users/{data['id']}"]
    with session_factory() as session:
        assert session.scalar(select(User.email).where(User.clerk_id == data["id"])) == "user3@example.com"


def test_user_in_table_is_returned_without_calling_clerk(base_env, clerk, session_factory):
    with session_factory.begin() as session:
        session.execute(insert(User).values(clerk_id="user_known", email="known@example.com", clerk_updated_at=5))
    # No CLERK_SECRET_KEY at all: a hit never needs the API.
    settings = load_settings(base_env)

    user = ensure_user("user_known", settings=settings)

    assert user is not None and user.email == "known@example.com"
    assert clerk.seen == []


def test_deleted_user_is_returned_as_is(clerk, api_settings, session_factory):
    deleted_at = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    with session_factory.begin() as session:
        session.execute(insert(User).values(clerk_id=clerk.users[0]["id"], deleted_at=deleted_at))

    user = ensure_user(clerk.users[0]["id"], settings=api_settings)

    assert user is not None and user.deleted_at == deleted_at
    assert clerk.seen == []


def test_user_unknown_to_clerk_is_none(clerk, api_settings, session_factory):
    assert ensure_user("user_nobody", settings=api_settings) is None
    assert [(s.path, s.status) for s in clerk.seen] == [("/v1/users/user_nobody", 404)]
    assert user_count(session_factory) == 0


def test_a_user_whose_object_is_not_a_valid_one_is_none(clerk, api_settings, session_factory):
    # Given Clerk's object holding a lone UTF-16 surrogate, which JSON escapes and Postgres cannot store
    clerk.users[2]["first_name"] = "\udfff"

    # Then it is skipped as backfill skips it: nothing stored, None as for a user Clerk does not have
    assert ensure_user(clerk.users[2]["id"], settings=api_settings) is None
    assert user_count(session_factory) == 0


def test_with_a_session_the_caller_owns_the_transaction(clerk, api_settings, session_factory):
    data = clerk.users[1]
    # When ensure_user runs in the caller's transaction, which is then rolled back
    with session_factory() as session:
        user = ensure_user(data["id"], settings=api_settings, session=session)
        assert user is not None and user.email == primary_email_of(data)
        session.rollback()
    # Then nothing was committed behind the caller's back
    assert user_count(session_factory) == 0


def test_clerk_unreachable_raises_a_clear_error(clerk, api_settings, session_factory):
    clerk.fail(500, "/v1/users", times=None)
    with pytest.raises(ClerkApiError, match=r"500 server error \(gave up after 2 attempts\)"):
        ensure_user(clerk.users[2]["id"], settings=api_settings)
    assert user_count(session_factory) == 0
