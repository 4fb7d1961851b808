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

# numpyro's unconstrained vector <-> lower-triangular matrix with exp on the diagonal; its layout
# (strict lower triangle row by row, then the diagonal) is the full-rank family's vector layout.
_TO_CHOLESKY = biject_to(constraints.lower_cholesky)


def _scale_tril(vector):
    """L = diag(d) (I + N) from the stored vector: d = exp(last dim entries), N the strict lower part.

    The off-diagonal entries are relative to their row's scale, as log d is: an optimiser step moves
    every covariance parameter by a fraction of the scale, whatever the posterior's scale is.
    """
    unit = _TO_CHOLESKY(vector)  # tril(N, -1) + diag(d)
    d = jnp.diagonal(unit, axis1=-2, axis2=-1)
    return d[..., :, None] * jnp.tril(unit, -1) + unit * jnp.eye(unit.shape[-1], dtype=unit.dtype)


def _scale_tril_vector(tril):
    """The inverse of `_scale_tril`: the stored vector of a lower-triangular L with positive diagonal."""
    tril = jnp.asarray(tril)
    d = jnp.diagonal(tril, axis1=-2, axis2=-1)
    eye = jnp.eye(tril.shape[-1], dtype=tril.dtype)
    return _TO_CHOLESKY.inv(jnp.tril(tril, -1) / d[..., :, None] + d[..., :, None] * eye)


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

    Parameters are `{"loc": (dim,), "scale_tril": (dim*(dim+1)//2,)}`. The Cholesky factor is
    stored scale-free, `L = diag(d) (I + N)`: in numpyro's `lower_cholesky` vector layout, the strict
    lower triangle (row by row) holds N, `L_ij / L_ii`, and the last `dim` entries hold `log d`, the
    log of L's diagonal. Use `FullRankGaussian.scale_tril(params)` for L and
    `FullRankGaussian.params_from_scale_tril(loc, L)` for the parameters of a given L.

    Why not L's entries themselves: an optimiser such as Adam moves each parameter by about its step
    size whatever the parameter's scale. On L's raw off-diagonals that is a step of `lr / L_ii`
    relative to the scale, so a narrow posterior (sds ~0.07, Adam at 0.02) fills L with off-diagonal
    entries several times its diagonal within tens of steps, and L's condition number grows
    exponentially with the dimension (1e9 to 1e18 in 30 dimensions). Relative off-diagonals move,
    like `log d`, by a fraction of the scale per step.

    Example:
        >>> import jax, jax.numpy as jnp, bbvi
        >>> family = bbvi.FullRankGaussian(2)
        >>> tril = jnp.array([[2.0, 0.0], [1.0, 0.5]])
        >>> params = family.params_from_scale_tril(jnp.zeros(2), tril)
        >>> bool(jnp.allclose(family.scale_tril(params), tril))
        True
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
            "scale_tril": _scale_tril_vector(self.init_scale * jnp.eye(self.dim)),
        }

    @staticmethod
    def scale_tril(params) -> jax.Array:
        """The lower-triangular Cholesky factor L of the covariance (positive diagonal)."""
        return _scale_tril(params["scale_tril"])

    @staticmethod
    def params_from_scale_tril(loc, scale_tril) -> dict:
        """The parameters of N(loc, L L^T) for a lower-triangular `scale_tril` L with positive diagonal.

        Raises:
            ValueError: if `scale_tril` is not a square matrix matching `loc`'s length.
        """
        loc, scale_tril = jnp.asarray(loc), jnp.asarray(scale_tril)
        if loc.ndim != 1 or scale_tril.shape != (loc.shape[0], loc.shape[0]):
            raise ValueError(
                "FullRankGaussian.params_from_scale_tril: expected loc of shape (dim,) and scale_tril of "
                f"shape (dim, dim), got {loc.shape} and {scale_tril.shape}"
            )
        return {"loc": loc, "scale_tril": _scale_tril_vector(scale_tril)}

    def distribution(self, params):
        return dist.MultivariateNormal(params["loc"], scale_tril=self.scale_tril(params))

    @property
    def noise_shape(self):
        return (self.dim,)

    def from_noise(self, params, eps):
        return params["loc"] + self.scale_tril(params) @ eps

    def from_noise_and_log_prob(self, params, eps, fixed: bool = False):
        """The draw `x = from_noise(params, eps)` and log q(x), computed from the noise.

        `log q(x) = log N(eps; 0, I) - log det L` exactly, where the generic route solves
        `L r = x - loc` for `r = eps`: in float32 the rounding of `x` is amplified by L's condition
        number, which gave ELBO estimates of 1e20 and garbage gradients once L was ill-conditioned.

        With `fixed` (sticking the landing), q's parameters are held fixed and the gradient reaches
        log q only through x: `-Sigma^-1 (x - loc) = -L^-T eps` per unit of x, taken as one
        triangular solve on x's tangent, never on x itself. The value is the same either way.
        """
        tril = self.scale_tril(params)
        x = params["loc"] + tril @ eps
        log_det = jnp.sum(params["scale_tril"][-self.dim :])  # log d: the log of L's diagonal
        if fixed:
            stop = jax.lax.stop_gradient
            log_det = stop(log_det)
            # x - stop(x) is exactly zero: r equals eps, and carries x's tangent through L^-1.
            r = eps + jax.scipy.linalg.solve_triangular(stop(tril), x - stop(x), lower=True)
        else:
            r = eps  # x(params, eps) and q(params) move together: log q(x) is this for any params
        return x, -0.5 * jnp.sum(r**2) - log_det - self.dim * 0.5 * math.log(2.0 * math.pi)


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
