"""Conjugate Bayesian linear regression: the Gaussian posterior is exact, so every fit has a truth.

w ~ N(0, prior_scale^2 I),  y_n ~ N(x_n . w, noise_scale^2)   (noise scale known).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpyro.distributions as dist


class Data(NamedTuple):
    x: jax.Array
    y: jax.Array
    noise_scale: float
    prior_scale: float


def simulate(
    seed: int = 0,
    num_data: int = 50,
    dim: int = 3,
    noise_scale: float = 1.0,
    prior_scale: float = 1.0,
    correlation: float = 0.6,
) -> Data:
    """Data with correlated features, so the posterior has strong correlations to recover."""
    kx, kw, ky = jax.random.split(jax.random.key(seed), 3)
    cov = (1 - correlation) * jnp.eye(dim) + correlation * jnp.ones((dim, dim))
    x = jax.random.multivariate_normal(kx, jnp.zeros(dim), cov, (num_data,))
    w = prior_scale * jax.random.normal(kw, (dim,))
    y = x @ w + noise_scale * jax.random.normal(ky, (num_data,))
    return Data(x, y, noise_scale, prior_scale)


def log_joint_fn(data: Data):
    """`w -> log p(y, w)`."""

    def log_joint(w):
        prior = dist.Normal(0.0, data.prior_scale).log_prob(w).sum()
        return prior + dist.Normal(data.x @ w, data.noise_scale).log_prob(data.y).sum()

    return log_joint


def exact_posterior(data: Data) -> tuple[jax.Array, jax.Array]:
    """The posterior mean and covariance of w."""
    precision = data.x.T @ data.x / data.noise_scale**2 + jnp.eye(data.x.shape[1]) / data.prior_scale**2
    cov = jnp.linalg.inv(precision)
    return cov @ data.x.T @ data.y / data.noise_scale**2, cov


def mean_field_optimum_scale(data: Data) -> jax.Array:
    """The optimal mean-field sds for a Gaussian posterior: 1 / sqrt(diag(precision))."""
    _, cov = exact_posterior(data)
    return 1.0 / jnp.sqrt(jnp.diag(jnp.linalg.inv(cov)))


def log_evidence(data: Data) -> jax.Array:
    """log p(y), the value every ELBO is bounded by (attained by the full-rank optimum)."""
    n = data.x.shape[0]
    cov_y = data.prior_scale**2 * data.x @ data.x.T + data.noise_scale**2 * jnp.eye(n)
    return dist.MultivariateNormal(jnp.zeros(n), cov_y).log_prob(data.y)
