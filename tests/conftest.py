"""Fixtures on real services: one database and one Redis db index per test run.

The database is created and migrated once per run (with the real `alembic upgrade
head`); each test starts from empty tables. Processes started by a test (web,
Celery worker, beat) get the same environment and are stopped at teardown.

Under pytest-xdist each worker is a run of its own: its own database, Redis db index
and queue name, so workers never see each other's events.

Markers are given here, from what a test does, so that they mean the same in every
file: ``e2e`` for a test that starts the service's processes (it asks for
``processes``, the run command's ``launched`` or the benchmark's ``capacity_run``),
``property`` for a hypothesis test.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import hypothesis
import psycopg
import pytest
import redis
from sqlalchemy.orm import Session, sessionmaker

from devkit.services import REDIS_BASE_URL, empty_tables, redis_db_index, temporary_database
from shared.config import Settings, load_settings
from shared.db import make_engine
from tests.support.processes import ProcessManager
from tests.support.signing import SECRET

# Under CI the property tests draw the same examples every run, so that a submission's run is
# reproducible; run locally they draw new ones each time and keep searching (two model bugs were
# found that way, now @example cases).
hypothesis.settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    hypothesis.settings.load_profile("ci")

# Fixtures that start the service's own long-running processes (the benchmark's run starts them too).
PROCESS_FIXTURES = frozenset({"processes", "launched", "capacity_run"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test by what it does (see the module docstring); pyproject.toml declares the markers."""
    for item in items:
        if PROCESS_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.e2e)
        if getattr(getattr(item, "obj", None), "is_hypothesis_test", False):
            item.add_marker(pytest.mark.property)


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    with temporary_database() as url:
        yield url


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    with redis_db_index() as index:
        yield f"{REDIS_BASE_URL}/{index}"


@pytest.fixture(scope="session")
def base_env(database_url: str, redis_url: str) -> dict[str, str]:
    """The environment every process of this run gets."""
    # PROMETHEUS_MULTIPROC_DIR too: importing worker.celery_app makes one for this pytest process.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLERK_", "DATABASE_", "REDIS_", "PROMETHEUS_"))}
    env.update(
        {
            "CLERK_WEBHOOK_SECRET": SECRET,
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "LOG_FORMAT": "json",
            "LOG_LEVEL": "INFO",
            # A queue name of our own too, in case another run shares the index by mistake.
            "CLERK_SYNC_QUEUE": f"clerk-events-test-{os.getpid()}",
            "CLERK_SYNC_ENV": "test",
            # No metrics server unless a test asks for one: workers would race for port 9808.
            "METRICS_PORT": "0",
        }
    )
    return env


@pytest.fixture
def settings(base_env: dict[str, str]) -> Settings:
    return load_settings(base_env)


@pytest.fixture(scope="session")
def _engine(database_url: str, redis_url: str, base_env: dict[str, str]):  # type: ignore[no-untyped-def]
    engine = make_engine(load_settings(base_env))
    yield engine
    engine.dispose()


@pytest.fixture
def clean_state(database_url: str, redis_url: str) -> None:
    """Empty tables and an empty Redis db before the test."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        empty_tables(conn.execute)
    redis.Redis.from_url(redis_url).flushdb()


@pytest.fixture
def session_factory(_engine, clean_state: None) -> sessionmaker[Session]:  # type: ignore[no-untyped-def]
    """A sessionmaker on the run's database, tables emptied first."""
    return sessionmaker(bind=_engine, expire_on_commit=False)


@pytest.fixture
def redis_client(redis_url: str, clean_state: None) -> redis.Redis:
    return redis.Redis.from_url(redis_url)


@pytest.fixture
def processes(base_env: dict[str, str], tmp_path: Path, clean_state: None) -> Iterator[ProcessManager]:
    manager = ProcessManager(dict(base_env), tmp_path)
    try:
        yield manager
    finally:
        manager.stop_all()


@pytest.fixture
def blocking_trigger(database_url):
    """An application trigger that rejects one user's row, as a bad deploy might; dropped by ``lift``."""
    statements = {
        "create": """
            CREATE FUNCTION test_users_guard() RETURNS trigger AS $$
            BEGIN
              IF NEW.clerk_id = '{user}' THEN
                RAISE EXCEPTION 'users_guard: % is on hold', NEW.clerk_id;
              END IF;
              RETURN NEW;
            END $$ LANGUAGE plpgsql;
            CREATE TRIGGER test_users_guard BEFORE INSERT OR UPDATE ON users
              FOR EACH ROW EXECUTE FUNCTION test_users_guard();
        """,
        "drop": "DROP TRIGGER IF EXISTS test_users_guard ON users; DROP FUNCTION IF EXISTS test_users_guard();",
    }

    class Trigger:
        def block(self, user_id: str) -> None:
            with psycopg.connect(database_url, autocommit=True) as conn:
                conn.execute(statements["drop"])
                conn.execute(statements["create"].replace("{user}", user_id))

        def lift(self) -> None:
            with psycopg.connect(database_url, autocommit=True) as conn:
                conn.execute(statements["drop"])

    trigger = Trigger()
    yield trigger
    trigger.lift()
