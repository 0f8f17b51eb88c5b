"""`make bench`: throughput, lag and memory of clerk-sync against its own do-nothing baselines.

It starts everything it needs: a throwaway migrated database and a leased Redis db index (as the
tests do), real web and Celery worker processes with the default settings, and measures

- ingress: signed POSTs with wrk against the web process and its references (bench/ingress.py);
- worker: a pre-published backlog of realistic events (20 % duplicate svix-ids) drained by
  deploy/celery-worker.sh, against the same worker flags draining no-op tasks -> events/s, ratio;
- lag: a steady rate through the real ingress with the worker running -> processed_at - send time;
- memory: peak RSS per process (sampled every 0.5 s) and RSS growth over the drain.

Each figure is the median of --runs runs with the min-max. Results are printed as a table and written
to bench/results/results-<date>.json and bench/results/latest.json: raw output, kept out of git
(.gitignore); the summary worth keeping goes to docs/performance.md by hand. `--quick` is a 1-2
minute smoke run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# Issue 19: the worker drains at least as fast as Celery hands out no-op tasks (an earlier issue asked 0.8x).
WORKER_TARGET_RATIO = 1.0
sys.path[:0] = [str(ROOT)]

import psycopg  # noqa: E402
import redis  # noqa: E402

from bench import capacity, cli_startup, ingress  # noqa: E402
from bench.events import SECRET, Event, generate, sign  # noqa: E402
from bench.load import achieved_rate, send_steady  # noqa: E402
from bench.procs import RssSampler, Started, snapshot, spawn  # noqa: E402
from devkit.services import REDIS_BASE_URL, bin_path, redis_db_index, temporary_database  # noqa: E402
from shared.config import load_settings  # noqa: E402
from shared.publish import EventPublisher  # noqa: E402

FINAL = ("processed", "ignored", "dead")
QUEUE = "clerk-events"
BIN = Path(sys.executable).parent


# --------------------------------------------------------------------------- helpers


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def stats(values: list[float]) -> dict[str, Any]:
    """Median and min-max of the runs."""
    clean = [v for v in values if v is not None]
    if not clean:
        return {"median": None, "min": None, "max": None, "runs": []}
    return {
        "median": round(statistics.median(clean), 3),
        "min": round(min(clean), 3),
        "max": round(max(clean), 3),
        "runs": [round(v, 3) for v in clean],
    }


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def wait_until(predicate: Callable[[], bool], *, timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise RuntimeError(f"timed out waiting for {what}")


class Harness:
    """The environment of one benchmark: database, Redis db index, process env, logs."""

    def __init__(self, db_url: str, redis_url: str, log_dir: Path) -> None:
        self.db_url = db_url
        self.redis_url = redis_url
        self.log_dir = log_dir
        self.redis = redis.Redis.from_url(redis_url)
        env = {key: value for key, value in os.environ.items() if key not in _TUNING_VARIABLES}
        env.update(
            {
                "CLERK_WEBHOOK_SECRET": SECRET,
                "DATABASE_URL": db_url,
                "REDIS_URL": redis_url,
                "LOG_FORMAT": "json",
                "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
                "PYTHONPATH": str(ROOT),
            }
        )
        self.env = env
        self.settings = load_settings(env)
        self.started: list[Started] = []

    # processes
    def start_worker(self, *, noop: bool = False) -> Started:
        """deploy/celery-worker.sh with its defaults; the no-op app with the very same flags."""
        tag = f"bench{len(self.started)}-{os.getpid()}@%h"
        if noop:
            concurrency = os.environ.get("WORKER_CONCURRENCY") or str(os.cpu_count() or 2)
            argv = [
                bin_path("celery"),
                "-A",
                "bench.noop_tasks",
                "worker",
                "--loglevel",
                "INFO",
                "--concurrency",
                concurrency,
                "--pool",
                "prefork",
                "--without-gossip",
                "--without-mingle",
                "-n",
                tag,
            ]
        else:
            argv = ["sh", "deploy/celery-worker.sh", "-n", tag]
        proc = spawn("noop-worker" if noop else "worker", argv, env=self.env, cwd=ROOT, log_dir=self.log_dir)
        self.started.append(proc)
        return proc

    def wait_ready(self, proc: Started, timeout: float = 60) -> float:
        """The moment the Celery worker logs that it is ready (time.monotonic())."""
        pattern = re.compile(r"\bready\b")

        def ready() -> bool:
            if not proc.alive():
                raise RuntimeError(f"{proc.name} exited:\n{proc.log()[-3000:]}")
            return bool(pattern.search(proc.log()))

        wait_until(ready, timeout=timeout, what=f"{proc.name} ready", interval=0.02)
        return time.monotonic()

    def stop_all(self) -> None:
        for proc in reversed(self.started):
            proc.stop()

    # state
    def reset(self) -> None:
        """Empty the synced tables and the queue (Redis bindings stay: a running publisher relies on them)."""
        with psycopg.connect(self.db_url, autocommit=True) as conn:
            tables = [
                row[0]
                for row in conn.execute(
                    "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
                    "AND tablename NOT IN ('alembic_version', 'clerk_sync_control')"
                )
            ]
            conn.execute("TRUNCATE " + ", ".join(f'"{t}"' for t in tables))
            conn.execute("UPDATE clerk_sync_control SET value = 'false' WHERE name = 'paused'")
        keys = [k for k in self.redis.scan_iter() if not k.startswith(b"_kombu.binding")]
        if keys:
            self.redis.delete(*keys)

    def queue_depth(self) -> int:
        depth = 0
        for key in self.redis.scan_iter(f"{QUEUE}*"):
            if b"control" not in key and self.redis.type(key) == b"list":
                depth += int(self.redis.llen(key))
        return depth

    def unacked(self) -> int:
        return int(self.redis.hlen("unacked"))

    def final_count(self) -> tuple[int, int]:
        with psycopg.connect(self.db_url, autocommit=True) as conn:
            row = conn.execute(
                "SELECT count(*) FILTER (WHERE status = ANY(%s)), count(*) FROM webhook_events", (list(FINAL),)
            ).fetchone()
        assert row is not None
        return int(row[0]), int(row[1])

    def status_counts(self) -> dict[str, int]:
        with psycopg.connect(self.db_url, autocommit=True) as conn:
            return {s: int(n) for s, n in conn.execute("SELECT status, count(*) FROM webhook_events GROUP BY 1")}

    def publish(self, events: list[Event]) -> float:
        """Put events on the queue the way the ingress does (same message), before the worker starts."""
        publisher = EventPublisher(self.settings, timeout=10.0)
        started = time.perf_counter()
        now = int(time.time())
        for event in events:
            publisher.publish(svix_id=event.svix_id, svix_timestamp=now, body=event.body)
        publisher.close()
        return time.perf_counter() - started


_TUNING_VARIABLES = ("WEB_CONCURRENCY", "WEB_THREADS", "WORKER_CONCURRENCY", "PORT", "HOST", "LOG_LEVEL")


# --------------------------------------------------------------------------- worker drain


def drain_real(h: Harness, events: list[Event], distinct: int, run: int) -> dict[str, Any]:
    h.reset()
    publish_s = h.publish(events)
    assert h.queue_depth() == len(events), "the backlog did not reach the queue"
    proc = h.start_worker()
    sampler = RssSampler({"celery_worker": proc.pid})
    rss_at: dict[str, float] = {}
    with sampler:
        started = h.wait_ready(proc)
        last_progress, last_done = time.monotonic(), -1
        while True:
            done, _ = h.final_count()
            now = time.monotonic()
            if done >= distinct * 0.25 and "25%" not in rss_at:
                rss_at["25%"] = sum(snapshot(proc.pid).values()) / 1024
            if done >= distinct:
                elapsed = now - started
                break
            if done != last_done:
                last_progress, last_done = now, done
            elif now - last_progress > 120:
                raise RuntimeError(
                    f"worker drain stalled at {done}/{distinct}: {h.status_counts()}\n{proc.log()[-3000:]}"
                )
            time.sleep(0.1)
        rss_at["100%"] = sum(snapshot(proc.pid).values()) / 1024
        queue_left = h.queue_depth()
    proc.stop()
    counts = h.status_counts()
    result = {
        "events": len(events),
        "distinct": distinct,
        "seconds": elapsed,
        "events_per_s": distinct / elapsed,
        "messages_per_s": len(events) / elapsed,
        "publish_seconds": publish_s,
        "statuses": counts,
        "queue_left_at_end": queue_left,
        "rss_tree_mb_at_25pct": round(rss_at["25%"], 1),
        "rss_tree_mb_at_100pct": round(rss_at["100%"], 1),
        "memory": sampler.summary(),
    }
    log(
        f"worker run {run + 1}: {distinct} distinct in {elapsed:.1f} s = {result['events_per_s']:.0f} events/s "
        f"({result['messages_per_s']:.0f} msg/s), statuses {counts}"
    )
    return result


def drain_noop(h: Harness, events: list[Event], run: int) -> dict[str, Any]:
    h.reset()
    h.publish(events)
    total = h.queue_depth()
    assert total == len(events)
    proc = h.start_worker(noop=True)
    sampler = RssSampler({"celery_noop": proc.pid})
    with sampler:
        started = h.wait_ready(proc)
        wait_until(lambda: h.queue_depth() == 0 and h.unacked() == 0, timeout=600, what="no-op drain", interval=0.02)
        elapsed = time.monotonic() - started
    proc.stop()
    result = {"events": total, "seconds": elapsed, "messages_per_s": total / elapsed, "memory": sampler.summary()}
    log(f"no-op run {run + 1}: {total} tasks in {elapsed:.1f} s = {result['messages_per_s']:.0f} tasks/s")
    return result


def bench_worker(h: Harness, args: argparse.Namespace) -> dict[str, Any]:
    distinct = round(args.backlog * (1 - args.duplicates))
    events = generate(distinct, duplicate_fraction=args.duplicates, seed=6, tag="w")
    # A quarter of the backlog, drained the same way: if memory followed the backlog, its peak would be lower.
    small_distinct = distinct // 4
    small_events = generate(small_distinct, duplicate_fraction=args.duplicates, seed=9, tag="s")
    real, noop, small = [], [], []
    for run in range(args.runs):
        small.append(drain_real(h, small_events, small_distinct, run))
        real.append(drain_real(h, events, distinct, run))
        noop.append(drain_noop(h, events, run))
    ratios = [r["messages_per_s"] / n["messages_per_s"] for r, n in zip(real, noop, strict=True)]
    growth = [r["rss_tree_mb_at_100pct"] - r["rss_tree_mb_at_25pct"] for r in real]

    def peak(result: dict[str, Any]) -> float:
        return float(result["memory"]["celery_worker"]["tree_peak_sum_mb"])

    peak_difference = [peak(r) - peak(q) for r, q in zip(real, small, strict=True)]
    types: dict[str, int] = {}
    for event in events:
        types[event.event_type] = types.get(event.event_type, 0) + 1
    return {
        "backlog": len(events),
        "distinct": distinct,
        "duplicate_fraction": args.duplicates,
        "mix": types,
        "concurrency": os.environ.get("WORKER_CONCURRENCY") or os.cpu_count(),
        "applied_events_per_s": stats([r["events_per_s"] for r in real]),
        "messages_per_s": stats([r["messages_per_s"] for r in real]),
        "noop_tasks_per_s": stats([n["messages_per_s"] for n in noop]),
        "ratio": stats(ratios),
        "target_ratio": WORKER_TARGET_RATIO,
        "rss_growth_25_to_100pct_mb": stats(growth),
        "small_backlog": len(small_events),
        "rss_tree_peak_mb_small_backlog": stats([peak(q) for q in small]),
        "rss_tree_peak_mb_full_backlog": stats([peak(r) for r in real]),
        "rss_tree_peak_difference_mb": stats(peak_difference),
        "memory": {"worker": real[-1]["memory"], "noop": noop[-1]["memory"]},
        "raw": {"worker": real, "noop": noop, "small_backlog": small},
    }


# --------------------------------------------------------------------------- lag


def bench_lag(h: Harness, args: argparse.Namespace) -> dict[str, Any]:
    h.reset()
    web, url = ingress.start_web(h)
    worker = h.start_worker()
    h.wait_ready(worker)
    runs = []
    sampler = RssSampler({"web": web.pid, "celery_worker": worker.pid})
    with sampler:
        for run in range(args.runs):
            h.reset()
            count = int(args.lag_rate * args.lag_seconds)
            events = generate(count, duplicate_fraction=0.0, seed=100 + run, tag=f"l{run}")
            signed = [(event, sign(event.body, event.svix_id)) for event in events]
            results = send_steady(url, signed, args.lag_rate, senders=16)
            accepted = {events[i].svix_id: r[0] for i, r in enumerate(results) if 200 <= r[2] < 300}
            expected = len(accepted)
            wait_until(lambda: h.final_count()[0] >= expected, timeout=300, what="lag drain", interval=0.2)  # noqa: B023
            with psycopg.connect(h.db_url, autocommit=True) as conn:
                rows = conn.execute(
                    "SELECT svix_id, extract(epoch FROM processed_at)::float8 FROM webhook_events "
                    "WHERE processed_at IS NOT NULL"
                ).fetchall()
            lags = [(processed - accepted[svix_id]) * 1000 for svix_id, processed in rows if svix_id in accepted]
            http_ms = [r[1] * 1000 for r in results if r[2]]
            result = {
                "sent": len(results),
                "accepted": len(accepted),
                "achieved_rate": achieved_rate(results),
                "lag_p50_ms": percentile(lags, 50),
                "lag_p99_ms": percentile(lags, 99),
                "lag_max_ms": max(lags, default=float("nan")),
                "http_p50_ms": percentile(http_ms, 50),
                "http_p99_ms": percentile(http_ms, 99),
                "statuses": h.status_counts(),
            }
            runs.append(result)
            log(
                f"lag run {run + 1}: {result['achieved_rate']:.0f} ev/s sent, lag p50 {result['lag_p50_ms']:.0f} ms "
                f"p99 {result['lag_p99_ms']:.0f} ms, http p99 {result['http_p99_ms']:.1f} ms"
            )
    worker.stop()
    web.stop()
    return {
        "rate": args.lag_rate,
        "seconds": args.lag_seconds,
        "measured_as": "processed_at (Postgres now() of the applying transaction) minus the exact wall-clock time "
        "the load generator sent the request, per svix-id; not the svix-timestamp header (1 s resolution)",
        "lag_p50_ms": stats([r["lag_p50_ms"] for r in runs]),
        "lag_p99_ms": stats([r["lag_p99_ms"] for r in runs]),
        "http_p99_ms": stats([r["http_p99_ms"] for r in runs]),
        "achieved_rate": stats([r["achieved_rate"] for r in runs]),
        "memory": sampler.summary(),
        "raw": runs,
    }


# --------------------------------------------------------------------------- machine, report


def machine_info(h: Harness) -> dict[str, Any]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    mem_kb = next(
        int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal")
    )
    with psycopg.connect(h.db_url, autocommit=True) as conn:
        pg = conn.execute("SHOW server_version").fetchone()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True
    )
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu,
        "memory_gb": round(mem_kb / 1024 / 1024, 1),
        "python": platform.python_version(),
        "postgresql": pg[0] if pg else None,
        "redis": h.redis.info("server").get("redis_version"),
        "kernel": platform.release(),
        "git_commit": commit.stdout.strip(),
        "git_dirty": bool(dirty.stdout.strip()),
        "loadavg_start": os.getloadavg(),
    }


def fmt(figure: dict[str, Any] | None, digits: int = 0) -> str:
    if not figure or figure.get("median") is None:
        return "-"
    return f"{figure['median']:.{digits}f} ({figure['min']:.{digits}f}-{figure['max']:.{digits}f})"


def print_table(report: dict[str, Any]) -> None:
    rows: list[tuple[str, str, str]] = []
    if ing := report.get("ingress"):
        rows += ingress.table_rows(ing, fmt)
    if wrk := report.get("worker"):
        rows += [
            (f"worker applied events/s ({wrk['distinct']} distinct)", fmt(wrk["applied_events_per_s"]), ""),
            (f"worker messages/s ({wrk['backlog']} msgs)", fmt(wrk["messages_per_s"]), ""),
            ("no-op tasks/s", fmt(wrk["noop_tasks_per_s"]), ""),
            ("worker / no-op (messages)", fmt(wrk["ratio"], 2), f">= {WORKER_TARGET_RATIO}"),
            ("worker RSS growth 25%->100% MB", fmt(wrk["rss_growth_25_to_100pct_mb"], 1), "~0"),
        ]
        if "small_backlog" in wrk:
            rows += [
                (
                    f"worker tree peak RSS MB, {wrk['small_backlog']} / {wrk['backlog']} msgs",
                    f"{fmt(wrk['rss_tree_peak_mb_small_backlog'], 1)} / {fmt(wrk['rss_tree_peak_mb_full_backlog'], 1)}",
                    "",
                ),
                ("  difference MB (4x the backlog)", fmt(wrk["rss_tree_peak_difference_mb"], 1), "~0"),
            ]
        for name, mem in wrk["memory"].items():
            rows.append(
                (
                    f"celery {name} peak RSS MB",
                    f"main {mem[next(iter(mem))]['main_peak_mb']}, child {mem[next(iter(mem))]['child_peak_mb']}",
                    "",
                )
            )
    if lag := report.get("lag"):
        rows += [
            (f"lag @ {lag['rate']}/s p50 ms (send->processed)", fmt(lag["lag_p50_ms"]), ""),
            (f"lag @ {lag['rate']}/s p99 ms", fmt(lag["lag_p99_ms"]), ""),
            ("lag run: http p99 ms", fmt(lag["http_p99_ms"], 1), ""),
        ]
    if cli := report.get("cli"):
        rows += cli_startup.table_rows(cli)
    if not rows:
        return
    width = max(len(r[0]) for r in rows) + 2
    print()
    print(f"{'figure':<{width}}{'median (min-max)':<34}target")
    print("-" * (width + 44))
    for name, value, target in rows:
        print(f"{name:<{width}}{value:<34}{target}")
    machine = report["machine"]
    print(
        f"\n{machine['nproc']} x {machine['cpu_model']}, load {machine['loadavg_start']} -> "
        f"{machine['loadavg_end']}; runs={report['settings']['runs']}"
    )


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 run, 5 s ingress, 4k backlog, 15 s lag (~1-2 min)")
    parser.add_argument("--runs", type=int, help="runs per figure (default 3; --quick 1)")
    parser.add_argument("--backlog", type=int, help="queued messages incl. duplicates (default 20000; --quick 4000)")
    parser.add_argument("--duplicates", type=float, default=0.2, help="share of duplicate svix-ids (default 0.2)")
    parser.add_argument("--lag-rate", type=float, default=200.0, help="events/s for the lag test (default 200)")
    parser.add_argument("--lag-seconds", type=float, help="lag test duration (default 60; --quick 15)")
    parser.add_argument(
        "--only",
        choices=("ingress", "worker", "lag", "cli", "capacity"),
        action="append",
        help="run only these parts",
    )
    parser.add_argument("--note", default="", help="free text stored with the results (e.g. machine load)")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "bench" / "results")
    ingress.add_arguments(parser)
    capacity.add_arguments(parser)
    args = parser.parse_args(argv)
    quick = args.quick
    args.runs = args.runs or (1 if quick else 3)
    ingress.defaults(args)
    args.backlog = args.backlog or (4000 if quick else 20000)
    args.lag_seconds = args.lag_seconds or (15.0 if quick else 60.0)
    args.only = args.only or ["ingress", "worker", "lag", "cli", "capacity"]
    return args


@contextmanager
def environment() -> Iterator[Harness]:
    with ExitStack() as stack:
        db_url = stack.enter_context(temporary_database())
        index = stack.enter_context(redis_db_index())
        log_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="clerk-sync-bench-")))
        h = Harness(db_url, f"{REDIS_BASE_URL}/{index}", log_dir)
        try:
            yield h
        except BaseException as exc:
            keep = Path(tempfile.mkdtemp(prefix="clerk-sync-bench-logs-"))
            for path in log_dir.iterdir():
                if path.suffix == ".log":
                    shutil.copy(path, keep / path.name)
            ending = "stopped" if isinstance(exc, SystemExit | KeyboardInterrupt) else "failed"
            log(f"{ending}; process logs kept in {keep}")
            raise
        finally:
            h.stop_all()


def exit_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C: the processes started are stopped, the database and the Redis
    db index given back (a killed run used to leave its throwaway database behind)."""
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    exit_on_sigterm()
    began = time.monotonic()
    report: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "note": args.note,
    }
    with environment() as h:
        report["machine"] = machine_info(h)
        log(f"database {h.db_url.rsplit('/', 1)[1]}, redis {h.redis_url}, logs {h.log_dir}")
        if "ingress" in args.only:
            report["ingress"] = ingress.run(h, args)
        if "worker" in args.only:
            report["worker"] = bench_worker(h, args)
        if "lag" in args.only:
            report["lag"] = bench_lag(h, args)
        if "cli" in args.only:
            report["cli"] = cli_startup.bench(h.env, rounds=5 if args.quick else 15)
        if "capacity" in args.only:
            report["capacity"] = capacity.bench_capacity(h, args)
        report["machine"]["loadavg_end"] = os.getloadavg()
    report["elapsed_seconds"] = round(time.monotonic() - began, 1)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(report, indent=2, default=str)
    stamp = dt.datetime.now().strftime("%Y-%m-%d-%H%M%S")
    (args.out_dir / f"results-{stamp}.json").write_text(text)
    (args.out_dir / "latest.json").write_text(text)
    print_table(report)
    if "capacity" in report:
        capacity.print_capacity(report["capacity"])
    print(f"\nwritten: {args.out_dir / f'results-{stamp}.json'} and {args.out_dir / 'latest.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
