"""The comparison benchmark (`benchmarks.compare`) runs, checks its own work and writes sane results.

Only that it runs and records what it says is asserted: how fast anything is belongs to the
benchmark's own ratios, never to a test threshold that a busy CI machine would trip.
"""

import json
import math

import pytest

from tests._benchmark_runs import PNG_MAGIC, positive, run_quick

CONTENDERS = {
    "limit",
    "limit_fused_rng",
    "fit",
    "fit_bar",
    "numpyro_run",
    "numpyro_run_bar",
    "numpyro_scan",
    "blackjax",
}


@pytest.mark.slow
def test_compare_quick_runs_checks_its_work_and_writes_table_json_and_plot(tmp_path):
    proc = run_quick("compare", tmp_path)
    table = (tmp_path / "compare.md").read_text()
    assert "| contender |" in table and "| goal |" in table and table.strip() in proc.stdout
    assert (tmp_path / "compare.png").read_bytes()[:8] == PNG_MAGIC

    result = json.loads((tmp_path / "compare.json").read_text())
    assert result["quick"] is True and result["machine"]["jax"] and result["blackjax_version"]
    assert set(result["regimes"]) == {"tiny", "compute"}
    for name, regime in result["regimes"].items():
        steps, repeats = regime["regime"]["num_steps"], regime["regime"]["repeats"]
        for clock in ("wall", "cpu"):
            summary = regime[clock]
            assert set(summary["median_per_step_us"]) == CONTENDERS, (name, clock)
            for table_name in (
                "median_per_step_us",
                "ratio_of_medians",
                "median_paired_ratio",
                "first_call_s",
                "marginal_per_step_us",
            ):
                assert set(summary[table_name]) == CONTENDERS, (name, clock, table_name)
                for contender, value in summary[table_name].items():
                    assert positive(value), (name, clock, table_name, contender, value)
            assert set(summary["compile_s"]) == CONTENDERS, (name, clock)
            assert all(math.isfinite(v) and v >= 0 for v in summary["compile_s"].values()), (name, clock)
            assert set(summary["per_call_s"]) == {"fit", "fit_bar", "numpyro_run", "numpyro_run_bar"}
            for contender, times in summary["times_s"].items():
                assert len(times) == repeats and all(t > 0 for t in times), (name, clock, contender)
        for contender, elbo in regime["elbo"].items():
            assert math.isfinite(elbo["first"]) and math.isfinite(elbo["mean_last_10pct"]), (name, contender)
        assert regime["fit_one_step_s"]["wall"]["fit"] and steps >= 2

        # The script refuses to time contenders that do different work; the record says by how much.
        check = regime["check"]
        assert check["fit_vs_limit"]["elbo_rel"] <= check["tolerances"]["elbo_rel"], name
        same = check["same_objective"]
        assert same["passed"] and set(same["elbo_at_fit_params"]) == {"bbvi", "numpyro", "blackjax"}
        assert all(d <= same["tolerance"] for d in same["abs_diff_to_bbvi"].values()), name

        # Compilations are counted: the scans and fit compile once, svi.run on every call.
        compiles = regime["compilations_per_steady_call"]
        assert compiles["limit"] == compiles["fit"] == compiles["fit_bar"] == compiles["blackjax"] == 0
        assert compiles["numpyro_run"] >= 1
        assert regime["fit_repeat_compiles"]["compilations"] == 0, name

        for goal in regime["goals"].values():
            assert isinstance(goal["met"], bool) and isinstance(goal["met_cpu"], bool), (name, goal)
            assert math.isfinite(goal["wall"]) and math.isfinite(goal["cpu"]), (name, goal)
