"""Run the installed `clerk-sync` console script as an operator would, and read its one-line errors."""

from __future__ import annotations

import subprocess
from pathlib import Path

from devkit.services import bin_path
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


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """The CLI's error: exactly one line on stderr, `clerk-sync: ...` (asserted); returns it."""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("clerk-sync: ")
    return lines[0]
