"""Run the installed `clerk-sync` console script as an operator would, and read the ledger."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from sqlalchemy import select

from devkit.services import bin_path
from devkit.waiting import wait_for
from shared.models import FINAL_STATUSES, OperatorAction, WebhookEvent
from worker.ops.audit import Actor

# The operator of changes a test makes through worker.ops directly.
TESTER = Actor(name="tester", source="cli")


def run_cli(
    env: dict[str, str], *args: str, cwd: Path | None = None, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    """`clerk-sync ARGS...` as a subprocess, output captured as text.

    ``cwd`` should be a test's tmp_path: the CLI reads ./.env, which `make run` writes
    in the repository and which must not leak a real key into a test.
    """
    return subprocess.run(
        [bin_path("clerk-sync"), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )


def statuses(session_factory: Any) -> dict[str, str]:
    """svix_id -> status of every `webhook_events` row."""
    with session_factory() as session:
        return dict(session.execute(select(WebhookEvent.svix_id, WebhookEvent.status)).all())


def audit_rows(session_factory: Any) -> list[OperatorAction]:
    """Every `operator_actions` row, oldest first."""
    with session_factory() as session:
        return list(session.scalars(select(OperatorAction).order_by(OperatorAction.id)))


def wait_until_final(session_factory: Any, count: int, *, timeout: float = 90) -> dict[str, str]:
    """Wait until the ledger holds ``count`` events, all in a final status; returns their statuses."""

    def done() -> dict[str, str] | None:
        seen = statuses(session_factory)
        return seen if len(seen) == count and set(seen.values()) <= set(FINAL_STATUSES) else None

    result: dict[str, str] = wait_for(done, timeout=timeout, what=f"{count} events final")
    return result
