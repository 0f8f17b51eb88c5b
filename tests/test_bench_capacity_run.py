"""`make bench`'s capacity mode run end to end on a tiny ramp: the three pipelines start, every step is
measured, each gets a knee, both ratios are printed, and every pipeline's tables equal the reference
model. The references are judged by that last check as much as clerk-sync is: a plain or floor
pipeline that applied events wrongly would make any ratio against it meaningless.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
PIPELINES = ("clerk-sync", "plain", "floor")


@pytest.fixture(scope="module")
def capacity_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str]:
    """One `bench.run --only capacity` on a two-second ramp at 50/s: (its capacity report, its output)."""
    out_dir = tmp_path_factory.mktemp("bench")
    argv = [sys.executable, "-m", "bench.run", "--only", "capacity", "--quick", "--out-dir", str(out_dir)]
    argv += ["--capacity-start", "50", "--capacity-max", "55", "--step-seconds", "2", "--light-seconds", "2"]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads((out_dir / "latest.json").read_text())["capacity"], done.stdout


def test_each_pipeline_gets_a_knee_and_both_ratios_are_printed(capacity_run):
    report, output = capacity_run
    assert set(report["knees"]) == set(PIPELINES)
    assert all(knee is not None and knee >= 20.0 for knee in report["knees"].values())
    knees = report["knees"]
    assert report["ratio_to_plain"] == round(knees["clerk-sync"] / knees["plain"], 2)
    assert report["ratio_to_floor"] == round(knees["clerk-sync"] / knees["floor"], 2)
    assert f"clerk-sync / plain {report['ratio_to_plain']} (>= 2.0)" in output
    assert f"/ floor {report['ratio_to_floor']} (>= 0.6)" in output


def test_every_pipelines_tables_equal_the_reference_model(capacity_run):
    report, _ = capacity_run
    assert report["tables_equal_reference_model"] == dict.fromkeys(PIPELINES, True)


def test_every_step_is_measured_with_the_cpu_of_each_part(capacity_run):
    report, _ = capacity_run
    for name in PIPELINES:
        light = report["light"][name]
        assert light["rate"] == 20.0
        assert light["refused"] == 0
        assert light["lost"] == 0
        assert report["steps"][name], f"{name} ran no step of the ramp"
        for step in [light, *report["steps"][name]]:
            assert {"postgres backends", "redis-server (shared)", "sender", "web"} <= set(step["cpu_cores"])
    assert {"worker", "beat"} <= set(report["light"]["clerk-sync"]["cpu_cores"])
    assert "consumer" in report["light"]["floor"]["cpu_cores"]
    assert "clerk-sync" in report["cpu_cores_at_clerk_sync_knee"]
