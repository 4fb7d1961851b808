"""Independent discrete Markov chains: the structured mean field of a factorial HMM.

Each chain is an inhomogeneous (time-varying) Markov chain over `num_states` states. Time-varying
transition tables are what structured mean field needs (Ghahramani & Jordan, 1997): the optimal
q for chain m is a Markov chain whose transitions absorb the other chains' expected messages, and
those differ from step to step. Sampling, log q and the entropy are exact.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpyro.distributions as dist

from bbvi.families.base import Family, check_count


def _time_major(x):
    """(M, T-1, ...) -> (T-1, M, ...): `lax.scan` runs over the leading axis."""
    return jnp.moveaxis(x, 1, 0)


@dataclasses.dataclass(frozen=True)
class MarkovChains(Family):
    """`num_chains` independent Markov chains of `length` steps over `num_states` states.

    q(z) = prod_m q(z[m, 0]) prod_t q(z[m, t+1] | z[m, t]), with time-varying transitions.
    Parameters are `{"initial_logits": (M, L), "transition_logits": (M, length - 1, L, L)}`
    (for `transition_logits[m, t]`, the row is the state at step t and the column the state at
    step t + 1), initialised at zero: uniform chains. Draws are int32 arrays of shape
    `(num_chains, length)` with values in `{0, ..., num_states - 1}`. Each chain is one
    independent factor (`factor_dims = 1`); `marginals(params)` gives every P(z[m, t] = i).

    Args:
        num_chains: M >= 1, the number of independent chains.
        length: T >= 1, the steps per chain (T = 1 is M independent categoricals).
        num_states: L >= 2, the states of every chain.

    Example:
        >>> import jax
        >>> from bbvi.families.markov import MarkovChains
        >>> family = MarkovChains(num_chains=2, length=5, num_states=3)
        >>> params = family.init(jax.random.key(0))
        >>> z = family.sample(params, jax.random.key(1))
        >>> z.shape, z.dtype
        ((2, 5), dtype('int32'))
        >>> family.marginals(params).shape
        (2, 5, 3)
    """

    num_chains: int
    length: int
    num_states: int

    reparameterized = False
    has_entropy = True
    factor_dims = 1

    def __post_init__(self):
        object.__setattr__(self, "num_chains", check_count("MarkovChains", "num_chains", self.num_chains, 1))
        object.__setattr__(self, "length", check_count("MarkovChains", "length", self.length, 1))
        object.__setattr__(self, "num_states", check_count("MarkovChains", "num_states", self.num_states, 2))

    @property
    def event_shape(self):
        return (self.num_chains, self.length)

    def init(self, key):
        m, t, k = self.num_chains, self.length, self.num_states
        # Zeros in float32 (strongly typed): uniform initial and transition distributions.
        return {
            "initial_logits": jnp.zeros((m, k)),
            "transition_logits": jnp.zeros((m, t - 1, k, k)),
        }

    def sample(self, params, key):
        """Exact ancestral sampling: draw step 0, then each step given the last, all chains at once."""
        first_key, rest_key = jax.random.split(key)
        first = dist.Categorical(logits=params["initial_logits"]).sample(first_key)

        def step(previous, inputs):
            logits, step_key = inputs  # logits (M, L, L): this step's transition tables
            rows = jnp.take_along_axis(logits, previous[:, None, None], axis=1)[:, 0]
            current = dist.Categorical(logits=rows).sample(step_key)
            return current, current

        keys = jax.random.split(rest_key, self.length - 1)
        _, rest = jax.lax.scan(step, first, (_time_major(params["transition_logits"]), keys))
        return jnp.concatenate([first[:, None], rest.T], axis=1).astype(jnp.int32)

    def factor_log_prob(self, params, z):
        """log q of each chain's path, shape `(num_chains,)`."""
        z = jnp.asarray(z)
        initial = dist.Categorical(logits=params["initial_logits"]).log_prob(z[:, 0])
        if self.length == 1:  # no transitions (numpyro's argument checks fail on empty tables)
            return initial
        # The row of each step's table picked by the previous state: (M, T-1, L).
        rows = jnp.take_along_axis(params["transition_logits"], z[:, :-1, None, None], axis=2)[:, :, 0]
        transitions = dist.Categorical(logits=rows).log_prob(z[:, 1:])
        return initial + jnp.sum(transitions, axis=-1)

    def log_prob(self, params, z):
        return jnp.sum(self.factor_log_prob(params, z))

    def marginals(self, params) -> jax.Array:
        """P(z[m, t] = i) for every chain, step and state, shape `(M, length, L)`, by forward recursion.

        Example:
            >>> import jax, jax.numpy as jnp
            >>> from bbvi.families.markov import MarkovChains
            >>> family = MarkovChains(1, 3, 2)
            >>> params = family.init(jax.random.key(0))
            >>> bool(jnp.allclose(family.marginals(params), 0.5))
            True
        """
        first = jax.nn.softmax(params["initial_logits"], axis=-1)
        transitions = jax.nn.softmax(params["transition_logits"], axis=-1)

        def step(p, table):  # p (M, L), table (M, L, L): P(z_{t+1} = j) = sum_i P(z_t = i) A[i, j]
            p = jnp.einsum("mi,mij->mj", p, table)
            return p, p

        _, rest = jax.lax.scan(step, first, _time_major(transitions))
        return jnp.concatenate([first[:, None], _time_major(rest)], axis=1)

    def entropy(self, params):
        """Exact entropy: sum_m [H(z_m0) + sum_t sum_i P(z_mt = i) H(z_m,t+1 | z_mt = i)]."""
        initial = dist.Categorical(logits=params["initial_logits"]).entropy()  # (M,)
        if self.length == 1:
            return jnp.sum(initial)
        rows = dist.Categorical(logits=params["transition_logits"]).entropy()  # (M, T-1, L)
        # The chain rule of entropy: each transition row weighted by how often its state is visited.
        visits = self.marginals(params)[:, :-1]
        return jnp.sum(initial) + jnp.sum(visits * rows)
