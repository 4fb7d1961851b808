"""Gaussian families: the workhorses of pathwise (reparameterisation) VI."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpyro.distributions as dist
from numpyro.distributions import constraints
from numpyro.distributions.transforms import biject_to

from bbvi.families.base import DistributionFamily, check_shape

#: The entropy of N(0, 1), per coordinate.
_NORMAL_ENTROPY = 0.5 * (1.0 + math.log(2.0 * math.pi))

# Locations start uniform in [-1, 1] (symmetry breaking for mixtures, as NumPyro's and Stan's
# random inits do) and scales at 0.1: narrow enough that the first gradients are not swamped by
# sampling noise, wide enough that Adam reaches typical posterior widths in a few hundred steps.
_DEFAULT_INIT_SCALE = 0.1
_DEFAULT_INIT_RADIUS = 1.0

# Unconstrained <-> lower-triangular factor with positive diagonal (exp on the diagonal).
_TO_CHOLESKY = biject_to(constraints.lower_cholesky)


def _init_loc(key, shape, radius):
    return jax.random.uniform(key, shape, minval=-radius, maxval=radius)


def _init_log_scale(shape, init_scale):
    # A strongly typed float array: a weak type would change after the first optimiser update
    # and make a jitted step compile twice.
    return jnp.full(shape, math.log(init_scale), dtype=jnp.result_type(float))


def _check_dim(family, dim):
    if not isinstance(dim, int) or dim < 1:
        raise ValueError(f"{family}: dim must be a positive int, got {dim!r}")


def _check_init_scale(family, init_scale):
    if not init_scale > 0:
        raise ValueError(f"{family}: init_scale must be positive, got {init_scale}")


@dataclasses.dataclass(frozen=True)
class MeanFieldGaussian(DistributionFamily):
    """Independent Normals over an array of latents: q(z) = prod_i N(z_i; loc_i, scale_i^2).

    Parameters are `{"loc": shape, "log_scale": shape}`.

    Example:
        >>> import jax, bbvi
        >>> family = bbvi.MeanFieldGaussian((3,))
        >>> params = family.init(jax.random.key(0))
        >>> family.sample(params, jax.random.key(1)).shape
        (3,)
    """

    shape: tuple[int, ...]
    init_scale: float = _DEFAULT_INIT_SCALE
    init_radius: float = _DEFAULT_INIT_RADIUS

    reparameterized = True
    has_entropy = True

    def __post_init__(self):
        object.__setattr__(self, "shape", check_shape(self.shape, "MeanFieldGaussian"))
        _check_init_scale("MeanFieldGaussian", self.init_scale)

    @property
    def event_shape(self):
        return self.shape

    @property
    def factor_dims(self):
        return len(self.shape)  # every element is an independent factor

    def init(self, key):
        return {
            "loc": _init_loc(key, self.shape, self.init_radius),
            "log_scale": _init_log_scale(self.shape, self.init_scale),
        }

    def distribution(self, params):
        base = dist.Normal(params["loc"], jnp.exp(params["log_scale"]))
        return base.to_event(len(self.shape))

    @property
    def noise_shape(self):
        return self.shape

    def from_noise(self, params, eps):
        return params["loc"] + eps * jnp.exp(params["log_scale"])

    def entropy(self, params):
        # numpyro's equals this, but through log(exp(log_scale)): extra work per step and per
        # coordinate, in the forward and the backward pass, that the closed form in log_scale avoids.
        return jnp.sum(params["log_scale"]) + math.prod(self.shape) * _NORMAL_ENTROPY


@dataclasses.dataclass(frozen=True)
class FullRankGaussian(DistributionFamily):
    """A multivariate Normal with dense covariance, q(z) = N(z; loc, L L^T).

    Parameters are `{"loc": (dim,), "scale_tril": (dim*(dim+1)//2,)}`: the Cholesky factor L,
    unconstrained by numpyro's `biject_to(constraints.lower_cholesky)` (exp on the diagonal).
    Use `FullRankGaussian.scale_tril(params)` for L itself.
    """

    dim: int
    init_scale: float = _DEFAULT_INIT_SCALE
    init_radius: float = _DEFAULT_INIT_RADIUS

    reparameterized = True
    has_entropy = True

    def __post_init__(self):
        _check_dim("FullRankGaussian", self.dim)
        _check_init_scale("FullRankGaussian", self.init_scale)

    @property
    def event_shape(self):
        return (self.dim,)

    def init(self, key):
        return {
            "loc": _init_loc(key, (self.dim,), self.init_radius),
            "scale_tril": _TO_CHOLESKY.inv(self.init_scale * jnp.eye(self.dim)),
        }

    @staticmethod
    def scale_tril(params) -> jax.Array:
        """The lower-triangular Cholesky factor of the covariance."""
        return _TO_CHOLESKY(params["scale_tril"])

    def distribution(self, params):
        return dist.MultivariateNormal(params["loc"], scale_tril=self.scale_tril(params))

    @property
    def noise_shape(self):
        return (self.dim,)

    def from_noise(self, params, eps):
        return params["loc"] + self.scale_tril(params) @ eps


@dataclasses.dataclass(frozen=True)
class LowRankGaussian(DistributionFamily):
    """A multivariate Normal with diagonal-plus-low-rank covariance, N(loc, W W^T + diag(d^2)).

    Captures the `rank` strongest posterior correlations at O(dim * rank) cost, where a full-rank
    family costs O(dim^2). Parameters are `{"loc": (dim,), "cov_factor": (dim, rank),
    "log_diag_scale": (dim,)}` (`d = exp(log_diag_scale)`), wrapping numpyro's
    `LowRankMultivariateNormal`. The factor starts small and random: at `W = 0` a Gaussian target's
    ELBO gradient in `W` vanishes, so a zero start would never learn a correlation.
    """

    dim: int
    rank: int
    init_scale: float = _DEFAULT_INIT_SCALE
    init_radius: float = _DEFAULT_INIT_RADIUS

    reparameterized = True
    has_entropy = True

    def __post_init__(self):
        _check_dim("LowRankGaussian", self.dim)
        if not isinstance(self.rank, int) or not 1 <= self.rank <= self.dim:
            raise ValueError(f"LowRankGaussian: rank must be an int in [1, dim], got {self.rank!r}")
        _check_init_scale("LowRankGaussian", self.init_scale)

    @property
    def event_shape(self):
        return (self.dim,)

    def init(self, key):
        key_loc, key_factor = jax.random.split(key)
        return {
            "loc": _init_loc(key_loc, (self.dim,), self.init_radius),
            "cov_factor": 0.1 * self.init_scale * jax.random.normal(key_factor, (self.dim, self.rank)),
            "log_diag_scale": _init_log_scale((self.dim,), self.init_scale),
        }

    def distribution(self, params):
        cov_diag = jnp.exp(2.0 * params["log_diag_scale"])
        return dist.LowRankMultivariateNormal(params["loc"], params["cov_factor"], cov_diag)
