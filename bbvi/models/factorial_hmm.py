"""The factorial hidden Markov model (Ghahramani and Jordan 1997): M hidden chains jointly emit each output.

Chain m (m = 1..M) is a Markov chain over L states with its own initial distribution pi_m and
transition matrix A_m; at each step t the chains' states add their contributions to a Gaussian output,

    s_{m,1} ~ pi_m,   s_{m,t+1} | s_{m,t} ~ A_m[s_{m,t}, :],   y_t ~ N(sum_m W_m[s_{m,t}], sigma^2 I_D),

with the state means W_m (L x D), sigma, pi and A known. The latents are `s`, an int array of shape (M, T).

Exact inference treats the M chains as one chain over the L^M joint states: forward-backward over that
product space costs O(L^(2M) T) (`exact_posterior`: log p(y) and each chain's posterior marginals).
The chains are independent a priori but coupled a posteriori, since they explain the same outputs.

The structured mean field keeps each chain's dynamics and drops the coupling,
q(s) = prod_m q_m(s_m) with each q_m a Markov chain (`bbvi.MarkovChains(M, T, L)`, time-varying
transitions). Its ELBO is in closed form (`structured_elbo`): with q_m's marginals
gamma_{m,t}(i) and pairwise marginals xi_{m,t}(i, j),

    ELBO = sum_m [sum_i gamma_{m,1}(i) log pi_m(i) + sum_t sum_ij xi_{m,t}(i, j) log A_m(i, j) + H(q_m)]
           + sum_t [log N(y_t; mu_t, sigma^2 I)
                    - sum_m (sum_i gamma_{m,t}(i) ||W_m[i]||^2 - ||mu_{m,t}||^2) / (2 sigma^2)],

where mu_{m,t} = sum_i gamma_{m,t}(i) W_m[i] and mu_t = sum_m mu_{m,t} (the second sum is the spread of
the chains' contributions under q). Ghahramani and Jordan's structured variational update sets q_m to
its exact optimum given the other chains: an HMM with the model's pi_m and A_m and the variational
log-emissions h_{m,t}(i) = log N(y_t; W_m[i] + sum_{k != m} mu_{k,t}, sigma^2 I) (up to a constant in i),
solved by one backward pass (`structured_cavi`; the ELBO never decreases).

Black-box VI fits the same family with score-function gradients; each chain is one independent factor,
so `control_variate="rao_blackwell"` centres each chain's score by the integrand with that chain redrawn.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpyro.distributions as dist

import bbvi
from bbvi.families.base import check_count

#: The exact reference enumerates L^M joint states (and an L^M x L^M transition matrix); past this, stop.
MAX_JOINT_STATES = 4096


class Data(NamedTuple):
    """Observations and the known model.

    Attributes:
        y: the outputs, shape `(T, D)`.
        initial_probs: pi, shape `(M, L)`: each chain's distribution at the first step.
        transition_probs: A, shape `(M, L, L)`: `A[m, i, j] = p(s_{m,t+1} = j | s_{m,t} = i)`.
        means: W, shape `(M, L, D)`: chain m in state i adds `W[m, i]` to the output's mean.
        noise_scale: sigma, the output noise's standard deviation.
    """

    y: jax.Array
    initial_probs: jax.Array
    transition_probs: jax.Array
    means: jax.Array
    noise_scale: float

    @property
    def num_chains(self) -> int:
        return self.means.shape[0]

    @property
    def num_states(self) -> int:
        return self.means.shape[1]

    @property
    def length(self) -> int:
        return self.y.shape[0]


def _check(data: Data) -> None:
    if data.means.ndim != 3 or data.y.ndim != 2 or data.y.shape[1] != data.means.shape[2]:
        raise ValueError(
            f"factorial_hmm: y must have shape (T, D) and means (M, L, D), got y {data.y.shape} and "
            f"means {data.means.shape}"
        )
    m, num_states, _ = data.means.shape
    if data.initial_probs.shape != (m, num_states) or data.transition_probs.shape != (
        m,
        num_states,
        num_states,
    ):
        raise ValueError(
            f"factorial_hmm: with means (M, L, D) = {data.means.shape}, initial_probs must be (M, L) and "
            f"transition_probs (M, L, L), got {data.initial_probs.shape} and {data.transition_probs.shape}"
        )
    if isinstance(data.noise_scale, jax.core.Tracer):
        return  # under jit
    if not float(data.noise_scale) > 0.0:
        raise ValueError(f"factorial_hmm: noise_scale must be positive, got {data.noise_scale!r}")


def simulate(
    seed: int = 0,
    num_chains: int = 3,
    num_states: int = 2,
    length: int = 20,
    obs_dim: int = 2,
    noise_scale: float = 1.0,
    stay_prob: float = 0.9,
    mean_scale: float = 2.0,
    return_states: bool = False,
):
    """A model with sticky chains (stay with `stay_prob`, else move uniformly) and data drawn from it.

    The initial distributions are uniform and the state means W_m[i] ~ N(0, mean_scale^2 I): a large
    `mean_scale / noise_scale` separates the chains' contributions, so the posterior nearly factorises.

    Returns:
        `Data`, or `(Data, states)` with the true `states` (M, T) when `return_states`.
    """
    num_chains = check_count("factorial_hmm", "num_chains", num_chains)
    num_states = check_count("factorial_hmm", "num_states", num_states, 2)
    length = check_count("factorial_hmm", "length", length)
    obs_dim = check_count("factorial_hmm", "obs_dim", obs_dim)
    if not 0.0 <= stay_prob <= 1.0:
        raise ValueError(f"factorial_hmm: stay_prob must be in [0, 1], got {stay_prob!r}")
    y, states, initial_probs, transition_probs, means = _simulate(
        jax.random.key(seed), num_chains, num_states, length, obs_dim, noise_scale, stay_prob, mean_scale
    )
    data = Data(y, initial_probs, transition_probs, means, noise_scale)
    _check(data)
    return (data, states) if return_states else data


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4))
def _simulate(key, num_chains, num_states, length, obs_dim, noise_scale, stay_prob, mean_scale):
    # One compiled program: drawing eagerly would compile each small operation separately.
    key_means, key_states, key_noise = jax.random.split(key, 3)
    move = (1.0 - stay_prob) / (num_states - 1)
    table = jnp.full((num_states, num_states), move) + (stay_prob - move) * jnp.eye(num_states)
    transition_probs = jnp.broadcast_to(table, (num_chains, num_states, num_states))
    initial_probs = jnp.full((num_chains, num_states), 1.0 / num_states)
    means = mean_scale * jax.random.normal(key_means, (num_chains, num_states, obs_dim))

    first_key, rest_key = jax.random.split(key_states)
    first = dist.Categorical(probs=initial_probs).sample(first_key)

    def step(previous, key):
        current = dist.Categorical(probs=transition_probs[jnp.arange(num_chains), previous]).sample(key)
        return current, current

    _, rest = jax.lax.scan(step, first, jax.random.split(rest_key, length - 1))
    states = jnp.concatenate([first[:, None], rest.T], axis=1).astype(jnp.int32)
    mean = jnp.sum(means[jnp.arange(num_chains)[:, None], states], axis=0)
    y = mean + noise_scale * jax.random.normal(key_noise, mean.shape)
    return y, states, initial_probs, transition_probs, means


def _emission_means(data: Data, states: jax.Array) -> jax.Array:
    """sum_m W_m[s_{m,t}] for states (M, T): shape (T, D)."""
    return jnp.sum(data.means[jnp.arange(data.num_chains)[:, None], states], axis=0)


def log_joint_fn(data: Data):
    """`s -> log p(y, s)` for the chains' states `s`, an int array of shape (M, T)."""
    _check(data)
    chains = jnp.arange(data.num_chains)[:, None]

    def log_joint(s):
        prior = dist.Categorical(probs=data.initial_probs).log_prob(s[:, 0]).sum()
        if data.length > 1:  # (numpyro's argument checks fail on empty tables)
            rows = data.transition_probs[chains, s[:, :-1]]  # (M, T-1, L): each step's row of A_m
            prior += dist.Categorical(probs=rows).log_prob(s[:, 1:]).sum()
        return prior + dist.Normal(_emission_means(data, s), data.noise_scale).log_prob(data.y).sum()

    return log_joint


def family(data: Data) -> bbvi.MarkovChains:
    """The structured mean field: M independent, time-inhomogeneous Markov chains over L states."""
    return bbvi.MarkovChains(data.num_chains, data.length, data.num_states)


# --- exact inference over the product state space ------------------------------------------------


def joint_states(num_chains: int, num_states: int) -> jax.Array:
    """All L^M joint states, shape `(L^M, M)` int32; row r is r's digits in base L (chain 0 first)."""
    count = num_states**num_chains
    if count > MAX_JOINT_STATES:
        raise ValueError(
            f"factorial_hmm: exact inference over L^M = {count} joint states is past {MAX_JOINT_STATES}; "
            "use the structured mean field"
        )
    powers = num_states ** jnp.arange(num_chains - 1, -1, -1)
    return (jnp.arange(count)[:, None] // powers) % num_states


class ExactPosterior(NamedTuple):
    """Forward-backward's answer.

    Attributes:
        log_evidence: log p(y).
        marginals: p(s_{m,t} = i | y), shape `(M, T, L)`.
        joint_marginals: p(s_t = r | y) over the joint states r of `joint_states(M, L)`, shape `(T, L^M)`.
    """

    log_evidence: jax.Array
    marginals: jax.Array
    joint_marginals: jax.Array


def exact_posterior(data: Data) -> ExactPosterior:
    """Forward-backward, in log space, over the L^M joint states: O(L^(2M) T)."""
    _check(data)
    table = joint_states(data.num_chains, data.num_states)  # (R, M)
    chains = jnp.arange(data.num_chains)
    log_initial = jnp.sum(jnp.log(data.initial_probs[chains, table]), axis=1)  # (R,)
    # log A(r, r') = sum_m log A_m[r_m, r'_m]: the chains move independently.
    log_transition = jnp.sum(
        jnp.log(data.transition_probs[chains, table[:, None, :], table[None, :, :]]), axis=-1
    )  # (R, R)
    joint_means = jnp.sum(data.means[chains, table], axis=1)  # (R, D)
    log_emission = dist.Normal(joint_means, data.noise_scale).log_prob(data.y[:, None, :]).sum(-1)  # (T, R)

    def forward(alpha, emission):
        alpha = jax.nn.logsumexp(alpha[:, None] + log_transition, axis=0) + emission
        return alpha, alpha

    alpha_0 = log_initial + log_emission[0]
    _, alphas = jax.lax.scan(forward, alpha_0, log_emission[1:])
    alphas = jnp.concatenate([alpha_0[None], alphas])
    log_evidence = jax.nn.logsumexp(alphas[-1])

    def backward(beta, emission):
        beta = jax.nn.logsumexp(log_transition + emission + beta, axis=1)
        return beta, beta

    _, betas = jax.lax.scan(backward, jnp.zeros_like(alpha_0), log_emission[1:], reverse=True)
    betas = jnp.concatenate([betas, jnp.zeros_like(alpha_0)[None]])
    joint = jnp.exp(alphas + betas - log_evidence)  # (T, R)
    one_hot = jax.nn.one_hot(table, data.num_states, dtype=joint.dtype)  # (R, M, L)
    marginals = jnp.einsum("tr,rml->mtl", joint, one_hot)
    return ExactPosterior(log_evidence, marginals, joint)


# --- the structured mean field: closed-form ELBO and Ghahramani and Jordan's updates ---------------


def _xlogy(x, y):
    """x log y with 0 log 0 = 0 (a transition that q never takes costs nothing, even if A forbids it)."""
    return jnp.where(x > 0, x * jnp.log(jnp.where(x > 0, y, 1.0)), 0.0)


def structured_elbo(data: Data, params) -> jax.Array:
    """The exact ELBO of the `bbvi.MarkovChains` q with these parameters (no Monte Carlo)."""
    _check(data)
    chains = family(data)
    marginals = chains.marginals(params)  # (M, T, L)
    expected_prior = jnp.sum(_xlogy(marginals[:, 0], data.initial_probs))
    if data.length > 1:
        q_transitions = jax.nn.softmax(params["transition_logits"], axis=-1)  # (M, T-1, L, L)
        pairwise = marginals[:, :-1, :, None] * q_transitions  # xi_{m,t}(i, j)
        expected_prior += jnp.sum(_xlogy(pairwise, data.transition_probs[:, None]))
    chain_means = jnp.einsum("mtl,mld->mtd", marginals, data.means)  # mu_{m,t}
    second_moments = jnp.einsum("mtl,ml->mt", marginals, jnp.sum(data.means**2, axis=-1))
    spread = jnp.sum(second_moments - jnp.sum(chain_means**2, axis=-1))
    fit = dist.Normal(jnp.sum(chain_means, axis=0), data.noise_scale).log_prob(data.y).sum()
    expected_likelihood = fit - spread / (2 * data.noise_scale**2)
    return expected_prior + expected_likelihood + chains.entropy(params)


def _chain_update(data: Data, params, m):
    """Chain m's optimal q given the others: an HMM with log-emissions h_t(i), by a backward pass."""
    chains = family(data)
    chain_means = jnp.einsum("mtl,mld->mtd", chains.marginals(params), data.means)
    others = jnp.sum(chain_means, axis=0) - chain_means[m]  # (T, D)
    # h_t(i) = E_{q_-m} log N(y_t; W_m[i] + sum_{k != m} W_k[s_k]), dropping the spread of the others
    # (a constant in i, so it does not change q_m).
    h = dist.Normal(data.means[m][None] + others[:, None], data.noise_scale).log_prob(data.y[:, None]).sum(-1)
    log_a = jnp.log(data.transition_probs[m])  # (L, L)

    def backward(beta, h_next):
        logits = log_a + h_next + beta  # (L, L): row i, next state j
        return jax.nn.logsumexp(logits, axis=1), logits

    beta_0, transition_logits = jax.lax.scan(backward, jnp.zeros(data.num_states), h[1:], reverse=True)
    initial_logits = jnp.log(data.initial_probs[m]) + h[0] + beta_0
    return {
        "initial_logits": params["initial_logits"].at[m].set(initial_logits),
        "transition_logits": params["transition_logits"].at[m].set(transition_logits),
    }


class CaviResult(NamedTuple):
    """Structured coordinate ascent's end point and its ELBO after every chain update.

    Attributes:
        params: the `bbvi.MarkovChains` parameters at the end.
        elbo: the ELBO at the start and after each chain update, shape `(1 + num_sweeps * M,)`.
    """

    params: dict
    elbo: jax.Array


def structured_cavi(data: Data, init_params=None, num_sweeps: int = 30) -> CaviResult:
    """Ghahramani and Jordan's structured variational inference, chain by chain.

    Each update sets one chain's q_m to its exact optimum given the others (a Markov chain, which
    `bbvi.MarkovChains` represents exactly), so the ELBO never decreases. The default start is
    uniform chains (`bbvi.init(family(data), key)`); a fixed point may be local, so compare restarts.
    """
    _check(data)
    num_sweeps = check_count("factorial_hmm", "num_sweeps", num_sweeps)
    chains = family(data)
    params = chains.init(jax.random.key(0)) if init_params is None else init_params
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.result_type(float)), params)

    def update(params, m):
        params = _chain_update(data, params, m)
        return params, structured_elbo(data, params)

    def sweep(params, _):
        return jax.lax.scan(update, params, jnp.arange(data.num_chains))

    final, trace = jax.lax.scan(sweep, params, None, length=num_sweeps)
    return CaviResult(final, jnp.concatenate([structured_elbo(data, params)[None], trace.reshape(-1)]))
