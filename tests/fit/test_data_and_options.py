"""`fit` with data (full batches and minibatches), amortised families, objectives, priors and stateful
control variates: each against an exact answer or an equivalent run."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import optax
import pytest

import bbvi

# A normal mean with known noise: x_n ~ N(mu, 1), mu ~ N(0, 1). Posterior N(sum x / (N + 1), 1 / (N + 1)).
NUM_DATA = 200
X = np.asarray(np.random.default_rng(0).normal(1.5, 1.0, NUM_DATA), np.float32)
POST_MEAN, POST_SD = X.sum() / (NUM_DATA + 1), (1 / (NUM_DATA + 1)) ** 0.5


def log_lik(mu, x):
    return jnp.sum(jax.scipy.stats.norm.logpdf(x, mu, 1.0))


def log_joint_closed(mu):
    return jax.scipy.stats.norm.logpdf(mu) + log_lik(mu, X)


def log_joint_data(mu, x):
    # Minibatch scaling: unbiased for the full log-likelihood.
    return jax.scipy.stats.norm.logpdf(mu) + NUM_DATA / x.shape[0] * log_lik(mu, x)


FAMILY = bbvi.MeanFieldGaussian(())
SETTINGS = dict(key=jax.random.key(3), num_steps=1500, optimizer=optax.adam(2e-2), progress_bar=False)


def test_full_batch_data_gives_the_same_fit_as_closing_over_the_data():
    closed = bbvi.fit(log_joint_closed, FAMILY, **SETTINGS)
    passed = bbvi.fit(log_joint_data, FAMILY, data=X, **SETTINGS)
    np.testing.assert_allclose(passed.elbo, closed.elbo, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(passed.params), jax.tree.leaves(closed.params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_minibatches_reach_the_exact_posterior():
    result = bbvi.fit(log_joint_data, FAMILY, data=X, batch_size=20, **SETTINGS)
    loc, sd = float(result.params["loc"]), float(jnp.exp(result.params["log_scale"]))
    # Minibatch noise keeps the iterate jittering around the optimum at Adam's step size 2e-2, at
    # most a fraction of the posterior sd; a missing N/B scaling would put sd off by sqrt(10).
    assert abs(loc - POST_MEAN) < 0.5 * POST_SD
    assert abs(np.log(sd / POST_SD)) < 0.3


def test_minibatches_are_drawn_on_device_without_replacement_and_reproducibly():
    seen = []

    def log_joint(mu, x):
        jax.debug.callback(lambda b: seen.append(np.asarray(b)), x)
        return jax.scipy.stats.norm.logpdf(mu) + log_lik(mu, x)

    bbvi.fit(log_joint, FAMILY, key=jax.random.key(0), num_steps=3, data=X, batch_size=50, progress_bar=False)
    assert seen and all(b.shape == (50,) and len(np.unique(b)) == 50 and np.isin(b, X).all() for b in seen)
    a = bbvi.fit(log_joint_data, FAMILY, data=X, batch_size=20, **{**SETTINGS, "num_steps": 50})
    b = bbvi.fit(log_joint_data, FAMILY, data=X, batch_size=20, **{**SETTINGS, "num_steps": 50})
    np.testing.assert_array_equal(a.elbo, b.elbo)


def test_data_can_be_a_pytree():
    data = {"x": X, "w": np.ones(NUM_DATA, np.float32)}

    def log_joint(mu, d):
        return jax.scipy.stats.norm.logpdf(mu) + jnp.sum(
            d["w"] * jax.scipy.stats.norm.logpdf(d["x"], mu, 1.0)
        )

    result = bbvi.fit(log_joint, FAMILY, data=data, **SETTINGS)
    assert abs(float(result.params["loc"]) - POST_MEAN) < 0.5 * POST_SD


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(batch_size=10), ValueError, "batch_size needs data"),
        (dict(data=X, batch_size=NUM_DATA + 1), ValueError, r"batch_size must be in \[1, 200\]"),
        (dict(data=X, batch_size=2.5), TypeError, "batch_size must be an int"),
        (dict(data={"a": X, "b": X[:10]}), ValueError, "leading axis"),
        (dict(data=np.float32(1.0)), ValueError, "leading axis"),
    ],
)
def test_bad_data_options_are_clear_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        bbvi.fit(log_joint_data, FAMILY, key=jax.random.key(0), num_steps=2, progress_bar=False, **kwargs)


def test_fit_with_minibatches_under_vmap_over_keys():
    keys = jax.random.split(jax.random.key(1), 3)

    def one(key):
        return bbvi.fit(
            log_joint_data, FAMILY, key=key, num_steps=800, data=X, batch_size=20, progress_bar=False
        )

    locs = jax.jit(jax.vmap(one))(keys).params["loc"]
    assert locs.shape == (3,) and np.all(np.abs(np.asarray(locs) - POST_MEAN) < 0.5 * POST_SD)


# --------------------------------------------------------------------------------------------------
# Amortised inference: z_i ~ N(0, 1), x_i | z_i ~ N(z_i, s^2), so
# q*(z_i | x_i) = N(x_i / (1 + s^2), s^2 / (1 + s^2)).

NOISE = 0.5
BATCH = 32


def test_an_amortised_fit_learns_the_exact_posterior_map():
    rng = np.random.default_rng(1)
    z = rng.normal(size=2000)
    x = (z + NOISE * rng.normal(size=2000)).astype(np.float32)[:, None]
    family = bbvi.Amortized(bbvi.MeanFieldGaussian(()), data_shape=(1,), batch_size=BATCH, hidden_sizes=())

    def log_joint(z, batch):
        return jnp.sum(jax.scipy.stats.norm.logpdf(z)) + jnp.sum(
            jax.scipy.stats.norm.logpdf(batch[:, 0], z, NOISE)
        )

    result = bbvi.fit(
        log_joint,
        family,
        key=jax.random.key(0),
        num_steps=3000,
        data=x,
        batch_size=BATCH,
        estimator=bbvi.Estimator("reparam", entropy="stl"),
        optimizer=optax.adam(1e-2),
        progress_bar=False,
    )
    test_x = np.linspace(-2, 2, BATCH, dtype=np.float32)[:, None]
    _, q = family.condition(result.params, test_x)
    # A linear encoder can represent q* exactly, where the STL gradient vanishes for every datum and
    # sample, so the only error is the optimiser's (Adam's jitter at step 1e-2, a few 1e-3).
    np.testing.assert_allclose(q["loc"], test_x[:, 0] / (1 + NOISE**2), atol=0.03)
    np.testing.assert_allclose(jnp.exp(q["log_scale"]), NOISE / (1 + NOISE**2) ** 0.5, rtol=0.05)
    draws = result.sample(jax.random.key(1), 4, data=test_x)
    assert draws.shape == (4, BATCH)


def test_an_amortised_family_without_data_is_a_clear_error():
    family = bbvi.Amortized(bbvi.MeanFieldGaussian(()), data_shape=(1,), batch_size=4)
    with pytest.raises(ValueError, match="amortised"):
        bbvi.fit(lambda z: -jnp.sum(z**2), family, key=jax.random.key(0), num_steps=2, progress_bar=False)


# --------------------------------------------------------------------------------------------------
# Objectives, priors and stateful control variates through fit.


def test_a_separate_prior_with_closed_form_kl_recovers_the_posterior():
    # log_joint is the log-likelihood only; the N(0, 1) prior enters through its closed-form KL.
    result = bbvi.fit(lambda mu: log_lik(mu, X), FAMILY, prior=dist.Normal(0.0, 1.0), **SETTINGS)
    assert abs(float(result.params["loc"]) - POST_MEAN) < 0.3 * POST_SD
    assert abs(float(jnp.exp(result.params["log_scale"])) / POST_SD - 1) < 0.1


def test_the_iwae_objective_trains_and_bounds_the_exact_evidence():
    # The plain IWAE gradient's signal-to-noise ratio in the scale is ~0.1 near the optimum (the bound
    # is flat there), so Adam random-walks; DReG's is ~20x higher and the fit settles. Started from
    # an ELBO fit, as IWAE fits often are: from afar, IWAE widens q while it travels and Adam's
    # memory of those large early gradients slows the return.
    start = bbvi.fit(log_joint_closed, FAMILY, **SETTINGS).params
    dreg = bbvi.Estimator("reparam", entropy="dreg")
    iwae = bbvi.fit(log_joint_closed, FAMILY, objective="iwae", estimator=dreg, init_params=start, **SETTINGS)
    assert abs(float(iwae.params["loc"]) - POST_MEAN) < 0.3 * POST_SD
    assert abs(float(jnp.exp(iwae.params["log_scale"])) / POST_SD - 1) < 0.1
    # x ~ N(0, I + 1 1^T) marginally: the exact log evidence.
    log_z = jax.scipy.stats.multivariate_normal.logpdf(X, jnp.zeros(NUM_DATA), jnp.eye(NUM_DATA) + 1.0)
    keys = jax.random.split(jax.random.key(9), 4000)
    for objective in ("elbo", "iwae"):
        vg = bbvi.elbo_value_and_grad(log_joint_closed, FAMILY, objective=objective, num_samples=8)
        values = np.asarray(jax.jit(jax.vmap(vg, (None, 0)))(iwae.params, keys)[0], np.float64)
        gap = float(log_z) - values.mean()
        # A lower bound (gap >= 0 up to 4 standard errors), and tight: q is near the exact posterior.
        assert -4 * values.std() / len(values) ** 0.5 < gap < 0.05, (objective, gap)


def test_a_moving_average_baseline_keeps_its_state_in_the_result_and_resumes():
    table = jnp.asarray(np.random.default_rng(2).normal(size=(2, 2, 2)), jnp.float32)
    family = bbvi.Bernoulli((3,))
    kwargs = dict(num_samples=1, control_variate=bbvi.MovingAverage(0.9), progress_bar=False)
    whole = bbvi.fit(lambda z: table[tuple(z)], family, key=jax.random.key(0), num_steps=200, **kwargs)
    total, weight = whole.estimator_state
    assert float(weight) > 0.99 and np.isfinite(float(total))
    again = bbvi.fit(
        lambda z: table[tuple(z)],
        family,
        key=jax.random.key(1),
        num_steps=10,
        init_params=whole.params,
        init_opt_state=whole.opt_state,
        init_estimator_state=whole.estimator_state,
        **kwargs,
    )
    assert again.elbo.shape == (10,) and np.all(np.isfinite(again.elbo))
