"""The linear-Gaussian VAE is probabilistic PCA (Tipping and Bishop 1999), whose answers are closed form.

    z_n ~ N(0, I_K),    x_n | z_n ~ N(W z_n + b, sigma^2 I_D),    n = 1, ..., N,

so x_n ~ N(b, C) with C = W W^T + sigma^2 I, and the posterior is Gaussian with a mean linear in x:

    p(z_n | x_n) = N(M^{-1} W^T (x_n - b), sigma^2 M^{-1}),    M = W^T W + sigma^2 I_K.

Maximum likelihood (Tipping and Bishop): b = the sample mean, and with S the sample covariance
(divided by N) and lambda_1 >= ... >= lambda_D its eigenvalues, eigenvectors U,

    sigma^2 = mean(lambda_{K+1}, ..., lambda_D),    W = U_K (Lambda_K - sigma^2 I)^{1/2} R  (any rotation R),
    max log p(x) = -N/2 [D log(2 pi) + sum_{k <= K} log lambda_k + (D - K) log sigma^2 + D].

A VAE with this linear decoder (theta = {W, b, log sigma}: point masses) and a linear amortised
mean-field Gaussian encoder reaches this maximum: at R = I, W^T W is diagonal, so the exact
posterior covariance sigma^2 M^{-1} is diagonal and constant, its mean linear in x, and the
encoder can represent it exactly (KL = 0, ELBO = log-likelihood). Every ELBO of the model is at
most the maximum log-likelihood; `elbo` evaluates it in closed form for any W, b, sigma and q.

In a fit, the rotation R is the slow direction: only the mean-field encoder's KL term prefers
R = I, weakly, so one-sample gradients need minibatches that are not too small (100 of 500 data
reach the maximum to within a nat in 5000 Adam steps; 50 stall some 10-20 nats short, at a rotated W).

The references are numpy float64 functions of the data and parameters.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist

import bbvi
from bbvi.models.vae.model import point_estimates, with_batch_size

_LOG_2PI = math.log(2 * math.pi)


class Data(NamedTuple):
    """Simulated PPCA data and the parameters that made them."""

    x: jax.Array  # (N, D)
    weights: jax.Array  # (D, K), true W
    mean: jax.Array  # (D,), true b
    noise_scale: float  # true sigma


class MaximumLikelihood(NamedTuple):
    """The PPCA maximum-likelihood solution (float64), with W's columns in decreasing variance."""

    log_likelihood: float  # max over (W, b, sigma) of log p(x), summed over the data
    weights: np.ndarray  # (D, K), the solution with R = I: orthogonal columns
    mean: np.ndarray  # (D,)
    noise_scale: float


def simulate(
    seed: int = 0,
    num_data: int = 500,
    dim: int = 5,
    latent_dim: int = 2,
    noise_scale: float = 0.5,
) -> Data:
    """Data from PPCA with well-separated principal variances (so the principal subspace is sharp).

    W's columns are orthogonal with lengths 3, 2, 1.5, ... (`3 / (1 + k/2)` for column k), in a
    random orientation; b ~ N(0, I).
    """
    if not 1 <= latent_dim < dim:
        raise ValueError(f"ppca.simulate: need 1 <= latent_dim < dim, got latent_dim={latent_dim}, dim={dim}")
    if not noise_scale > 0:
        raise ValueError(f"ppca.simulate: noise_scale must be positive, got {noise_scale}")
    # numpy's generator: simulating costs nothing to compile.
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.standard_normal((dim, latent_dim)))
    weights = basis * (3.0 / (1.0 + 0.5 * np.arange(latent_dim)))
    mean = rng.standard_normal(dim)
    z = rng.standard_normal((num_data, latent_dim))
    x = z @ weights.T + mean + noise_scale * rng.standard_normal((num_data, dim))
    weights, mean, x = (jnp.asarray(a, jnp.float32) for a in (weights, mean, x))
    return Data(x, weights, mean, float(noise_scale))


# The model for bbvi ---------------------------------------------------------------------------------


def decoder_family(dim: int, latent_dim: int) -> dict:
    """theta = {W (D, K), b (D,), log sigma ()} as point masses (maximum likelihood: flat prior).

    sigma is fitted through its logarithm: maximum likelihood does not depend on the parameterisation.
    """
    return {
        "weights": bbvi.PointMass((dim, latent_dim)),
        "bias": bbvi.PointMass((dim,), init_radius=0.0),
        "log_noise_scale": bbvi.PointMass((), init_radius=0.0),
    }


def encoder_family(dim: int, latent_dim: int, batch_size: int) -> bbvi.Amortized:
    """A linear encoder (no hidden layer): the exact posterior's mean is linear in x, its scale constant."""
    return bbvi.Amortized(bbvi.MeanFieldGaussian((latent_dim,)), (dim,), batch_size, hidden_sizes=())


def family(dim: int, latent_dim: int, batch_size: int) -> dict:
    """The linear VAE's family: `{"decoder": decoder_family, "z": encoder_family}`."""
    return {"decoder": decoder_family(dim, latent_dim), "z": encoder_family(dim, latent_dim, batch_size)}


def log_joint(z: dict, batch: jax.Array) -> jax.Array:
    """`sum_n [log N(z_n; 0, I) + log N(x_n; W z_n + b, sigma^2 I)]` over a minibatch `(B, D)`.

    `z = {"decoder": {"weights", "bias", "log_noise_scale"}, "z": (B, K)}`; not scaled by N / B
    (see the `bbvi.models.vae` docstring).
    """
    theta, codes = z["decoder"], z["z"]
    loc = codes @ theta["weights"].T + theta["bias"]
    prior = dist.Normal(0.0, 1.0).log_prob(codes).sum()
    return prior + dist.Normal(loc, jnp.exp(theta["log_noise_scale"])).log_prob(batch).sum()


def fitted(params, fam: dict, x) -> tuple[np.ndarray, np.ndarray, float, np.ndarray, np.ndarray]:
    """`(W, b, sigma, q_loc (N, K), q_scale (N, K))` in float64, from a fit's parameters and data `x`.

    `fam` is the family that was fitted; its encoder is evaluated on all of `x` at once.
    """
    theta = {
        name: np.asarray(value, np.float64) for name, value in point_estimates(params["decoder"]).items()
    }
    encoder = with_batch_size(fam["z"], len(x))
    q = jax.jit(lambda p, data: encoder.condition(p, data)[1])(params["z"], jnp.asarray(x))
    return (
        theta["weights"],
        theta["bias"],
        float(np.exp(theta["log_noise_scale"])),
        np.asarray(q["loc"], np.float64),
        np.exp(np.asarray(q["log_scale"], np.float64)),
    )


# Closed-form references (numpy float64) ---------------------------------------------------------------


def _f64(x) -> np.ndarray:
    return np.asarray(x, np.float64)


def max_log_likelihood(x, latent_dim: int) -> MaximumLikelihood:
    """Tipping and Bishop's maximum-likelihood PPCA: `(max log p(x), W, b, sigma)`, W with R = I."""
    x = _f64(x)
    num_data, dim = x.shape
    if not 1 <= latent_dim < dim:
        raise ValueError(f"max_log_likelihood: need 1 <= latent_dim < dim = {dim}, got {latent_dim}")
    mean = x.mean(axis=0)
    centred = x - mean
    eigenvalues, eigenvectors = np.linalg.eigh(centred.T @ centred / num_data)
    eigenvalues, eigenvectors = eigenvalues[::-1], eigenvectors[:, ::-1]  # decreasing
    noise_var = float(eigenvalues[latent_dim:].mean())
    top = eigenvalues[:latent_dim]
    weights = eigenvectors[:, :latent_dim] * np.sqrt(np.maximum(top - noise_var, 0.0))
    log_lik = (
        -0.5
        * num_data
        * (dim * _LOG_2PI + np.sum(np.log(top)) + (dim - latent_dim) * math.log(noise_var) + dim)
    )
    return MaximumLikelihood(float(log_lik), weights, mean, math.sqrt(noise_var))


def log_likelihood(x, weights, mean, noise_scale) -> float:
    """`log p(x | W, b, sigma) = sum_n log N(x_n; b, W W^T + sigma^2 I)`."""
    x, weights, mean = _f64(x), _f64(weights), _f64(mean)
    num_data, dim = x.shape
    cov = weights @ weights.T + noise_scale**2 * np.eye(dim)
    chol = np.linalg.cholesky(cov)
    white = np.linalg.solve(chol, (x - mean).T)
    log_det = 2 * np.sum(np.log(np.diag(chol)))
    return float(-0.5 * (num_data * (dim * _LOG_2PI + log_det) + np.sum(white**2)))


def _m_matrix(weights, noise_scale) -> np.ndarray:
    weights = _f64(weights)
    return weights.T @ weights + noise_scale**2 * np.eye(weights.shape[1])


def exact_posterior(x, weights, mean, noise_scale) -> tuple[np.ndarray, np.ndarray]:
    """`p(z_n | x_n) = N(means[n], cov)`: means `(N, K)` (linear in x) and the shared covariance `(K, K)`."""
    m = _m_matrix(weights, noise_scale)
    means = np.linalg.solve(m, _f64(weights).T @ (_f64(x) - _f64(mean)).T).T
    return means, noise_scale**2 * np.linalg.inv(m)


def best_mean_field(x, weights, mean, noise_scale) -> tuple[np.ndarray, np.ndarray]:
    """The optimal per-datum mean-field Gaussian q(z_n) for a fixed decoder: `(loc (N, K), scale (K,))`.

    For a Gaussian posterior with precision `Lambda = M / sigma^2` the best factorised Gaussian has
    the exact mean and variances `1 / Lambda_kk` (the mean-field fixed point, reached in one sweep).
    """
    means, _ = exact_posterior(x, weights, mean, noise_scale)
    return means, noise_scale / np.sqrt(np.diag(_m_matrix(weights, noise_scale)))


def elbo(x, weights, mean, noise_scale, q_loc, q_scale) -> float:
    """The ELBO, summed over the data, of q(z_n) = N(q_loc[n], diag(q_scale[n]^2)), in closed form.

    `sum_n E_q[log N(x_n; W z + b, sigma^2 I) + log N(z; 0, I)] + H(q)`, with
    `E_q |x - W z - b|^2 = |x - W m - b|^2 + sum_k s_k^2 |W_k|^2`. `q_scale` broadcasts against `q_loc`.
    """
    x, weights, mean = _f64(x), _f64(weights), _f64(mean)
    q_loc = _f64(q_loc)
    q_var = np.broadcast_to(_f64(q_scale) ** 2, q_loc.shape)
    num_data, dim = x.shape
    residual = np.sum((x - q_loc @ weights.T - mean) ** 2, axis=1) + q_var @ np.sum(weights**2, axis=0)
    expected_lik = -0.5 * dim * (_LOG_2PI + 2 * math.log(noise_scale)) - residual / (2 * noise_scale**2)
    expected_prior = -0.5 * (q_loc.shape[1] * _LOG_2PI + np.sum(q_loc**2 + q_var, axis=1))
    entropy = 0.5 * np.sum(np.log(2 * math.pi * math.e * q_var), axis=1)
    return float(np.sum(expected_lik + expected_prior + entropy))


def subspace_distance(a, b) -> float:
    """The sine of the largest principal angle between the column spans of `a` and `b` (0: the same span)."""
    qa, _ = np.linalg.qr(_f64(a))
    qb, _ = np.linalg.qr(_f64(b))
    # The spectral norm of (I - P_b) P_a is the sine of the largest principal angle.
    return float(np.linalg.norm(qa - qb @ (qb.T @ qa), ord=2))


def subspace_standard_error(x, latent_dim: int) -> float:
    """How precisely N data determine the principal subspace: the root-mean-square `subspace_distance`
    between the sample's top-`latent_dim` eigenvectors and the population's, to first order.

    Anderson (1963): sample eigenvector j moves towards eigenvector l with variance
    `lambda_j lambda_l / (N (lambda_j - lambda_l)^2)`, so the squared sines of the principal angles
    sum, in expectation, to that summed over `j <= K < l` (evaluated at the sample eigenvalues). It
    bounds the mean square of the largest sine, which is at most their sum.
    """
    x = _f64(x)
    num_data = len(x)
    eigenvalues = np.linalg.eigvalsh(np.cov(x, rowvar=False, bias=True))[::-1]
    top, rest = eigenvalues[:latent_dim, None], eigenvalues[None, latent_dim:]
    return float(np.sqrt(np.sum(top * rest / (num_data * (top - rest) ** 2))))
