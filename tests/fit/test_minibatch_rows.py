"""fit's minibatch rows: distinct, uniform, in random order, at a cost independent of the data size."""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest

from bbvi.fit import sample_rows


@pytest.mark.parametrize("num_rows", [300, 1030, 5000])
def test_sample_rows_draws_distinct_rows_uniformly(num_rows):
    # 300 rows take jax.random.choice (N <= 4B); the others the draw-and-keep-distinct path, at
    # 1030 rows with many repeats among its 2B draws.
    batch, draws = 256, 400
    rows = np.asarray(
        jax.jit(jax.vmap(lambda k: sample_rows(k, num_rows, batch)))(
            jax.random.split(jax.random.key(0), draws)
        )
    )
    assert rows.shape == (draws, batch) and rows.min() >= 0 and rows.max() < num_rows
    assert all(len(np.unique(r)) == batch for r in rows)
    # Each row is in a minibatch with probability B / N: counts are Binomial(draws, B / N); their
    # spread across rows matches that within 4 standard errors of a sample variance.
    counts = np.bincount(rows.ravel(), minlength=num_rows)
    p = batch / num_rows
    mean, var = draws * p, draws * p * (1 - p)
    assert abs(counts.mean() - mean) < 1e-9 * mean + 1e-9  # exactly B per draw
    assert abs(counts.var() - var) < 4 * var * math.sqrt(2 / num_rows)
    # Positions within a minibatch are in random order: the first slot is uniform too.
    first = np.bincount(rows[:, 0], minlength=num_rows)
    assert first.max() <= draws * 8 / num_rows + 10


def test_sampling_rows_does_not_touch_every_row():
    # The sampler's work is O(B log B): its compiled program holds no N-sized array even at N = 10^9.
    lowered = jax.jit(lambda k: sample_rows(k, 10**9, 256)).lower(jax.random.key(0))
    temp = lowered.compile().memory_analysis().temp_size_in_bytes
    assert temp < 10**6, temp
