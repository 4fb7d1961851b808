"""`PointMass` beyond the registry's contract: a Dirac's density off its location, its construction,
and what the ELBO over a point-mass leaf is (the log-joint at `loc`: the MAP objective).

The variational-EM use, a point-mass decoder fitted next to an amortised encoder with minibatches,
is tested against probabilistic PCA's closed-form maximum likelihood in tests/models/test_vae.py.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from numpyro.distributions import constraints

import bbvi


def test_log_prob_is_zero_at_loc_and_minus_infinity_elsewhere():
    family = bbvi.PointMass((2,))
    params = {"loc": jnp.array([0.5, -1.0])}
    z = jnp.array([[0.5, -1.0], [0.5, -0.999], [0.0, 0.0]])
    np.testing.assert_array_equal(bbvi.log_prob(family, params, z), [0.0, -np.inf, -np.inf])
    assert float(bbvi.entropy(family, params)) == 0.0
    draws = bbvi.sample(family, params, jax.random.key(0), (3,))
    np.testing.assert_array_equal(draws, np.broadcast_to(params["loc"], (3, 2)))


def test_init_is_uniform_in_the_radius_and_zero_at_radius_zero():
    loc = bbvi.init(bbvi.PointMass((1000,), init_radius=0.3), jax.random.key(0))["loc"]
    assert loc.dtype == jnp.float32 and float(jnp.max(jnp.abs(loc))) <= 0.3
    assert float(jnp.max(jnp.abs(loc))) > 0.29  # fills the interval (1000 uniform draws)
    zeros = bbvi.init(bbvi.PointMass((3,), init_radius=0), jax.random.key(0))["loc"]
    np.testing.assert_array_equal(zeros, np.zeros(3))
    assert bbvi.PointMass(3) == bbvi.PointMass((3,)) and bbvi.PointMass(3) != bbvi.PointMass(
        3, init_radius=0.5
    )


@pytest.mark.parametrize("radius", [-1.0, float("nan"), float("inf"), "1", True], ids=repr)
def test_bad_init_radius_is_a_clear_error(radius):
    with pytest.raises(ValueError, match="init_radius must be a finite float >= 0"):
        bbvi.PointMass((2,), init_radius=radius)


def _log_joint(z):
    # A Gaussian latent z next to a point-mass parameter theta: log N(theta; 1, 1) + log N(z; theta, 1).
    return (
        dist.Normal(1.0, 1.0).log_prob(z["theta"]).sum() + dist.Normal(z["theta"], 1.0).log_prob(z["z"]).sum()
    )


@pytest.mark.parametrize("entropy", ["analytic", "mc", "stl"])
def test_elbo_over_a_point_mass_is_the_log_joint_at_loc(entropy):
    # With theta = loc exactly and q(z) Gaussian, E_q(z)[log p(theta, z)] has a closed form:
    # log N(loc; 1, 1) + sum_i [log N(m_i; loc, 1) - s_i^2 / 2], and the entropy is that of q(z) alone.
    # Both the value (Monte Carlo in z, here exact in expectation) and the gradient in loc must be
    # those of the MAP objective. One sample per estimate; the check averages 4096 of them.
    family = {"theta": bbvi.PointMass((2,)), "z": bbvi.MeanFieldGaussian((2,))}
    params = {
        "theta": {"loc": jnp.array([0.3, -0.7])},
        "z": {"loc": jnp.array([0.5, 0.1]), "log_scale": jnp.array([-0.5, 0.2])},
    }
    estimator = bbvi.Estimator("reparam", entropy=entropy)
    value_and_grad = bbvi.elbo_value_and_grad(_log_joint, family, estimator=estimator, num_samples=4096)
    value, grad = jax.jit(value_and_grad)(params, jax.random.key(0))

    theta, m = np.asarray(params["theta"]["loc"], np.float64), np.asarray(params["z"]["loc"], np.float64)
    s = np.exp(np.asarray(params["z"]["log_scale"], np.float64))
    log_norm = -0.5 * np.log(2 * np.pi)
    exact = np.sum(log_norm - 0.5 * (theta - 1) ** 2) + np.sum(log_norm - 0.5 * (m - theta) ** 2 - 0.5 * s**2)
    exact += np.sum(0.5 * np.log(2 * np.pi * np.e * s**2))  # the entropy of q(z); the point mass adds 0
    exact_grad_theta = -(theta - 1) + (m - theta)  # d/d loc of the expected log-joint
    # Tolerances: 4 standard errors of the 4096-sample means, from the integrand's exact variance. With
    # z = m + s eps and d = m - theta, the z-dependent part of the integrand is, per coordinate,
    # -d s eps - c eps^2 / 2 with c = s^2 (analytic entropy) or s^2 - 1 (log q by Monte Carlo: mc, stl),
    # of variance d^2 s^2 + c^2 / 2; the gradient in loc, -(theta - 1) + (z - theta), has variance s^2.
    c = s**2 if entropy == "analytic" else s**2 - 1
    se_value = np.sqrt(np.sum((m - theta) ** 2 * s**2 + c**2 / 2) / 4096)
    assert abs(float(value) - exact) < 4 * se_value
    np.testing.assert_array_less(np.abs(np.asarray(grad["theta"]["loc"]) - exact_grad_theta), 4 * s / 64)


def test_a_separate_prior_makes_the_objective_the_log_posterior_at_loc():
    # With prior=, bbvi takes KL(q || prior) in closed form where numpyro has it; for a Dirac it is
    # -log prior(loc) (numpyro's KL(Delta || p)), so the objective is log p(x | loc) + log p(loc): MAP.
    family = {"theta": bbvi.PointMass(())}
    value_and_grad = bbvi.elbo_value_and_grad(
        lambda z: -0.5 * (z["theta"] - 2.0) ** 2,
        family,
        num_samples=1,
        prior={"theta": dist.Normal(0.0, 1.0)},
    )
    value, grad = jax.jit(value_and_grad)({"theta": {"loc": jnp.array(0.5)}}, jax.random.key(0))
    # log lik -0.5 (0.5 - 2)^2 = -1.125, log prior log N(0.5; 0, 1); gradient (2 - 0.5) - 0.5 = 1.
    np.testing.assert_allclose(value, -1.125 - 0.5 * np.log(2 * np.pi) - 0.125, rtol=1e-6)
    np.testing.assert_allclose(grad["theta"]["loc"], 1.0, rtol=1e-6)


def test_score_function_estimator_refuses_a_point_mass():
    # Its score is zero: a score-function fit would silently never move it.
    family = {"theta": bbvi.PointMass(()), "z": bbvi.MeanFieldGaussian(())}
    with pytest.raises(ValueError, match=r"point masses at \['theta'\]: .*estimator='auto'"):
        bbvi.elbo_value_and_grad(lambda z: -(z["theta"] ** 2) - z["z"] ** 2, family, estimator="score")


def test_constrained_refuses_a_point_mass():
    # The bijection's log-Jacobian would be added to a point estimate's objective and bias it.
    with pytest.raises(TypeError, match="point mass has no density"):
        bbvi.Constrained(bbvi.PointMass(()), constraints.positive)
