"""benchmarks/accuracy.py runs in CI on small settings, checks its own work and writes sane output.

What is fast or accurate is the benchmark's to report; here only that it runs, that its fairness
checks (its loop is `bbvi.fit`, its NumPyro loop is `svi.run`, both models state one density)
passed, and that every number it writes is where it should be and finite.
"""

import json
import math

import pytest

from bbvi.models import inference_gym, posteriordb
from bbvi.models._data import DataNotFoundError
from benchmarks import accuracy
from tests._benchmark_runs import PNG_MAGIC, positive, run_quick

QUICK_CASES = accuracy.QUICK.cases
# Every configuration of the quick programs, named as the benchmark names them; bbvi's default among them.
CONFIGS = {
    accuracy.config_name(p, lr, cosine)
    for p in accuracy.QUICK.programs
    for lr, cosine in [(lr, False) for lr in p.constant_lrs] + [(lr, True) for lr in p.cosine_lrs]
}


def _data_present() -> bool:
    try:
        posteriordb.load(QUICK_CASES[0])
        inference_gym.load(QUICK_CASES[1])
    except DataNotFoundError:
        return False
    return True


@pytest.mark.slow
def test_accuracy_quick_runs_and_writes_table_json_and_plot(tmp_path):
    if not _data_present():
        pytest.skip("bbvi's reference data (posteriordb_dev.json, inference_gym_exact.json) are absent")
    proc = run_quick("accuracy", tmp_path)
    table = (tmp_path / "accuracy.md").read_text()
    assert "| case | d | optimum (ELBO) |" in table and table.strip() in proc.stdout
    assert (tmp_path / "accuracy.png").read_bytes()[:8] == PNG_MAGIC

    result = json.loads((tmp_path / "accuracy.json").read_text())
    assert result["quick"] is True and result["machine"]["jax"] and not result["skipped"]
    assert list(result["cases"]) == list(QUICK_CASES)

    # The fairness checks ran and passed (the script raises otherwise; the record says by how much).
    fit_check, svi_check = result["checks"]["fit_vs_loop"], result["checks"]["svi_run_vs_loop"]
    assert (
        fit_check["passed"] and fit_check["max_abs_diffs"]["elbo_rel"] <= fit_check["tolerances"]["elbo_rel"]
    )
    assert svi_check["passed"] and svi_check["max_rel_diff_losses"] <= 1e-4

    assert accuracy.DEFAULT_CONFIG in CONFIGS and len(QUICK_CASES) == 2
    expected = CONFIGS | {"numpyro_default", "reference (warm start)"}
    steps = result["settings"]["num_steps"]
    for name, case in result["cases"].items():
        assert set(case["configs"]) == expected, name
        assert case["numpyro"]["mc_check"]["passed"], name
        optimum = case["optimum"]
        assert math.isfinite(optimum["value"]) and optimum["best_point_elbo_se"] > 0, name
        assert optimum["value"] <= case["log_Z"] + 4 * optimum["best_point_elbo_se"] + 0.05, name
        for config_name, c in case["configs"].items():
            where = (name, config_name)
            assert math.isfinite(c["final_elbo"]) and c["final_elbo_se"] > 0, where
            # A constant step: the ELBO along the run; a decayed one: at the end of a run of each length.
            lengths = [max(1, round(f * steps)) for f in result["settings"]["decay_fractions"]]
            decayed = c["schedule"] == "cosine" and config_name != "reference (warm start)"
            assert c["curve_steps"] == (lengths if decayed else result["checkpoints"]), where
            assert len(c["curve_elbo"]) == len(c["curve_steps"]), where
            if c["grad_evals"] is None:
                assert c["steps"] is None and c["wall_s"] is None, where
            else:
                assert 1 <= c["steps"] <= steps and c["grad_evals"] == c["steps"] * c["S"], where
                assert positive(c["wall_s"]), where
            assert positive(c["run_wall_s"]), where
        for family in ("mean_field", "full_rank", "flow"):
            for config_name in result["final_configs"]:
                e = case["final"][family][config_name]
                where = (name, family, config_name)
                if not e["valid"]:  # a diverged fit is reported as such, not as numbers
                    assert not math.isfinite(e["elbo"]) or e["elbo"] > case["log_Z"], where
                    continue
                assert e["max_mean_error_sds"] >= 0 and math.isfinite(e["max_mean_error_sds"]), where
                assert 0 < e["sd_ratio_min"] <= e["sd_ratio_max"] < math.inf, where
                assert math.isfinite(e["gap_to_log_Z"]) and e["elbo_se"] > 0, where

    ranked = [r["config"] for r in result["ranking"]]
    assert set(ranked) == expected - {"reference (warm start)"}
    assert result["best_mean_field_config"] == next(c for c in ranked if c != "numpyro_default")
    compared = result["settings"]["compare_with"]
    assert result["final_configs"][0] == accuracy.DEFAULT_CONFIG and compared in result["final_configs"]
    summary = result["summary"]
    assert summary["default_vs_numpyro"]["cases"] == 2
    assert summary["default_vs_numpyro"]["ours"] == accuracy.DEFAULT_CONFIG
    assert summary["compare_with_vs_numpyro"]["ours"] == compared
    for config_name, richer in summary["richer_families"].items():
        assert richer["fits"] == 3 * 2, config_name  # three families on each of the two cases
        assert richer["within_band_of_best"] + len(richer["diverged"]) <= richer["fits"], config_name
