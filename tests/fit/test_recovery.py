"""`fit` recovers exact answers: conjugate Gaussian posteriors and an enumerable discrete model.

Tolerances are stated in posterior standard deviations (the data README's 0.05-0.1 sd for
means). The fits use a decaying step size so the optimiser's stationary noise is well inside them.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import optax
import pytest

import bbvi
from bbvi.models import linear_regression

pytestmark = pytest.mark.slow


def decaying_adam(num_steps, start=3e-2, end=3e-4):
    return optax.adam(optax.exponential_decay(start, num_steps, end / start))


@pytest.fixture(scope="module")
def regression():
    data = linear_regression.simulate(seed=1, num_data=40, dim=3, correlation=0.8)
    mean, cov = linear_regression.exact_posterior(data)
    return data, np.asarray(mean), np.asarray(cov)


def test_full_rank_recovers_exact_posterior(regression):
    data, mean, cov = regression
    family = bbvi.FullRankGaussian(3)
    # Sticking the landing: at the exact posterior the gradient noise vanishes, so it converges tightly.
    result = bbvi.fit(
        linear_regression.log_joint_fn(data),
        family,
        key=jax.random.key(0),
        num_steps=3000,
        optimizer=decaying_adam(3000),
        estimator=bbvi.Estimator("reparam", entropy="stl"),
        progress_bar=False,
    )
    sd = np.sqrt(np.diag(cov))
    scale_tril = np.asarray(bbvi.FullRankGaussian.scale_tril(result.params))
    fitted_cov = scale_tril @ scale_tril.T
    fitted_sd = np.sqrt(np.diag(fitted_cov))
    np.testing.assert_array_less(np.abs(np.asarray(result.params["loc"]) - mean), 0.05 * sd)
    np.testing.assert_allclose(fitted_sd, sd, rtol=0.05)
    corr = cov / np.outer(sd, sd)
    fitted_corr = fitted_cov / np.outer(fitted_sd, fitted_sd)
    assert np.abs(corr[np.triu_indices(3, 1)]).min() > 0.3, "the test needs real correlations"
    np.testing.assert_allclose(fitted_corr, corr, atol=0.03)
    # The full-rank optimum attains the evidence: the late ELBO estimates average to log p(y).
    late = np.asarray(result.elbo[-500:])
    log_z = float(linear_regression.log_evidence(data))
    assert abs(late.mean() - log_z) < 4 * late.std() / np.sqrt(late.size) + 0.02


def test_mean_field_recovers_mean_and_mean_field_optimum_sds(regression):
    data, mean, cov = regression
    result = bbvi.fit(
        linear_regression.log_joint_fn(data),
        bbvi.MeanFieldGaussian((3,)),
        key=jax.random.key(1),
        num_steps=3000,
        optimizer=decaying_adam(3000),
        estimator="reparam",
        progress_bar=False,
    )
    sd = np.sqrt(np.diag(cov))
    optimum_scale = np.asarray(linear_regression.mean_field_optimum_scale(data))
    assert np.all(optimum_scale < 0.8 * sd), "mean field must under-disperse here, or the test is weak"
    np.testing.assert_array_less(np.abs(np.asarray(result.params["loc"]) - mean), 0.05 * sd)
    np.testing.assert_allclose(np.exp(np.asarray(result.params["log_scale"])), optimum_scale, rtol=0.05)


# --- discrete latents: a small binary factor model whose posterior can be enumerated ---------------

NUM_BITS = 4
NOISE = 2.0


@pytest.fixture(scope="module")
def factor_model():
    """z_j ~ Bernoulli(0.3), x ~ N(W z, 2^2 I) with 6 outputs: 16 configurations to enumerate."""
    kw, kz, kx = jax.random.split(jax.random.key(42), 3)
    w = jax.random.normal(kw, (6, NUM_BITS))
    z_true = jnp.array([1, 0, 1, 0])
    x = w @ z_true + NOISE * jax.random.normal(kx, (6,))

    def log_joint(z):
        zf = z.astype(jnp.float32)
        return dist.Bernoulli(0.3).log_prob(z).sum() + dist.Normal(w @ zf, NOISE).log_prob(x).sum()

    configs = jnp.array(list(itertools.product([0, 1], repeat=NUM_BITS)))
    log_p = jax.vmap(log_joint)(configs)
    return log_joint, configs, np.asarray(log_p, dtype=np.float64)


def exact_mean_field_elbo(probs, configs, log_p):
    """The ELBO of q(z) = prod_j Bernoulli(probs_j), by enumeration (no Monte Carlo)."""
    configs = np.asarray(configs)
    log_q = (configs * np.log(probs) + (1 - configs) * np.log1p(-probs)).sum(1)
    q = np.exp(log_q)
    return float(np.sum(q * (log_p - log_q)))


def cavi(probs, configs, log_p, sweeps=200):
    """Exact coordinate ascent: q_j(1) proportional to exp E_{q_-j}[log p(z_j = 1, z_-j)]."""
    configs = np.asarray(configs)
    probs = probs.copy()
    for _ in range(sweeps):
        for j in range(NUM_BITS):
            others = np.delete(np.arange(NUM_BITS), j)
            q_others = np.prod(np.where(configs[:, others] == 1, probs[others], 1 - probs[others]), axis=1)
            e1 = np.sum(np.where(configs[:, j] == 1, q_others * log_p, 0.0))
            e0 = np.sum(np.where(configs[:, j] == 0, q_others * log_p, 0.0))
            probs[j] = 1 / (1 + np.exp(-np.clip(e1 - e0, -30, 30)))
    return probs


def test_score_function_fit_reaches_best_mean_field_elbo(factor_model):
    log_joint, configs, log_p = factor_model
    rng = np.random.default_rng(0)
    optima = [cavi(rng.uniform(0.05, 0.95, NUM_BITS), configs, log_p) for _ in range(20)]
    best = max(exact_mean_field_elbo(p, configs, log_p) for p in optima)
    log_evidence = float(np.log(np.sum(np.exp(log_p - log_p.max()))) + log_p.max())
    assert best <= log_evidence + 1e-9

    result = bbvi.fit(
        log_joint,
        bbvi.Bernoulli((NUM_BITS,)),
        key=jax.random.key(3),
        num_steps=3000,
        optimizer=decaying_adam(3000, start=5e-2),
        estimator="score",
        num_samples=16,
        progress_bar=False,
    )
    probs = np.asarray(jax.nn.sigmoid(result.params["logits"]), dtype=np.float64)
    fitted = exact_mean_field_elbo(probs, configs, log_p)
    # The fitted ELBO is evaluated exactly, so the only gap left is optimisation error.
    assert fitted >= best - 0.01, (fitted, best)
    assert fitted <= best + 1e-6


def test_auto_fits_gaussian_mixture_with_discrete_assignments():
    """Cluster means pathwise, assignments by score function, in one estimate."""
    key_c, key_x = jax.random.split(jax.random.key(7))
    centres = jnp.array([-3.0, 3.0])
    labels = jax.random.bernoulli(key_c, 0.5, (30,)).astype(jnp.int32)
    x = centres[labels] + 0.5 * jax.random.normal(key_x, (30,))

    def log_joint(z):
        prior = dist.Normal(0.0, 5.0).log_prob(z["mu"]).sum()
        assignments = dist.Categorical(probs=jnp.full(2, 0.5)).log_prob(z["c"]).sum()
        return prior + assignments + dist.Normal(z["mu"][z["c"]], 0.5).log_prob(x).sum()

    family = {"mu": bbvi.MeanFieldGaussian((2,)), "c": bbvi.Categorical((30,), 2)}
    result = bbvi.fit(
        log_joint,
        family,
        key=jax.random.key(0),
        num_steps=3000,
        optimizer=decaying_adam(3000),
        progress_bar=False,
    )
    order = np.argsort(np.asarray(result.params["mu"]["loc"]))
    assignment = np.asarray(jnp.argmax(result.params["c"]["logits"], -1))
    relabelled = np.argsort(order)[assignment]
    assert np.mean(relabelled == np.asarray(labels)) == 1.0
    # Given the (here certain) assignments the means' posterior is conjugate Normal.
    for k in range(2):
        members = np.asarray(x)[np.asarray(labels) == k]
        precision = len(members) / 0.25 + 1 / 25.0
        post_mean, post_sd = members.sum() / 0.25 / precision, precision**-0.5
        fitted = np.asarray(result.params["mu"]["loc"])[order[k]]
        assert abs(fitted - post_mean) < 0.1 * post_sd + 4 * post_sd / np.sqrt(8 * 500)


def test_low_rank_recovers_a_diagonal_plus_rank_one_posterior():
    """A rank-1 family can represent this posterior exactly, so the fit must find its covariance."""
    rng = np.random.default_rng(3)
    dim = 5
    factor = rng.normal(size=(dim, 1))
    cov = factor @ factor.T + np.diag(rng.uniform(0.2, 0.6, dim) ** 2)
    mean = rng.normal(size=dim)
    target = dist.MultivariateNormal(jnp.asarray(mean, jnp.float32), jnp.asarray(cov, jnp.float32))
    result = bbvi.fit(
        target.log_prob,
        bbvi.LowRankGaussian(dim, 1),
        key=jax.random.key(4),
        num_steps=3000,
        optimizer=decaying_adam(3000),
        estimator=bbvi.Estimator("reparam", entropy="stl"),
        progress_bar=False,
    )
    w = np.asarray(result.params["cov_factor"])
    fitted = w @ w.T + np.diag(np.exp(2 * np.asarray(result.params["log_diag_scale"])))
    sd = np.sqrt(np.diag(cov))
    assert np.abs(cov - np.diag(np.diag(cov))).max() > 0.3, "the test needs real correlations"
    np.testing.assert_array_less(np.abs(np.asarray(result.params["loc"]) - mean), 0.05 * sd)
    np.testing.assert_allclose(fitted / np.outer(sd, sd), cov / np.outer(sd, sd), atol=0.05)
