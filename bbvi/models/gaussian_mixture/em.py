"""Expectation-maximisation for the non-Bayesian Gaussian mixture: weights, means, full covariances.

    p(x_i) = sum_k pi_k N(x_i; mu_k, Sigma_k),  fitted by maximum likelihood.

The E-step sets the responsibilities `r_ik = p(c_i = k | x_i)` under the current parameters; the M-step
maximises the expected complete-data log-likelihood, in closed form:

    N_k = sum_i r_ik,  pi_k = N_k / N,  mu_k = sum_i r_ik x_i / N_k,
    Sigma_k = sum_i r_ik (x_i - mu_k)(x_i - mu_k)^T / N_k.

Each iteration never decreases the log-likelihood (Dempster, Laird and Rubin 1977). Unlike the Bayesian
model it fits a covariance per cluster and mixing weights, and returns point estimates.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpyro.distributions as dist

from bbvi.models.gaussian_mixture.model import Data, check_data, checked_jit, initial_means


class GMM(NamedTuple):
    """A Gaussian mixture's parameters: `weights (K,)`, `means (K, D)`, `covariances (K, D, D)`."""

    weights: jax.Array
    means: jax.Array
    covariances: jax.Array


class EMResult(NamedTuple):
    """EM's last iterate and the log-likelihood of every iterate, from the start: `(num_iterations + 1,)`."""

    gmm: GMM
    log_likelihood: jax.Array


def _joint_log_probs(x: jax.Array, gmm: GMM) -> jax.Array:
    """`log pi_k + log N(x_i; mu_k, Sigma_k)`, `(N, K)`."""
    components = dist.MultivariateNormal(gmm.means, covariance_matrix=gmm.covariances)
    return jnp.log(gmm.weights) + components.log_prob(x[:, None, :])


@checked_jit
def log_likelihood(data: Data, gmm: GMM) -> jax.Array:
    """`sum_i log p(x_i)` under the mixture."""
    check_data(data)
    mixture = dist.MixtureSameFamily(
        dist.Categorical(probs=gmm.weights),
        dist.MultivariateNormal(gmm.means, covariance_matrix=gmm.covariances),
    )
    return mixture.log_prob(data.x).sum()


@checked_jit
def e_step(data: Data, gmm: GMM) -> tuple[jax.Array, jax.Array]:
    """The responsibilities `(N, K)` and, at no extra cost, the log-likelihood of `gmm`."""
    joint = _joint_log_probs(data.x, gmm)
    log_marginal = jax.nn.logsumexp(joint, axis=-1, keepdims=True)
    return jnp.exp(joint - log_marginal), jnp.sum(log_marginal)


@checked_jit
def m_step(data: Data, responsibilities: jax.Array) -> GMM:
    """The maximum-likelihood weights, means and covariances given the responsibilities.

    A component with no responsibility left (N_k = 0) has no maximiser; from `init_gmm`'s spread-out
    start on separated clusters that does not happen.
    """
    x = data.x
    counts = jnp.sum(responsibilities, axis=0)
    means = responsibilities.T @ x / counts[:, None]
    centred = x[None, :, :] - means[:, None, :]  # (K, N, D)
    covariances = jnp.einsum("nk,kni,knj->kij", responsibilities, centred, centred) / counts[:, None, None]
    return GMM(counts / x.shape[0], means, covariances)


@checked_jit
def init_gmm(data: Data, key: jax.Array) -> GMM:
    """A start for EM: equal weights, means at `initial_means`, every covariance the data's covariance."""
    _, k, d = check_data(data)
    covariance = jnp.cov(data.x, rowvar=False).reshape(d, d)
    means = initial_means(data, key)
    return GMM(
        jnp.full((k,), 1 / k, means.dtype), means, jnp.broadcast_to(covariance, (k, d, d)).astype(means.dtype)
    )


@functools.partial(jax.jit, static_argnames="num_iterations")
def _em(data: Data, gmm: GMM, num_iterations: int) -> EMResult:
    def iteration(gmm, _):
        responsibilities, value = e_step(data, gmm)
        return m_step(data, responsibilities), value

    gmm, trace = jax.lax.scan(iteration, gmm, length=num_iterations)
    return EMResult(gmm, jnp.append(trace, e_step(data, gmm)[1]))


def em(
    data: Data, key: jax.Array | None = None, num_iterations: int = 100, init: GMM | None = None
) -> EMResult:
    """`num_iterations` EM iterations from `init` (or `init_gmm(data, key)`), compiled as one scan.

    Uses `data.x` and `data.num_clusters` only: the Bayesian model's scales play no part.

    Example:
        >>> import jax
        >>> from bbvi.models import gaussian_mixture as gm
        >>> result = gm.em(gm.simulate(seed=0, num_data=60), key=jax.random.key(0), num_iterations=20)
        >>> result.gmm.covariances.shape, result.log_likelihood.shape
        ((3, 2, 2), (21,))
    """
    check_data(data)
    if isinstance(num_iterations, bool) or not isinstance(num_iterations, int) or num_iterations < 1:
        raise ValueError(f"num_iterations must be a positive int, got {num_iterations!r}")
    if init is None:
        if key is None:
            raise ValueError("em needs a key (to choose the initial means) or an init")
        init = init_gmm(data, key)
    return _em(data, init, num_iterations)
