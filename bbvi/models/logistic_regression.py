"""Bayesian logistic regression: w ~ N(0, I), y_n ~ Bernoulli(sigmoid(x_n . w))."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpyro.distributions as dist


class Data(NamedTuple):
    x: jax.Array
    y: jax.Array


def simulate(seed: int = 0, num_data: int = 10_000, dim: int = 100) -> Data:
    """Standard-normal features and weights scaled so the logits are of order one."""
    kx, kw, ky = jax.random.split(jax.random.key(seed), 3)
    x = jax.random.normal(kx, (num_data, dim))
    w = jax.random.normal(kw, (dim,)) / jnp.sqrt(dim)
    y = jax.random.bernoulli(ky, jax.nn.sigmoid(x @ w)).astype(jnp.float32)
    return Data(x, y)


def log_joint_fn(data: Data):
    """`w -> log p(y, w)`."""

    def log_joint(w):
        prior = dist.Normal(0.0, 1.0).log_prob(w).sum()
        return prior + dist.Bernoulli(logits=data.x @ w).log_prob(data.y).sum()

    return log_joint
