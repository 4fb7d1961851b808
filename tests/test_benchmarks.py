"""The benchmark scripts are code: CI runs them on small settings so they cannot rot.

Only that they run, check their own work and write sane JSON is asserted here; how fast anything
is belongs to the benchmarks themselves (ratios measured in one process), never to a test threshold
that a busy CI machine would trip.
"""

import json
import math
import subprocess
import sys

import pytest

from tests._benchmark_runs import PNG_MAGIC, REPO, run_quick


@pytest.mark.slow
def test_overhead_quick_runs_and_writes_json(tmp_path):
    # Through the suite's entry point, which runs it in a fresh process.
    out = tmp_path / "overhead.json"
    proc = run_quick("overhead", tmp_path, entry_point=True)
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


ESTIMATOR_ROWS = {
    "continuous": [
        "reparam/analytic",
        "reparam/stl",
        "score/none",
        "score/loo",
        "score/optimal",
        "score/moving_average",
    ],
    "discrete": [
        "score/none",
        "score/loo",
        "score/optimal",
        "score/rao_blackwell",
        "score/moving_average",
        "relaxed(T=0.5)",
    ],
    "mixed": ["auto/none", "auto/loo", "auto/optimal", "auto/rao_blackwell", "auto/moving_average"],
}


def _clearly_below(low: dict, high: dict, sds: float = 4.0) -> bool:
    """Whether one total variance is below another by more than `sds` combined standard errors."""
    return high["total"] - low["total"] > sds * math.hypot(low["se"], high["se"])


@pytest.mark.slow
def test_estimators_quick_runs_and_writes_table_json_and_plot(tmp_path):
    proc = run_quick("estimators", tmp_path)
    table = (tmp_path / "estimators.md").read_text()
    assert "| configuration |" in table and table.strip() in proc.stdout
    assert (tmp_path / "estimators.png").read_bytes()[:8] == PNG_MAGIC

    result = json.loads((tmp_path / "estimators.json").read_text())
    assert result["quick"] is True and result["machine"]["jax"]
    assert {name: list(model["rows"]) for name, model in result["models"].items()} == ESTIMATOR_ROWS
    for name, model in result["models"].items():
        rows = model["rows"]
        for row_name, row in rows.items():
            where = (name, row_name)
            for point in ("init", "fitted"):
                variance = row["variance"][point]
                assert variance["finite"] and variance["total"] > 0 and variance["se"] > 0, where
                assert math.isfinite(variance["ratio_to_baseline"]), where
            for run in (row["fixed_steps"], row["budget"]):
                assert math.isfinite(run["elbo_last_10pct"]), where
                assert math.isfinite(run["elbo_accurate"]) and run["elbo_accurate_se"] > 0, where
            assert row["budget"]["steps"] >= 1 and row["time"]["median_per_step_us"] > 0, where
            assert len(row["fixed_steps"]["trace_block_means"]) >= 1, where
        assert rows[model["baseline_row"]]["variance"]["init"]["ratio_to_baseline"] == 1.0
        # The numbers measure what they say: a leave-one-out baseline cuts the score-function
        # variance, by far more than the measurement's own standard errors, on every model.
        loo = next(r for n, r in rows.items() if n.endswith("/loo"))
        for point in ("init", "fitted"):
            assert _clearly_below(loo["variance"][point], rows[model["baseline_row"]]["variance"][point]), (
                name,
                point,
            )
    continuous = result["models"]["continuous"]["rows"]
    assert _clearly_below(
        continuous["reparam/analytic"]["variance"]["init"], continuous["score/loo"]["variance"]["init"]
    )


def test_entry_point_lists_the_benchmarks_and_refuses_unknown_names():
    help_text = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--help"], cwd=REPO, capture_output=True, text=True
    )
    assert help_text.returncode == 0
    for name in ("compare", "accuracy", "scale", "overhead", "estimators"):
        assert name in help_text.stdout
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "nonesuch"], cwd=REPO, capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "unknown benchmark(s) ['nonesuch']" in proc.stderr
