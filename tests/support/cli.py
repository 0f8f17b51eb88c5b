"""Run `clerk-sync` as an operator would, and read its one-line errors.

Each run is a process of its own with the test's environment and working directory, running the
installed script's ``main``; it is forked from a warm process (``tests.support.cli_forkserver``,
one per pytest process) that has already imported what the commands need, which spares every
run the interpreter's start and the imports. The installed script itself is run as it is in
``tests/test_cli_input.py`` (on a terminal) and for ``console-password``.
"""

from __future__ import annotations

import atexit
import json
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from devkit.services import ROOT, bin_path
from worker.ops.audit import Actor

# The operator of changes a test makes through worker.ops directly.
TESTER = Actor(name="tester", source="cli")

_server: subprocess.Popen[str] | None = None
_server_lock = threading.Lock()


def _forkserver() -> subprocess.Popen[str]:
    """The warm process runs are forked from, started on first use and stopped when pytest exits."""
    global _server
    if _server is None or _server.poll() is not None:
        # No PROMETHEUS_*: prometheus_client decides at import where samples go, as a fresh run would.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PROMETHEUS_")}
        _server = subprocess.Popen(
            [sys.executable, "-m", "tests.support.cli_forkserver"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert _server.stdout is not None
        assert json.loads(_server.stdout.readline()) == {"ready": True}
        atexit.register(_server.kill)
    return _server


def run_cli(
    env: dict[str, str], *args: str, cwd: Path | None = None, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    """`clerk-sync ARGS...` in a process of its own, output captured as text.

    ``cwd`` should be a test's tmp_path: the CLI reads ./.env, which `make run` writes
    in the repository and which must not leak a real key into a test.
    """
    with _server_lock, tempfile.TemporaryDirectory() as scratch:
        out, err = Path(scratch, "stdout"), Path(scratch, "stderr")
        out.touch()
        err.touch()
        request = {
            "id": scratch,
            "args": list(args),
            "env": env,
            "cwd": str(cwd or Path.cwd()),
            "stdout": str(out),
            "stderr": str(err),
            "timeout": timeout,
        }
        server = _forkserver()
        assert server.stdin is not None and server.stdout is not None
        server.stdin.write(json.dumps(request) + "\n")
        server.stdin.flush()
        # A reply to an earlier request (its test interrupted while waiting, by pytest-timeout) is skipped.
        reply = json.loads(server.stdout.readline())
        while reply["id"] != scratch:
            reply = json.loads(server.stdout.readline())
        returncode = reply["returncode"]
        argv = [bin_path("clerk-sync"), *args]
        if reply["timed_out"]:
            raise subprocess.TimeoutExpired(argv, timeout, out.read_text(), err.read_text())
        return subprocess.CompletedProcess(argv, returncode, out.read_text(), err.read_text())


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """The CLI's error: exactly one line on stderr, `clerk-sync: ...` (asserted); returns it."""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("clerk-sync: ")
    return lines[0]
