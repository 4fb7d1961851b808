"""Logistic and softmax regression: black-box VI against reference posteriors.

German credit is judged against the shipped reference (importance sampling; means known to about
sd / 100, log Z to 0.003); simulated softmax data against `importance_reference` (asymptotically exact,
its Monte Carlo error reported), which is itself checked on German credit. The Gaussian family is an
assumption for these posteriors, so a fit can match them only as closely as a Gaussian can: the brief's
0.1 sd on means and 10% on sds, which these near-Gaussian posteriors (N / D of 40 and 30) allow.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import optax
import pytest

import bbvi
from bbvi.models import logistic_regression, softmax_regression
from bbvi.models._regression_reference import importance_sampling
from tests.models._helpers import data_file_or_skip

NUM_ELBO_DRAWS = 20_000  # ELBO estimates' draws: standard errors of 0.003 to 0.02 nats here
MEAN_TOL_SD = 0.1  # fitted means within this many reference sds
SD_RTOL = 0.1  # fitted sds within this relative error


def gaussian_elbo_fn(log_joint):
    """`(loc, scale_tril, key) -> (ELBO, standard error)` of N(loc, L L^T), from NUM_ELBO_DRAWS draws.

    One compiled function for every Gaussian over the same latents (Laplace, mean field, full rank).
    """

    @jax.jit
    def elbo(loc, scale_tril, key):
        q = dist.MultivariateNormal(loc, scale_tril=scale_tril)
        z = q.sample(key, (NUM_ELBO_DRAWS,))
        values = jax.lax.map(log_joint, z, batch_size=5_000) - q.log_prob(z)
        return values.mean(), values.std() / np.sqrt(NUM_ELBO_DRAWS)

    return elbo


def gaussian_moments(family, params):
    """(loc, scale_tril) of a fitted mean-field or full-rank Gaussian over a flat vector."""
    if isinstance(family, bbvi.FullRankGaussian):
        return params["loc"], bbvi.FullRankGaussian.scale_tril(params)
    return params["loc"].reshape(-1), jnp.diag(jnp.exp(params["log_scale"]).reshape(-1))


def assert_matches(loc, scale_tril, ref_mean, ref_sd, what):
    """Means within MEAN_TOL_SD reference sds, sds within SD_RTOL."""
    loc, scale_tril = np.asarray(loc), np.asarray(scale_tril)
    sd = np.sqrt(np.sum(scale_tril**2, axis=1))
    ref_mean, ref_sd = np.ravel(ref_mean), np.ravel(ref_sd)
    mean_err = np.max(np.abs(loc - ref_mean) / ref_sd)
    sd_err = np.max(np.abs(sd / ref_sd - 1))
    assert mean_err < MEAN_TOL_SD, f"{what}: a mean is {mean_err:.3f} reference sds off"
    assert sd_err < SD_RTOL, f"{what}: an sd is {sd_err:.1%} off"


# --- logistic regression as softmax regression's special case --------------------------------------


def test_softmax_with_two_classes_and_pinned_class_zero_is_logistic():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(40, 4)).astype(np.float32)
    y = (rng.uniform(size=40) < 0.4).astype(np.float32)
    logistic = jax.jit(logistic_regression.log_joint_fn(logistic_regression.Data(x, y)))
    softmax = jax.jit(softmax_regression.log_joint_fn(softmax_regression.from_logistic(x, y)))
    pinned_prior = 4 * float(dist.Normal(0.0, 1.0).log_prob(0.0))  # the four class-0 weights, held at 0
    for w in rng.normal(size=(3, 4)).astype(np.float32):
        w_softmax = np.stack([np.zeros(4, np.float32), w], axis=1)  # (D, K = 2)
        np.testing.assert_allclose(softmax(w_softmax) - pinned_prior, logistic(w), rtol=1e-5)
        np.testing.assert_allclose(softmax(w_softmax.reshape(-1)), softmax(w_softmax), rtol=1e-6)


def test_softmax_data_errors():
    with pytest.raises(TypeError, match="integer labels"):
        softmax_regression.log_joint_fn(softmax_regression.Data(jnp.zeros((3, 2)), jnp.zeros(3), 2))
    with pytest.raises(ValueError, match="num_classes"):
        softmax_regression.simulate(num_classes=1)
    with pytest.raises(ValueError, match="shapes"):
        softmax_regression.log_joint_fn(softmax_regression.Data(jnp.zeros((3, 2)), jnp.zeros(4, int), 2))


# --- German credit --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def german_credit():
    folder = data_file_or_skip(logistic_regression.GERMAN_CREDIT_FILE).parent
    data = logistic_regression.german_credit(folder)
    ref = logistic_regression.german_credit_reference(folder)
    log_joint = logistic_regression.log_joint_fn(data)
    elbo_of = gaussian_elbo_fn(log_joint)
    mode, cov = jax.jit(logistic_regression.laplace_approximation)(data)
    fits = {}
    for name, family in [
        ("full rank", logistic_regression.full_rank_family(25)),
        ("mean field", logistic_regression.mean_field_family(25)),
    ]:
        # Decayed to a step of 1e-4, so the final q's sampling jitter costs little ELBO.
        optimizer = optax.adam(optax.exponential_decay(3e-2, 2000, 1e-4 / 3e-2))
        result = bbvi.fit(
            log_joint, family, key=jax.random.key(0), num_steps=2000, optimizer=optimizer, progress_bar=False
        )
        loc, scale_tril = gaussian_moments(family, result.params)
        fits[name] = (loc, scale_tril, *elbo_of(loc, scale_tril, jax.random.key(1)))
    laplace_elbo = elbo_of(mode, jnp.linalg.cholesky(cov), jax.random.key(2))
    return dict(
        data=data, ref=ref, log_joint=log_joint, mode=mode, cov=cov, fits=fits, laplace_elbo=laplace_elbo
    )


def test_german_credit_follows_the_reference_convention(german_credit):
    x, y = np.asarray(german_credit["data"].x), np.asarray(german_credit["data"].y)
    assert x.shape == (1000, 25) and y.shape == (1000,)
    np.testing.assert_array_equal(x[:, -1], 1.0)  # the bias column, last
    np.testing.assert_allclose(x[:, :-1].mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(x[:, :-1].std(0), 1.0, rtol=1e-5)  # the population sd (ddof = 0)
    assert set(np.unique(y)) == {0.0, 1.0} and y.sum() == 300  # 300 bad-credit cases in the data set
    ref = german_credit["ref"]
    assert ref.mean.shape == ref.sd.shape == (25,)
    assert ref.log_evidence == pytest.approx(-529.18, abs=0.005)


def test_importance_reference_reproduces_german_credit(german_credit):
    """The machinery behind softmax's reference, checked against an independent one."""
    ref = german_credit["ref"]
    log_joint, mode, cov = german_credit["log_joint"], german_credit["mode"], german_credit["cov"]
    grad = jax.jit(jax.grad(log_joint))(mode)
    assert np.max(np.abs(np.asarray(grad))) < 1e-3  # Newton reached the mode (the Hessian is ~1e2)
    # `importance_reference` is Laplace then this; the Laplace step is the fixture's.
    est = jax.jit(importance_sampling, static_argnums=0)(log_joint, mode, cov, jax.random.key(5))
    ess = float(est.ess)
    assert ess > 0.2 * 20_000, f"effective sample size {ess:.0f}: the proposal does not fit"
    # A mean's Monte Carlo sd is about sd / sqrt(ess) (0.011 sd here; over 20 keys the worst of the 25
    # coordinates spread 1.3 times that): 4.5 of those for 25 coordinates, plus the reference's own
    # error of about sd / 100.
    mean_err = np.abs(np.asarray(est.mean) - ref.mean) / ref.sd
    assert np.max(mean_err) < 4.5 / np.sqrt(ess) + 0.01
    # An sd's relative Monte Carlo error is about sqrt((kurtosis - 1) / (4 ess)) ~ 1 / sqrt(2 ess) for a
    # near-Gaussian posterior (over 20 keys the worst coordinate spread 1.4 times that).
    np.testing.assert_allclose(est.sd, ref.sd, rtol=4.5 / np.sqrt(2 * ess) + 0.01)
    tol = 4 * np.hypot(float(est.log_evidence_se), ref.log_evidence_se)
    assert abs(float(est.log_evidence) - ref.log_evidence) < tol


def test_german_credit_full_rank_fit_matches_reference(german_credit):
    loc, scale_tril, _, _ = german_credit["fits"]["full rank"]
    ref = german_credit["ref"]
    assert_matches(loc, scale_tril, ref.mean, ref.sd, "German credit, full rank")


def test_german_credit_elbos_bound_log_evidence(german_credit):
    ref, fits = german_credit["ref"], german_credit["fits"]
    full_rank, full_rank_se = fits["full rank"][2:]
    mean_field, mean_field_se = fits["mean field"][2:]
    laplace, laplace_se = german_credit["laplace_elbo"]
    # ELBO <= log Z, up to both Monte Carlo errors (4 standard errors).
    for name, (value, se) in {
        "full rank": (full_rank, full_rank_se),
        "mean field": (mean_field, mean_field_se),
    }.items():
        assert value < ref.log_evidence + 4 * np.hypot(se, ref.log_evidence_se), name
    # The full-rank optimum is the best Gaussian, so it is at least as good as the Laplace Gaussian,
    # whose KL to the posterior is already small (0.18 nats here).
    assert full_rank > laplace - 4 * np.hypot(full_rank_se, laplace_se)
    # Mean field cannot hold the weights' posterior correlations: its optimum is strictly worse.
    assert mean_field < full_rank - 4 * np.hypot(full_rank_se, mean_field_se)


# --- softmax regression on simulated data ---------------------------------------------------------


@pytest.fixture(scope="module")
def softmax_fit():
    data = softmax_regression.simulate(seed=0, num_data=200, dim=3, num_classes=3)
    log_joint = softmax_regression.log_joint_fn(data)

    @jax.jit
    def reference(key):  # one compiled program: the reference and the gradient at its mode
        ref = softmax_regression.importance_reference(data, key)
        return ref, jax.grad(log_joint)(ref.mode)

    ref, grad_at_mode = reference(jax.random.key(1))
    family = softmax_regression.full_rank_family(3, 3)
    # Natural gradients, not Adam: the likelihood is flat along W + c 1^T (every class shifted alike),
    # where only the prior's weak curvature pulls; Adam's per-coordinate scaling, set by the other
    # directions' much larger gradient noise, leaves a random offset there. Plain SGD worked with
    # the raw Cholesky factor but depends on the parameterisation; the natural gradient does not.
    optimizer = optax.chain(
        bbvi.natural_gradient(family), optax.sgd(optax.exponential_decay(0.05, 2000, 0.1))
    )
    result = bbvi.fit(
        log_joint, family, key=jax.random.key(0), num_steps=2000, optimizer=optimizer, progress_bar=False
    )
    return data, ref, grad_at_mode, result


def test_softmax_importance_reference_is_reliable(softmax_fit):
    data, ref, grad_at_mode, _ = softmax_fit
    assert float(ref.ess) > 0.2 * 20_000
    assert float(ref.log_evidence_se) < 0.01
    assert np.max(np.abs(np.asarray(grad_at_mode))) < 1e-3  # Newton reached the mode
    # Along the class shift W + c 1^T only the prior acts, so each row sum of W has posterior mean 0
    # and sd sqrt(K) prior_scale; its estimate's Monte Carlo sd is that over sqrt(ess).
    row_sums = np.asarray(ref.mean).sum(axis=1)
    assert np.max(np.abs(row_sums)) < 4 * np.sqrt(data.num_classes) * data.prior_scale / np.sqrt(
        float(ref.ess)
    )


def test_softmax_full_rank_fit_matches_importance_reference(softmax_fit):
    _, ref, _, result = softmax_fit
    loc, scale_tril = gaussian_moments(result.family, result.params)
    assert_matches(loc, scale_tril, ref.mean, ref.sd, "softmax, full rank")
    # The fit's own ELBO estimates over its last 500 steps (8 draws each, independent keys; the step
    # is small by then, so q barely moves) stay below log Z.
    tail = np.asarray(result.elbo[-500:])
    se = np.hypot(tail.std() / np.sqrt(tail.size), float(ref.log_evidence_se))
    assert tail.mean() < float(ref.log_evidence) + 4 * se
