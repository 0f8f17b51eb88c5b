"""The ingress part of `make bench`: signed POSTs with wrk against several servers, in interleaved rounds.

Every server gets the same load: wrk keep-alive connections posting a ~3 KB signed
``user.updated`` body, each request with its own pre-signed svix-id. The servers:

- ``reference``: bare Flask (bench/bare_app.py, a 204) on gunicorn gthread, 2 workers x 4
  threads: what a user would otherwise deploy, and the figure every ratio divides by;
- ``bare``: the same bare Flask on the chosen `web` server (deploy/web.py: nginx + granian);
- ``floor``: verify + one LPUSH (bench/floor_app.py) on the chosen server: the least any
  verifying, queueing ingress must do;
- ``ingress``: clerk-sync's `web` process exactly as the Procfile starts it;
- candidates, for the record of the choice: bare Flask and the ingress on granian alone (no
  nginx in front) and the ingress on gunicorn gthread 2x4 (the `web` of earlier versions).

Rounds are interleaved (every server once per round, back to back), so the ratios compare
the same minute of a shared machine; each figure is the median of the rounds with min-max.
The CPU time of each server's process tree per request is recorded too (a steadier figure
than requests/s on a busy machine).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from bench.events import new_svix_id, realistic_user_updated, sign
from bench.procs import Started, spawn, tree
from devkit.services import free_port

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TARGET_RATIO, STRETCH_RATIO = 0.8, 1.0
REFERENCE_WORKERS, REFERENCE_THREADS = 2, 4


class Harness(Protocol):
    env: dict[str, str]
    log_dir: Path
    started: list[Started]

    def reset(self) -> None: ...

    def queue_depth(self) -> int: ...


@dataclass(frozen=True)
class Server:
    """One server under test: how to start it on a port, and what it serves."""

    name: str
    what: str
    argv: Callable[[int], list[str]]
    env: dict[str, str]


def _web(app: str) -> Callable[[int], list[str]]:
    return lambda _port: [sys.executable, "deploy/web.py", "--app", app]


def _flags(**options: object) -> list[str]:
    """``--name value`` pairs, underscores spelled as dashes (what gunicorn and granian both take)."""
    return [part for name, value in options.items() for part in (f"--{name.replace('_', '-')}", str(value))]


def _gunicorn(app: str) -> Callable[[int], list[str]]:
    return lambda port: [
        str(BIN / "gunicorn"),
        *_flags(worker_class="gthread", workers=REFERENCE_WORKERS, threads=REFERENCE_THREADS, keep_alive=75),
        *_flags(bind=f"127.0.0.1:{port}"),
        app,
    ]


def _granian(app: str) -> Callable[[int], list[str]]:
    return lambda port: [
        str(BIN / "granian"),
        *_flags(interface="wsgi", workers=REFERENCE_WORKERS, blocking_threads=REFERENCE_THREADS),
        *_flags(host="127.0.0.1", port=port, log_level="warning"),
        "--no-ws",
        "--no-access-log",
        app,
    ]


_WEB_ENV = {"WEB_CONCURRENCY": str(REFERENCE_WORKERS), "WEB_THREADS": str(REFERENCE_THREADS)}
SERVERS = (
    Server("reference", "bare Flask, gunicorn gthread 2x4", _gunicorn("bench.bare_app:app"), {}),
    Server("bare", "bare Flask, web (nginx + granian 2x4)", _web("bench.bare_app:app"), _WEB_ENV),
    Server("floor", "verify + LPUSH, web (nginx + granian 2x4)", _web("bench.floor_app:app"), _WEB_ENV),
    Server("ingress", "clerk-sync web as the Procfile starts it", _web("ingress.wsgi:app"), _WEB_ENV),
    Server("bare_granian", "bare Flask, granian 2x4 alone", _granian("bench.bare_app:app"), {}),
    Server("ingress_granian", "ingress, granian 2x4 alone", _granian("ingress.wsgi:app"), {}),
    Server("ingress_gunicorn", "ingress, gunicorn gthread 2x4 (the old web server)", _gunicorn("ingress.wsgi:app"), {}),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("ingress")
    group.add_argument(
        "--ingress-seconds", type=float, help="wrk duration per server and round (default 10; --quick 4)"
    )
    group.add_argument("--connections", type=int, default=8, help="wrk keep-alive connections (default 8)")
    group.add_argument("--wrk-threads", type=int, default=1, help="wrk threads (default 1: the CPUs are the servers')")
    group.add_argument(
        "--servers",
        default=",".join(server.name for server in SERVERS),
        help="servers to measure, comma-separated (reference always; default all: "
        + ", ".join(server.name for server in SERVERS)
        + ")",
    )


def defaults(args: argparse.Namespace) -> None:
    args.ingress_seconds = args.ingress_seconds or (4.0 if args.quick else 10.0)


# --------------------------------------------------------------------------- wrk

_LUA = """
local body = [==[%(body)s]==]
local reqs = {
%(rows)s
}
local nthreads = %(threads)d
local counter = 0
function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
end
function init(args)
  cache = {}
  local i = tid + 1
  while i <= #reqs do
    local r = reqs[i]
    cache[#cache + 1] = wrk.format("POST", "/webhooks/clerk", {
      ["Content-Type"] = "application/json",
      ["svix-id"] = r[1], ["svix-timestamp"] = r[2], ["svix-signature"] = r[3]}, body)
    i = i + nthreads
  end
  n = 0
end
function request()
  n = n + 1
  return cache[(n - 1) %% #cache + 1]
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCHJSON {"requests":%%d,"duration_us":%%d,"non2xx":%%d,"connect":%%d,"read":%%d,"write":%%d,' ..
    '"timeout":%%d,"p50_us":%%d,"p90_us":%%d,"p99_us":%%d,"max_us":%%d}\\n',
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"""


def wrk_script(path: Path, body: str, count: int, threads: int) -> None:
    """A Lua script holding ``count`` distinct pre-signed header sets, formatted once per wrk thread."""
    rows = []
    for _ in range(count):
        headers = sign(body, new_svix_id())
        rows.append(f'{{"{headers["svix-id"]}","{headers["svix-timestamp"]}","{headers["svix-signature"]}"}},')
    path.write_text(_LUA % {"body": body, "rows": "\n".join(rows), "threads": threads})


def run_wrk(url: str, script: Path, *, seconds: float, connections: int, threads: int) -> dict[str, Any]:
    argv = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{max(1, round(seconds))}s"]
    argv += ["--timeout", "10s", "-s", str(script), f"{url}/webhooks/clerk"]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0 or "BENCHJSON " not in done.stdout:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout[-2000:]} {done.stderr[-2000:]}")
    line = next(line for line in done.stdout.splitlines() if line.startswith("BENCHJSON "))
    raw = json.loads(line[len("BENCHJSON ") :])
    return {
        "requests": raw["requests"],
        "rps": raw["requests"] / (raw["duration_us"] / 1e6),
        "p50_ms": raw["p50_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "non2xx": raw["non2xx"],
        "socket_errors": raw["connect"] + raw["read"] + raw["write"] + raw["timeout"],
    }


# --------------------------------------------------------------------------- servers

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(root: int) -> float:
    """User + system CPU time of every live process under ``root`` (children that exited are not counted)."""
    total = 0
    for pid in tree(root):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / _CLOCK_TICKS


def start(h: Harness, server: Server) -> tuple[Started, str]:
    """Start ``server`` on a free port and wait for its /healthz."""
    port = free_port()
    env = {**h.env, **server.env, "HOST": "127.0.0.1", "PORT": str(port)}
    proc = spawn(server.name, server.argv(port), env=env, cwd=ROOT, log_dir=h.log_dir)
    h.started.append(proc)
    url = f"http://127.0.0.1:{port}"
    proc.wait_healthy(url, timeout=90)
    return proc, url


def start_web(h: Harness) -> tuple[Started, str]:
    """clerk-sync's `web` process with its default settings (the lag benchmark posts through it)."""
    return start(h, next(server for server in SERVERS if server.name == "ingress"))


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def stats(values: list[float]) -> dict[str, Any]:
    return {
        "median": round(statistics.median(values), 3),
        "min": round(min(values), 3),
        "max": round(max(values), 3),
        "runs": [round(value, 3) for value in values],
    }


def run(h: Harness, args: argparse.Namespace) -> dict[str, Any]:
    """Every chosen server, ``args.runs`` interleaved rounds of ``args.ingress_seconds`` each."""
    if shutil.which("wrk") is None:
        raise SystemExit("bench: wrk is not installed (apt-get install -y wrk; `make bench` does it)")
    chosen = {name.strip() for name in args.servers.split(",")} | {"reference"}
    unknown = chosen - {server.name for server in SERVERS}
    if unknown:
        raise SystemExit(f"bench: unknown --servers {', '.join(sorted(unknown))}")
    servers = [server for server in SERVERS if server.name in chosen]
    body = realistic_user_updated()
    started = {server.name: start(h, server) for server in servers}
    # Enough distinct pre-signed requests for a round at a generous rate.
    count = int(min(80_000, max(5_000, args.ingress_seconds * 5_000)))
    rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in started}
    for name, (_, url) in started.items():  # warm-up: imports, connections, caches
        script = h.log_dir / f"warm-{name}.lua"
        wrk_script(script, body, 500, args.wrk_threads)
        run_wrk(url, script, seconds=2, connections=args.connections, threads=args.wrk_threads)
    for number in range(args.runs):
        for name, (proc, url) in started.items():
            h.reset()
            script = h.log_dir / f"{name}-{number}.lua"
            wrk_script(script, body, count, args.wrk_threads)
            cpu_before = tree_cpu_seconds(proc.pid)
            result = run_wrk(
                url, script, seconds=args.ingress_seconds, connections=args.connections, threads=args.wrk_threads
            )
            result["server_cpu_us_per_request"] = (
                (tree_cpu_seconds(proc.pid) - cpu_before) / max(1, result["requests"]) * 1e6
            )
            if name.startswith("ingress"):
                result["queued"] = h.queue_depth()
            rounds[name].append(result)
            log(
                f"ingress round {number + 1}/{args.runs} {name}: {result['rps']:.0f} req/s, "
                f"p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms, "
                f"server CPU {result['server_cpu_us_per_request']:.0f} µs/req, non-2xx {result['non2xx']}"
            )
    for proc, _ in started.values():
        proc.stop()
    h.reset()
    reference = rounds["reference"]
    return {
        "body_bytes": len(body),
        "connections": args.connections,
        "wrk_threads": args.wrk_threads,
        "seconds_per_round": args.ingress_seconds,
        "rounds": args.runs,
        "target_ratio": TARGET_RATIO,
        "stretch_ratio": STRETCH_RATIO,
        "servers": {
            name: {
                "what": next(server.what for server in servers if server.name == name),
                "rps": stats([r["rps"] for r in results]),
                "p50_ms": stats([r["p50_ms"] for r in results]),
                "p99_ms": stats([r["p99_ms"] for r in results]),
                "server_cpu_us_per_request": stats([r["server_cpu_us_per_request"] for r in results]),
                "ratio_to_reference": stats([r["rps"] / b["rps"] for r, b in zip(results, reference, strict=True)]),
                "non2xx": sum(r["non2xx"] for r in results),
                "raw": results,
            }
            for name, results in rounds.items()
        },
    }


def table_rows(report: dict[str, Any], fmt: Callable[[dict[str, Any] | None, int], str]) -> list[tuple[str, str, str]]:
    """Rows (figure, median (min-max), target) for the printed table."""
    rows: list[tuple[str, str, str]] = []
    for name, figures in report["servers"].items():
        rows.append((f"{figures['what']} req/s", fmt(figures["rps"], 0), ""))
        latency = f"{fmt(figures['p50_ms'], 1)} / {fmt(figures['p99_ms'], 1)}"
        rows.append(("  p50 / p99 ms", latency, ""))
        rows.append(("  server CPU µs per request", fmt(figures["server_cpu_us_per_request"], 0), ""))
        if name != "reference":
            target = f">= {report['target_ratio']} (stretch {report['stretch_ratio']})" if name == "ingress" else ""
            rows.append((f"  {name} / reference", fmt(figures["ratio_to_reference"], 2), target))
    return rows
