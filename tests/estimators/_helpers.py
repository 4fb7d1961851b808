"""Exact ELBOs and Monte Carlo summaries shared by the estimator contract tests.

Every target here has an ELBO in closed form (Gaussian expectations) or by enumeration (small
discrete families), written directly from the definitions and differentiated with `jax.grad`, so
the estimators are checked against the exact gradient rather than against another estimator.
Nothing here calls bbvi's own `log_prob` or `entropy`: a bug there must not cancel out.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import gammaln

import bbvi

LOG_2PI = math.log(2 * math.pi)


# --- Gaussian pieces -----------------------------------------------------------------------------


def gaussian_loc_and_tril(family, params):
    """`(loc, L)` of a Gaussian family's q = N(loc, L L^T), from the parametrisation's definition."""
    if isinstance(family, bbvi.MeanFieldGaussian):
        return params["loc"].ravel(), jnp.diag(jnp.exp(params["log_scale"]).ravel())
    if isinstance(family, bbvi.FullRankGaussian):
        return params["loc"], bbvi.FullRankGaussian.scale_tril(params)
    if isinstance(family, bbvi.LowRankGaussian):
        factor = params["cov_factor"]
        cov = factor @ factor.T + jnp.diag(jnp.exp(2 * params["log_diag_scale"]))
        return params["loc"], jnp.linalg.cholesky(cov)
    raise TypeError(f"not a Gaussian family: {family!r}")


def gaussian_entropy(tril):
    """H[N(., L L^T)] = d/2 (1 + log 2 pi) + sum log |L_ii|."""
    return 0.5 * tril.shape[0] * (1.0 + LOG_2PI) + jnp.sum(jnp.log(jnp.abs(jnp.diag(tril))))


def expected_quadratic(loc, tril, mean, precision):
    """E_q[(z - m)^T P (z - m)] = tr(P L L^T) + (loc - m)^T P (loc - m) for q = N(loc, L L^T)."""
    diff = loc - mean
    return jnp.trace(precision @ tril @ tril.T) + diff @ precision @ diff


@dataclasses.dataclass(frozen=True)
class GaussianTarget:
    """log p(z) = -1/2 (z - m)^T P (z - m) + constant: a correlated Gaussian up to normalisation."""

    mean: np.ndarray
    precision: np.ndarray
    constant: float

    @classmethod
    def random(cls, seed: int, dim: int, constant: float = -2.0) -> GaussianTarget:
        rng = np.random.default_rng(seed)
        a = rng.normal(size=(dim, dim)) / np.sqrt(dim)
        cov = a @ a.T + 0.5 * np.eye(dim)  # eigenvalues of order one, off-diagonals of order one half
        return cls(rng.normal(size=dim), np.linalg.inv(cov), constant)

    @classmethod
    def diagonal(cls, mean, sd, constant: float = -2.0) -> GaussianTarget:
        return cls(np.asarray(mean, float), np.diag(1.0 / np.asarray(sd, float) ** 2), constant)

    def log_joint(self, z):
        diff = jnp.ravel(z) - self.mean
        return -0.5 * diff @ self.precision @ diff + self.constant

    def exact_elbo(self, family) -> Callable:
        def elbo(params):
            loc, tril = gaussian_loc_and_tril(family, params)
            expected = -0.5 * expected_quadratic(loc, tril, self.mean, self.precision) + self.constant
            return expected + gaussian_entropy(tril)

        return elbo


# --- discrete pieces -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Enumeration:
    """All configurations of a small Bernoulli or Categorical family, in mixed-radix order.

    Configuration `i` has digits `z_j = (i // base^j) % base`, so `index(z)` inverts it and a
    log-joint can read a table entry per configuration.
    """

    family: Any

    @property
    def base(self) -> int:
        return 2 if isinstance(self.family, bbvi.Bernoulli) else self.family.num_categories

    @property
    def size(self) -> int:
        return math.prod(self.family.shape)

    @property
    def count(self) -> int:
        return self.base**self.size

    @property
    def weights(self) -> np.ndarray:
        return self.base ** np.arange(self.size)

    @property
    def configs(self) -> np.ndarray:
        """All configurations, shape `(count,) + shape`, int32."""
        digits = (np.arange(self.count)[:, None] // self.weights) % self.base
        return digits.reshape((self.count,) + self.family.shape).astype(np.int32)

    def index(self, z):
        return jnp.sum(jnp.ravel(z) * self.weights)

    def log_q(self, params):
        """log q(z) for every configuration, from the definition (not bbvi's log_prob)."""
        z = self.configs.reshape(self.count, self.size)
        if isinstance(self.family, bbvi.Bernoulli):
            logits = params["logits"].ravel()
            return jnp.sum(z * jax.nn.log_sigmoid(logits) + (1 - z) * jax.nn.log_sigmoid(-logits), axis=1)
        log_p = jax.nn.log_softmax(params["logits"].reshape(self.size, self.base), axis=-1)
        return jnp.sum(jnp.take_along_axis(log_p[None], z[..., None], axis=-1)[..., 0], axis=1)


@dataclasses.dataclass(frozen=True)
class TableTarget:
    """An arbitrary log-joint over a small discrete family: one random table entry per configuration."""

    enumeration: Enumeration
    table: np.ndarray

    @classmethod
    def random(cls, seed: int, family, scale: float = 2.0, constant: float = -3.0) -> TableTarget:
        enumeration = Enumeration(family)
        rng = np.random.default_rng(seed)
        return cls(enumeration, scale * rng.normal(size=enumeration.count) + constant)

    def log_joint(self, z):
        return jnp.asarray(self.table)[self.enumeration.index(z)]

    def exact_elbo(self, family) -> Callable:
        def elbo(params):
            log_q = self.enumeration.log_q(params)
            return jnp.sum(jnp.exp(log_q) * (self.table - log_q))

        return elbo


@dataclasses.dataclass(frozen=True)
class MixedTarget:
    """A Gaussian leaf `mu` and a discrete leaf `c` with log p = table[c] - 1/2 |mu - A[c]|^2.

    Given `c` the Gaussian expectation is closed-form, so the exact ELBO enumerates `c`:
    sum_c q(c) (table[c] - 1/2 E_q|mu - A[c]|^2) + H[q(mu)] + H[q(c)].
    The family is built by `family(gaussian, discrete)`, a dict or a tuple, and the latents
    are read back with `split(z)` in the same structure.
    """

    enumeration: Enumeration
    table: np.ndarray
    centres: np.ndarray  # (count, dim)
    as_tuple: bool

    @classmethod
    def random(cls, seed: int, gaussian, discrete, as_tuple: bool = False) -> MixedTarget:
        enumeration = Enumeration(discrete)
        rng = np.random.default_rng(seed)
        dim = math.prod(gaussian.shape)
        return cls(
            enumeration,
            rng.normal(size=enumeration.count) - 2.0,
            2.0 * rng.normal(size=(enumeration.count, dim)),
            as_tuple,
        )

    def family(self, gaussian):
        if self.as_tuple:
            return (gaussian, self.enumeration.family)
        return {"mu": gaussian, "c": self.enumeration.family}

    def split(self, tree):
        return tuple(tree) if self.as_tuple else (tree["mu"], tree["c"])

    def log_joint(self, z):
        mu, c = self.split(z)
        i = self.enumeration.index(c)
        return jnp.asarray(self.table)[i] - 0.5 * jnp.sum((jnp.ravel(mu) - jnp.asarray(self.centres)[i]) ** 2)

    def exact_elbo(self, family) -> Callable:
        gaussian, _ = self.split(family)

        def elbo(params):
            mu_params, c_params = self.split(params)
            loc, tril = gaussian_loc_and_tril(gaussian, mu_params)
            log_q = self.enumeration.log_q(c_params)
            variance = jnp.sum(jnp.diag(tril @ tril.T))
            expected = self.table - 0.5 * (jnp.sum((loc - self.centres) ** 2, axis=1) + variance)
            return jnp.sum(jnp.exp(log_q) * (expected - log_q)) + gaussian_entropy(tril)

        return elbo


@dataclasses.dataclass(frozen=True)
class GammaTarget:
    """Independent Gamma(a, b) densities on positive latents, fitted through `exp` by a Gaussian q(u).

    In unconstrained space the ELBO is E[log p(exp(u)) + u] + H[q(u)] with
    log p(exp(u)) + u = a log b - lgamma(a) + a u - b exp(u), and E[exp(u)] = exp(m + s^2 / 2).
    """

    concentration: np.ndarray
    rate: np.ndarray

    def log_joint(self, tau):
        a, b = self.concentration, self.rate
        return jnp.sum(a * jnp.log(b) - gammaln(a) + (a - 1) * jnp.log(tau) - b * tau)

    def exact_elbo(self, family) -> Callable:
        a, b = self.concentration, self.rate

        def elbo(params):
            loc, log_scale = params["loc"], params["log_scale"]
            expected = a * jnp.log(b) - gammaln(a) + a * loc - b * jnp.exp(loc + 0.5 * jnp.exp(2 * log_scale))
            entropy = 0.5 * (1.0 + LOG_2PI) + log_scale
            return jnp.sum(expected + entropy)

        return elbo


# --- parameters and Monte Carlo summaries ---------------------------------------------------------


def random_params(family, seed: int, scale: float = 0.5):
    """Parameters away from any optimum: `init` plus independent N(0, scale^2) perturbations.

    Gaussian scales become exp(log 0.1 + noise); callers that need wider q set them explicitly.
    """
    params = bbvi.init(family, jax.random.key(seed))
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    return treedef.unflatten([x + scale * jax.random.normal(k, jnp.shape(x)) for x, k in zip(leaves, keys)])


def flat(batch) -> np.ndarray:
    """A batch of pytrees (every leaf with a leading axis `n`) as float64 rows `(n, D)`."""
    leaves = [np.asarray(x, np.float64) for x in jax.tree.leaves(batch)]
    return np.concatenate([x.reshape(x.shape[0], -1) for x in leaves], axis=-1)


def coordinate_names(params) -> list[str]:
    """Readable names for the flattened ELBO-then-gradient coordinates, for failure messages."""
    names = ["elbo"]
    for path, x in jax.tree_util.tree_flatten_with_path(params)[0]:
        prefix = "grad" + jax.tree_util.keystr(path)
        size = int(np.prod(np.shape(x)))
        names += [f"{prefix}[{i}]" for i in range(size)] if np.ndim(x) else [prefix]
    return names


def monte_carlo(value_and_grad: Callable, params, key: jax.Array, num_keys: int) -> np.ndarray:
    """`(num_keys, 1 + D)` float64 rows: the ELBO estimate then the flattened gradient, one per key.

    One `jit(vmap)` over independent keys: the same program a user vmaps. Each runs once, so it
    is compiled without LLVM's optimisations, which more than halves the compile time that
    dominates these tests (the arithmetic is the same; only code generation is less tuned).
    """
    keys = jax.random.split(key, num_keys)
    lowered = jax.jit(jax.vmap(value_and_grad, in_axes=(None, 0))).lower(params, keys)
    compiled = lowered.compile(compiler_options={"xla_backend_optimization_level": 0})
    elbos, grads = compiled(params, keys)
    return np.concatenate([np.asarray(elbos, np.float64)[:, None], flat(grads)], axis=1)


def exact_values(exact_elbo: Callable, params) -> np.ndarray:
    """`(1 + D,)`: the exact ELBO then its exact gradient (jax.grad of the closed form)."""
    value, grad = jax.value_and_grad(exact_elbo)(params)
    return np.concatenate([[float(value)], flat(jax.tree.map(lambda x: x[None], grad))[0]])


class Summary(NamedTuple):
    """Per-column mean and standard error of Monte Carlo draws, and the first rows for spot checks."""

    mean: np.ndarray
    se: np.ndarray
    head: np.ndarray

    @classmethod
    def of(cls, draws: np.ndarray, head: int = 2) -> Summary:
        se = draws.std(axis=0, ddof=1) / np.sqrt(draws.shape[0])
        return cls(draws.mean(axis=0), se, draws[:head].copy())

    def z_scores(self, reference: np.ndarray) -> np.ndarray:
        """(mean - reference) / standard error, per column.

        A column with no spread (an exactly deterministic coordinate) gets a float32-sized standard
        error instead of zero, so exact agreement passes and anything else fails.
        """
        floor = 1e-5 * (1.0 + np.abs(reference))
        return (self.mean - reference) / np.maximum(self.se, floor)


def total_variance(draws: np.ndarray) -> float:
    """Sum over columns of the variance across rows: the trace of the estimator's covariance."""
    return float(draws.var(axis=0, ddof=1).sum())


def gradient_draws(value_and_grad: Callable, params, key: jax.Array, num_keys: int) -> np.ndarray:
    """`(num_keys, D)`: the flattened gradient estimates only."""
    return monte_carlo(value_and_grad, params, key, num_keys)[:, 1:]
