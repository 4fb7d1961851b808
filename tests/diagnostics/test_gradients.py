"""`gradient_snr` and `compare_gradients` against exact gradient moments, and variance orderings.

For `log p(z) = -z^2 / 2` and `q = N(m, s^2)`, one reparameterised sample with the analytic entropy
gives the gradients `-(m + s e)` in `loc` and `1 - s e (m + s e)` in `log_scale`, `e ~ N(0, 1)`:
their means, variances and fourth moments are polynomial moments of `e`, computed exactly by
Gauss-Hermite quadrature. A variance estimate from `n` draws has standard error
`sqrt((mu_4 - sigma^4) / n)`; the tolerances are 5 of those.

The orderings (score function above pathwise, leave-one-out below no control variate) are
asserted with a margin of 4 standard errors of the difference, estimated from the spread of the
variance over independent batches of estimates, so they cannot pass by chance.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bbvi
from bbvi.diagnostics import compare_gradients, gradient_snr

M, S = 0.7, 0.5
FAMILY = bbvi.MeanFieldGaussian(())
PARAMS = {"loc": jnp.array(M), "log_scale": jnp.array(math.log(S))}
# An offset, as any log-joint with normalising constants of data has: the score-function
# estimator's variance grows with it unless a baseline removes it; pathwise gradients ignore it.
OFFSET = -20.0


def log_joint(z):
    return -0.5 * z**2 + OFFSET


def _moments(fn):
    """Exact mean, variance and fourth central moment of `fn(e)`, `e ~ N(0, 1)`, for a polynomial fn."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(20)
    weights = weights / weights.sum()
    values = fn(nodes)
    mean = np.sum(weights * values)
    return mean, np.sum(weights * (values - mean) ** 2), np.sum(weights * (values - mean) ** 4)


def test_reparam_gradient_moments_are_exact():
    n = 4096
    stats = gradient_snr(
        log_joint, FAMILY, PARAMS, jax.random.key(0), num_estimates=n, estimator="reparam", num_samples=1
    )
    exact = {
        "loc": _moments(lambda e: -(M + S * e)),
        "log_scale": _moments(lambda e: 1.0 - S * e * (M + S * e)),
    }
    for name, (mean, var, mu4) in exact.items():
        assert abs(float(stats.mean[name]) - mean) < 5 * math.sqrt(var / n), name
        assert abs(float(stats.variance[name]) - var) < 5 * math.sqrt((mu4 - var**2) / n), name
        assert float(stats.snr[name]) == pytest.approx(
            abs(stats.mean[name]) / math.sqrt(stats.variance[name])
        )
    assert float(stats.variance["loc"]) == pytest.approx(S**2, rel=5 * math.sqrt(2 / n))
    # The ELBO: E_q[-z^2 / 2] + offset + the entropy of N(m, s^2), within 5 standard errors.
    exact_elbo = -0.5 * (M**2 + S**2) + OFFSET + math.log(S) + 0.5 * (1 + math.log(2 * math.pi))
    assert abs(float(stats.value_mean) - exact_elbo) < 5 * float(stats.value_sd) / math.sqrt(n)
    table = str(stats)
    assert "['loc']" in table and "['log_scale']" in table and "total variance" in table


@pytest.mark.slow
def test_score_function_is_noisier_and_leave_one_out_helps():
    options = {
        "reparam": {"estimator": "reparam", "num_samples": 4},
        "score": {"estimator": "score", "control_variate": None, "num_samples": 4},
        "loo": {"estimator": "score", "control_variate": "loo", "num_samples": 4},
    }
    # The total variance over independent batches of estimates: its mean and standard error.
    batches = [
        compare_gradients(log_joint, FAMILY, PARAMS, jax.random.key(100 + b), options, num_estimates=256)
        for b in range(8)
    ]
    totals = {name: np.array([table[name].total_variance() for table in batches]) for name in options}
    mean = {name: t.mean() for name, t in totals.items()}
    se = {name: t.std(ddof=1) / math.sqrt(len(t)) for name, t in totals.items()}

    def clearly_above(a, b):
        return mean[a] - mean[b] > 4 * math.hypot(se[a], se[b])

    assert clearly_above("score", "reparam")
    assert clearly_above("score", "loo")
    assert clearly_above("loo", "reparam")
    text = str(batches[0])
    assert all(name in text for name in options) and "['log_scale']" in text


def test_per_leaf_statistics_for_a_pytree_of_families():
    family = {"a": bbvi.MeanFieldGaussian((2,)), "b": bbvi.Bernoulli((3,))}
    params = bbvi.init(family, jax.random.key(1))

    def model(z):
        return -jnp.sum(z["a"] ** 2) + jnp.sum(z["b"] * z["a"][0]) + OFFSET

    stats = gradient_snr(model, family, params, jax.random.key(2), num_estimates=128, num_samples=4)
    assert jax.tree.map(jnp.shape, stats.mean) == jax.tree.map(jnp.shape, params)
    assert jax.tree.map(jnp.shape, stats.variance) == jax.tree.map(jnp.shape, params)
    assert jax.tree.map(jnp.shape, stats.snr) == jax.tree.map(jnp.shape, params)
    rows = stats.summary()
    assert list(rows) == ["['a']['loc']", "['a']['log_scale']", "['b']['logits']"]
    assert [row["size"] for row in rows.values()] == [2, 2, 3]
    total = sum(float(jnp.sum(v)) for v in jax.tree.leaves(stats.variance))
    assert stats.total_variance() == pytest.approx(total)
    assert rows["['b']['logits']"]["total_variance"] == pytest.approx(
        float(jnp.sum(stats.variance["b"]["logits"]))
    )
    # The exact gradient in a's loc: d/d loc E_q[-|a|^2 + a_0 sum(b)] = -2 loc + e_0 sum(sigmoid(logits)).
    exact = -2 * params["a"]["loc"] + jnp.array([1.0, 0.0]) * jnp.sum(jax.nn.sigmoid(params["b"]["logits"]))
    se = jnp.sqrt(stats.variance["a"]["loc"] / 128)
    np.testing.assert_array_less(jnp.abs(stats.mean["a"]["loc"] - exact), 5 * se)
    text = str(stats)
    assert all(name in text for name in rows) and "total" in text


def test_bad_arguments_are_clear_errors():
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="at least 2"):
        gradient_snr(log_joint, FAMILY, PARAMS, key, num_estimates=1)
    with pytest.raises(ValueError, match="do not match MeanFieldGaussian"):
        gradient_snr(log_joint, FAMILY, {"loc": jnp.zeros(2), "log_scale": jnp.zeros(2)}, key)
    with pytest.raises(ValueError, match="keeps state"):
        gradient_snr(log_joint, FAMILY, PARAMS, key, control_variate=bbvi.MovingAverage(0.9))
    with pytest.raises(ValueError, match="non-empty dict"):
        compare_gradients(log_joint, FAMILY, PARAMS, key, {})
    with pytest.raises(ValueError, match="Subsampled model needs its data"):
        gradient_snr(bbvi.Subsampled(log_joint, lambda z, d: 0.0), FAMILY, PARAMS, key)
