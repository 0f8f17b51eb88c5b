"""`make bench` capacity mode: the rate each pipeline holds, side by side, in one run (issue 19).

Three pipelines on the same Redis and Postgres, each started as it would run:

- **clerk-sync**: the Procfile's ``web``, ``worker`` and ``beat`` commands, default settings;
- **plain** (bench/plain.py): the same web server verifying and LPUSHing (bench/reference_web.py),
  one consumer that applies one event per transaction;
- **floor** (bench/floor.py): the same ingress, one consumer that takes what is waiting (up to a
  batch) and applies it with one multi-row upsert per table in one transaction.

Traffic is a realistic Clerk history (devkit/history.py: 35 % user.updated, 22 % membership
created, ... in Clerk's order, no duplicates), user bodies padded to a real user's size, posted by
16 sender threads at a steady open-loop rate. Each pipeline first gets a light step (20 events/s),
then steps from ``--capacity-start`` up by x1.26 (three steps: x2), interleaved with the other pipelines at each rate,
until a rate fails twice in a row: p99 lag over 250 ms, an event lost or refused, or the sender
short of the rate. A pipeline that fails the first rate steps down the same grid until one holds.
Lag is the event's ``processed_at`` (Postgres ``clock_timestamp()`` as its ledger row is finished,
just before the commit) minus the wall-clock time its 2xx reached the sender, floored at 0. The
knee is the highest rate that held. CPU is read from /proc for every process of each pipeline
(web, worker and beat trees or consumer, the Postgres backends of the benchmark's database,
redis-server, which other users of this machine share, and the benchmark's own process, whose
sender threads post the load) over each step.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from bench.events import _GOOGLE_ACCOUNT, _PHONE, sign
from bench.load import achieved_rate, send_steady
from bench.procs import Started, spawn, tree
from bench.reference_db import DDL
from devkit.history import Event, realistic_history
from devkit.services import free_port

ROOT = Path(__file__).resolve().parents[1]
HOLD_P99_MS = 250.0
# About x1.25 a step, and exactly x2 in three: knees are compared as ratios of rates on this grid,
# and with 1.25 three steps are 1.95 (a pipeline twice as fast as another could never read 2.0).
STEP_FACTOR = 2 ** (1 / 3)
LIGHT_RATE = 20.0
SENDERS = 16
# The share of a step's rate the senders must reach for the step to count.
SENDER_KEPT_RATE = 0.95
PIPELINES = ("clerk-sync", "plain", "floor")
CLK_TCK = os.sysconf("SC_CLK_TCK")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("capacity (--only capacity)")
    group.add_argument("--capacity-start", type=float, default=25.0, help="first rate of the ramp (default 25/s)")
    group.add_argument("--capacity-max", type=float, default=6000.0, help="stop the ramp here (default 6000/s)")
    group.add_argument("--step-seconds", type=float, help="seconds per step (default 10; --quick 5)")
    group.add_argument("--light-seconds", type=float, help="seconds of the 20/s light step (default 30; --quick 10)")
    group.add_argument(
        "--pipelines", default=",".join(PIPELINES), help="which to ramp, comma-separated (default all three)"
    )
    group.add_argument(
        "--capacity-senders",
        type=int,
        default=SENDERS,
        help=f"sender threads, one keep-alive connection each, for every pipeline alike (default {SENDERS})",
    )


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


# --------------------------------------------------------------------------- processes


def procfile() -> dict[str, str]:
    """The Procfile's commands by process name."""
    commands = {}
    for line in (ROOT / "Procfile").read_text().splitlines():
        if ":" in line and not line.lstrip().startswith("#"):
            name, command = line.split(":", 1)
            # Callers add their own `exec`.
            commands[name.strip()] = command.strip().removeprefix("exec ")
    return commands


def web_command(app: str) -> list[str]:
    """The Procfile's ``web`` command serving ``app`` instead of clerk-sync's ingress."""
    command = procfile()["web"]
    if "deploy/web.py" not in command:
        raise SystemExit(f"bench: the Procfile's web command no longer runs deploy/web.py: {command}")
    return ["sh", "-c", f"exec {command} --app {app}"]


@dataclass
class Pipeline:
    """One pipeline's processes, where to post, and where its ledger is."""

    name: str
    url: str
    ledger: str
    procs: dict[str, Started]
    history: Iterator[Event]
    steps: list[dict[str, Any]] = field(default_factory=list)
    sent: list[Event] = field(default_factory=list)
    senders: int = SENDERS
    knee: float | None = None
    done: bool = False


def _wait_ready(proc: Started) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited:\n{proc.log()[-3000:]}")
        if re.search(r"\bready\b", proc.log()):
            return
        time.sleep(0.1)
    raise RuntimeError(f"{proc.name} not ready")


def start_pipeline(h: Any, name: str, seed: int) -> Pipeline:
    """Start one pipeline's processes with the harness's environment."""
    port = free_port()
    env = {**h.env, "HOST": "127.0.0.1", "PORT": str(port)}
    url = f"http://127.0.0.1:{port}"
    procs: dict[str, Started] = {}

    def start(role: str, argv: list[str], extra: dict[str, str] | None = None) -> Started:
        extra = dict(extra or {})
        cwd = Path(extra.pop("_CWD", ROOT))
        label = name.replace("/", "_")
        proc = spawn(f"{label}-{role}", argv, env={**env, **extra}, cwd=cwd, log_dir=h.log_dir)
        h.started.append(proc)
        procs[role] = proc
        return proc

    if name.startswith("clerk-sync"):
        # "clerk-sync@PATH": another checkout of clerk-sync (say, the commit before a change),
        # on the same database, with a queue of its own: to compare two versions in one run.
        root = Path(name.partition("@")[2] or ROOT)
        commands = procfile()
        variant = {"PYTHONPATH": str(root), "CLERK_SYNC_QUEUE": f"clerk-events-{abs(hash(str(root))) % 10**6}"}
        env.update(variant)
        web = start("web", ["sh", "-c", "exec " + commands["web"]], {"_CWD": str(root)})
        worker = start("worker", ["sh", "-c", "exec " + commands["worker"]], {"_CWD": str(root)})
        beat_schedule = {"CELERY_BEAT_SCHEDULE": str(h.log_dir / f"beat-{len(h.started)}"), "_CWD": str(root)}
        start("beat", ["sh", "-c", f"exec {commands['beat']}"], beat_schedule)
        _wait_ready(worker)
        ledger = "webhook_events"
    else:
        schema = f"bench_{name}"
        with psycopg.connect(h.db_url, autocommit=True) as conn:
            conn.execute(DDL.format(schema=schema))
        reference = {"REF_QUEUE": f"bench-{name}", "REF_SCHEMA": schema}
        web = start("web", web_command("bench.reference_web:app"), reference)
        start("consumer", [sys.executable, "-m", f"bench.{name}"], reference)
        ledger = f"{schema}.ledger"
    web.wait_healthy(url, timeout=60)
    history = _events(seed, prefix=f"{name[:2]}{seed}")  # entity ids of its own
    return Pipeline(name=name, url=url, ledger=ledger, procs=procs, history=history)


def _events(seed: int, *, prefix: str) -> Iterator[Event]:
    """An endless realistic history, generated in chunks, user bodies padded to a real size."""
    rng = random.Random(seed)
    chunk = 0
    while True:
        chunk += 1
        for event in realistic_history(rng, 5000, prefix=f"{prefix}x{chunk}"):
            data = event.payload["data"]
            if event.type in ("user.created", "user.updated"):
                data["external_accounts"] = [_GOOGLE_ACCOUNT]
                data["phone_numbers"] = [*data.get("phone_numbers", []), _PHONE]
            yield event


# --------------------------------------------------------------------------- CPU


def _cpu_ticks(pid: int) -> int:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0
    return int(fields[11]) + int(fields[12])  # utime + stime


class CpuMeter:
    """CPU seconds used by groups of processes between ``start()`` and ``stop()``."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self.groups = groups
        self.before: dict[int, int] = {}

    def start(self) -> None:
        self.began = time.monotonic()
        self.before = {pid: _cpu_ticks(pid) for pids in self.groups.values() for pid in pids}

    def stop(self) -> dict[str, float]:
        """Cores used by each group on average (1.0: one core busy all the time)."""
        wall = time.monotonic() - self.began
        return {
            name: round(sum(max(0, _cpu_ticks(pid) - self.before.get(pid, 0)) for pid in pids) / CLK_TCK / wall, 3)
            for name, pids in self.groups.items()
        }


def cpu_groups(h: Any, pipeline: Pipeline) -> dict[str, list[int]]:
    groups = {role: tree(proc.pid) for role, proc in pipeline.procs.items()}
    with psycopg.connect(h.db_url, autocommit=True) as conn:
        groups["postgres backends"] = [
            row[0]
            for row in conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        ]
    groups["redis-server (shared)"] = [int(h.redis.info("server")["process_id"])]
    # The benchmark itself: its sender threads take their share of the same cores.
    groups["sender"] = [os.getpid()]
    return groups


# --------------------------------------------------------------------------- load and lag


def _processed_at(h: Any, ledger: str, svix_ids: list[str]) -> dict[str, float]:
    with psycopg.connect(h.db_url, autocommit=True) as conn:
        rows = conn.execute(
            f"SELECT svix_id, extract(epoch FROM processed_at)::float8 FROM {ledger} "  # noqa: S608 - our table names
            "WHERE svix_id = ANY(%s) AND processed_at IS NOT NULL",
            (svix_ids,),
        ).fetchall()
    return dict(rows)


def run_step(h: Any, pipeline: Pipeline, rate: float, seconds: float) -> dict[str, Any]:
    """Post ``rate`` events/s for ``seconds`` and measure each event's lag; whether the rate held."""
    count = max(1, round(rate * seconds))
    events = [next(pipeline.history) for _ in range(count)]
    pipeline.sent.extend(events)
    signed = [(event, sign(event.body, event.svix_id)) for event in events]
    meter = CpuMeter(cpu_groups(h, pipeline))
    meter.start()
    results = send_steady(pipeline.url, signed, rate, senders=pipeline.senders)
    accepted = [(i, sent, latency) for i, (sent, latency, status) in enumerate(results) if 200 <= status < 300]
    # svix-id -> wall-clock time its 2xx reached the sender
    answered = {events[i].svix_id: sent + latency for i, sent, latency in accepted}
    refused = count - len(answered)
    # Drain: everything accepted, or no progress for 15 s.
    seen: dict[str, float] = {}
    last_progress = time.monotonic()
    while len(seen) < len(answered) and time.monotonic() - last_progress < 15:
        time.sleep(0.1)
        found = _processed_at(h, pipeline.ledger, [s for s in answered if s not in seen])
        if found:
            seen.update(found)
            last_progress = time.monotonic()
    cpu = meter.stop()
    lags = [max(0.0, (seen[s] - answered[s]) * 1000) for s in seen]
    step = {
        "rate": round(rate, 1),
        "events": count,
        "achieved_rate": round(achieved_rate(results), 1),
        "refused": refused,
        "lost": len(answered) - len(seen),
        "lag_p50_ms": round(percentile(lags, 50), 1),
        "lag_p99_ms": round(percentile(lags, 99), 1),
        "lag_max_ms": round(max(lags, default=float("nan")), 1),
        # How long the senders waited for each 2xx (not part of the lag, which starts at the 2xx).
        "http_p99_ms": round(percentile([latency * 1000 for _, _, latency in accepted], 99), 1),
        "cpu_cores": cpu,
    }
    step["holds"] = holds(step)
    return step


def holds(step: dict[str, Any]) -> bool:
    """A rate holds: p99 lag under 250 ms, nothing refused or lost, and the sender kept the rate
    (a step the senders could not offer in full says nothing about that rate)."""
    return not why_not(step)


def why_not(step: dict[str, Any]) -> list[str]:
    """What kept a step from holding, in words for its log line; empty when it held."""
    reasons = []
    if step["lag_p99_ms"] >= HOLD_P99_MS:
        reasons.append(f"p99 lag {step['lag_p99_ms']:.0f} ms")
    if step["lost"]:
        reasons.append(f"{step['lost']} lost")
    if step["refused"]:
        reasons.append(f"{step['refused']} refused")
    if step["achieved_rate"] < SENDER_KEPT_RATE * step["rate"]:
        reasons.append(f"sender short ({step['achieved_rate']:.0f} of {step['rate']:.0f}/s)")
    return reasons


# --------------------------------------------------------------------------- the ramp


def ramp(start: float, stop: float) -> list[float]:
    rates, rate = [], start
    while rate <= stop:
        rates.append(round(rate, 1))
        rate *= STEP_FACTOR
    return rates


def bench_capacity(h: Any, args: argparse.Namespace) -> dict[str, Any]:
    step_seconds = args.step_seconds or (5.0 if args.quick else 10.0)
    light_seconds = args.light_seconds or (10.0 if args.quick else 30.0)
    names = [name.strip() for name in args.pipelines.split(",") if name.strip()]
    unknown = {name for name in names if name.partition("@")[0] not in PIPELINES}
    if unknown:
        raise SystemExit(f"bench: unknown pipeline(s) {', '.join(sorted(unknown))}; choose from {', '.join(PIPELINES)}")
    h.reset()
    pipelines = [start_pipeline(h, name, seed=index + 1) for index, name in enumerate(names)]
    for pipeline in pipelines:
        pipeline.senders = args.capacity_senders
    for pipeline in pipelines:  # warm-up: imports, connections, caches
        run_step(h, pipeline, 50, 2)
    light = {}
    for pipeline in pipelines:
        light[pipeline.name] = run_step(h, pipeline, LIGHT_RATE, light_seconds)
        _report(pipeline.name, light[pipeline.name])
    for index, rate in enumerate(ramp(args.capacity_start, args.capacity_max)):
        active = [p for p in pipelines if not p.done]
        if not active:
            break
        shift = index % len(active)  # who goes first rotates from one rate to the next
        for pipeline in active[shift:] + active[:shift]:
            if _attempt(h, pipeline, rate, step_seconds):
                pipeline.knee = rate
            else:
                pipeline.done = True
            time.sleep(1)
    for pipeline in pipelines:
        if pipeline.knee is None and light[pipeline.name]["holds"]:
            _step_down(h, pipeline, args.capacity_start, step_seconds)
    converged = {pipeline.name: converges(h, pipeline) for pipeline in pipelines}
    for pipeline in pipelines:
        for proc in pipeline.procs.values():
            proc.stop()
    summary = _summary(pipelines, light, step_seconds=step_seconds, light_seconds=light_seconds)
    summary["tables_equal_reference_model"] = converged
    summary["senders"] = args.capacity_senders
    return summary


def _attempt(h: Any, pipeline: Pipeline, rate: float, step_seconds: float) -> bool:
    """Whether ``pipeline`` holds ``rate``. One hiccup of a shared machine fails a p99 over a few
    hundred events: a rate is given up only when it fails twice in a row."""
    step = run_step(h, pipeline, rate, step_seconds)
    pipeline.steps.append(step)
    _report(pipeline.name, step)
    if not step["holds"]:
        time.sleep(1)
        step = run_step(h, pipeline, rate, step_seconds)
        step["second_try"] = True
        pipeline.steps.append(step)
        _report(pipeline.name, step)
    return bool(step["holds"])


def _step_down(h: Any, pipeline: Pipeline, start: float, step_seconds: float) -> None:
    """A pipeline that failed the ramp's first rate: down the same grid until a rate holds, so a
    ``--capacity-start`` above a slow machine's knee still gives a knee (the light rate at worst)."""
    rate = start / STEP_FACTOR
    while rate > LIGHT_RATE:
        log(f"capacity {pipeline.name}: below the ramp's first rate; trying {rate:.0f}/s")
        if _attempt(h, pipeline, round(rate, 1), step_seconds):
            pipeline.knee = round(rate, 1)
            return
        time.sleep(1)
        rate /= STEP_FACTOR
    pipeline.knee = LIGHT_RATE


def converges(h: Any, pipeline: Pipeline) -> bool:
    """Whether the pipeline's tables hold what the reference model says its events give."""
    from sqlalchemy import create_engine
    from sqlalchemy.orm import Session

    from devkit.history import columns_present, reference_tables, restricted, snapshot

    schema = "public" if pipeline.ledger == "webhook_events" else pipeline.ledger.split(".")[0]
    url = h.db_url.replace("postgresql://", "postgresql+psycopg://", 1)
    engine = create_engine(url, connect_args={"options": f"-c search_path={schema}"})
    try:
        with Session(engine) as session:
            # plain and floor keep the contract's first columns and tables only: compare those.
            columns_of = columns_present(session)
            actual = snapshot(session, columns_of)
    finally:
        engine.dispose()
    expected = restricted(reference_tables(pipeline.sent), columns_of)
    # Another pipeline may share the tables (two versions of clerk-sync): compare this one's rows.
    mine = {table: {key: actual[table].get(key) for key in rows} for table, rows in expected.items()}
    if mine != expected:
        wrong = sum(mine[t][k] != expected[t][k] for t in expected for k in expected[t])
        log(f"capacity {pipeline.name}: {wrong} rows differ from the reference model")
        return False
    return True


def _report(name: str, step: dict[str, Any]) -> None:
    cpu = ", ".join(f"{group} {cores:.2f}" for group, cores in step["cpu_cores"].items())
    log(
        f"capacity {name:>10} @ {step['rate']:>6.0f}/s: "
        f"{'holds' if step['holds'] else 'FAILS: ' + ', '.join(why_not(step)) + ';'}  "
        f"lag p50 {step['lag_p50_ms']:.0f} p99 {step['lag_p99_ms']:.0f} ms, "
        f"http p99 {step['http_p99_ms']:.0f} ms, sent {step['achieved_rate']:.0f}/s, "
        f"refused {step['refused']}, lost {step['lost']}; cpu {cpu}"
    )


def _summary(
    pipelines: list[Pipeline], light: dict[str, Any], *, step_seconds: float, light_seconds: float
) -> dict[str, Any]:
    knees = {p.name: p.knee for p in pipelines}
    ours = knees.get("clerk-sync")

    def ratio(other: str) -> float | None:
        theirs = knees.get(other)
        return round(ours / theirs, 2) if ours and theirs else None

    at_knee = {}
    for pipeline in pipelines:
        # The attempt that held, where the rate was tried twice.
        tried = [s for s in pipeline.steps if ours and s["rate"] == ours]
        step = next((s for s in tried if s["holds"]), tried[0] if tried else None)
        if step:
            at_knee[pipeline.name] = step["cpu_cores"]
    return {
        "measured_as": __doc__.split("\n\n", 1)[1] if __doc__ else "",
        "step_seconds": step_seconds,
        "light_seconds": light_seconds,
        "hold_p99_ms": HOLD_P99_MS,
        "knees": knees,
        "ratio_to_plain": ratio("plain"),
        "ratio_to_floor": ratio("floor"),
        "targets": {"ratio_to_plain": 2.0, "ratio_to_floor": 0.6, "light_p50_ms": 10, "light_p99_ms": 50},
        "light": light,
        "cpu_cores_at_clerk_sync_knee": at_knee,
        "steps": {p.name: p.steps for p in pipelines},
    }


def print_capacity(report: dict[str, Any]) -> None:
    print()
    print("capacity (knee: highest rate with p99 lag < 250 ms, nothing lost)")
    for name, knee in report["knees"].items():
        light = report["light"].get(name, {})
        print(
            f"  {name:<11} knee {knee or '-':>6} /s   light {LIGHT_RATE:.0f}/s: "
            f"p50 {light.get('lag_p50_ms', float('nan')):.1f} ms, p99 {light.get('lag_p99_ms', float('nan')):.1f} ms"
        )
    print(f"  clerk-sync / plain {report['ratio_to_plain']} (>= 2.0), / floor {report['ratio_to_floor']} (>= 0.6)")
    for name, cores in report["cpu_cores_at_clerk_sync_knee"].items():
        print(f"  cpu cores at clerk-sync's knee, {name}: " + ", ".join(f"{g} {c:.2f}" for g, c in cores.items()))
