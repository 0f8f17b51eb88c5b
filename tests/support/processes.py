"""Real web (nginx + granian, as the Procfile starts it), Celery worker and beat processes for end-to-end tests."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

from devkit.services import ROOT, STOP_WITH_PARENT, bin_path, free_port
from devkit.waiting import wait_for


def alive(pid: int) -> bool:
    """A process that runs (not gone, not a zombie)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def children(pid: int) -> list[int]:
    """The pids of a process's children."""
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False)
    return [int(child) for child in found.stdout.split()]


def procfile_command(name: str) -> str:
    """The command the Procfile gives process ``name``."""
    for line in (ROOT / "Procfile").read_text().splitlines():
        key, _, command = line.partition(":")
        if key.strip() == name:
            return command.strip()
    raise KeyError(f"no {name!r} process in the Procfile")


def web_argv() -> list[str]:
    return ["sh", "-c", procfile_command("web")]


@dataclass
class Proc:
    """One started process, its log file, and how to stop it."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    url: str | None = None
    stopped: bool = field(default=False)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def children(self) -> list[int]:
        """Its child processes' pids (a Celery worker's pool processes)."""
        return children(self.popen.pid)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the whole process group (as honcho does; celery children included)."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, sig)

    def stop(self, timeout: float = 20.0) -> None:
        if self.stopped:
            return
        self.stopped = True
        self.kill(signal.SIGTERM)
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill(signal.SIGKILL)
            self.popen.wait(timeout=10)


class ProcessManager:
    """Starts processes with one environment and stops them all at teardown."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = env
        self.log_dir = log_dir
        self.procs: list[Proc] = []

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> Proc:
        log_path = self.log_dir / f"{name}-{len(self.procs)}.log"
        handle = log_path.open("wb")
        # The Procfile names its programs bare, as honcho finds them: this venv's come first.
        env = {**env, "PATH": os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", os.defpath)])}
        popen = subprocess.Popen(
            [*STOP_WITH_PARENT, *argv],
            cwd=ROOT,
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        proc = Proc(name=name, popen=popen, log_path=log_path)
        self.procs.append(proc)
        return proc

    def start_web(self, *, workers: int = 1, wait: bool = True, **env_overrides: str) -> Proc:
        """The Procfile's `web` command, run as honcho runs it (``sh -c``, a session of its own).

        One granian worker unless a test is about several (each costs ~1.2 s of CPU to start on a
        2-vCPU VM, and the suite is CPU-bound)."""
        port = free_port()
        env = {**self.env, "PORT": str(port), "HOST": "127.0.0.1", "WEB_CONCURRENCY": str(workers), **env_overrides}
        proc = self._spawn("web", web_argv(), env)
        proc.url = f"http://127.0.0.1:{port}"
        if wait:
            wait_for(lambda: _healthy(proc), timeout=60, what=f"web on {proc.url}\n{proc.log()}")
        return proc

    def start_worker(self, *, concurrency: int = 2, wait: bool = True, **env_overrides: str) -> Proc:
        index = len(self.procs)
        argv = [
            bin_path("celery"),
            "-A",
            "worker.celery_app",
            "worker",
            "--pool",
            "prefork",
            "--concurrency",
            str(concurrency),
            "--without-gossip",
            "--without-mingle",
            "--loglevel",
            "INFO",
            "-n",
            f"test{index}-{os.getpid()}@%h",
        ]
        proc = self._spawn("worker", argv, {**self.env, **env_overrides})
        if wait:
            wait_for(
                lambda: "ready" in proc.log() or proc.popen.poll() is not None,
                timeout=60,
                what=f"celery worker ready\n{proc.log()}",
            )
            assert proc.popen.poll() is None, f"worker exited early:\n{proc.log()}"
        return proc

    root = ROOT

    def env_path(self) -> str:
        """PATH with this venv first: deploy/ scripts name gunicorn bare, as the Procfile does."""
        return os.pathsep.join([str(Path(sys.executable).parent), self.env.get("PATH", os.defpath)])

    def start_procfile(self, name: str, **env_overrides: str) -> Proc:
        """Process ``name`` as honcho starts it: its Procfile line run by ``sh -c``."""
        return self._spawn(name, ["sh", "-c", procfile_command(name)], {**self.env, **env_overrides})

    def start_console(self, *, wait: bool = True, **env_overrides: str) -> Proc:
        """The `console` process as the Procfile runs it (deploy/console.sh), on a free port."""
        port = free_port()
        proc = self.start_procfile(
            "console", **{"CONSOLE_PORT": str(port), "CONSOLE_BIND": "127.0.0.1", **env_overrides}
        )
        proc.url = f"http://127.0.0.1:{port}"
        if wait:
            wait_for(lambda: _healthy(proc, "/login"), timeout=30, what=f"the console on {proc.url}\n{proc.log()}")
        return proc

    def start_beat(self, **env_overrides: str) -> Proc:
        """Beat as the Procfile starts it, with a schedule file of its own."""
        schedule = self.log_dir / f"beat-schedule-{len(self.procs)}"
        return self.start_procfile("beat", **{"CELERY_BEAT_SCHEDULE": str(schedule), **env_overrides})

    def stop_all(self, timeout: float = 20.0) -> None:
        """SIGTERM every process at once and wait for them together (a teardown costs the slowest
        stop, not the sum of them); SIGKILL whatever outlives ``timeout``."""
        running = [proc for proc in reversed(self.procs) if not proc.stopped]
        for proc in running:
            proc.stopped = True
            proc.kill(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in running:
            try:
                proc.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill(signal.SIGKILL)
                proc.popen.wait(timeout=10)


def _healthy(proc: Proc, path: str = "/healthz") -> bool:
    if proc.popen.poll() is not None:
        raise AssertionError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.log()}")
    try:
        return requests.get(f"{proc.url}{path}", timeout=1).status_code == 200
    except requests.RequestException:
        return False
