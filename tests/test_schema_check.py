"""A database behind this code's schema: the worker and the console wait for the migration, the CLI
says so in one line.

Forgetting the release step (`alembic upgrade head`), or starting the processes beside it, is the
likeliest deployment mistake; a worker that consumed anyway would fail every event on a missing
table, and a CLI command would print a traceback. Real processes against real databases at the
revisions in question.
"""

from __future__ import annotations

import json
import signal

import psycopg
import pytest
import requests
from alembic.config import Config
from alembic.script import ScriptDirectory

from devkit.services import ROOT, migrate, temporary_database
from devkit.waiting import wait_for
from shared import schema
from shared.config import load_settings
from shared.publish import EventPublisher
from tests.support.cli import one_line_error, run_cli
from tests.support.console import console_env
from tests.support.processes import ProcessManager, free_port
from tests.support.signing import new_svix_id, user_created

HINT = "run `alembic upgrade head` (the Procfile's release)"


def test_the_revisions_written_out_are_alembics_chain() -> None:
    script = ScriptDirectory.from_config(Config(str(ROOT / "alembic.ini")))
    chain = tuple(reversed([revision.revision for revision in script.walk_revisions()]))
    assert chain == schema.REVISIONS, "a new migration's revision belongs in shared.schema.REVISIONS"


@pytest.mark.parametrize(
    ("revision", "reason"),
    [
        (None, f"the database has no clerk-sync schema: {HINT}"),
        ("0005", f"the database schema is at revision 0005, this code needs {schema.REVISIONS[-1]}: {HINT}"),
    ],
)
def test_a_worker_on_a_database_behind_the_code_waits_for_the_migration_then_applies_what_waited(
    processes: ProcessManager, base_env: dict[str, str], revision: str | None, reason: str
) -> None:
    # Given a database never migrated, or migrated only to an earlier revision
    with temporary_database(revision) as url:
        # When a worker starts on it, and an event is queued meanwhile
        worker = processes.start_worker(wait=False, DATABASE_URL=url)
        (waiting,) = wait_for(lambda: _logged(worker.log(), "schema_behind"), timeout=60, what=worker.log())
        svix_id = new_svix_id()
        body = json.dumps(user_created("user_waited"))
        publisher = EventPublisher(load_settings({**base_env, "DATABASE_URL": url}))
        publisher.publish(svix_id=svix_id, svix_timestamp=None, body=body)
        publisher.close()

        # Then it says what to run, and consumes nothing
        assert (waiting["level"], waiting["process"], waiting["reason"]) == ("warning", "worker", reason)
        assert worker.popen.poll() is None and "ready" not in worker.log()

        # And once the release step has run, it starts and applies the event that waited
        migrate(url)
        wait_for(lambda: "ready" in worker.log(), timeout=60, what=worker.log())
        assert [line["level"] for line in _logged(worker.log(), "schema_migrated")] == ["info"]
        with psycopg.connect(url, autocommit=True) as conn:
            wait_for(
                lambda: (
                    conn.execute("SELECT status FROM webhook_events WHERE svix_id = %s", (svix_id,)).fetchone()
                    == ("processed",)
                ),
                timeout=60,
                what="the event that waited processed",
            )
            assert conn.execute("SELECT clerk_id FROM users").fetchall() == [("user_waited",)]
        worker.stop()


def test_a_console_on_a_database_never_migrated_serves_once_it_is(processes: ProcessManager) -> None:
    with temporary_database(None) as url:
        console = processes.start_console(wait=False, **console_env(DATABASE_URL=url))
        wait_for(lambda: _logged(console.log(), "schema_behind"), timeout=60, what=console.log())
        with pytest.raises(requests.ConnectionError):
            requests.get(f"{console.url}/login", timeout=5)

        migrate(url)
        wait_for(lambda: _serves(f"{console.url}/login"), timeout=60, what=console.log())
        console.stop()


def _serves(url: str) -> bool:
    try:
        return requests.get(url, timeout=5).status_code == 200
    except requests.ConnectionError:
        return False


def _logged(log: str, event: str) -> list[dict[str, object]]:
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("event") == event]


def test_a_worker_on_a_newer_schema_or_an_unreachable_database_starts_and_says_so(
    processes: ProcessManager, database_url: str
) -> None:
    # Given a database at a revision this code does not know (code rolled back after a migration)
    with temporary_database() as url:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("UPDATE alembic_version SET version_num = '9999_newer'")

        # Then a worker starts on it, and warns
        newer = processes.start_worker(DATABASE_URL=url)
        (warning,) = _logged(newer.log(), "schema_revision_unknown")
        assert {key: warning[key] for key in ("process", "database_revision", "code_head", "level")} == {
            "process": "worker",
            "database_revision": "9999_newer",
            "code_head": schema.REVISIONS[-1],
            "level": "warning",
        }
        newer.stop()

    # And a worker whose Postgres does not answer starts too (an outage is waited out, not refused)
    unreachable = processes.start_worker(DATABASE_URL="postgresql://postgres@127.0.0.1:9/clerk_sync")
    assert [line["error"] for line in _logged(unreachable.log(), "schema_not_checked")] == ["OperationalError"]


@pytest.mark.parametrize(
    "command",
    [("status",), ("status", "--json"), ("dlq", "list"), ("events", "--entity", "user_1"), ("pause",), ("resume",)],
)
def test_the_cli_on_a_database_never_migrated_says_so_in_one_line(
    base_env: dict[str, str], tmp_path, command: tuple[str, ...]
) -> None:
    with temporary_database(None) as url:
        result = run_cli({**base_env, "DATABASE_URL": url}, *command, cwd=tmp_path)

    assert result.returncode == 1
    error = one_line_error(result)
    assert error.startswith("clerk-sync: the database is not migrated (relation ")
    assert error.endswith("does not exist): run `alembic upgrade head`")


@pytest.mark.parametrize(("name", "signum"), [("worker", signal.SIGTERM), ("console", signal.SIGINT)])
def test_a_process_stopped_while_it_waits_for_the_migration_says_so_in_one_line(
    processes: ProcessManager, name: str, signum: signal.Signals
) -> None:
    # Given the process waiting for a database never migrated (the release not run yet)
    with temporary_database(None) as url:
        proc = processes.start_procfile(name, **console_env(DATABASE_URL=url, CONSOLE_PORT=str(free_port())))
        wait_for(lambda: _logged(proc.log(), "schema_behind"), timeout=60, what=proc.log())

        # When it is told to stop (SIGTERM from a supervisor, Ctrl-C on a terminal)
        proc.kill(signum)

        # Then it exits 0 with one line saying it stopped waiting: no traceback, not killed by the signal
        assert proc.popen.wait(timeout=30) == 0, proc.log()
    assert [line["signal"] for line in _logged(proc.log(), "schema_wait_stopped")] == [signum.name]
    assert "Traceback" not in proc.log() and "Aborted" not in proc.log(), proc.log()
