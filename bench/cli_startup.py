"""How fast `clerk-sync --help` and `clerk-sync status` answer: issue 13's "well under half a second".

Each round runs the interpreter alone (``python -c pass``, the floor no command can beat),
``clerk-sync --help`` and ``clerk-sync status`` (against the bench's own database and Redis,
with a few ledger rows), interleaved so that a busy machine slows all three alike. Figures are
wall-clock seconds from spawn to exit: median and min-max over the rounds.

Standalone: ``python -m bench.cli_startup [--rounds N]`` makes its own database and Redis index;
``make bench`` runs it as the ``cli`` part (``--only cli``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "clerk-sync --help": ["clerk-sync", "--help"],
    "clerk-sync status": ["clerk-sync", "status"],
}
TARGET_SECONDS = 0.3  # "well under half a second"


def _seconds(argv: list[str], env: dict[str, str], cwd: str) -> float:
    began = time.perf_counter()
    result = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, check=False, timeout=60)
    elapsed = time.perf_counter() - began
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {result.returncode}: {result.stderr.decode()[-500:]}")
    return elapsed


def bench(env: dict[str, str], *, rounds: int = 15) -> dict[str, Any]:
    """Median and min-max start-up seconds of each command, rounds interleaved."""
    bin_dir = str(Path(sys.executable).parent)
    env = {**env, "PATH": f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"}
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    # An empty directory: the CLI reads ./.env, which must not be the checkout's.
    with tempfile.TemporaryDirectory(prefix="clerk-sync-bench-cli-") as cwd:
        for argv in COMMANDS.values():
            _seconds(argv, env, cwd)  # warm the page cache and .pyc files once
        for _ in range(rounds):
            for name, argv in COMMANDS.items():
                times[name].append(_seconds(argv, env, cwd))
    return {
        "rounds": rounds,
        "target_seconds": TARGET_SECONDS,
        "seconds": {
            name: {
                "median": round(statistics.median(values), 3),
                "min": round(min(values), 3),
                "max": round(max(values), 3),
            }
            for name, values in times.items()
        },
    }


def table_rows(report: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Rows for bench.run's table: (figure, median (min-max), target)."""
    rows = []
    for name, figure in report["seconds"].items():
        target = "(floor)" if name.startswith("python") else f"< {report['target_seconds']} s"
        rows.append((f"{name} s", f"{figure['median']:.3f} ({figure['min']:.3f}-{figure['max']:.3f})", target))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds (default 15)")
    args = parser.parse_args(argv)
    sys.path[:0] = [str(ROOT)]
    from devkit.services import REDIS_BASE_URL, redis_db_index, temporary_database

    with temporary_database() as db_url, redis_db_index() as index:
        env = {**os.environ, "DATABASE_URL": db_url, "REDIS_URL": f"{REDIS_BASE_URL}/{index}", "LOG_FORMAT": "json"}
        report = bench(env, rounds=args.rounds)
    print(json.dumps(report, indent=2))
    for row in table_rows(report):
        print(f"{row[0]:<28}{row[1]:<26}{row[2]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
