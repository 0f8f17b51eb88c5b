"""Process helpers for the benchmark: start/stop process groups, sample the RSS of a process tree."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

from devkit.services import STOP_WITH_PARENT


@dataclass
class Started:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.popen.poll() is None

    def wait_healthy(self, url: str, *, timeout: float) -> None:
        """Until ``url``/healthz answers 200; RuntimeError with the log's tail if it exits or never does."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited:\n{self.log()[-3000:]}")
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{url}/healthz", timeout=1).status_code == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not answer /healthz within {timeout:g} s:\n{self.log()[-3000:]}")

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM the process group this harness started, then SIGKILL it if it lingers."""
        if self.popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(timeout=10)


def spawn(name: str, argv: list[str], *, env: dict[str, str], cwd: Path, log_dir: Path) -> Started:
    log_path = log_dir / f"{name}-{time.strftime('%H%M%S')}-{os.urandom(2).hex()}.log"
    handle = log_path.open("wb")
    # Stopped with the benchmark even if it is killed outright (devkit.services.STOP_WITH_PARENT).
    popen = subprocess.Popen(
        [*STOP_WITH_PARENT, *argv], cwd=cwd, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
    )
    return Started(name=name, popen=popen, log_path=log_path)


def _children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for task in tasks:
        try:
            text = Path(f"/proc/{pid}/task/{task}/children").read_text()
        except OSError:
            continue
        found.extend(int(part) for part in text.split())
    return found


def tree(root: int) -> list[int]:
    pids, stack = [], [root]
    while stack:
        pid = stack.pop()
        pids.append(pid)
        stack.extend(_children(pid))
    return pids


def rss_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def snapshot(root: int) -> dict[int, int]:
    """VmRSS (kB) of every live process in the tree under ``root``."""
    result = {}
    for pid in tree(root):
        value = rss_kb(pid)
        if value is not None:
            result[pid] = value
    return result


@dataclass
class RssSampler:
    """Samples the RSS of some process trees every ``interval`` seconds in a thread."""

    roots: dict[str, int]
    interval: float = 0.5
    peaks: dict[str, dict[int, int]] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __post_init__(self) -> None:
        self.peaks = {name: {} for name in self.roots}

    def sample(self) -> None:
        for name, root in self.roots.items():
            peaks = self.peaks[name]
            for pid, value in snapshot(root).items():
                peaks[pid] = max(peaks.get(pid, 0), value)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()

    def summary(self) -> dict[str, dict[str, float]]:
        """Per tree: peak RSS (MB) of the main process, of the largest child, and of the sum of peaks."""
        out: dict[str, dict[str, float]] = {}
        for name, root in self.roots.items():
            peaks = self.peaks[name]
            children = [value for pid, value in peaks.items() if pid != root]
            out[name] = {
                "main_peak_mb": round(peaks.get(root, 0) / 1024, 1),
                "child_peak_mb": round(max(children, default=0) / 1024, 1),
                "children": len(children),
                "tree_peak_sum_mb": round(sum(peaks.values()) / 1024, 1),
            }
        return out
