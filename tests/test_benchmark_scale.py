"""The scale benchmark runs, checks its own work and writes sane JSON, markdown and a plot.

How fast anything is belongs to the benchmark (ratios in one process), never to a test threshold.
"""

import json
from pathlib import Path

import pytest

from tests._benchmark_runs import PNG_MAGIC, positive, run_quick


@pytest.mark.slow
def test_scale_quick_runs_and_writes_table_json_and_plot(tmp_path):
    proc = run_quick("scale", tmp_path)
    check_outputs(tmp_path, proc.stdout)


def check_outputs(out: Path, stdout: str) -> None:
    """What a quick run must have written to `out` and printed."""
    table = (out / "scale.md").read_text()
    assert "| d | S |" in table and "| N |" in table and "| over | P |" in table
    assert table.strip() in stdout
    assert (out / "scale.png").read_bytes()[:8] == PNG_MAGIC

    result = json.loads((out / "scale.json").read_text())
    settings = result["settings"]
    assert result["quick"] is True and result["checks_passed"] is True and result["machine"]["jax"]

    # Latent dimension: every d, fit and the limit timed, the same iterates, memory measured.
    cases = result["dim"]["cases"]
    assert [(c["dim"], c["num_samples"]) for c in cases] == [
        (d, s) for s in settings["dim_samples"] for d in settings["dims"]
    ]
    for c in cases:
        for name in ("limit", "fit", "fit_1_step"):
            assert positive(c["median_per_step_us"][name]), (c["dim"], name)
            assert len(c["times_s"][name]) == settings["repeats"]
        assert positive(c["ratio_of_medians"]["fit"]) and positive(c["median_paired_ratio"]["fit"])
        assert c["check"]["fit"]["elbo_rel"] <= 1e-4, c["check"]
        for name in ("limit", "fit"):
            memory = c["memory"][name]
            assert memory["total"] > 0 and memory["temp"] >= 0, (c["dim"], name, memory)
        assert positive(c["memory_ratio"])
        if result["dim"]["sample_chunk_size_supported"] and c["num_samples"] > 1:
            assert c["memory"]["fit_sample_chunk_1"]["total"] > 0

    # Data size: the minibatch fit against the limit at every N (same minibatches, iterates checked).
    cases = result["data"]["cases"]
    assert [c["num_data"] for c in cases] == settings["data_sizes"]
    for c in cases:
        expected = {"fit_minibatch", "limit_fit_sampler"}
        if c["num_data"] <= settings["full_data_max"]:
            expected.add("fit_full_data")
        assert set(c["median_per_step_us"]) == expected, c["num_data"]
        assert all(positive(v) for v in c["median_per_step_us"].values()), c["median_per_step_us"]
        assert c["check_fit_vs_limit_fit_sampler"]["elbo_rel"] <= 1e-4
        assert all(c["memory"][name]["total"] > 0 for name in expected)

    # Many problems: vmap and loop at every P, over keys and data sets, no recompiles while timing.
    cases = result["many"]["cases"]
    assert [(c["mode"], c["problems"]) for c in cases] == [
        (m, p) for m in ("keys", "data_sets") for p in settings["problems"]
    ]
    for c in cases:
        assert all(positive(v) for v in c["median_per_problem_ms"].values())
        assert positive(c["loop_over_vmap"]) and c["compiles_while_timing"] == 0
        assert c["check"]["elbo_rel"] <= 1e-4
    best = result["many"]["best_of_restarts"]
    assert 0 <= best["best"] < max(settings["problems"])
    assert best["best_tail_elbo"] >= best["worst_tail_elbo"]
