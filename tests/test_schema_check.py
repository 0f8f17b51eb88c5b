"""A database behind this code's schema: the worker and the console refuse to start, the CLI says so in one line.

Forgetting the release step (`alembic upgrade head`) is the likeliest deployment mistake; a
worker that started anyway would fail every event on a missing table, and a CLI command would
print a traceback. Real processes against real databases at the revisions in question.
"""

from __future__ import annotations

import json

import psycopg
import pytest
from alembic.config import Config
from alembic.script import ScriptDirectory

from devkit.services import ROOT, temporary_database
from shared import schema
from tests.support.cli import one_line_error, run_cli
from tests.support.console import console_env
from tests.support.processes import ProcessManager

HINT = "run `alembic upgrade head` (the Procfile's release) first"


def test_the_revisions_written_out_are_alembics_chain() -> None:
    script = ScriptDirectory.from_config(Config(str(ROOT / "alembic.ini")))
    chain = tuple(reversed([revision.revision for revision in script.walk_revisions()]))
    assert chain == schema.REVISIONS, "a new migration's revision belongs in shared.schema.REVISIONS"


def _refusal_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if "configuration error" in line]


@pytest.mark.parametrize(
    ("revision", "expected"),
    [
        (None, f"the database has no clerk-sync schema: {HINT}"),
        ("0005", f"the database schema is at revision 0005, this code needs {schema.REVISIONS[-1]}: {HINT}"),
    ],
)
def test_a_worker_on_a_database_behind_the_code_stops_with_one_line(
    processes: ProcessManager, revision: str | None, expected: str
) -> None:
    # Given a database never migrated, or migrated only to an earlier revision
    with temporary_database(revision) as url:
        # When a worker starts on it
        worker = processes.start_worker(wait=False, DATABASE_URL=url)

        # Then it exits before it is ready, with one line saying what to run
        assert worker.popen.wait(timeout=60) == 3
        assert _refusal_lines(worker.log()) == [f"clerk-sync: configuration error: {expected}"]
        assert "ready" not in worker.log()


def test_a_console_on_a_database_never_migrated_stops_with_one_line(processes: ProcessManager) -> None:
    with temporary_database(None) as url:
        console = processes.start_console(wait=False, **console_env(DATABASE_URL=url))

        assert console.popen.wait(timeout=60) == 3
        assert _refusal_lines(console.log()) == [
            f"clerk-sync: configuration error: the database has no clerk-sync schema: {HINT}"
        ]


def _warnings(log: str, event: str) -> list[dict[str, object]]:
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
        (warning,) = _warnings(newer.log(), "schema_revision_unknown")
        assert {key: warning[key] for key in ("process", "database_revision", "code_head", "level")} == {
            "process": "worker",
            "database_revision": "9999_newer",
            "code_head": schema.REVISIONS[-1],
            "level": "warning",
        }
        newer.stop()

    # And a worker whose Postgres does not answer starts too (an outage is waited out, not refused)
    unreachable = processes.start_worker(DATABASE_URL="postgresql://postgres@127.0.0.1:9/clerk_sync")
    assert [line["error"] for line in _warnings(unreachable.log(), "schema_not_checked")] == ["OperationalError"]


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
