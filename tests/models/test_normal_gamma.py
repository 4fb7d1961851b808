"""The Normal-Gamma model: exact posterior and evidence, CAVI, closed-form ELBO and KL, and black-box VI.

Every reference here is closed form; the checks that need an independent computation use float64
quadrature (scipy) or Monte Carlo with a tolerance of four standard errors.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import integrate

import bbvi
from bbvi.models import normal_gamma as ng


@pytest.fixture(scope="module")
def data():
    return ng.simulate(seed=0, num_data=20, loc=1.0, scale=2.0, mu0=0.0, lambda0=1.0, a0=1.0, b0=1.0)


# Factorised q's far from and near the optimum, to check identities that hold for every q.
SOME_QS = [
    ng.MeanField(0.0, 1.0, 1.0, 1.0),
    ng.MeanField(-3.0, 0.05, 30.0, 2.0),
    ng.MeanField(1.4, 4.0, 11.0, 55.0),
]
# Absolute float32 rounding of the closed forms: values near 50 have an ulp of 4e-6, and each is a sum
# of a dozen terms some of which are in the hundreds.
ROUNDING = 2e-4
# An update that leaves q unchanged may still round either way: a relative slack of about 8 ulps.
RELATIVE_SLACK = 1e-6


def log_joint64(data, mu, tau):
    """log p(x, mu, tau) in float64, written out from the model's definition (the test's own)."""
    x = np.asarray(data.x, np.float64)
    n = x.size
    return (
        data.a0 * math.log(data.b0)
        - math.lgamma(data.a0)
        + (data.a0 - 1) * math.log(tau)
        - data.b0 * tau
        + 0.5 * math.log(data.lambda0 * tau / (2 * math.pi))
        - 0.5 * data.lambda0 * tau * (mu - data.mu0) ** 2
        + 0.5 * n * math.log(tau / (2 * math.pi))
        - 0.5 * tau * float(np.sum((x - mu) ** 2))
    )


def test_log_evidence_matches_quadrature(data):
    """log p(x) = log of the double integral of p(x, mu, tau), by scipy in float64."""
    post = ng.exact_posterior(data)
    mu_n, lambda_n, a_n, b_n = (float(v) for v in post)
    peak = log_joint64(data, mu_n, a_n / b_n)  # factored out, so the integrand is of order one
    x = np.asarray(data.x, np.float64)
    n, xbar, s = x.size, x.mean(), float(np.sum((x - x.mean()) ** 2))

    def integrand(mu, log_tau):  # over (mu, log tau), with the Jacobian tau
        tau = math.exp(log_tau)
        log_p = (
            data.a0 * math.log(data.b0)
            - math.lgamma(data.a0)
            + data.a0 * log_tau  # (a0 - 1) log tau plus the Jacobian's log tau
            - data.b0 * tau
            + 0.5 * math.log(data.lambda0 * tau / (2 * math.pi))
            - 0.5 * data.lambda0 * tau * (mu - data.mu0) ** 2
            + 0.5 * n * math.log(tau / (2 * math.pi))
            - 0.5 * tau * (s + n * (xbar - mu) ** 2)
        )
        return math.exp(log_p - peak)

    # The posterior of log tau has sd about 1 / sqrt(a_N), and mu given tau sd 1 / sqrt(lambda_N tau):
    # 12 sds each way hold everything but e^-72 of the mass.
    centre, half = math.log(a_n / b_n), 12 / math.sqrt(a_n)
    value, error = integrate.dblquad(
        integrand,
        centre - half,
        centre + half,
        lambda log_tau: mu_n - 12 / math.sqrt(lambda_n * math.exp(log_tau)),
        lambda log_tau: mu_n + 12 / math.sqrt(lambda_n * math.exp(log_tau)),
        epsabs=0,
        epsrel=1e-10,
    )
    assert error < 1e-8 * value
    np.testing.assert_allclose(float(ng.log_evidence(data)), peak + math.log(value), atol=ROUNDING)


def test_exact_posterior_normalises_the_joint(data):
    """log p(x, mu, tau) - log p(mu, tau | x) = log p(x) at every (mu, tau)."""
    post = ng.exact_posterior(data)
    log_z = float(ng.log_evidence(data))
    for mu, tau in [(0.0, 0.1), (1.5, 0.2), (-2.0, 1.5)]:
        log_post = (
            0.5 * math.log(float(post.lambda_n) * tau / (2 * math.pi))
            - 0.5 * float(post.lambda_n) * tau * (mu - float(post.mu_n)) ** 2
            + float(post.a_n) * math.log(float(post.b_n))
            - math.lgamma(float(post.a_n))
            + (float(post.a_n) - 1) * math.log(tau)
            - float(post.b_n) * tau
        )
        assert log_joint64(data, mu, tau) - log_post == pytest.approx(log_z, abs=ROUNDING)
        # and the package's log-joint (numpyro densities) is the same function
        package = float(ng.log_joint_fn(data)({"mu": jnp.float32(mu), "tau": jnp.float32(tau)}))
        assert package == pytest.approx(log_joint64(data, mu, tau), rel=1e-5)


@pytest.mark.parametrize("q", SOME_QS, ids=["prior-like", "far", "near-optimum"])
def test_elbo_plus_kl_is_log_evidence(data, q):
    elbo, kl = float(ng.elbo(data, q)), float(ng.kl_to_posterior(data, q))
    assert kl > 0
    # Far from the posterior both terms are in the thousands: float32 rounding scales with them.
    tol = ROUNDING + 1e-6 * (abs(elbo) + kl)
    assert elbo + kl == pytest.approx(float(ng.log_evidence(data)), abs=tol)


@pytest.mark.parametrize("init", SOME_QS[:2], ids=["prior-like", "far"])
def test_cavi_elbo_never_decreases(data, init):
    _, elbos = ng.cavi(data, init, num_iterations=8)
    elbos = np.asarray(elbos)
    assert elbos[-1] - elbos[0] > 1.0  # it climbs, from a poor start
    assert np.all(np.diff(elbos) > -RELATIVE_SLACK * np.abs(elbos[1:])), np.diff(elbos)


def test_cavi_reaches_its_closed_form_fixed_point(data):
    n = data.x.shape[0]
    post = ng.exact_posterior(data)
    fixed = ng.cavi_fixed_point(data)
    # a = a_0 + (N + 1) / 2: N / 2 powers of tau from the likelihood, one half from mu's prior
    assert float(fixed.a) == data.a0 + (n + 1) / 2
    assert float(fixed.m) == pytest.approx(float(post.mu_n), rel=1e-6)
    assert float(fixed.m) == pytest.approx(
        (data.lambda0 * data.mu0 + n * float(data.x.mean())) / (data.lambda0 + n)
    )
    # (l, b) solve the scalar fixed point l = (lambda_0 + N) a / b, b = b_0 + E_mu[...] / 2
    assert float(fixed.l) == pytest.approx((data.lambda0 + n) * float(fixed.a / fixed.b), rel=1e-5)
    np.testing.assert_allclose(ng.cavi_update_tau(data, fixed).b, fixed.b, rtol=1e-5)
    np.testing.assert_allclose(ng.cavi_update_mu(data, fixed).l, fixed.l, rtol=1e-5)
    # CAVI from far away lands there
    reached, _ = ng.cavi(data, SOME_QS[1], num_iterations=8)
    np.testing.assert_allclose(np.asarray(reached), np.asarray(fixed), rtol=1e-5)
    # and it is a stationary point of the closed-form ELBO, in every coordinate
    grad = jax.grad(lambda q: ng.elbo(data, q))(fixed)
    scales = [1 / math.sqrt(float(fixed.l)), float(fixed.l), float(fixed.a), float(fixed.b)]
    np.testing.assert_allclose([g * s for g, s in zip(grad, scales)], 0.0, atol=1e-4)
    # The issue's a_N = a_0 + N / 2 (with the same E[tau]) is not stationary: its ELBO still climbs.
    a_issue = data.a0 + n / 2
    issue = fixed._replace(a=jnp.float32(a_issue), b=fixed.b * a_issue / fixed.a)
    grad = jax.grad(lambda q: ng.elbo(data, q))(issue)
    assert abs(float(grad.a) * a_issue) > 100 * 1e-4


def test_errors(data):
    with pytest.raises(ValueError, match="num_data"):
        ng.simulate(num_data=0)
    with pytest.raises(ValueError, match="lambda0"):
        ng.log_joint_fn(ng.Data(jnp.ones(3), lambda0=-1.0))
    with pytest.raises(ValueError, match="num_iterations"):
        ng.cavi(data, SOME_QS[0], num_iterations=0)


# --- black-box VI -----------------------------------------------------------------------------------

NUM_SAMPLES = 8
FINAL_STEP = 0.01  # the natural-gradient step size of the second half of the fit


@pytest.fixture(scope="module")
def bbvi_fit(data):
    """A fit of the Normal x Gamma family, and the spread of its final q that its noise predicts.

    Natural-gradient SGD: near the optimum the natural gradient of this conjugate model's ELBO is
    about theta* - theta (in natural parameters; exactly so for one factor with the other fixed), so
    each step is theta <- theta + eta (theta* - theta + eps), eps the natural gradient's Monte Carlo
    noise. That AR(1) settles within a few 1/eta steps to a spread Var(theta) = eta / (2 - eta) Var(eps)
    around theta*, and an ELBO gap (1/2) delta^T F delta of mean (1/2) eta / (2 - eta) E[g^T F^-1 g],
    with F q's Fisher information and g the gradient's noise. Both are measured at the CAVI optimum.
    """
    log_joint = ng.log_joint_fn(data)
    natural_gradient = bbvi.natural_gradient(ng.FAMILY)
    schedule = optax.piecewise_constant_schedule(0.1, {500: FINAL_STEP / 0.1})  # 500 steps = 5 / eta
    optimizer = optax.chain(natural_gradient, optax.sgd(schedule))
    result = bbvi.fit(
        log_joint, ng.FAMILY, key=jax.random.key(0), num_steps=1000, optimizer=optimizer, progress_bar=False
    )

    optimum = ng.params_from_mean_field(ng.cavi_fixed_point(data))
    value_and_grad = bbvi.elbo_value_and_grad(log_joint, ng.FAMILY, num_samples=NUM_SAMPLES)

    @jax.jit
    def noise(key):  # the ELBO estimate, the natural gradient's noise at the optimum, and g^T F^-1 g
        value, grad = value_and_grad(optimum, key)
        natural, _ = natural_gradient.update(grad, natural_gradient.init(optimum), optimum)
        quadratic = sum(jnp.sum(g * v) for g, v in zip(jax.tree.leaves(grad), jax.tree.leaves(natural)))
        return value, natural, quadratic

    # lax.map, not vmap: batching the Gamma sampler's rejection loop doubles the compile time
    values, natural, quadratic = jax.lax.map(noise, jax.random.split(jax.random.key(1), 2000))
    factor = FINAL_STEP / (2 - FINAL_STEP)
    expected_gap = 0.5 * factor * float(quadratic.mean())
    spread = jax.tree.map(lambda v: math.sqrt(factor * float(v.var())), natural)
    return result, optimum, expected_gap, spread, np.asarray(values, np.float64)


def test_closed_form_elbo_matches_bbvis_estimate(data, bbvi_fit):
    """The closed-form ELBO is E_q[log p(x, z) - log q(z)] of the model's own log-joint, as bbvi's
    estimator sees it (2000 estimates of 8 draws each, at the CAVI optimum)."""
    values = bbvi_fit[-1]
    se = values.std() / math.sqrt(values.size)
    assert abs(values.mean() - float(ng.elbo(data, ng.cavi_fixed_point(data)))) < 4 * se


def test_bbvi_reaches_the_cavi_elbo(data, bbvi_fit):
    result, _, expected_gap, _, _ = bbvi_fit
    best = float(ng.elbo(data, ng.cavi_fixed_point(data)))
    reached = float(ng.elbo(data, ng.mean_field(result.params)))  # the fitted q's exact ELBO
    gap = best - reached
    # No q of the family beats CAVI's optimum (up to rounding).
    assert gap > -RELATIVE_SLACK * abs(best)
    # The gap is a weighted sum of 4 squared normals with mean `expected_gap`; 8 times the mean
    # is exceeded with probability below 0.5 % even if one term carries it all (chi-square, 1 dof).
    assert gap < 8 * expected_gap, f"gap {gap:.2e}, expected {expected_gap:.2e}"
    # The trace's last 500 estimates (independent keys, q nearly still) agree with it.
    tail = np.asarray(result.elbo[-500:])
    assert abs(tail.mean() - reached) < 4 * tail.std() / math.sqrt(tail.size)


def test_bbvi_q_matches_the_cavi_q(bbvi_fit):
    """Each unconstrained parameter within 4 predicted sds of the CAVI optimum's."""
    result, optimum, _, spread, _ = bbvi_fit
    for (path, fitted), want, sd in zip(
        jax.tree_util.tree_leaves_with_path(result.params), jax.tree.leaves(optimum), jax.tree.leaves(spread)
    ):
        assert abs(float(fitted) - float(want)) < 4 * sd, (jax.tree_util.keystr(path), fitted, want, sd)
