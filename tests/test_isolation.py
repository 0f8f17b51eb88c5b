"""A test run killed outright leaves nothing running and gives its Redis db index back in minutes.

Runs on one machine share its PostgreSQL and Redis (devkit.services): a killed run (a CI timeout,
Ctrl-C twice, the OOM killer) must not leave a worker writing to a db index that the next run leases.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import redis

from devkit.services import LEASE_SECONDS, LOCK_PREFIX, REDIS_BASE_URL, ROOT
from devkit.waiting import wait_for
from tests.support.processes import alive


def _start_script(code: str, env: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    """A Python process running ``code``; returns it and the first line it prints."""
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def test_processes_a_test_started_stop_when_the_test_run_is_killed(processes):
    # Given a test process that has started beat through a ProcessManager of its own, with this
    # test's environment (what the `processes` fixture gives)
    runner, line = _start_script(
        f"""
        import time
        from pathlib import Path
        from tests.support.processes import ProcessManager
        from devkit.waiting import wait_for
        manager = ProcessManager(dict({processes.env!r}), Path({str(processes.log_dir)!r}))
        beat = manager.start_beat(RECOVERY_SECONDS="24")
        # setpriv asks for the parent-death signal before it execs; a parent killed before that
        # leaves no one to signal (the kernel's rule), so the run under test waits for the exec.
        # Popen returns while setpriv's own exec is still loading it, when the command line reads
        # empty: only a command line that is there and is not setpriv's is the exec after it.
        cmdline = Path(f"/proc/{{beat.popen.pid}}/cmdline")
        wait_for(
            lambda: (argv := cmdline.read_bytes()) and not argv.startswith(b"setpriv"),
            timeout=30,
            what="setpriv's exec",
        )
        print(beat.popen.pid, flush=True)
        time.sleep(120)
        """,
        processes.env,
    )
    beat_pid = int(line)
    assert alive(beat_pid)
    # When that test process is killed outright (no teardown runs)
    runner.kill()
    runner.wait(timeout=10)
    # Then beat stops too, instead of running on with nobody to stop it
    try:
        wait_for(lambda: not alive(beat_pid), timeout=30, what="beat to stop with the killed test run")
    finally:
        if alive(beat_pid):
            os.killpg(beat_pid, signal.SIGKILL)


def test_a_killed_runs_redis_lease_runs_out_in_minutes_and_a_live_one_is_renewed(base_env):
    admin = redis.Redis.from_url(f"{REDIS_BASE_URL}/0")
    # Given a run holding a Redis db index
    runner, line = _start_script(
        """
        import time
        from devkit.services import redis_db_index
        with redis_db_index() as index:
            print(index, flush=True)
            time.sleep(120)
        """,
        {**base_env, "TEST_LEASE_RENEW_SECONDS": "1"},
    )
    key = f"{LOCK_PREFIX}{line}"
    try:
        # Then its lease lasts minutes, not the hours it did (a killed run held its index for three)
        assert 0 < admin.ttl(key) <= LEASE_SECONDS
        # And while the run lives it is renewed (every 30 s; every second here)
        admin.expire(key, 40)
        wait_for(lambda: admin.ttl(key) > 40, timeout=15, what="the lease renewed")
    finally:
        # When the run is killed outright, nothing renews it: it runs out within LEASE_SECONDS
        runner.kill()
        runner.wait(timeout=10)
    time.sleep(1)
    assert 0 < admin.ttl(key) <= LEASE_SECONDS
    admin.delete(key)
