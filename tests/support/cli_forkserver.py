"""A warm process that forks one `clerk-sync` run per request (``tests.support.cli.run_cli``).

Each run is still a process of its own, with the environment, working directory and standard
streams it is given, running ``worker.cli.main`` as the installed script does; what it is
spared is the interpreter's start and the imports (SQLAlchemy, the models, psycopg: ~1.2 s of
CPU a run on a 2-vCPU VM, about a sixth of the suite's CPU when each run paid them).

This process imports modules and nothing else: no settings read, no connection opened, no
thread started, so a forked run inherits no state a fresh process would not have.

Protocol, one JSON line each way on stdin/stdout: ``{"id", "args", "env", "cwd", "stdout", "stderr",
"timeout"}`` (the two paths are files the run's output goes to) -> ``{"id", "returncode", "timed_out"}``
(``timed_out`` when the run outlived ``timeout`` and this process killed it; a kill from elsewhere is
only its return code, -9).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import traceback
from importlib import import_module

# What the commands import when they run: loaded here once, before any fork.
PRELOAD = (
    "worker.cli",
    "worker.cli.dlq",
    "worker.cli.status",
    "worker.cli.events",
    "worker.cli.pause",
    "worker.cli.backfill",
    "worker.cli.reconcile",
    "worker.cli.send",
    "sqlalchemy.orm",
    "psycopg",
    "shared.models",
    "shared.logging",
    "worker.ops.dead_letters",
    "worker.ops.status",
    "worker.ops.timeline",
    "worker.ops.control",
)


def _run(request: dict) -> None:
    """In the forked child: become the run, then exit with its code (as ``sys.exit(main())``)."""
    code: object = 1
    try:
        os.environ.clear()
        os.environ.update(request["env"])
        os.chdir(request["cwd"])
        for fd, path, flags in (
            (0, os.devnull, os.O_RDONLY),
            (1, request["stdout"], os.O_WRONLY),
            (2, request["stderr"], os.O_WRONLY),
        ):
            os.dup2(os.open(path, flags), fd)
        from worker.cli import main

        code = main(request["args"])
    except SystemExit as exc:
        code = exc.code
    except BaseException:  # as the interpreter does with an uncaught exception
        traceback.print_exc()
        code = 1
    finally:
        if code is not None and not isinstance(code, int):
            print(code, file=sys.stderr)
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code or 0)


def _wait(pid: int, timeout: float) -> tuple[int, bool]:
    """The run's exit code, and whether it was killed here for outliving ``timeout`` (a SIGKILL from
    elsewhere, the kernel's OOM killer say, is an exit code like any other)."""
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status), False
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return -signal.SIGKILL, True
        time.sleep(0.005)


def serve() -> None:
    for module in PRELOAD:
        import_module(module)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _run(request)
        returncode, timed_out = _wait(pid, request["timeout"])
        print(json.dumps({"id": request["id"], "returncode": returncode, "timed_out": timed_out}), flush=True)


if __name__ == "__main__":
    serve()
