"""posteriordb posteriors: each log-density integrates to the file's log Z, and fits stay below it.

The log evidence is estimated by importance sampling with our log-joint: a multivariate-t(5) proposal
with the reference's unconstrained mean and covariance, mapped to the constrained space with the
Jacobian (`log_density_unconstrained`). Draws and weights are float64 (numpy); the log-joint runs in
JAX's float32, whose round-off (~1e-4 at |log p| ~ 2000) is far below the tolerances.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import special, stats

import bbvi
from bbvi.models import posteriordb
from tests.models._helpers import data_file_or_skip

NAMES = posteriordb.names()
NUM_DRAWS = 4096  # one batch size everywhere, so each posterior's evaluator compiles once
T_DF = 5


@pytest.fixture(scope="module")
def posts():
    data_file_or_skip(posteriordb.FILE)
    return {name: posteriordb.load(name) for name in NAMES}


@functools.cache
def _evaluator(post):
    """Per draw u: log p(y, T(u)) + log|J|, log p(y, z) - log q(z) by bbvi's `log_prob`, quantities(z),
    and T^{-1}(z) (one compiled program per posterior serves every test)."""

    def one(u, params):
        z, log_det = post.from_unconstrained(u)
        log_p = post.log_joint(z)
        elbo_term = log_p - bbvi.log_prob(post.family, params, z)
        return log_p + log_det, elbo_term, post.quantities(z), post.to_unconstrained(z)

    return jax.jit(jax.vmap(one, (0, None)))


def _float32(u):
    """Draws rounded to float32 (what the log-joint sees), back in float64 for the proposal's density."""
    return np.asarray(np.asarray(u, np.float32), np.float64)


def _log_mean_exp(log_w):
    """log mean exp(log_w) and its delta-method standard error sd(w) / (sqrt(n) mean(w))."""
    w = np.exp(log_w - log_w.max())
    return special.logsumexp(log_w) - math.log(len(log_w)), w.std(ddof=1) / (math.sqrt(len(w)) * w.mean())


def _gaussian_draws(post, params, seed):
    """u ~ the mean-field q's unconstrained Gaussian, in `from_unconstrained`'s order, and log q(u)."""
    loc = np.concatenate([np.ravel(params[latent.name]["loc"]) for latent in post.latents])
    scale = np.exp(np.concatenate([np.ravel(params[latent.name]["log_scale"]) for latent in post.latents]))
    u = _float32(loc + scale * np.random.default_rng(seed).standard_normal((NUM_DRAWS, post.dim)))
    return u, stats.norm.logpdf(u, loc, scale).sum(axis=1)


def test_names_loading_and_errors(posts):
    assert len(NAMES) == 10
    file = posteriordb.parse(posteriordb.locate(posteriordb.FILE))
    assert set(NAMES) == set(file) - {"_meta"}
    assert posteriordb.load(NAMES[0]) is posts[NAMES[0]]  # cached: fits reuse their compiled program
    with pytest.raises(ValueError, match="known ones are:\n  eight_schools-eight_schools_noncentered"):
        posteriordb.load("eight_schools")


@pytest.mark.parametrize("name", NAMES)
def test_structure_matches_the_reference(posts, name):
    post = posts[name]
    ref = post.reference
    assert post.dim == len(ref.unconstrained_names) == ref.unconstrained_cov.shape[0]
    assert {k: v.event_shape for k, v in post.family.items()} == {x.name: x.shape for x in post.latents}
    assert set(ref.mean) == set(ref.sd) and all(ref.mean[k].shape == ref.sd[k].shape for k in ref.mean)


@pytest.mark.parametrize("name", NAMES)
def test_log_density_integrates_to_log_Z(posts, name):
    """Importance sampling with our density recovers the file's log Z within 4 combined standard errors."""
    post = posts[name]
    ref = post.reference
    # A t(5) with the posterior's covariance: heavier tails than the posterior, so the weights have
    # finite variance (the file's own estimate used the same kind of proposal).
    proposal = stats.multivariate_t(
        ref.unconstrained_mean, ref.unconstrained_cov * (T_DF - 2) / T_DF, df=T_DF
    )
    u = _float32(proposal.rvs(NUM_DRAWS, random_state=np.random.default_rng(0)))
    log_p, _, quantities, u_back = _evaluator(post)(jnp.asarray(u, jnp.float32), post.meanfield_params())
    log_w = np.asarray(log_p, np.float64) - proposal.logpdf(u)
    estimate, se = _log_mean_exp(log_w)
    assert abs(estimate - ref.log_Z) < 4 * math.hypot(se, ref.log_Z_se), (estimate, se, ref.log_Z)
    # The shape, not only the normalisation: the self-normalised means of the reported quantities
    # match the reference's within 0.05 sd (the file's own IS means agree with the NUTS means to 0.04
    # sd; their Monte Carlo SE is 0.01 sd) plus 4 of this estimate's standard errors.
    w = np.exp(log_w - log_w.max())
    w /= w.sum()
    for key, values in quantities.items():
        values = np.asarray(values, np.float64).reshape(NUM_DRAWS, -1)
        mean = w @ values
        mean_se = np.sqrt(w**2 @ (values - mean) ** 2)
        error = np.abs(mean - ref.mean[key].ravel())
        assert np.all(error < 0.05 * ref.sd[key].ravel() + 4 * mean_se), (key, error / ref.sd[key].ravel())
    # The same draws: the quantities match the reference's keys and shapes, and T^{-1}(T(u)) = u where
    # float32 resolves it (the t's tails reach logits of 13, where the sigmoid is 1 - 2e-6).
    assert {k: v.shape[1:] for k, v in quantities.items()} == {k: v.shape for k, v in ref.mean.items()}
    resolved = np.abs(u) < 8
    np.testing.assert_allclose(np.asarray(u_back)[resolved], u[resolved], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_constrained_elbo_is_the_unconstrained_elbo_and_below_log_Z(posts, name):
    """At the Gaussian approximation's mean-field optimum: per draw, bbvi's constrained
    log p(z) - log q(z) equals log p(T(u)) + log|J| - log q_u(u), and the ELBO is below log Z."""
    post = posts[name]
    ref = post.reference
    params = post.meanfield_params()
    u, log_q_u = _gaussian_draws(post, params, seed=1)
    log_p_u, elbo_terms, _, _ = _evaluator(post)(jnp.asarray(u, jnp.float32), params)
    log_p_u, elbo_terms = np.asarray(log_p_u, np.float64), np.asarray(elbo_terms, np.float64)
    # float32 round-off: a log-joint of ~2000 nats has an ulp of 2.4e-4 (measured: at most 2.6e-4 here);
    # a wrong transform or Jacobian costs O(0.1-1) nats.
    np.testing.assert_allclose(elbo_terms, log_p_u - log_q_u, rtol=0, atol=2e-3)
    elbo, se = elbo_terms.mean(), elbo_terms.std(ddof=1) / math.sqrt(NUM_DRAWS)
    assert elbo < ref.log_Z + 4 * math.hypot(se, ref.log_Z_se)


# Fitted from bbvi's default initialisation, one posterior per kind of support: the funnel with a
# positive scale; the unit interval and GARCH's dependent bound; ordered, positive and unit interval
# together. (The IS test above covers every density; each fit costs a compilation.)
# Mean field's means differ from the exact ones by the posterior's non-Gaussianity (low_dim_gauss_mix's
# mu by ~0.15 sd at convergence), hence a modest 0.25 sd; eight schools' tau and theta are biased far
# more by the funnel, so only mu is compared there.
FITS = {
    "eight_schools-eight_schools_noncentered": ("mu",),
    "garch-garch11": ("mu", "alpha0", "alpha1", "beta1"),
    "low_dim_gauss_mix-low_dim_gauss_mix": ("mu", "sigma", "theta"),
}
FIT_STEPS = 1500
MEAN_TOLERANCE_SD = 0.25
FIT_OPTIMIZER = optax.adam(optax.cosine_decay_schedule(0.05, FIT_STEPS, alpha=1e-3))


@pytest.mark.slow
@pytest.mark.parametrize("name", FITS)
def test_meanfield_fit(posts, name):
    """A fit's many-sample ELBO stays below log Z, and its means come within `MEAN_TOLERANCE_SD` sds of
    the reference's plus 4 Monte Carlo standard errors of q's sample mean."""
    post = posts[name]
    ref = post.reference
    result = bbvi.fit(
        post.log_joint,
        post.family,
        key=jax.random.key(0),
        num_steps=FIT_STEPS,
        optimizer=FIT_OPTIMIZER,
        progress_bar=False,
    )
    u, _ = _gaussian_draws(post, result.params, seed=2)
    _, elbo_terms, quantities, _ = _evaluator(post)(jnp.asarray(u, jnp.float32), result.params)
    elbo_terms = np.asarray(elbo_terms, np.float64)
    elbo, se = elbo_terms.mean(), elbo_terms.std(ddof=1) / math.sqrt(NUM_DRAWS)
    assert elbo < ref.log_Z + 4 * math.hypot(se, ref.log_Z_se)
    for key in FITS[name]:
        draws = np.asarray(quantities[key], np.float64)
        error = np.abs(draws.mean(axis=0) - ref.mean[key])
        allowed = MEAN_TOLERANCE_SD * ref.sd[key] + 4 * draws.std(axis=0) / math.sqrt(NUM_DRAWS)
        assert np.all(error < allowed), (key, error / ref.sd[key])
