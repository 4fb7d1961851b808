r"""Bayesian log-linear (softmax) regression: K classes, a Gaussian prior on the D x K weights.

    W_dk ~ N(0, prior_scale^2),    y_n ~ Categorical(softmax(x_n W)),   n = 1, ..., N.

The Normal prior is not conjugate to the Categorical likelihood: the posterior has no closed form, and
a Gaussian variational family is an assumption, not the posterior's shape. It is a good one with
enough data (the posterior tends to a Gaussian), and a poor one for small N or separable classes.
The logits x_n W are unchanged when the same vector c is added to every column of W; the prior alone
fixes that direction, so the posterior is proper but, along it, only as narrow as the prior. It is
also why plain SGD (or natural gradients) fits this model better than Adam: along that flat direction
only the prior's weak curvature pulls, and Adam's per-coordinate step sizes, set by the much larger
gradient noise of the other directions, leave a random offset there.

Binary logistic regression is the special case K = 2 with the class-0 weights pinned at zero:
softmax(x_n [0, w]) = (1 - sigmoid(x_n w), sigmoid(x_n w)) (see `logistic_regression`, and
`from_logistic`).

Families: `mean_field_family(dim, num_classes)` (independent Normals over W) and
`full_rank_family(dim, num_classes)` (one dense Gaussian over vec(W), W's rows concatenated). The
log-joint accepts W either as a (D, K) array or as that flat vector.

Reference (asymptotically exact): `importance_reference` estimates the posterior means, sds and the
log evidence by self-normalised importance sampling with a multivariate Student-t proposal centred on
the Laplace approximation (`laplace_approximation`: Newton's method for the mode, the inverse Hessian
for the scale). The log posterior is strictly concave, so Newton's method finds the unique mode; the
prior is Gaussian and the likelihood at most 1, so the posterior's tails are Gaussian and the
Student-t's heavier tails keep the importance weights bounded: the estimates are consistent with a
finite variance, and their Monte Carlo error is reported (effective sample size, log Z's standard
error). It is independent of bbvi's fits, so it can judge them; on German credit it reproduces the
published reference (see `bbvi.models._regression_reference` and the tests).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpyro.distributions as dist

import bbvi
from bbvi.models._regression_reference import importance_sampling, laplace


@functools.partial(
    jax.tree_util.register_dataclass, data_fields=["x", "y", "prior_scale"], meta_fields=["num_classes"]
)
@dataclasses.dataclass(frozen=True)
class Data:
    """Features `x` (N, D), integer labels `y` (N,) in 0..num_classes-1, and the prior's sd.

    A pytree whose `num_classes` is static, so `Data` can be passed through `jax.jit`.
    """

    x: jax.Array
    y: jax.Array
    num_classes: int
    prior_scale: float = 1.0


class Reference(NamedTuple):
    """Importance-sampling estimates of the posterior, with their Monte Carlo error."""

    mean: jax.Array  # (D, K)
    sd: jax.Array  # (D, K)
    log_evidence: jax.Array
    log_evidence_se: jax.Array  # the delta method's standard error
    ess: jax.Array  # effective sample size; a mean's Monte Carlo sd is about sd / sqrt(ess)
    mode: jax.Array  # (D, K): the posterior mode (MAP), where the proposal is centred


def _check(data: Data) -> tuple[int, int]:
    if jnp.ndim(data.x) != 2 or jnp.ndim(data.y) != 1 or jnp.shape(data.x)[0] != jnp.shape(data.y)[0]:
        raise ValueError(
            "softmax_regression.Data: x must be (N, D) and y (N,), got shapes "
            f"{jnp.shape(data.x)} and {jnp.shape(data.y)}"
        )
    if not jnp.issubdtype(jnp.result_type(data.y), jnp.integer):
        raise TypeError(f"softmax_regression.Data: y must hold integer labels, got {jnp.result_type(data.y)}")
    if not isinstance(data.num_classes, int) or data.num_classes < 2:
        raise ValueError(
            f"softmax_regression.Data: num_classes must be an int >= 2, got {data.num_classes!r}"
        )
    if isinstance(data.prior_scale, (int, float)) and not data.prior_scale > 0:
        raise ValueError(f"softmax_regression.Data: prior_scale must be positive, got {data.prior_scale}")
    return jnp.shape(data.x)[1], data.num_classes


def simulate(
    seed: int = 0, num_data: int = 200, dim: int = 3, num_classes: int = 3, prior_scale: float = 1.0
) -> Data:
    """Standard-normal features, weights drawn from the prior, labels from the model."""
    for name, value, least in (("num_data", num_data, 1), ("dim", dim, 1), ("num_classes", num_classes, 2)):
        if not isinstance(value, int) or value < least:
            raise ValueError(f"softmax_regression.simulate: {name} must be an int >= {least}, got {value!r}")
    kx, kw, ky = jax.random.split(jax.random.key(seed), 3)
    x = jax.random.normal(kx, (num_data, dim))
    w = prior_scale * jax.random.normal(kw, (dim, num_classes))
    y = jax.random.categorical(ky, x @ w)
    data = Data(x, y, num_classes, prior_scale)
    _check(data)
    return data


def from_logistic(x: jax.Array, y: jax.Array, prior_scale: float = 1.0) -> Data:
    """Binary data (y in {0, 1}, e.g. `logistic_regression.Data`) as K = 2 softmax data."""
    return Data(jnp.asarray(x), jnp.asarray(y).astype(jnp.int32), 2, prior_scale)


def mean_field_family(dim: int, num_classes: int) -> bbvi.MeanFieldGaussian:
    """Independent Normals over the (D, K) weights."""
    return bbvi.MeanFieldGaussian((dim, num_classes))


def full_rank_family(dim: int, num_classes: int) -> bbvi.FullRankGaussian:
    """A dense Gaussian over vec(W) (length D K, W's rows concatenated)."""
    return bbvi.FullRankGaussian(dim * num_classes)


def log_joint_fn(data: Data):
    """`W -> log p(y, W)`, with W a (D, K) array or its flattening vec(W) of length D K."""
    dim, num_classes = _check(data)

    def log_joint(w):
        w = jnp.reshape(w, (dim, num_classes))
        prior = dist.Normal(0.0, data.prior_scale).log_prob(w).sum()
        return prior + dist.Categorical(logits=data.x @ w).log_prob(data.y).sum()

    return log_joint


def laplace_approximation(data: Data, num_newton_steps: int = 30) -> tuple[jax.Array, jax.Array]:
    """The posterior mode of vec(W) and the inverse of the negative Hessian there (Newton's method)."""
    dim, num_classes = _check(data)
    return laplace(log_joint_fn(data), dim * num_classes, num_newton_steps)


def importance_reference(
    data: Data, key: jax.Array, num_draws: int = 20_000, df: int = 5, batch_size: int = 5_000
) -> Reference:
    """Posterior means and sds of W (each (D, K)) and log p(y), by self-normalised importance sampling.

    The proposal is a multivariate Student-t with `df` degrees of freedom centred on the Laplace
    approximation (see `bbvi.models._regression_reference`).
    """
    dim, num_classes = _check(data)
    log_joint = log_joint_fn(data)
    mode, cov = laplace(log_joint, dim * num_classes)
    est = importance_sampling(log_joint, mode, cov, key, num_draws, df, batch_size)
    shape = (dim, num_classes)
    return Reference(
        est.mean.reshape(shape),
        est.sd.reshape(shape),
        est.log_evidence,
        est.log_evidence_se,
        est.ess,
        est.mode.reshape(shape),
    )
