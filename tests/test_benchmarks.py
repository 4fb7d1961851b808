"""The benchmark scripts are code: CI runs them on small settings so they cannot rot.

Only that they run, check their own work and write sane JSON is asserted here; how fast anything
is belongs to the benchmarks themselves (ratios measured in one process), never to a test threshold
that a busy CI machine would trip.
"""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_overhead_quick_runs_and_writes_json(tmp_path):
    # A fresh process, as a user runs it: its compile caches and timings start cold.
    out = tmp_path / "overhead.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.overhead", "--quick", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "| loop |" in proc.stdout

    result = json.loads(out.read_text())
    assert result["quick"] is True
    contenders = {"limit", "limit_fused_rng", "fit", "fit_bar"}
    for clock in ("wall", "cpu"):
        summary = result[clock]
        assert set(summary["ratio_of_medians"]) == contenders
        for table in ("ratio_of_medians", "median_paired_ratio", "median_per_step_us"):
            for name, value in summary[table].items():
                assert math.isfinite(value) and value > 0, (clock, table, name, value)
        for name, times in summary["times_s"].items():
            assert len(times) == result["settings"]["repeats"], (clock, name)
    for name, value in result["ratios"].items():
        assert math.isfinite(value) and value > 0, (name, value)
    assert all(math.isfinite(t) and t > 0 for t in result["first_call_s"].values())
    # The script refuses to time loops that do different work; the record says by how much they agree.
    tol = result["check"]["tolerances"]
    assert result["check"]["fit_vs_limit"]["elbo_rel"] <= tol["elbo_rel"]
    assert result["machine"]["cpu_count"] >= 1 and result["machine"]["jax"]
