"""The factorial HMM: forward-backward over the joint states, the structured mean field's closed-form ELBO
and coordinate ascent, and black-box VI with `bbvi.MarkovChains`.

References are float64 numpy / scipy brute force over every state sequence of a tiny model, written
independently of the module. The fit is evaluated with the closed-form ELBO at its parameters (no Monte
Carlo); its tolerance comes from the Monte Carlo standard error of its own late ELBO estimates.
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
from bbvi.models import factorial_hmm

# float32 rounding of a value of size |E| is about 1e-7 |E| per operation; sums of a few hundred
# terms stay inside 1e-5 |E|, the slack for checks that hold exactly in real arithmetic.
F32_RTOL = 1e-5
M, L, T = 2, 3, 3  # the tiny model: (L^T)^M = 729 state sequences


@pytest.fixture(scope="module")
def tiny():
    """A model with random (not sticky, not uniform) initial and transition probabilities."""
    rng = np.random.default_rng(0)
    data = factorial_hmm.simulate(seed=1, num_chains=M, num_states=L, length=T, obs_dim=2, mean_scale=1.5)
    data = data._replace(
        initial_probs=jnp.asarray(rng.dirichlet(np.ones(L), M), jnp.float32),
        transition_probs=jnp.asarray(rng.dirichlet(np.ones(L), (M, L)), jnp.float32),
    )
    sequences = np.array(list(itertools.product(range(L), repeat=M * T))).reshape(-1, M, T)
    return data, sequences, brute_force_log_joint(data, sequences)


def brute_force_log_joint(data, sequences):
    """log p(y, s) for every sequence s, shape (n, M, T), in float64."""
    pi, a = np.asarray(data.initial_probs, np.float64), np.asarray(data.transition_probs, np.float64)
    w, y = np.asarray(data.means, np.float64), np.asarray(data.y, np.float64)
    chains = np.arange(sequences.shape[1])[None, :, None]
    log_p = np.log(pi[chains[..., 0], sequences[:, :, 0]]).sum(1)
    log_p += np.log(a[chains, sequences[:, :, :-1], sequences[:, :, 1:]]).sum((1, 2))
    means = w[chains, sequences].sum(1)  # (n, T, D)
    return log_p + stats.norm.logpdf(y, means, data.noise_scale).sum((1, 2))


def test_log_joint_and_forward_backward_match_brute_force(tiny):
    data, sequences, log_p = tiny

    @jax.jit
    def module(data, sequences):
        return jax.vmap(factorial_hmm.log_joint_fn(data))(sequences), factorial_hmm.exact_posterior(data)

    log_joint, posterior = module(data, jnp.asarray(sequences, jnp.int32))
    np.testing.assert_allclose(np.asarray(log_joint), log_p, rtol=1e-5)
    log_z = special.logsumexp(log_p)
    np.testing.assert_allclose(float(posterior.log_evidence), log_z, rtol=1e-6)
    weights = np.exp(log_p - log_z)
    marginals = np.stack(
        [[[weights[sequences[:, m, t] == i].sum() for i in range(L)] for t in range(T)] for m in range(M)]
    )
    np.testing.assert_allclose(np.asarray(posterior.marginals), marginals, atol=1e-5)
    # The joint state at step t, r = sum_m s_{m,t} L^(M-1-m), as `joint_states` orders them.
    joint = sequences[:, 0, :] * L + sequences[:, 1, :]  # (n, T)
    expected = np.stack([[weights[joint[:, t] == r].sum() for r in range(L**M)] for t in range(T)])
    np.testing.assert_allclose(np.asarray(posterior.joint_marginals), expected, atol=1e-5)
    np.testing.assert_array_equal(
        np.asarray(factorial_hmm.joint_states(M, L))[:, 0], np.repeat(np.arange(L), L)
    )


def _random_chain_params(key, scale=1.5):
    family = bbvi.MarkovChains(M, T, L)
    return jax.tree.map(lambda x: scale * jax.random.normal(key, x.shape), family.init(key))


def test_structured_elbo_matches_enumeration(tiny):
    data, sequences, log_p = tiny
    family = factorial_hmm.family(data)
    params = jax.vmap(_random_chain_params)(jax.random.split(jax.random.key(0), 3))

    @jax.jit
    def module(params):
        log_q = jax.vmap(lambda p: jax.vmap(lambda s: family.log_prob(p, s))(jnp.asarray(sequences)))(params)
        return log_q, jax.vmap(lambda p: factorial_hmm.structured_elbo(data, p))(params)

    log_q, elbo = map(np.asarray, module(params))
    log_z = special.logsumexp(log_p)
    for i in range(3):
        q = np.exp(log_q[i].astype(np.float64))
        np.testing.assert_allclose(q.sum(), 1.0, rtol=1e-5)  # q is normalised over the 729 sequences
        expected = np.sum(q * (log_p - log_q[i]))
        np.testing.assert_allclose(elbo[i], expected, rtol=F32_RTOL)
        assert elbo[i] < log_z  # log p(y) - ELBO = KL(q || p) > 0


def test_chain_update_is_the_enumerated_optimum(tiny):
    """q_m(s_m) proportional to exp E_{q_-m}[log p(y, s_m, s_-m)], enumerating both chains' paths."""
    data, sequences, log_p = tiny
    params = _random_chain_params(jax.random.key(1))
    one_chain = bbvi.MarkovChains(1, T, L)
    paths = np.array(list(itertools.product(range(L), repeat=T)))  # one chain's L^T paths

    @jax.jit
    def module(params):
        def path_log_q(p, m):  # log q_m of every path of chain m
            chain = jax.tree.map(lambda x: x[m : m + 1], p)
            return jax.vmap(lambda s: one_chain.log_prob(chain, s[None]))(jnp.asarray(paths))

        updated = [factorial_hmm._chain_update(data, params, m) for m in range(M)]
        log_q = [path_log_q(u, m) for m, u in enumerate(updated)]
        return path_log_q(params, 0), path_log_q(params, 1), log_q, updated[0]["transition_logits"][1]

    log_q0, log_q1, updated, untouched = module(params)
    # Sequence k has chain 0's path k // L^T and chain 1's path k % L^T (itertools order).
    table = log_p.reshape(L**T, L**T)
    for m, q_other in [
        (0, np.exp(np.asarray(log_q1, np.float64))),
        (1, np.exp(np.asarray(log_q0, np.float64))),
    ]:
        expected = (table if m == 0 else table.T) @ q_other
        expected -= special.logsumexp(expected)
        np.testing.assert_allclose(np.asarray(updated[m]), expected, atol=1e-4)
    # Updating chain 0 leaves chain 1 as it was.
    np.testing.assert_array_equal(untouched, params["transition_logits"][1])


@pytest.fixture(scope="module")
def separated():
    """3 chains of 2 states over 10 steps emitting in 5 dimensions: the structured mean field is within
    0.01 nats of the evidence (a nearly factorised posterior), with the best of 4 coordinate-ascent runs."""
    data = factorial_hmm.simulate(seed=0, num_chains=3, num_states=2, length=10, obs_dim=5, mean_scale=1.0)

    @jax.jit
    def references(data):
        starts = jax.vmap(lambda k: _random_init(data, k))(jax.random.split(jax.random.key(1), 4))
        starts = jax.tree.map(lambda x: x.at[0].set(0.0), starts)  # the first start: uniform chains
        return factorial_hmm.exact_posterior(data), jax.vmap(
            lambda p: factorial_hmm.structured_cavi(data, p)
        )(starts)

    return (data, *references(data))


def _random_init(data, key):
    family = factorial_hmm.family(data)
    return jax.tree.map(lambda x: 3.0 * jax.random.normal(key, x.shape), family.init(key))


def test_structured_cavi_never_decreases_the_elbo(separated):
    data, posterior, runs = separated
    elbo = np.asarray(runs.elbo, np.float64)
    assert elbo.shape == (4, 1 + 30 * 3)
    slack = F32_RTOL * np.abs(elbo).max()
    assert np.all(np.diff(elbo, axis=1) >= -slack), np.diff(elbo, axis=1).min()
    assert np.all(elbo[1:, -1] > elbo[1:, 0] + 1.0), "random starts must be poor, or the test is weak"
    assert np.all(elbo <= float(posterior.log_evidence) + slack)


@pytest.mark.slow
def test_score_function_fit_reaches_the_structured_optimum(separated):
    data, posterior, runs = separated
    num_steps = 4000
    result = bbvi.fit(
        factorial_hmm.log_joint_fn(data),
        factorial_hmm.family(data),
        key=jax.random.key(0),
        num_steps=num_steps,
        optimizer=optax.adam(optax.exponential_decay(0.3, num_steps, 0.01)),
        estimator="score",
        num_samples=16,
        control_variate="rao_blackwell",  # each chain is one factor, centred with that chain redrawn
        progress_bar=False,
    )
    fitted = float(jax.jit(factorial_hmm.structured_elbo)(data, result.params))
    optimum = float(np.max(runs.elbo[:, -1]))
    log_z = float(posterior.log_evidence)
    # The late ELBO estimates are independent given the iterates (fresh keys each step): their mean
    # has standard error sd / sqrt(n). The fit must reach the structured optimum within 4 of those,
    # the resolution of its own estimates, and stay below the evidence (up to float32 rounding).
    late = np.asarray(result.elbo[-num_steps // 4 :], np.float64)
    se = late.std() / np.sqrt(late.size)
    assert optimum - 4 * se <= fitted <= log_z + F32_RTOL * abs(log_z), (fitted, optimum, log_z, se)
    assert abs(late.mean() - optimum) <= 4 * se + (optimum - fitted), (late.mean(), optimum, se)
    # So its gap to the evidence, KL(q || p), is at most the structured optimum's (measured 0.01 nats)
    # plus 4 se; by Pinsker every marginal is then within sqrt(KL / 2) of the exact posterior's.
    kl_bound = log_z - optimum + 4 * se
    assert log_z - fitted <= kl_bound
    marginals = np.asarray(factorial_hmm.family(data).marginals(result.params))
    errors = np.abs(marginals - np.asarray(posterior.marginals))
    assert errors.max() <= np.sqrt(kl_bound / 2), (errors.max(), kl_bound)


def test_bad_arguments_raise_clear_errors():
    data = factorial_hmm.simulate(seed=0, num_chains=2, num_states=2, length=3, obs_dim=2)
    with pytest.raises(ValueError, match="y must have shape"):
        factorial_hmm.log_joint_fn(data._replace(y=jnp.zeros((3, 4))))
    with pytest.raises(ValueError, match="initial_probs must be"):
        factorial_hmm.exact_posterior(data._replace(initial_probs=jnp.ones((3, 2)) / 2))
    with pytest.raises(ValueError, match="noise_scale must be positive"):
        factorial_hmm.structured_elbo(data._replace(noise_scale=-1.0), factorial_hmm.family(data).init(None))
    with pytest.raises(ValueError, match="joint states"):
        factorial_hmm.joint_states(13, 2)
    with pytest.raises(ValueError, match="num_states must be an int >= 2"):
        factorial_hmm.simulate(num_states=1)
    with pytest.raises(TypeError, match="num_chains must be an int"):
        factorial_hmm.simulate(num_chains=2.5)
