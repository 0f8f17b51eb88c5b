"""Per-run isolation on the shared servers: a database and a Redis db index of our own."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import redis

ROOT = Path(__file__).resolve().parents[1]
PG_ADMIN_URL = os.environ.get("TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_BASE_URL = os.environ.get("TEST_REDIS_BASE_URL", "redis://127.0.0.1:6379")
LOCK_PREFIX = "clerk-sync-test-db-lock:"

# Every table the service writes (Alembic's own aside): what a test or an example starts without.
SERVICE_TABLES = (
    "webhook_events",
    "users",
    "organizations",
    "organization_memberships",
    "organization_invitations",
    "organization_domains",
    "clerk_sync_control",
    "operator_actions",
)


# Prefix for a command that must stop when the process that starts it dies, even killed outright:
# util-linux's setpriv asks the kernel for SIGTERM on the parent's death, then execs the command (no
# Python runs between fork and exec, as it would in a preexec_fn). The tests and the benchmark start
# the service's processes this way, so a run killed outright leaves none of them writing to its
# database or Redis db index. Empty where setpriv is missing.
STOP_WITH_PARENT = ["setpriv", "--pdeathsig", "TERM", "--"] if shutil.which("setpriv") else []


def free_port() -> int:
    """A TCP port nothing listens on right now (for a server a test or the benchmark starts)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def bin_path(name: str) -> str:
    """A console script from this interpreter's environment (the project's venv)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def migrate(url: str, revision: str = "head") -> None:
    """`alembic upgrade REVISION` on the database at ``url``, as the release step runs it."""
    subprocess.run(
        [bin_path("alembic"), "upgrade", revision],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": url, "LOG_FORMAT": "json"},
        check=True,
        capture_output=True,
    )


@contextmanager
def temporary_database(revision: str | None = "head") -> Iterator[str]:
    """Create `clerk_sync_test_<random>`, migrate it to ``revision`` (None: not at all), drop it after."""
    name = f"clerk_sync_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        if revision is not None:
            migrate(url, revision)
        yield url
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def empty_tables(execute: Callable[[str], object]) -> None:
    """Empty ``SERVICE_TABLES`` and restart their ids, as ``TRUNCATE ... RESTART IDENTITY`` would.

    DELETE, not TRUNCATE: TRUNCATE makes new files for every table and index, ~0.25 s for these on
    a 2-vCPU VM, where deleting a test's few rows takes under a millisecond. ``execute`` runs one
    statement (a psycopg connection's ``execute``, or a session's with ``text``).
    """
    for table in SERVICE_TABLES:
        execute(f"DELETE FROM {table}")  # noqa: S608 - names from SERVICE_TABLES
    names = ", ".join(f"'{table}'" for table in SERVICE_TABLES)
    execute(
        "SELECT setval(pg_get_serial_sequence(attrelid::regclass::text, attname), 1, false) FROM pg_attribute"  # noqa: S608 - names from SERVICE_TABLES
        f" WHERE attrelid = ANY(ARRAY[{names}]::regclass[]) AND attname = 'id'"
    )


# A lease lasts this long unless its holder renews it (every LEASE_RENEW_SECONDS while it runs): a
# run killed outright gives its index back within a few minutes, not hours. The processes it had
# started stop with it (tests/support/processes.py), so nothing of it writes there afterwards.
LEASE_SECONDS = 180
LEASE_RENEW_SECONDS = float(os.environ.get("TEST_LEASE_RENEW_SECONDS", "30"))
# Renew only a lease that is still ours.
_RENEW = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('expire', KEYS[1], ARGV[2]) end return 0"


def _lease_index(admin: redis.Redis, token: str, *, wait_seconds: float) -> int:
    """The first free index of 1-15, waiting while all are leased (parallel runs on one machine)."""
    deadline = time.monotonic() + wait_seconds
    while True:
        for index in range(1, 16):
            if admin.set(f"{LOCK_PREFIX}{index}", token, nx=True, ex=LEASE_SECONDS):
                return index
        if time.monotonic() > deadline:
            raise RuntimeError(f"no free Redis db index (1-15) after {wait_seconds:g} s")
        time.sleep(1)


def _renew_until(stop: threading.Event, admin: redis.Redis, key: str, token: str) -> None:
    while not stop.wait(LEASE_RENEW_SECONDS):
        with contextlib.suppress(redis.RedisError):  # Redis away for a moment: the next turn renews
            admin.eval(_RENEW, 1, key, token, LEASE_SECONDS)


@contextmanager
def redis_db_index(*, wait_seconds: float = 240) -> Iterator[int]:
    """Lease a Redis db index (1-15) for this run (or xdist worker), flushed before and after."""
    admin = redis.Redis.from_url(f"{REDIS_BASE_URL}/0")
    token = f"{os.getpid()}-{uuid.uuid4().hex[:6]}"
    index = _lease_index(admin, token, wait_seconds=wait_seconds)
    key = f"{LOCK_PREFIX}{index}"
    stop = threading.Event()
    threading.Thread(target=_renew_until, args=(stop, admin, key, token), daemon=True).start()
    client = redis.Redis.from_url(f"{REDIS_BASE_URL}/{index}")
    client.flushdb()
    try:
        yield index
    finally:
        stop.set()
        client.flushdb()
        if admin.get(key) == token.encode():
            admin.delete(key)
