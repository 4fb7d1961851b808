"""`MarkovChains` beyond the registry contract: exact entropy, marginals, per-chain factors, a fit.

Ground truth is brute-force enumeration of every joint configuration in float64, with the
log-probabilities from the hand-written oracle in `cases_markov` (never from bbvi).
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import bbvi
from bbvi.families.markov import MarkovChains

from ._helpers import fast_jit, mc_tolerance, perturb
from .cases_markov import CASES, chain_log_probs, enumerated_moments, log_softmax, paths, support_points

FAMILIES = {case.id: case.make() for case in CASES}


def random_params(family, seed):
    # Spread 1.5: far from uniform, so a wrong weighting of rows or steps changes the answer.
    return jax.tree.map(np.asarray, perturb(family.init(jax.random.key(0)), seed, spread=1.5))


def joint_log_probs(family, params) -> tuple[np.ndarray, np.ndarray]:
    """Every joint configuration (N, M, T) and its float64 log q (N,)."""
    everything = support_points(family)
    return everything, chain_log_probs(family, params, everything).sum(axis=1)


@pytest.mark.parametrize("family", FAMILIES.values(), ids=FAMILIES.keys())
def test_entropy_and_marginals_match_enumeration(family):
    params = random_params(family, seed=1)
    everything, log_q = joint_log_probs(family, params)
    q = np.exp(log_q)
    entropy = fast_jit(family.entropy)(params)
    # float32 sums of a few dozen O(1) terms: rounding ~1e-6, while a wrongly weighted row is O(0.1).
    np.testing.assert_allclose(entropy, -np.sum(q * log_q), rtol=1e-5, atol=1e-5)
    onehot = everything[..., None] == np.arange(family.num_states)  # (N, M, T, L)
    marginals = fast_jit(family.marginals)(params)
    assert marginals.shape == (family.num_chains, family.length, family.num_states)
    np.testing.assert_allclose(marginals, np.einsum("n,nmti->mti", q, onehot), atol=1e-6)


def test_entropy_gradient_matches_finite_differences():
    # The score estimator uses the closed-form entropy, so its gradient (through the forward
    # recursion's marginals too) must be the gradient of the true entropy.
    family = FAMILIES["markov_m2_t3_l2"]
    params = random_params(family, seed=2)

    def enumerated_entropy(p):  # float64 oracle
        log_q = joint_log_probs(family, p)[1]
        return -np.sum(np.exp(log_q) * log_q)

    grad = jax.tree.map(np.asarray, fast_jit(jax.grad(family.entropy))(params))
    h = 1e-5  # central differences in float64: truncation ~h^2, rounding ~1e-16/h, both < 1e-9
    for name, value in params.items():
        numeric = np.zeros(value.shape)
        for index in np.ndindex(value.shape):
            up, down = dict(params), dict(params)
            up[name] = value.astype(np.float64).copy()
            down[name] = value.astype(np.float64).copy()
            up[name][index] += h
            down[name][index] -= h
            numeric[index] = (enumerated_entropy(up) - enumerated_entropy(down)) / (2 * h)
        # float32 gradients of O(1) quantities: rounding ~1e-6.
        np.testing.assert_allclose(grad[name], numeric, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("case_id", ["markov_m2_t3_l2", "markov_m3_t1_l3"])
def test_factor_log_prob_is_each_chains_marginal_log_prob(case_id):
    family = FAMILIES[case_id]
    assert family.factor_dims == 1
    params = random_params(family, seed=3)
    everything, log_q = joint_log_probs(family, params)

    @fast_jit
    def both(params, z):
        return jax.vmap(family.factor_log_prob, (None, 0))(params, z), jax.vmap(family.log_prob, (None, 0))(
            params, z
        )

    factors, totals = map(np.asarray, both(params, jnp.asarray(everything)))
    assert factors.shape == (len(everything), family.num_chains)
    np.testing.assert_allclose(factors.sum(axis=1), totals, rtol=1e-6, atol=1e-6)
    for m in range(family.num_chains):
        # Chain m's path probability under the joint: sum q over every configuration sharing it.
        # Equal to exp(factor m) only if the factors really are the independent chains.
        _, which = np.unique(everything[:, m], axis=0, return_inverse=True)
        marginal = np.bincount(which.ravel(), weights=np.exp(log_q))[which.ravel()]
        np.testing.assert_allclose(factors[:, m], np.log(marginal), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_fit_recovers_a_product_of_markov_chains():
    # The target is itself a product of Markov chains, so q can equal it: then log Z = 0, the
    # ELBO's maximum is 0 and KL(q || p) = -ELBO reaches 0.
    m, length, k = 2, 3, 3
    family = MarkovChains(m, length, k)
    rng = np.random.default_rng(0)
    target = {
        "initial_logits": rng.standard_normal((m, k)),
        "transition_logits": rng.standard_normal((m, 2, k, k)),
    }
    initial = jnp.asarray(log_softmax(target["initial_logits"]), jnp.float32)
    tables = jnp.asarray(log_softmax(target["transition_logits"]), jnp.float32)
    chains = jnp.arange(m)

    def log_joint(z):  # written out here, independent of MarkovChains.log_prob
        terms = [initial[chains, z[:, 0]]] + [
            tables[chains, t, z[:, t], z[:, t + 1]] for t in range(length - 1)
        ]
        return jnp.sum(jnp.stack(terms))

    num_steps = 1000
    result = bbvi.fit(
        log_joint,
        family,
        key=jax.random.key(0),
        num_steps=num_steps,
        # A decaying step size, so the last iterate settles instead of jittering with the score noise.
        optimizer=optax.adam(optax.cosine_decay_schedule(0.1, num_steps, alpha=0.01)),
        estimator="score",
        num_samples=16,
        progress_bar=False,
    )

    def kl(params):  # exact KL(q || target), the sum of the chains' KLs, each over every path
        every = np.broadcast_to(paths(family)[:, None, :], (k**length, m, length))
        log_q = chain_log_probs(family, jax.tree.map(np.asarray, params), every)
        return float(np.sum(np.exp(log_q) * (log_q - chain_log_probs(family, target, every))))

    initial_kl, final_kl = kl(family.init(jax.random.key(0))), kl(result.params)
    # From 0.90 nats at the uniform init; fits with other keys end at 0.004-0.006. 0.02 is a 45-fold
    # reduction with a 3x margin over what the optimiser reaches.
    assert initial_kl > 0.5 and final_kl < 0.02, (initial_kl, final_kl)
    # Each of the last ELBO estimates is unbiased for -KL <= 0 at its step (and below 0.02 nats):
    # their mean lies in [-0.02, 0] up to 4 standard errors.
    tail = np.asarray(result.elbo[-200:], np.float64)
    (tolerance,) = mc_tolerance(tail[:, None])
    assert -0.02 - tolerance < tail.mean() < tolerance, (tail.mean(), tolerance)
    # Pinsker: |q(A) - p(A)| <= sqrt(KL / 2) for every event A, each marginal P(z[m, t] = i) included.
    target_marginals = enumerated_moments(family, target)[0]
    fitted = fast_jit(family.marginals)(result.params)
    np.testing.assert_allclose(fitted, target_marginals, atol=np.sqrt(final_kl / 2) + 1e-6)


BAD = [
    ("no_chains", lambda: MarkovChains(0, 3, 2), ValueError, "num_chains must be an int >= 1, got 0"),
    ("length_0", lambda: MarkovChains(2, 0, 2), ValueError, "length must be an int >= 1, got 0"),
    ("one_state", lambda: MarkovChains(2, 3, 1), ValueError, "num_states must be an int >= 2, got 1"),
    ("float_chains", lambda: MarkovChains(2.0, 3, 2), TypeError, "num_chains must be an int >= 1, got 2.0"),
    ("bool_length", lambda: MarkovChains(2, True, 2), TypeError, "length must be an int >= 1, got True"),
    ("str_states", lambda: MarkovChains(2, 3, "4"), TypeError, "num_states must be an int >= 2, got '4'"),
]


@pytest.mark.parametrize(("build", "error", "match"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_constructor_arguments_raise_clear_errors(build, error, match):
    with pytest.raises(error, match=re.escape(f"MarkovChains: {match}")):
        build()


def test_numpy_ints_normalise_to_one_hashable_family():
    family = MarkovChains(np.int64(2), np.int32(3), 2)
    assert family == MarkovChains(2, 3, 2) and hash(family) == hash(MarkovChains(2, 3, 2))
    assert type(family.num_chains) is int and family.event_shape == (2, 3)


def test_length_one_chains_are_independent_categoricals():
    family = MarkovChains(3, 1, 4)
    params = random_params(family, seed=4)
    assert params["transition_logits"].shape == (3, 0, 4, 4)
    z = fast_jit(lambda p, key: bbvi.sample(family, p, key, (2,)))(params, jax.random.key(0))
    assert z.shape == (2, 3, 1) and z.dtype == jnp.int32
    expected = log_softmax(params["initial_logits"])[np.arange(3), np.asarray(z[0, :, 0])]
    np.testing.assert_allclose(fast_jit(family.factor_log_prob)(params, z[0]), expected, rtol=1e-6)
