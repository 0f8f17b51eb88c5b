"""The Procfile's processes as an operator starts and stops them: each stops whole, and says so in one line."""

from __future__ import annotations

import os
import signal
import subprocess

import pytest

from devkit.waiting import wait_for
from tests.support.console import console_env
from tests.support.processes import ProcessManager, alive


def session_members(leader: int) -> list[int]:
    """Every process still running in the session ``leader`` started (its children's children too)."""
    found = subprocess.run(["pgrep", "-s", str(leader)], capture_output=True, text=True, check=False)
    return [pid for pid in map(int, found.stdout.split()) if alive(pid)]


@pytest.mark.parametrize("name", ["worker", "console"])
def test_a_process_told_to_stop_by_its_pid_stops_whole(processes: ProcessManager, name: str) -> None:
    # Given the process started as honcho starts it (`sh -c` with its Procfile line)
    if name == "console":
        proc = processes.start_console(**console_env())
    else:
        proc = processes.start_procfile(name, WORKER_CONCURRENCY="1")
        wait_for(lambda: "ready" in proc.log(), timeout=60, what=f"the worker ready\n{proc.log()}")

    # When the pid its supervisor knows, and only it, is told to stop (`kill PID`, the pid honcho prints,
    # systemd's KillMode=mixed, a container's stop)
    os.kill(proc.popen.pid, signal.SIGTERM)

    # Then that pid was the server itself: it stops as it does on any SIGTERM, exit code 0, and
    # nothing it started keeps running without it
    assert proc.popen.wait(timeout=30) == 0, proc.log()
    wait_for(lambda: not session_members(proc.popen.pid), timeout=30, what=f"{name}'s processes gone")
