"""The main job, `python -m bbvi`, runs and finds the exact answers it prints."""

import re

import pytest

from bbvi import demo

pytestmark = pytest.mark.slow


def test_demo_runs_and_recovers_the_exact_regression_posterior(capsys):
    demo.main(["--no-progress"])
    out = capsys.readouterr().out
    for i in range(3):
        exact, full_rank, _ = map(float, re.search(rf"mean w\[{i}\]\s+(\S+)\s+(\S+)\s+(\S+)", out).groups())
        exact_sd, full_rank_sd, _ = map(
            float, re.search(rf"sd w\[{i}\]\s+(\S+)\s+(\S+)\s+(\S+)", out).groups()
        )
        assert abs(full_rank - exact) < 0.1 * exact_sd
        assert abs(full_rank_sd - exact_sd) < 0.1 * exact_sd
    assert "assignments recovered: 100%" in out
    assert "done in" in out
