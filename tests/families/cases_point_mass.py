"""Registry cases for `PointMass` (a Dirac delta at `loc`), and its float64 oracles.

A point mass is not a density, so the registry checks what a Dirac measure does have:
parameter shapes and dtypes; a log-density of exactly 0 at `loc` (the draw), and `-inf` anywhere
else; draws equal to `loc` (moments: mean `loc`, zero spread, each matched exactly since the
sample variance is zero); an entropy of 0, which the Monte Carlo check `-mean(log q)` confirms
exactly; jit / vmap; and pathwise gradients flowing to `loc`. It opts out of:

- normalisation: no `quadrature_grid` (a Dirac has no Lebesgue density to integrate) and no
  `support_points` (its one support point depends on the parameters, which that oracle does not see);
- the key-dependence check: `draws_ignore_key` is true, since a point mass draws `loc` whatever the
  key; the contract checks instead that two keys give the same draws.

The tree case puts a point mass next to a Gaussian, as in a VAE (decoder weights next to latents).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

import bbvi

from ._helpers import (
    Case,
    draw_dtype,
    draws_ignore_key,
    param_shapes,
    reference_log_prob,
    reference_statistics,
)

CASES = [
    Case("point_mass_2x3", lambda: bbvi.PointMass((2, 3))),
    Case("point_mass_tree", lambda: {"theta": bbvi.PointMass(()), "z": bbvi.MeanFieldGaussian((2,))}),
]


def _loc(params) -> np.ndarray:
    return np.asarray(params["loc"], np.float64)


def _batch(family, z) -> np.ndarray:
    return np.asarray(z, np.float64).reshape((-1,) + family.shape)


@param_shapes.register
def _(family: bbvi.PointMass):
    return {"loc": family.shape}


@draw_dtype.register
def _(family: bbvi.PointMass):
    return jnp.dtype(jnp.float32)


@draws_ignore_key.register
def _(family: bbvi.PointMass):
    return True


@reference_log_prob.register
def _(family: bbvi.PointMass, params, z):
    z = _batch(family, z)
    # The density with respect to the counting measure at loc: 1 there, 0 anywhere else. The draws
    # are float32 copies of the float32 loc, so equality is exact (no tolerance to choose).
    at_loc = np.all((z == _loc(params)).reshape(len(z), -1), axis=1)
    return np.where(at_loc, 0.0, -np.inf)


@reference_statistics.register
def _(family: bbvi.PointMass, params):
    loc = _loc(params).ravel()

    def stats(z):  # every draw is loc: mean loc, squared deviation 0 (zero variance: matched exactly)
        z = _batch(family, z).reshape(len(z), -1)
        return np.concatenate([z, (z - loc) ** 2], axis=1)

    return stats, np.concatenate([loc, np.zeros_like(loc)])
