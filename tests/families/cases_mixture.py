"""Registry cases and float64 oracles for the Gaussian-mixture family (see test_contract.py).

The oracles read the documented parameterisation (weights softmax(logits), component scales
exp(log_scale)) and use scipy's Normal densities: nothing here goes through numpyro's mixture.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import scipy.stats
from scipy.special import logsumexp, softmax

from bbvi.families.mixture import GaussianMixture

from ._helpers import (
    Case,
    draw_dtype,
    param_shapes,
    quadrature_grid,
    reference_log_prob,
    reference_statistics,
)

CASES = [
    Case("mixture_1d_k3", lambda: GaussianMixture(1, 3)),  # one dimension: normalised by quadrature
    Case("mixture_2d_k2", lambda: GaussianMixture(2, 2)),
]


def mixture_parts(params) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(weights (K,), locs (K, dim), scales (K, dim)) in float64, from the documented parameterisation."""
    weights = softmax(np.asarray(params["logits"], np.float64))
    return weights, np.asarray(params["loc"], np.float64), np.exp(np.asarray(params["log_scale"], np.float64))


@param_shapes.register
def _(family: GaussianMixture):
    k, d = family.num_components, family.dim
    return {"logits": (k,), "loc": (k, d), "log_scale": (k, d)}


@draw_dtype.register
def _(family: GaussianMixture):
    return jnp.dtype(jnp.float32)


@reference_log_prob.register
def _(family: GaussianMixture, params, z):
    weights, loc, scale = mixture_parts(params)
    z = np.asarray(z, np.float64).reshape(-1, 1, family.dim)  # (n, 1, dim) against (K, dim)
    per_component = scipy.stats.norm.logpdf(z, loc, scale).sum(axis=-1)  # (n, K)
    return logsumexp(per_component + np.log(weights), axis=-1)


@reference_statistics.register
def _(family: GaussianMixture, params):
    weights, loc, scale = mixture_parts(params)

    def stats(z):  # E z_d = sum_k w_k mu_kd, E z_d^2 = sum_k w_k (mu_kd^2 + s_kd^2)
        z = np.asarray(z, np.float64).reshape(-1, family.dim)
        return np.concatenate([z, z**2], axis=1)

    return stats, np.concatenate([weights @ loc, weights @ (loc**2 + scale**2)])


@quadrature_grid.register
def _(family: GaussianMixture, params, num: int = 20_001):
    _, loc, scale = mixture_parts(params)
    # Each component's own +-12 sd (< 1e-32 of its mass outside), merged: a narrow component far
    # from the others is resolved as finely as it would be alone.
    grid = np.unique(np.concatenate([np.linspace(m - 12 * s, m + 12 * s, num) for m, s in zip(loc, scale)]))
    return grid.reshape((-1, family.dim))
