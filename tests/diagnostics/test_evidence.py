"""`diagnose` against exact answers: conjugate linear regression, a Gamma target, an enumerated model.

With q a Gaussian `N(m + delta, s^2 C)` around the exact posterior `N(m, C)` of a 2-d conjugate
linear regression, everything is known in closed form:

- at `s = 1, delta = 0` every log-weight equals `log Z`, to float32 rounding;
- the ELBO is `log Z - KL(q || p)`, and `log w = log Z + (1 - s^2) |e|^2 / 2 + const` with
  `|e|^2 ~ chi^2_2`, so the per-draw sd of `log w` is `|1 - s^2|` (for `delta = 0`);
- for `s < 1` the weights `exp((1 - s^2) Exp(1))` are exactly Pareto with shape `k = 1 - s^2`.

Tolerances are 4 to 5 Monte Carlo standard errors with fixed keys, as each comment derives.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from numpyro.distributions import constraints
from numpyro.distributions.kl import kl_divergence

import bbvi
from bbvi.diagnostics import diagnose, tail_length
from bbvi.models import linear_regression

N = 4096  # draws in every diagnosis below but one, so they share one compiled program
FAMILY = bbvi.FullRankGaussian(2)


@pytest.fixture(scope="module")
def regression():
    # Jitted: one compiled program each instead of dozens of eagerly dispatched operations.
    data = jax.jit(linear_regression.simulate, static_argnames=("num_data", "dim"))(0, num_data=20, dim=2)
    mean, cov = jax.jit(linear_regression.exact_posterior)(data)
    return linear_regression.log_joint_fn(data), mean, cov, jax.jit(linear_regression.log_evidence)(data)


def _params(loc, scale_tril):
    return bbvi.FullRankGaussian.params_from_scale_tril(loc, scale_tril)


def test_exact_posterior_gives_constant_weights(regression):
    log_joint, mean, cov, log_z = regression
    d = diagnose(log_joint, FAMILY, _params(mean, jnp.linalg.cholesky(cov)), jax.random.key(0), N)
    # float32 rounding of log p and log q: each a sum of about 30 terms no larger than |log p|.
    scale = float(jnp.max(jnp.abs(jax.jit(jax.vmap(log_joint))(d.draws))))
    tolerance = 64 * np.finfo(np.float32).eps * scale
    np.testing.assert_allclose(d.raw_log_weights, log_z, atol=tolerance)
    assert float(d.log_evidence) == pytest.approx(float(log_z), abs=tolerance)
    assert float(d.elbo) == pytest.approx(float(log_z), abs=tolerance)
    assert float(d.log_evidence_se) < tolerance
    assert float(d.khat) < 0.5 and d.verdict == "good"
    assert float(d.ess) > 0.99 * N
    assert jax.tree.map(jnp.shape, d.draws) == (N, 2)


def test_wide_q_elbo_and_evidence_within_standard_errors(regression):
    log_joint, mean, cov, log_z = regression
    s = 1.5
    chol = jnp.linalg.cholesky(cov)
    d = diagnose(log_joint, FAMILY, _params(mean, s * chol), jax.random.key(1), N)
    q = dist.MultivariateNormal(mean, scale_tril=s * chol)
    exact_elbo = log_z - kl_divergence(q, dist.MultivariateNormal(mean, covariance_matrix=cov))
    assert abs(float(d.elbo - exact_elbo)) < 5 * float(d.elbo_se)
    # The importance-sampling estimate is biased low by about se^2 / 2, far below 5 se here.
    assert abs(float(d.log_evidence - log_z)) < 5 * float(d.log_evidence_se)
    # The per-draw sd of log w is |1 - s^2| exactly; the sample sd of chi^2_2 draws has relative
    # sd sqrt((kurtosis - 1) / N) / 2 = sqrt(8 / N) / 2, and 5 of those is the tolerance.
    exact_se = abs(1 - s**2) / math.sqrt(N)
    assert float(d.elbo_se) == pytest.approx(exact_se, rel=5 * math.sqrt(8 / N) / 2)
    assert d.verdict == "good"  # bounded weights: q is wider than p
    assert "Pareto k-hat" in str(d) and "good" in str(d)


@pytest.mark.slow
def test_narrow_q_is_unreliable_with_the_exact_khat(regression):
    log_joint, mean, cov, _ = regression
    s, num_draws = 0.1, 65_536
    d = diagnose(log_joint, FAMILY, _params(mean, s * jnp.linalg.cholesky(cov)), jax.random.key(2), num_draws)
    k, m = 1 - s**2, tail_length(num_draws)
    # k-hat's sd is (1 + k) / sqrt(M) (see test_psis), with its prior's shrinkage towards 0.5; at
    # M = 768 the threshold 0.7 is 4 sd below k = 0.99, so the verdict cannot be "usable" by chance.
    sd = (1 + k) / math.sqrt(m)
    assert abs(float(d.khat) - (m * k + 5) / (m + 10)) < 4 * sd
    assert float(d.khat) > 0.7 and d.verdict == "unreliable"
    assert "unreliable" in str(d) and "not to be trusted" in str(d)


def test_psis_expectation_and_resampling_recover_the_posterior(regression):
    log_joint, mean, cov, _ = regression
    chol = jnp.linalg.cholesky(cov)
    shifted = mean + chol @ jnp.array([0.3, -0.3])  # 0.3 posterior sds off, and 20% too wide
    d = diagnose(log_joint, FAMILY, _params(shifted, 1.2 * chol), jax.random.key(3), N)
    assert d.verdict == "good"
    estimate, se = d.expectation(lambda z: z), d.expectation_se(lambda z: z)
    np.testing.assert_array_less(np.abs(estimate - mean), 4 * se)
    # The check is sharp: the unweighted mean of q's draws is many standard errors off.
    assert np.max(np.abs(d.draws.mean(0) - mean) / se) > 10
    second = d.expectation(lambda z: jnp.outer(z, z))
    second_se = d.expectation_se(lambda z: jnp.outer(z, z))
    np.testing.assert_array_less(np.abs(second - (cov + jnp.outer(mean, mean))), 4 * second_se)
    # Resampled draws: their mean is the weighted mean up to multinomial noise sd(z) / sqrt(n).
    resampled = d.resample(jax.random.key(4), N)
    sd = np.sqrt(np.diag(second) - estimate**2)
    np.testing.assert_array_less(np.abs(resampled.mean(0) - estimate), 4 * sd / math.sqrt(N))
    assert np.isin(np.asarray(resampled[:, 0]), np.asarray(d.draws[:, 0])).all()


def test_constrained_and_discrete_families_match_exact_evidence():
    # A Gamma(3, 2) kernel on z > 0: Z = Gamma(3) / 2^3. q is a log-normal (Constrained).
    a, b = 3.0, 2.0
    family = bbvi.Constrained(bbvi.MeanFieldGaussian(()), constraints.positive)
    params = {"loc": jnp.array(math.log(a / b)), "log_scale": jnp.array(math.log(0.7))}
    d = diagnose(lambda z: (a - 1) * jnp.log(z) - b * z, family, params, jax.random.key(5), N)
    assert np.all(np.asarray(d.draws) > 0)
    log_z = math.lgamma(a) - a * math.log(b)
    assert abs(float(d.log_evidence) - log_z) < 5 * float(d.log_evidence_se)
    # The weights agree with log p(z) - log q(z) on the support (q's log-normal density).

    @jax.jit
    def manual(z):
        q = dist.LogNormal(params["loc"], jnp.exp(params["log_scale"]))
        return (a - 1) * jnp.log(z) - b * z - q.log_prob(z)

    np.testing.assert_allclose(d.raw_log_weights, manual(d.draws), atol=1e-4)

    # Three binary latents with a pairwise coupling: log Z by enumerating the 8 states.
    theta, coupling = jnp.array([0.5, -1.0, 2.0]), 1.5

    def log_joint(z):
        z = z.astype(jnp.float32)
        return jnp.sum(theta * z) + coupling * z[0] * z[1]

    states = jnp.array(np.indices((2, 2, 2)).reshape(3, -1).T)
    log_p = jax.jit(jax.vmap(log_joint))(states)
    exact = jax.scipy.special.logsumexp(log_p)
    family = bbvi.Bernoulli((3,))
    d = diagnose(log_joint, family, {"logits": jnp.zeros(3)}, jax.random.key(6), N)
    assert abs(float(d.log_evidence - exact)) < 5 * float(d.log_evidence_se)
    # Uniform q over 8 states: log q = -3 log 2, and E_q[log p] by enumeration gives the ELBO.
    exact_elbo = jnp.mean(log_p) + 3 * math.log(2)
    assert abs(float(d.elbo - exact_elbo)) < 5 * float(d.elbo_se)
    assert d.verdict == "good"  # 8 values: the largest weights tie, no tail


def test_data_and_subsampled_models_use_the_full_data_log_joint():
    x = jnp.linspace(-1.0, 2.0, 10)

    def log_prior(z):
        return dist.Normal(0.0, 1.0).log_prob(z)

    def closed(z):
        return log_prior(z) + jnp.sum(dist.Normal(z, 1.0).log_prob(x))

    model = bbvi.Subsampled(log_prior, lambda z, x_i: dist.Normal(z, 1.0).log_prob(x_i), per_datum=True)
    family = bbvi.MeanFieldGaussian(())
    params = {"loc": jnp.array(0.4), "log_scale": jnp.array(-1.0)}
    key = jax.random.key(7)
    reference = diagnose(closed, family, params, key, N)
    # Evaluated in chunks (`jax.lax.map`): the same draws, the same weights. (A plain log-joint
    # with data, `log_joint(z, data)`, is tested with the amortised family below.)
    d = diagnose(model, family, params, key, N, data=x, chunk_size=1024)
    np.testing.assert_allclose(d.raw_log_weights, reference.raw_log_weights, rtol=1e-5)
    np.testing.assert_array_equal(d.draws, reference.draws)


def test_amortised_family_conditions_on_data():
    x = jnp.linspace(-1.0, 1.0, 4)[:, None]
    family = {
        "mu": bbvi.MeanFieldGaussian(()),
        "z": bbvi.Amortized(bbvi.MeanFieldGaussian(()), data_shape=(1,), batch_size=4, hidden_sizes=()),
    }

    def log_joint(z, data):
        return (
            dist.Normal(0.0, 1.0).log_prob(z["mu"])
            + jnp.sum(dist.Normal(z["mu"], 1.0).log_prob(z["z"]))
            + jnp.sum(dist.Normal(z["z"], 0.5).log_prob(data[:, 0]))
        )

    params = bbvi.init(family, jax.random.key(8))
    d = diagnose(log_joint, family, params, jax.random.key(9), N, data=x)
    assert d.draws["z"].shape == (N, 4)

    @jax.jit
    def manual(params, z):
        return jax.vmap(log_joint, (0, None))(z, x) - bbvi.log_prob(family, params, z, data=x)

    np.testing.assert_allclose(d.raw_log_weights, manual(params, d.draws), rtol=1e-5)


def test_bad_arguments_are_clear_errors():
    family = bbvi.MeanFieldGaussian((2,))
    params = {"loc": jnp.zeros(2), "log_scale": jnp.zeros(2)}

    def log_joint(z):
        return -0.5 * jnp.sum(z**2)

    key = jax.random.key(0)
    with pytest.raises(ValueError, match="at least 21"):
        diagnose(log_joint, family, params, key, 20)
    with pytest.raises(ValueError, match="do not match MeanFieldGaussian"):
        diagnose(log_joint, family, {"loc": jnp.zeros(3), "log_scale": jnp.zeros(3)}, key, 64)
    with pytest.raises(TypeError, match="single PRNG key"):
        diagnose(log_joint, family, params, 0, 64)
    with pytest.raises(ValueError, match="Subsampled model needs its data"):
        diagnose(bbvi.Subsampled(log_joint, lambda z, d: 0.0), family, params, key, 64)
    with pytest.raises(ValueError, match="NaN at"):
        diagnose(lambda z: jnp.where(z[0] > 0, jnp.nan, 0.0), family, params, key, N)
    with pytest.raises(ValueError, match="must return a scalar"):
        diagnose(lambda z: z, family, params, key, 64)
