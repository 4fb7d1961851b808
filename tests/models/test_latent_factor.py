"""The binary latent factor model: enumeration, closed-form mean-field ELBO, CAVI, and black-box VI.

References are computed in float64 with numpy / scipy by brute force over the 2^K states, independently
of the module's code. Fits are evaluated with the closed-form ELBO at the fitted parameters (no Monte
Carlo); their tolerances come from the Monte Carlo standard error of the fits' own late ELBO estimates.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import special, stats

import bbvi
from bbvi.models import latent_factor

# float32 rounding of an ELBO of size |E| is about 1e-7 |E| per operation; a sum of a few dozen terms
# stays well inside 1e-5 |E|, the slack for checks that hold exactly in real arithmetic.
F32_RTOL = 1e-5


def brute_force(data: latent_factor.Data, x):
    """(states, log p(x, z) per state, log p(x)) in float64, enumerating z with numpy and scipy."""
    w, b = np.asarray(data.weights, np.float64), np.asarray(data.bias, np.float64)
    z = np.array(list(itertools.product([0, 1], repeat=w.shape[1])), np.float64)
    log_prior = stats.bernoulli.logpmf(z, data.prior_prob).sum(1)
    log_lik = stats.norm.logpdf(np.asarray(x, np.float64), z @ w.T + b, data.noise_scale).sum(1)
    log_p = log_prior + log_lik
    return z, log_p, special.logsumexp(log_p)


def enumerated_elbo(z, log_p, probs):
    """E_q[log p - log q] for q = prod_j Bernoulli(probs_j), summing over every state."""
    log_q = stats.bernoulli.logpmf(z, probs).sum(1)
    return float(np.sum(np.exp(log_q) * (log_p - log_q)))


@pytest.fixture(scope="module")
def small():
    """One datum, K = 4 factors, N = 5 outputs: 16 states."""
    return latent_factor.simulate(seed=1, num_factors=4, num_outputs=5)


def references(data):
    """The exact posterior and the best of 8 CAVI runs (from p = 1/2 and 7 random starts)."""
    return latent_factor.exact_posterior(data), latent_factor.best_cavi(data, jax.random.key(1), 8)


@pytest.fixture(scope="module")
def single():
    """One datum with K = 6, whose posterior is far from factorised (the mean-field KL is 0.2 nats)."""
    data = latent_factor.simulate(seed=3)
    return (data, *jax.jit(references)(data))


def test_log_joint_and_enumeration_match_brute_force(small):
    z, log_p, log_z = brute_force(small, small.x)

    @jax.jit
    def module(data):
        table = latent_factor.states(data.num_factors)
        return table, jax.vmap(latent_factor.log_joint_fn(data))(table), latent_factor.exact_posterior(data)

    table, log_joint, posterior = module(small)
    np.testing.assert_array_equal(np.asarray(table), z)
    np.testing.assert_allclose(np.asarray(log_joint), log_p, rtol=1e-5)
    np.testing.assert_allclose(float(posterior.log_evidence), log_z, rtol=1e-6)
    np.testing.assert_allclose(np.exp(posterior.log_probs), np.exp(log_p - log_z), atol=1e-6)
    np.testing.assert_allclose(np.asarray(posterior.marginals), np.exp(log_p - log_z) @ z, atol=1e-6)


def test_enumeration_and_log_joint_are_per_datum_with_many_data():
    data = latent_factor.simulate(seed=2, num_factors=3, num_outputs=4, num_data=5)
    z = jax.random.bernoulli(jax.random.key(0), 0.5, (5, 3)).astype(jnp.int32)

    @jax.jit
    def module(data, z):
        rows = jax.vmap(lambda x, zi: latent_factor.log_joint_fn(data._replace(x=x))(zi))(data.x, z)
        return latent_factor.exact_posterior(data), latent_factor.log_joint_fn(data)(z), rows

    posterior, total, rows = module(data, z)
    assert posterior.log_probs.shape == (5, 8) and posterior.marginals.shape == (5, 3)
    for i in range(5):
        states, log_p, log_z = brute_force(data, data.x[i])
        np.testing.assert_allclose(float(posterior.log_evidence[i]), log_z, rtol=1e-6)
        np.testing.assert_allclose(
            np.asarray(posterior.marginals[i]), np.exp(log_p - log_z) @ states, atol=1e-6
        )
        np.testing.assert_allclose(float(rows[i]), log_p[int(np.asarray(z[i]) @ [4, 2, 1])], rtol=1e-5)
    np.testing.assert_allclose(float(total), float(np.sum(rows)), rtol=1e-5)  # the joint of all data


def test_closed_form_elbo_and_kl_match_enumeration(small):
    z, log_p, log_z = brute_force(small, small.x)
    logits = 2.0 * jax.random.normal(jax.random.key(0), (3, 4))  # three arbitrary mean fields
    both = jax.jit(
        jax.vmap(lambda lg: (latent_factor.mean_field_elbo(small, lg), latent_factor.exact_kl(small, lg)))
    )
    elbo, kl = map(np.asarray, both(logits))
    for i, lg in enumerate(np.asarray(logits, np.float64)):
        expected = enumerated_elbo(z, log_p, special.expit(lg))
        np.testing.assert_allclose(elbo[i], expected, rtol=F32_RTOL)
        # log p(x) = ELBO + KL(q || p(z | x)), with KL >= 0.
        np.testing.assert_allclose(kl[i], log_z - expected, atol=F32_RTOL * abs(log_z))
        assert kl[i] > 0


def test_cavi_update_is_the_enumerated_coordinate_optimum(small):
    """logit q_j(1) = E_{q_-j}[log p(z_j = 1, z_-j, x)] - E_{q_-j}[log p(z_j = 0, z_-j, x)], enumerated."""
    z, log_p, _ = brute_force(small, small.x)
    logits = jax.random.normal(jax.random.key(1), (4,))
    updates = jax.jit(jax.vmap(lambda j: latent_factor._cavi_update(small, small.x, logits, j)))(
        jnp.arange(4)
    )
    updates, probs = np.asarray(updates), special.expit(np.asarray(logits, np.float64))
    for j in range(4):
        others = [k for k in range(4) if k != j]
        q_others = np.prod(np.where(z[:, others] == 1, probs[others], 1 - probs[others]), axis=1)
        expected = np.sum(q_others * log_p * (2 * z[:, j] - 1))  # E[. | z_j = 1] - E[. | z_j = 0]
        np.testing.assert_allclose(updates[j, j], expected, rtol=1e-4, atol=1e-4)
        np.testing.assert_array_equal(np.delete(updates[j], j), np.delete(np.asarray(logits), j))


def test_cavi_never_decreases_the_elbo_and_stops_at_a_fixed_point(single):
    data, posterior, _ = single
    starts = 2.0 * jax.random.normal(jax.random.key(2), (6, 6))

    @jax.jit
    def runs_and_one_more_sweep(starts):
        runs = jax.vmap(lambda s: latent_factor.cavi(data, s, 30))(starts)
        return runs, jax.vmap(lambda lg: latent_factor.cavi(data, lg, 1))(runs.logits)

    runs, again = runs_and_one_more_sweep(starts)
    elbo = np.asarray(runs.elbo, np.float64)
    assert elbo.shape == (6, 1 + 30 * 6)
    slack = F32_RTOL * np.abs(elbo).max()
    assert np.all(np.diff(elbo, axis=1) >= -slack), np.diff(elbo, axis=1).min()
    assert np.all(elbo[:, -1] > elbo[:, 0] + 1.0), "the starts must be poor, or monotonicity is not tested"
    assert np.all(elbo <= float(posterior.log_evidence) + slack)
    # A fixed point: one more sweep moves no probability.
    np.testing.assert_allclose(jax.nn.sigmoid(again.logits), jax.nn.sigmoid(runs.logits), atol=1e-4)


def _decaying_adam(num_steps, start=1e-1, end=1e-3):
    return optax.adam(optax.exponential_decay(start, num_steps, end / start))


@pytest.mark.slow
@pytest.mark.parametrize("control_variate", ["loo", "rao_blackwell"])
def test_score_function_fit_reaches_the_cavi_optimum(single, control_variate):
    data, posterior, best = single
    num_steps = 4000
    result = bbvi.fit(
        latent_factor.log_joint_fn(data),
        latent_factor.family(data.num_factors),
        key=jax.random.key(0),
        num_steps=num_steps,
        optimizer=_decaying_adam(num_steps),
        estimator="score",
        num_samples=16,
        control_variate=control_variate,
        progress_bar=False,
    )
    logits = result.params["logits"]
    fitted = float(latent_factor.mean_field_elbo(data, logits))
    optimum = float(best.elbo[-1])
    log_z = float(posterior.log_evidence)
    assert log_z - optimum > 0.1, "the posterior must be far from factorised, or the test is weak"
    # The late ELBO estimates are independent given the iterates (fresh keys each step): their mean
    # has standard error sd / sqrt(n). The fit must reach the best CAVI optimum within 4 of those, the
    # resolution of its own estimates; it cannot beat the optimum by more than float32 rounding.
    late = np.asarray(result.elbo[-num_steps // 4 :], np.float64)
    se = late.std() / np.sqrt(late.size)
    assert optimum - 4 * se <= fitted <= optimum + F32_RTOL * abs(optimum), (fitted, optimum, se)
    assert abs(late.mean() - optimum) <= 4 * se + (optimum - fitted), (late.mean(), optimum, se)
    # KL(q || p) by enumeration is log p(x) - ELBO: positive, the mean-field gap.
    kl = float(latent_factor.exact_kl(data, logits))
    np.testing.assert_allclose(kl, log_z - fitted, atol=F32_RTOL * abs(log_z))
    assert kl >= log_z - optimum - F32_RTOL * abs(log_z)
    # Pinsker: |q(z_j = 1) - p(z_j = 1 | x)| <= TV(q, p) <= sqrt(KL / 2).
    errors = np.abs(np.asarray(jax.nn.sigmoid(logits)) - np.asarray(posterior.marginals))
    assert errors.max() <= np.sqrt(kl / 2), (errors, kl)


@pytest.mark.slow
def test_amortized_fit_has_a_small_amortisation_gap():
    num_data, batch_size = 200, 20
    data = latent_factor.simulate(seed=3, num_data=num_data)
    posterior, best = jax.jit(references)(data)
    family = latent_factor.amortized_family(data.num_outputs, data.num_factors, batch_size, (32,))
    num_steps = 4000
    result = bbvi.fit(
        latent_factor.minibatch_log_joint_fn(data),
        family,
        key=jax.random.key(0),
        num_steps=num_steps,
        optimizer=_decaying_adam(num_steps, 1e-2, 1e-3),
        estimator="score",
        num_samples=16,
        control_variate="loo",
        data=data.x,
        batch_size=batch_size,
        progress_bar=False,
    )

    @jax.jit
    def elbos(params):  # per datum: the encoded q's, and the mean field's at p = 1/2 (the fit's start)
        logits = latent_factor.encoder_logits(family, params, data.x)
        return latent_factor.mean_field_elbo(data, logits), latent_factor.mean_field_elbo(data, 0 * logits)

    per_datum, start = map(np.asarray, elbos(result.params))
    optimum = np.asarray(best.elbo[:, -1], np.float64)
    log_z = np.asarray(posterior.log_evidence, np.float64)
    amortisation_gap = optimum - per_datum  # what sharing one encoder across data costs, per datum
    approximation_gap = log_z - optimum  # what the mean-field restriction costs, per datum
    # Each encoded q is a mean field, so none beats its datum's best mean field (up to rounding).
    assert amortisation_gap.min() >= -F32_RTOL * np.abs(optimum).max(), amortisation_gap.min()
    # The encoder learns the map x -> q: it closes the gap from its start (near q(z_j = 1) = 1/2 for every
    # datum) to within less than the mean field's own gap to the evidence. Measured: 0.08 vs 0.24 nats.
    start_gap = optimum - start
    assert start_gap.mean() > 20 * approximation_gap.mean(), "the start must be poor, or the test is weak"
    assert amortisation_gap.mean() < approximation_gap.mean(), (
        amortisation_gap.mean(),
        approximation_gap.mean(),
    )


def test_bad_arguments_raise_clear_errors():
    data = latent_factor.simulate(seed=0, num_factors=3, num_outputs=4)
    with pytest.raises(ValueError, match="prior_prob must be in"):
        latent_factor.log_joint_fn(data._replace(prior_prob=1.0))
    with pytest.raises(ValueError, match="noise_scale must be positive"):
        latent_factor.exact_posterior(data._replace(noise_scale=0.0))
    with pytest.raises(ValueError, match=r"x must have shape \(N,\)"):
        latent_factor.log_joint_fn(data._replace(x=jnp.zeros(5)))
    with pytest.raises(ValueError, match="minibatches need many data points"):
        latent_factor.minibatch_log_joint_fn(data)
    with pytest.raises(ValueError, match="enumeration needs"):
        latent_factor.states(latent_factor.MAX_ENUMERATED_FACTORS + 1)
    with pytest.raises(ValueError, match="num_factors must be a positive int"):
        latent_factor.simulate(num_factors=0)
    with pytest.raises(ValueError, match="num_sweeps must be a positive int"):
        latent_factor.cavi(data, num_sweeps=0)
