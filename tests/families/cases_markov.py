"""Registry cases and float64 oracles for `MarkovChains` (independent discrete Markov chains).

The oracles never call bbvi: the log-probability is a hand-written log-softmax chain rule, and the
moments (per-step state frequencies, consecutive-pair frequencies) come from brute-force enumeration
of every path of each chain, not from a forward recursion like the one under test.
"""

from __future__ import annotations

import itertools

import jax.numpy as jnp
import numpy as np

from bbvi.families.markov import MarkovChains

from ._helpers import Case, draw_dtype, param_shapes, reference_log_prob, reference_statistics, support_points

# Small enough to enumerate: 2^6 = 64, 3^4 = 81 and 3^3 = 27 joint configurations.
CASES = [
    Case("markov_m2_t3_l2", lambda: MarkovChains(2, 3, 2)),
    Case("markov_m1_t4_l3", lambda: MarkovChains(1, 4, 3)),
    Case("markov_m3_t1_l3", lambda: MarkovChains(3, 1, 3)),  # length 1: no transitions
]


def log_softmax(x) -> np.ndarray:
    """Along the last axis, in float64, written out (max-shifted log-sum-exp)."""
    x = np.asarray(x, np.float64)
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def chain_log_probs(family: MarkovChains, params, z) -> np.ndarray:
    """log q of each chain's path for a batch of draws: (n, M, T) -> (n, M), float64."""
    z = np.asarray(z).astype(np.int64).reshape((-1,) + family.event_shape)
    n, m, length = z.shape
    initial = log_softmax(params["initial_logits"])  # (M, L)
    tables = log_softmax(params["transition_logits"])  # (M, T-1, L, L)
    chains = np.arange(m)
    out = initial[chains, z[:, :, 0]]
    for t in range(length - 1):
        out = out + tables[chains, t, z[:, :, t], z[:, :, t + 1]]
    return out


def paths(family: MarkovChains) -> np.ndarray:
    """Every path of one chain, (L^T, T)."""
    return np.array(list(itertools.product(range(family.num_states), repeat=family.length)), np.int64)


def enumerated_moments(family: MarkovChains, params) -> tuple[np.ndarray, np.ndarray]:
    """By brute force over each chain's paths: P(z[m,t] = i) (M, T, L) and P(z[m,t] = i, z[m,t+1] = j)."""
    m, length, k = family.num_chains, family.length, family.num_states
    every = paths(family)  # (P, T)
    # Chain m's path distribution, for each m: broadcast every path to all chains at once.
    log_p = chain_log_probs(family, params, np.broadcast_to(every[:, None, :], (len(every), m, length)))
    prob = np.exp(log_p)  # (P, M)
    onehot = (every[..., None] == np.arange(k)).astype(np.float64)  # (P, T, L)
    single = np.einsum("pm,pti->mti", prob, onehot)
    pairs = np.einsum("pm,pti,ptj->mtij", prob, onehot[:, :-1], onehot[:, 1:])
    return single, pairs


@param_shapes.register
def _(family: MarkovChains):
    m, t, k = family.num_chains, family.length, family.num_states
    return {"initial_logits": (m, k), "transition_logits": (m, t - 1, k, k)}


@draw_dtype.register
def _(family: MarkovChains):
    return jnp.dtype(jnp.int32)


@reference_log_prob.register
def _(family: MarkovChains, params, z):
    return chain_log_probs(family, params, z).sum(axis=1)


@support_points.register
def _(family: MarkovChains):
    size = family.num_chains * family.length
    every = itertools.product(range(family.num_states), repeat=size)
    return np.array(list(every), np.int32).reshape((-1,) + family.event_shape)


@reference_statistics.register
def _(family: MarkovChains, params):
    k = family.num_states
    single, pairs = enumerated_moments(family, params)

    def stats(z):  # state frequencies per (chain, step), then consecutive-pair frequencies
        z = np.asarray(z).astype(np.int64).reshape((-1,) + family.event_shape)
        onehot = (z[..., None] == np.arange(k)).astype(np.float64)  # (n, M, T, L)
        pair = onehot[:, :, :-1, :, None] * onehot[:, :, 1:, None, :]  # (n, M, T-1, L, L)
        return np.concatenate([onehot.reshape(len(z), -1), pair.reshape(len(z), -1)], axis=1)

    return stats, np.concatenate([single.ravel(), pairs.ravel()])
