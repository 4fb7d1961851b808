"""Stochastic VI with `bbvi.Subsampled`: minibatch estimates of the ELBO and its gradient are unbiased.

The model has a global latent and one local latent per datum, with an amortised q for the locals:

    mu ~ N(0, 1),   z_i | mu ~ N(mu, 1),   x_i | z_i ~ N(z_i, 1),   i = 1..N
    q(mu) = N(m, s^2),   q(z_i | x_i) = N(a(x_i), b(x_i)^2)   (a, log b linear in x_i)

Its full-data ELBO is closed form, so the mean over random minibatches and keys of the minibatch
estimate must equal it, and equal its exact gradient, within Monte Carlo error. Scaling the
likelihood alone and not the local entropy (what a plain log-joint can do) must fail the same test.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest

import bbvi

N, B = 24, 6
X = jnp.linspace(-2.0, 3.0, N)
LOG_2PI = math.log(2 * math.pi)


def family(batch_size=B):
    local = bbvi.Amortized(bbvi.MeanFieldGaussian(()), (), batch_size, hidden_sizes=())
    return {"mu": bbvi.MeanFieldGaussian(()), "z": local}


def log_prior(z):
    return dist.Normal(0.0, 1.0).log_prob(z["mu"])


def log_likelihood_batch(z, x):
    return jnp.sum(dist.Normal(z["mu"], 1.0).log_prob(z["z"]) + dist.Normal(z["z"], 1.0).log_prob(x))


def log_likelihood_datum(z, x):
    return dist.Normal(z["mu"], 1.0).log_prob(z["z"]) + dist.Normal(z["z"], 1.0).log_prob(x)


def exact_elbo(params):
    """The full-data ELBO in closed form (Gaussian expectations)."""
    m, s = params["mu"]["loc"], jnp.exp(params["mu"]["log_scale"])
    _, local = family(N)["z"].condition(params["z"], X)
    a, b = local["loc"], jnp.exp(local["log_scale"])
    prior = -0.5 * LOG_2PI - 0.5 * (m**2 + s**2)
    z_given_mu = -0.5 * LOG_2PI - 0.5 * ((a - m) ** 2 + b**2 + s**2)
    x_given_z = -0.5 * LOG_2PI - 0.5 * ((X - a) ** 2 + b**2)
    entropy = 0.5 * (LOG_2PI + 1) + jnp.log(s) + jnp.sum(0.5 * (LOG_2PI + 1) + jnp.log(b))
    return prior + jnp.sum(z_given_mu + x_given_z) + entropy


def params_off_optimum():
    """A point away from the optimum, with an encoder that depends on x, so every gradient is non-zero."""
    params = bbvi.init(family(), jax.random.key(3))
    params["mu"] = {"loc": jnp.array(0.4), "log_scale": jnp.array(-0.7)}
    (w, bias), *rest = params["z"]["encoder"]
    params["z"]["encoder"] = [(w + jnp.array([[0.3, -0.2]]), bias + jnp.array([0.1, -0.5])), *rest]
    return params


def minibatch_estimates(model, num_draws, estimator="reparam", num_samples=2, control_variate="auto"):
    """Value and gradient of the minibatch estimate for `num_draws` random (batch, key) pairs."""
    vg = bbvi.elbo_value_and_grad(
        model, family(), estimator=estimator, num_samples=num_samples, control_variate=control_variate
    )
    params = params_off_optimum()

    def one(key):
        batch_key, key = jax.random.split(key)
        rows = jax.random.choice(batch_key, N, (B,), replace=False)
        return vg(params, key, X[rows])

    keys = jax.random.split(jax.random.key(0), num_draws)
    return params, jax.jit(jax.vmap(one))(keys)


def z_scores(draws, exact):
    """(mean - exact) / standard error, per coordinate of a pytree of draws."""
    out = []
    for d, e in zip(jax.tree.leaves(draws), jax.tree.leaves(exact)):
        d = np.asarray(d).reshape(d.shape[0], -1)
        se = d.std(axis=0, ddof=1) / math.sqrt(d.shape[0])
        out.append((d.mean(axis=0) - np.asarray(e).ravel()) / np.maximum(se, 1e-12))
    return np.concatenate(out)


SUBSAMPLED = bbvi.Subsampled(log_prior, log_likelihood_batch, num_data=N)


@pytest.mark.parametrize(
    "estimator, num_samples, control_variate",
    [
        ("reparam", 2, "auto"),  # analytic entropies, scaled for the local leaf
        (bbvi.Estimator("reparam", entropy="mc"), 2, "auto"),  # Monte Carlo log q, scaled
        ("score", 4, "loo"),  # score function: scaled values, unscaled scores
    ],
    ids=["reparam-analytic", "reparam-mc", "score-loo"],
)
def test_minibatch_estimate_is_unbiased_for_the_full_data_elbo(estimator, num_samples, control_variate):
    params, (values, grads) = minibatch_estimates(SUBSAMPLED, 4000, estimator, num_samples, control_variate)
    exact_value, exact_grad = jax.value_and_grad(exact_elbo)(params)
    # 5 standard errors: with ~8 coordinates a false alarm has probability ~5e-6.
    assert abs(z_scores(values[:, None], exact_value[None])).max() < 5
    z = z_scores(grads, exact_grad)
    assert np.abs(z).max() < 5, z


def test_scaling_the_likelihood_alone_is_detected_as_biased():
    """What a plain log-joint can do: scale the per-datum terms but not the local entropy."""

    def scaled_log_joint(z, x):
        return log_prior(z) + (N / B) * log_likelihood_batch(z, x)

    params, (values, grads) = minibatch_estimates(scaled_log_joint, 4000)
    exact_value, exact_grad = jax.value_and_grad(exact_elbo)(params)
    # The local entropy enters B times instead of N times: far outside Monte Carlo error.
    assert abs(z_scores(values[:, None], exact_value[None])).max() > 20
    assert np.abs(z_scores(grads, exact_grad)).max() > 20


def test_per_datum_likelihood_equals_the_batch_form():
    per_datum = bbvi.Subsampled(log_prior, log_likelihood_datum, per_datum=True, num_data=N)
    params = params_off_optimum()
    key, batch = jax.random.key(5), X[:B]
    a = bbvi.elbo_value_and_grad(SUBSAMPLED, family(), num_samples=3)(params, key, batch)
    b = bbvi.elbo_value_and_grad(per_datum, family(), num_samples=3)(params, key, batch)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-5)


# --- fit with a Subsampled model -------------------------------------------------------------------

Y = 1.5 + jax.random.normal(jax.random.key(7), (400,))
GLOBAL = bbvi.MeanFieldGaussian(())


def _prior(theta):
    return dist.Normal(0.0, 10.0).log_prob(theta)


def _likelihood(theta, y):
    return dist.Normal(theta, 1.0).log_prob(y).sum()


def test_fit_on_all_the_data_is_the_plain_fit():
    """Without batch_size the scale is 1: the same program as the plain log-joint, step for step."""
    key = jax.random.key(0)
    plain = bbvi.fit(
        lambda t, y: _prior(t) + _likelihood(t, y), GLOBAL, key=key, num_steps=100, data=Y, progress_bar=False
    )
    model = bbvi.fit(
        bbvi.Subsampled(_prior, _likelihood), GLOBAL, key=key, num_steps=100, data=Y, progress_bar=False
    )
    np.testing.assert_allclose(np.asarray(model.elbo), np.asarray(plain.elbo), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(model.params["loc"]), np.asarray(plain.params["loc"]), rtol=1e-6)


def test_fit_on_minibatches_finds_the_exact_posterior():
    import optax

    schedule = optax.cosine_decay_schedule(0.05, 3000, alpha=0.01)
    result = bbvi.fit(
        bbvi.Subsampled(_prior, _likelihood),
        GLOBAL,
        key=jax.random.key(1),
        num_steps=3000,
        optimizer=optax.adam(schedule),
        data=Y,
        batch_size=20,
        progress_bar=False,
    )
    # Conjugate: the posterior of theta is N(sum(y) / (n + 1/100), 1 / (n + 1/100)).
    precision = Y.shape[0] + 1e-2
    mean, sd = float(Y.sum() / precision), 1 / math.sqrt(precision)
    # A judgement call, not a Monte Carlo bound: the final iterate of a decayed-step-size run stays
    # within half a posterior sd of the mean, and the fitted sd within 20% of the exact one.
    assert abs(float(result.params["loc"]) - mean) < 0.5 * sd
    assert abs(float(jnp.exp(result.params["log_scale"])) / sd - 1) < 0.2


def test_fit_rejects_what_cannot_work():
    model = bbvi.Subsampled(_prior, _likelihood)
    common = dict(key=jax.random.key(0), num_steps=5, progress_bar=False)
    with pytest.raises(ValueError, match="needs its data"):
        bbvi.fit(model, GLOBAL, **common)
    with pytest.raises(ValueError, match="num_data is 10 but data has 400 rows"):
        bbvi.fit(bbvi.Subsampled(_prior, _likelihood, num_data=10), GLOBAL, data=Y, **common)
    with pytest.raises(ValueError, match="own log_prior"):
        bbvi.fit(model, GLOBAL, data=Y, prior=dist.Normal(0.0, 1.0), **common)
    with pytest.raises(ValueError, match="unbiased estimate of the ELBO only"):
        bbvi.fit(model, GLOBAL, data=Y, batch_size=10, objective="iwae", **common)
    with pytest.raises(ValueError, match="num_data"):
        bbvi.elbo_value_and_grad(model, GLOBAL)
    with pytest.raises(TypeError, match="log_prior must be callable"):
        bbvi.Subsampled(None, _likelihood)
    with pytest.raises(ValueError, match="per_datum log_likelihood must return a scalar"):
        per_datum = bbvi.Subsampled(_prior, lambda t, y: jnp.stack([y, y]), per_datum=True)
        bbvi.fit(per_datum, GLOBAL, data=Y, batch_size=10, **common)
