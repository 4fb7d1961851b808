"""The default optimiser: Adam with its step size annealed to zero on a cosine over each fit.

An optax schedule takes its horizon when the optimiser is built, so a default built per
`num_steps` would be a new object, and a new compiled program, for every fit length. Here the
horizon lives in the optimiser's state: one module-level transformation serves every length, and
`fit` sets the horizon (and restarts the decay) when a fit starts.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax


class AnnealedState(NamedTuple):
    """The inner transformation's state, the steps taken in this decay, and its length."""

    inner: Any
    count: jax.Array
    horizon: jax.Array


def cosine_annealed(
    inner: optax.GradientTransformation, learning_rate: float
) -> optax.GradientTransformation:
    """`inner`'s updates times `-learning_rate * (1 + cos(pi * min(count / horizon, 1))) / 2`.

    With `inner = optax.scale_by_adam()` this is `optax.adam(optax.cosine_decay_schedule(
    learning_rate, horizon))`, with the horizon in the state (`start` sets it).
    """

    def init(params):
        return AnnealedState(inner.init(params), jnp.zeros([], jnp.int32), jnp.ones([], jnp.int32))

    def update(updates, state, params=None):
        updates, inner_state = inner.update(updates, state.inner, params)
        progress = jnp.minimum(state.count / state.horizon, 1.0)
        step_size = learning_rate * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
        updates = jax.tree.map(lambda u: (-step_size * u).astype(u.dtype), updates)
        return updates, AnnealedState(inner_state, state.count + 1, state.horizon)

    return optax.GradientTransformation(init, update)


def start(state: AnnealedState, num_steps: int) -> AnnealedState:
    """The state at the start of a decay over `num_steps` steps (the inner state is kept)."""
    return state._replace(count=jnp.zeros([], jnp.int32), horizon=jnp.asarray(num_steps, jnp.int32))


def extend(state: AnnealedState, num_steps: int) -> AnnealedState:
    """The same decay, continued, now ending after `num_steps` steps in all (a resumed fit)."""
    return state._replace(horizon=jnp.asarray(num_steps, jnp.int32))
