"""`run_cli`'s fork server (tests/support/cli_forkserver.py) tells a run it killed for outliving its
timeout from one killed by anything else: only the first is a timeout; the second is an exit code the
test sees (an out-of-memory kill once read as a timeout).

A run that hangs: `clerk-sync send` to a socket that accepts connections and never answers.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest

from tests.support import cli
from tests.support.cli import run_cli
from tests.support.processes import children


@pytest.fixture
def silent_url() -> Iterator[str]:
    with socket.create_server(("127.0.0.1", 0)) as listener:  # the kernel completes handshakes; no reply
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/webhooks/clerk"


def test_a_run_that_outlives_its_timeout_is_a_timeout(base_env, tmp_path, silent_url):
    with pytest.raises(subprocess.TimeoutExpired):
        run_cli(base_env, "send", "user.created", "--url", silent_url, cwd=tmp_path, timeout=1)


def test_a_run_killed_from_outside_is_an_exit_code_not_a_timeout(base_env, tmp_path, silent_url):
    # Given a run that hangs, with plenty of time left
    server = cli._forkserver()
    results: list[subprocess.CompletedProcess[str] | BaseException] = []

    def run() -> None:
        try:
            results.append(run_cli(base_env, "send", "user.created", "--url", silent_url, cwd=tmp_path, timeout=60))
        except BaseException as exc:  # the assertion below says which
            results.append(exc)

    waiting = threading.Thread(target=run)
    waiting.start()
    deadline = time.monotonic() + 15
    while not (runs := children(server.pid)) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(runs) == 1, runs

    # When something else kills it
    subprocess.run(["kill", f"-{signal.SIGKILL.value}", str(runs[0])], check=True)
    waiting.join(timeout=15)

    # Then the test sees the kill as the run's exit code, at once
    assert [type(result) for result in results] == [subprocess.CompletedProcess]
    assert results[0].returncode == -signal.SIGKILL  # type: ignore[union-attr]
