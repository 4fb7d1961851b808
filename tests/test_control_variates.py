"""Control variates: the formulas against naive loops, their unbiasedness, and name resolution.

The variance they save is tested in `tests/estimators/test_variance.py`, and their unbiasedness
inside the estimators in the registry `tests/estimators/test_unbiased.py`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bbvi import control_variates as cv


def naive_optimal_scaling(values: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Ranganath et al.'s per-coordinate scaling, one sample and one coordinate at a time, in float64.

    Sample s's coefficient a = Cov(f h, h) / Var(h) uses only the other samples (a Var of zero
    gives a = 0), and the estimate is mean_s (f_s - a_s) h_s. For float32 inputs the float64
    means of identical values are exact, so "the others coincide" gives a variance of exactly zero.
    """
    values, scores = np.asarray(values, np.float64), np.asarray(scores, np.float64)
    n = values.shape[0]
    flat = scores.reshape(n, -1)
    out = np.zeros(flat.shape[1])
    for d in range(flat.shape[1]):
        for s in range(n):
            others = [t for t in range(n) if t != s]
            h, fh = flat[others, d], values[others] * flat[others, d]
            var = np.mean((h - h.mean()) ** 2)
            cov = np.mean((fh - fh.mean()) * (h - h.mean()))
            a = cov / var if var > 0 else 0.0
            out[d] += (values[s] - a) * flat[s, d] / n
    return out.reshape(scores.shape[1:])


# --- leave-one-out baseline ----------------------------------------------------------------------


@pytest.mark.parametrize("n", [2, 3, 7])
def test_leave_one_out_is_the_mean_of_the_others(n):
    values = jnp.asarray(np.random.default_rng(n).normal(size=n) - 5.0, jnp.float32)
    baseline = cv.leave_one_out(values)
    expected = [np.mean(np.delete(np.asarray(values, np.float64), s)) for s in range(n)]
    np.testing.assert_allclose(baseline, expected, rtol=1e-6)


def test_leave_one_out_baseline_never_depends_on_its_own_sample():
    # d b_s / d f_t = 1 / (S - 1) for t != s and exactly 0 for t = s: the independence that keeps
    # (f_s - b_s) * grad log q_s unbiased.
    jacobian = jax.jacfwd(cv.leave_one_out)(jnp.arange(5.0))
    np.testing.assert_array_equal(jacobian, (1.0 - np.eye(5)) / 4)


def test_no_baseline_is_zero():
    np.testing.assert_array_equal(cv.no_baseline(jnp.array([1.0, -2.0, 3.0])), 0.0)


# --- optimal per-coordinate scaling --------------------------------------------------------------


@pytest.mark.parametrize("n", [3, 6])
def test_optimal_scaling_matches_naive_loops(n):
    rng = np.random.default_rng(n)
    values = jnp.asarray(rng.normal(size=n) - 3.0, jnp.float32)
    scores = {"a": rng.normal(size=(n, 3)), "b": rng.normal(size=(n, 2, 2))}
    scores = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), scores)
    got = cv.optimal_scaling(values, scores)
    assert jax.tree.structure(got) == jax.tree.structure({"a": 0, "b": 0})
    for name in ("a", "b"):
        assert got[name].shape == scores[name].shape[1:]
        np.testing.assert_allclose(
            got[name], naive_optimal_scaling(values, scores[name]), rtol=1e-4, atol=1e-5
        )


def test_optimal_scaling_removes_a_constant_value_entirely():
    # With f_s = c for every sample, Cov(f h, h) = c Var(h), so a = c and every term (f_s - a) h_s
    # vanishes: the control variate absorbs a constant exactly, whatever the scores.
    scores = jnp.asarray(np.random.default_rng(0).normal(size=(8, 4)), jnp.float32)
    got = cv.optimal_scaling(jnp.full((8,), -37.5), scores)
    np.testing.assert_allclose(got, 0.0, atol=1e-4 * 37.5)
    plain = jnp.mean(-37.5 * scores, axis=0)
    assert np.abs(plain).max() > 1.0, "without the control variate the estimate would be far from zero"


def test_optimal_scaling_of_a_coordinate_with_zero_scores_is_zero():
    # Pathwise leaves contribute all-zero scores; their coordinates must stay exactly zero (no 0/0).
    values = jnp.array([1.0, -2.0, 0.5, 4.0])
    got = cv.optimal_scaling(values, {"pathwise": jnp.zeros((4, 3)), "score": jnp.eye(4)[:, :2]})
    np.testing.assert_array_equal(got["pathwise"], 0.0)
    assert np.all(np.isfinite(got["score"]))


def coinciding_examples(num_examples: int, n: int, seed: int = 0):
    """Bernoulli scores h = z - p: discrete, so the other samples' scores often coincide exactly."""
    rng = np.random.default_rng(seed)
    p = rng.uniform(0.1, 0.9, size=(num_examples, 1, 3))
    z = (rng.uniform(size=(num_examples, n, 3)) < p).astype(np.float64)
    values = rng.normal(size=(num_examples, n)) * 2.0 - 3.0
    return values.astype(np.float32), (z - p).astype(np.float32)


def dominant_examples(num_examples: int, n: int, seed: int = 0):
    """One sample's scores 300x the others' (a heavy-tailed score's typical outlier).

    The other samples' scores are spread out (never nearly equal), so every leave-one-out
    variance is well away from zero and the exact answer is well conditioned.
    """
    rng = np.random.default_rng(seed)
    spread = np.linspace(-1.5, 1.5, n - 1)
    scores = np.stack([rng.permuted(np.tile(spread, (3, 1)), axis=1).T for _ in range(num_examples)])
    scores = scores + 0.1 * rng.normal(size=scores.shape)
    dominant = (
        300.0 * rng.choice([-1.0, 1.0], size=(num_examples, 1, 3)) * rng.uniform(1, 2, (num_examples, 1, 3))
    )
    scores = np.concatenate([dominant, scores], axis=1)
    values = rng.normal(size=(num_examples, n)) - 3.0
    return values.astype(np.float32), scores.astype(np.float32)


@pytest.mark.parametrize("n", [3, 4])
@pytest.mark.parametrize("examples", [coinciding_examples, dominant_examples], ids=["coinciding", "dominant"])
def test_optimal_scaling_with_awkward_scores_matches_naive_loops(examples, n):
    values, scores = examples(300, n)
    got = np.asarray(jax.vmap(cv.optimal_scaling)(jnp.asarray(values), jnp.asarray(scores)))
    expected = np.stack([naive_optimal_scaling(v, h) for v, h in zip(values, scores)])
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


# --- unbiasedness: the coefficient from the other samples is what keeps it unbiased ---------------

NUM_REPLICATES = 50_000
K = 5.0  # 4 coordinates, two-sided 5-sigma tails: a false alarm has probability ~2e-6


def replicate_estimates(estimator, n=4):
    """Means over replicates (and standard errors) of `estimator(f, h)` for a model with E[f h] = (1, 0).

    h ~ N(0, I) per sample (a score: mean zero) and f = 3 + h_0 + h_0^2, so
    E[f h_0] = E[h_0^2] = 1 and E[f h_1] = 0.
    """

    def one(key):
        h = jax.random.normal(key, (n, 2))
        f = 3.0 + h[:, 0] + h[:, 0] ** 2
        return estimator(f, h)

    draws = np.asarray(
        jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(11), NUM_REPLICATES)), np.float64
    )
    return draws.mean(0), draws.std(0, ddof=1) / np.sqrt(NUM_REPLICATES)


def in_sample_scaling(values, scores):
    """The tempting shortcut: one coefficient per coordinate from all samples, including each one's own."""
    f = values[:, None]
    cov = jnp.mean(f * scores * scores, 0) - jnp.mean(f * scores, 0) * jnp.mean(scores, 0)
    var = jnp.mean(scores**2, 0) - jnp.mean(scores, 0) ** 2
    return jnp.mean((f - cov / var) * scores, 0)


def baseline_estimate(baseline):
    return lambda f, h: jnp.mean((f - baseline(f))[:, None] * h, axis=0)


@pytest.mark.parametrize(
    ("estimator", "unbiased"),
    [
        pytest.param(cv.optimal_scaling, True, id="optimal-scaling"),
        pytest.param(baseline_estimate(cv.leave_one_out), True, id="leave-one-out"),
        pytest.param(baseline_estimate(cv.no_baseline), True, id="none"),
        # The same criterion must reject the versions that let a sample into its own coefficient.
        pytest.param(in_sample_scaling, False, id="in-sample-scaling-is-biased"),
        pytest.param(
            baseline_estimate(lambda f: jnp.full_like(f, jnp.mean(f))), False, id="mean-baseline-is-biased"
        ),
    ],
)
def test_unbiased_only_with_coefficients_from_the_other_samples(estimator, unbiased):
    mean, se = replicate_estimates(estimator)
    z = (mean - np.array([1.0, 0.0])) / se
    assert np.all(K * se < 0.1), "too few replicates to see a bias of a tenth of E[f h_0] = 1"
    if unbiased:
        assert np.all(np.abs(z) <= K), (mean, se, z)
    else:
        assert np.any(np.abs(z) > K), (mean, se, z)


# --- resolve ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("num_samples", "expected"), [(1, "none"), (2, "loo"), (16, "loo")])
def test_auto_is_leave_one_out_when_there_are_two_samples(num_samples, expected):
    assert cv.resolve("auto", num_samples).name == expected


@pytest.mark.parametrize(
    ("name", "expected"), [(None, cv.NONE), ("none", cv.NONE), ("loo", cv.LOO), ("optimal", cv.OPTIMAL)]
)
def test_resolve_by_name(name, expected):
    assert cv.resolve(name, 8) is expected


@pytest.mark.parametrize(("name", "minimum"), [("loo", 2), ("optimal", 3)])
def test_too_few_samples_for_the_control_variate(name, minimum):
    with pytest.raises(ValueError, match=rf"{name}.*num_samples >= {minimum}.*got {minimum - 1}"):
        cv.resolve(name, minimum - 1)
    assert cv.resolve(name, minimum).name == name


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown control_variate 'baseline'") as info:
        cv.resolve("baseline", 4)
    for valid in ("'none'", "'loo'", "'optimal'", "'auto'", "None"):
        assert valid in str(info.value)


def test_a_control_variate_object_passes_through_and_is_checked():
    custom = cv.ControlVariate("half-mean", 5, baseline=lambda f: jnp.full_like(f, 0.5))
    assert cv.resolve(custom, 5) is custom
    with pytest.raises(ValueError, match="num_samples >= 5"):
        cv.resolve(custom, 4)
    with pytest.raises(TypeError, match="ControlVariate"):
        cv.resolve(3, 4)


def test_which_control_variates_need_scores():
    assert not cv.NONE.needs_scores and not cv.LOO.needs_scores and cv.OPTIMAL.needs_scores
