"""PSIS: k-hat recovers known Pareto tails, the smoothed weights keep their contract, and ArviZ agrees.

- Weights `w ~ Pareto(alpha)` (log-weights `Exp(1) / alpha`) have a tail that is exactly a
  generalised Pareto with shape `k = 1 / alpha` above any threshold; the mean k-hat over repeats
  must match k (with the estimator's prior shrinkage) within 4 standard errors from the
  asymptotic sd of the GPD shape estimate.
- The smoothed weights are normalised, the body is untouched, the tail is never above the largest
  raw weight and keeps its order; zero weights stay zero.
- ArviZ's `psislw` gives the same k-hat and weights (float64: to rounding; float32: to float32
  rounding accumulated over the tail's sums).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy.special import logsumexp

from bbvi.diagnostics import khat_threshold, psis, tail_length
from bbvi.diagnostics.psis import _psis as _jitted_psis  # what psis runs after its checks
from bbvi.diagnostics.psis import verdict

_batched_khat = jax.jit(jax.vmap(lambda lw: psis(lw)[1]))
# One size for the other tests: psis compiles once per number of draws.
S = 1000


def test_khat_recovers_the_shape_of_pareto_tails():
    shapes = np.array([0.2, 0.5, 0.8, 1.2])
    repeats, num_draws = 32, 10_000
    m = tail_length(num_draws)
    exp_draws = jax.random.exponential(jax.random.key(0), (len(shapes), repeats, num_draws))
    log_w = exp_draws * shapes[:, None, None]  # w = exp(Exp(1) k) ~ Pareto(1 / k)
    khat = np.asarray(_batched_khat(log_w.reshape(-1, num_draws))).reshape(len(shapes), repeats)
    # The estimate includes a prior worth 10 observations at k = 0.5 (Vehtari et al. 2024).
    expected = (m * shapes + 5.0) / (m + 10.0)
    # The GPD shape estimate's asymptotic sd is (1 + k) / sqrt(M) (that of the maximum-likelihood
    # estimate, which Zhang and Stephens' estimator attains), so the mean of R repeats has
    # standard error (1 + k) / sqrt(M R).
    sd = (1.0 + shapes) / math.sqrt(m)
    np.testing.assert_array_less(np.abs(khat.mean(1) - expected), 4.0 * sd / math.sqrt(repeats))
    # The spread over repeats matches that sd (the sample sd of 32 has a relative sd of 1/8).
    np.testing.assert_array_less(np.abs(khat.std(1, ddof=1) / sd - 1.0), 4.0 / math.sqrt(2 * (repeats - 1)))


def test_equal_weights_have_no_tail():
    smoothed, khat = psis(jnp.zeros(S))
    assert float(khat) == -math.inf
    assert verdict(khat, S) == "good"
    np.testing.assert_allclose(smoothed, -math.log(S), rtol=1e-6)


def _heavy_tailed(seed, k=1.0):
    rng = np.random.default_rng(seed)
    return (rng.exponential(size=S) * k + 0.1 * rng.normal(size=S)).astype(np.float32)


def test_smoothed_weights_are_normalised_keep_the_body_and_stay_below_the_raw_max():
    raw = _heavy_tailed(1)
    smoothed, khat = psis(raw)
    raw, smoothed = np.asarray(raw, np.float64), np.asarray(smoothed, np.float64)
    assert abs(float(logsumexp(smoothed))) < 1e-5
    m = tail_length(raw.size)
    order = np.argsort(raw)
    body, tail = order[:-m], order[-m:]
    # The body is untouched: only the normalising constant differs from the raw weights.
    shift = smoothed[body] - raw[body]
    np.testing.assert_allclose(shift, shift[0], atol=1e-5)
    unnormalised = smoothed - shift[0]
    # The tail was smoothed (it differs from the raw tail), is truncated at the raw max, keeps its order.
    assert np.max(np.abs(unnormalised[tail] - raw[tail])) > 1e-2
    assert np.max(unnormalised) <= np.max(raw) + 1e-5
    assert np.all(np.diff(unnormalised[tail]) >= -1e-6)
    assert 0.5 < float(khat) < 1.5


def test_zero_weights_stay_zero():
    raw = _heavy_tailed(2, k=0.5)
    raw[::10] = -np.inf
    smoothed, khat = psis(raw)
    assert np.all(np.isneginf(np.asarray(smoothed)[::10]))
    assert np.isfinite(np.delete(np.asarray(smoothed), np.s_[::10])).all()
    assert abs(float(logsumexp(smoothed))) < 1e-5
    assert np.isfinite(float(khat))


def test_thresholds_and_verdict():
    assert khat_threshold(100) == pytest.approx(0.5)
    assert khat_threshold(1000) == pytest.approx(2.0 / 3.0)
    assert khat_threshold(10_000) == 0.7
    assert [verdict(k, 10_000) for k in (0.3, 0.6, 0.75)] == ["good", "usable", "unreliable"]
    assert verdict(0.6, 100) == "unreliable"  # with 100 draws the usable band is empty


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="at least 21 draws"):
        psis(jnp.zeros(20))
    with pytest.raises(ValueError, match="one-dimensional"):
        psis(jnp.zeros((4, 100)))
    with pytest.raises(ValueError, match="NaN or \\+inf"):
        psis(jnp.zeros(S).at[3].set(jnp.nan))
    with pytest.raises(ValueError, match="every log-weight is -inf"):
        psis(jnp.full(S, -jnp.inf))
    # Under jit the same input cannot raise: k-hat is NaN instead of a number that looks valid.
    _, khat = _jitted_psis(jnp.zeros(S).at[3].set(jnp.nan), tail_length(S))
    assert np.isnan(float(khat))


def _arviz_cases():
    rng = np.random.default_rng(3)
    with_zeros = rng.normal(size=S) * 2.0
    with_zeros[: S // 10] = -np.inf
    return {
        "k=0.2": rng.exponential(size=S) * 0.2,
        "k=0.8": rng.exponential(size=S) * 0.8,
        "k=1.25": rng.exponential(size=S) * 1.25 - 40.0,
        "normal": rng.normal(size=S) * 3.0,
        "zeros": with_zeros,
    }


@pytest.mark.parametrize("name", list(_arviz_cases()))
def test_agrees_with_arviz(name):
    az = pytest.importorskip("arviz")
    raw = _arviz_cases()[name]
    expected_weights, expected_khat = az.psislw(raw.copy())
    finite = np.isfinite(expected_weights)
    with jax.enable_x64(True):
        weights, khat = psis(jnp.asarray(raw, jnp.float64))
        weights, khat = np.asarray(weights), float(khat)
    assert khat == pytest.approx(float(expected_khat), abs=1e-10)
    np.testing.assert_array_equal(np.isfinite(weights), finite)
    np.testing.assert_allclose(weights[finite], expected_weights[finite], atol=1e-10)
    # In float32, rounding accumulates over the tail's sums: a few thousand float32 ulps at most.
    weights32, khat32 = psis(jnp.asarray(raw, jnp.float32))
    tolerance = 10 * tail_length(raw.size) * np.finfo(np.float32).eps
    assert float(khat32) == pytest.approx(float(expected_khat), abs=tolerance)
    np.testing.assert_allclose(np.asarray(weights32)[finite], expected_weights[finite], atol=tolerance)
