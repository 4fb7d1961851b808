"""Exact ELBOs and Monte Carlo summaries shared by the estimator contract tests.

Every target here has an ELBO in closed form (Gaussian, Gamma and Beta expectations), by
enumeration (small discrete families) or by Gauss-Hermite quadrature (a mixture's entropy), written
directly from the definitions and differentiated with `jax.grad`, so the estimators are checked
against the exact gradient rather than against another estimator. The multi-sample bounds (IWAE,
Renyi) are exact expectations over every K-tuple of *atoms*: the configurations of a discrete q,
or the nodes of a tensor Gauss-Hermite rule for a Gaussian q (K = 2, a few dimensions at most).
Nothing here calls bbvi's own `log_prob`, `entropy` or objectives: a bug there must not cancel out.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import betaln, digamma, gammaln, logsumexp

import bbvi

LOG_2PI = math.log(2 * math.pi)
#: Compiler options for test programs that run once: XLA's backend optimisations cost seconds of
#: compile time and buy nothing at these sizes (the arithmetic is the same).
_NO_OPT = {"xla_backend_optimization_level": 0}
fast_jit = functools.partial(jax.jit, compiler_options=_NO_OPT)


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

    @classmethod
    def normal_prior(cls, dim: int, sd: float) -> GaussianTarget:
        """The normalised log-density of N(0, sd^2 I): a prior's E_q[log p(z)] by `expected_log_joint`."""
        return cls.diagonal(np.zeros(dim), np.full(dim, sd), -0.5 * dim * math.log(2 * math.pi * sd**2))

    def log_joint(self, z):
        diff = jnp.ravel(z) - self.mean
        return -0.5 * diff @ self.precision @ diff + self.constant

    def expected_log_joint(self, family) -> Callable:
        """E_q[log p(z)] for a Gaussian q."""

        def expected(params):
            loc, tril = gaussian_loc_and_tril(family, params)
            return -0.5 * expected_quadratic(loc, tril, self.mean, self.precision) + self.constant

        return expected

    def exact_elbo(self, family) -> Callable:
        expected = self.expected_log_joint(family)

        def elbo(params):
            return expected(params) + gaussian_entropy(gaussian_loc_and_tril(family, params)[1])

        return elbo

    def atoms(self, family, order: int) -> Callable:
        """params -> (log mass, log-weight log p - log q) of q's Gauss-Hermite atoms (see `exact_bound`)."""

        def atoms(params):
            log_mass, z, log_q = gaussian_atoms(family, params, order)
            return log_mass, jax.vmap(self.log_joint)(z) - log_q

        return atoms

    def mixture_elbo(self, order: int) -> Callable:
        """The exact ELBO of a diagonal Gaussian mixture q (`GaussianMixture` parameters).

        E_q[f] = sum_k w_k E_{N_k}[f], each component's expectation by a tensor Gauss-Hermite rule;
        f = log p - log q is smooth (log q is a log-sum-exp of quadratics), so the rule converges fast.
        """

        def elbo(params):
            log_weights = jax.nn.log_softmax(params["logits"])
            loc, scale = params["loc"], jnp.exp(params["log_scale"])  # (K, dim)
            eps, log_mass = gauss_hermite(loc.shape[1], order)
            z = loc[:, None] + scale[:, None] * eps[None]  # (K, A, dim): component k's nodes
            standard = (z[:, :, None] - loc[None, None]) / scale[None, None]  # (K, A, J, dim)
            log_pdf = jnp.sum(-0.5 * standard**2 - jnp.log(scale) - 0.5 * LOG_2PI, axis=-1)
            log_q = logsumexp(log_weights + log_pdf, axis=-1)  # (K, A)
            log_p = jax.vmap(jax.vmap(self.log_joint))(z)
            return jnp.sum(jnp.exp(log_weights[:, None] + log_mass) * (log_p - log_q))

        return elbo


def gauss_hermite(dim: int, order: int) -> tuple[jax.Array, jax.Array]:
    """Nodes `(order**dim, dim)` and log-masses of a tensor Gauss-Hermite rule for N(0, I)."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(order)
    grid = np.stack(np.meshgrid(*[nodes] * dim, indexing="ij"), axis=-1).reshape(-1, dim)
    log_w = np.log(weights / weights.sum())
    log_mass = np.sum(np.stack(np.meshgrid(*[log_w] * dim, indexing="ij"), axis=-1).reshape(-1, dim), -1)
    return jnp.asarray(grid, jnp.float32), jnp.asarray(log_mass, jnp.float32)


def gaussian_atoms(family, params, order: int):
    """A Gaussian q's Gauss-Hermite nodes `z = loc + L eps`, their log-masses and log q(z)."""
    loc, tril = gaussian_loc_and_tril(family, params)
    eps, log_mass = gauss_hermite(loc.shape[0], order)
    z = loc + eps @ tril.T
    log_q = -0.5 * jnp.sum(eps**2, axis=1) - 0.5 * loc.shape[0] * LOG_2PI - jnp.sum(jnp.log(jnp.diag(tril)))
    return log_mass, z, log_q


# --- multi-sample bounds -------------------------------------------------------------------------


def renyi_bound(log_w, alpha: float):
    """The K-sample Renyi bound of one K-tuple of log-weights (last axis), from its definition.

    alpha = 0 is the IWAE bound log mean exp(w), alpha = 1 the ELBO mean(w).
    """
    k = log_w.shape[-1]
    if alpha == 1:
        return jnp.mean(log_w, axis=-1)
    return (logsumexp((1 - alpha) * log_w, axis=-1) - math.log(k)) / (1 - alpha)


def exact_bound(atoms: Callable, alpha: float, num_samples: int) -> Callable:
    """params -> E[K-sample Renyi bound] for a q that is a finite set of weighted atoms.

    `atoms(params)` gives each atom's log-mass under q (summing to one in probability) and its
    log-weight `log p - log q`. The K draws are independent, so the expectation is the sum over all
    K-tuples of atoms of the product of their masses times the bound of their log-weights.
    """

    def bound(params):
        log_mass, log_w = atoms(params)
        tuples = np.indices((log_mass.shape[0],) * num_samples).reshape(num_samples, -1)
        mass = jnp.exp(sum(log_mass[i] for i in tuples))
        return jnp.sum(mass * renyi_bound(jnp.stack([log_w[i] for i in tuples], axis=-1), alpha))

    return bound


# --- discrete pieces -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Enumeration:
    """All configurations of a small discrete family, in mixed-radix order.

    Bernoulli, Categorical, OneHotCategorical (whose draws are the one-hot encodings) and
    MarkovChains (every path of every chain). Configuration `i` has digits
    `z_j = (i // base^j) % base`, so `index(z)` inverts it and a log-joint can read a table entry
    per configuration.
    """

    family: Any

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of one configuration's digits (category indices, before one-hot encoding)."""
        if isinstance(self.family, bbvi.MarkovChains):
            return self.family.event_shape
        return self.family.shape

    @property
    def base(self) -> int:
        if isinstance(self.family, bbvi.Bernoulli):
            return 2
        if isinstance(self.family, bbvi.MarkovChains):
            return self.family.num_states
        return self.family.num_categories

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def count(self) -> int:
        return self.base**self.size

    @property
    def weights(self) -> np.ndarray:
        return self.base ** np.arange(self.size)

    @property
    def configs(self) -> np.ndarray:
        """All configurations' digits, shape `(count,) + shape`, int32."""
        digits = (np.arange(self.count)[:, None] // self.weights) % self.base
        return digits.reshape((self.count,) + self.shape).astype(np.int32)

    @property
    def draws(self) -> np.ndarray:
        """All configurations as the family draws them (one-hot for OneHotCategorical)."""
        if isinstance(self.family, bbvi.OneHotCategorical):
            return np.eye(self.base, dtype=np.int32)[self.configs]
        return self.configs

    def decode(self, z):
        return jnp.argmax(z, axis=-1) if isinstance(self.family, bbvi.OneHotCategorical) else z

    def index(self, z):
        return jnp.sum(jnp.ravel(self.decode(z)) * self.weights)

    def log_q(self, params):
        """log q(z) for every configuration, from the definition (not bbvi's log_prob)."""
        z = self.configs.reshape(self.count, self.size)
        if isinstance(self.family, bbvi.Bernoulli):
            logits = params["logits"].ravel()
            return jnp.sum(z * jax.nn.log_sigmoid(logits) + (1 - z) * jax.nn.log_sigmoid(-logits), axis=1)
        if isinstance(self.family, bbvi.MarkovChains):
            return self._markov_log_q(params)
        log_p = jax.nn.log_softmax(params["logits"].reshape(self.size, self.base), axis=-1)
        return jnp.sum(jnp.take_along_axis(log_p[None], z[..., None], axis=-1)[..., 0], axis=1)

    def _markov_log_q(self, params):
        """log q(path) = sum_m log pi_m(z_m0) + sum_t log A_mt(z_mt, z_m,t+1), all paths at once."""
        z = self.configs  # (count, M, T)
        chains = np.arange(z.shape[1])
        initial = jax.nn.log_softmax(params["initial_logits"], axis=-1)  # (M, L)
        total = jnp.sum(initial[chains, z[:, :, 0]], axis=1)
        transitions = jax.nn.log_softmax(params["transition_logits"], axis=-1)  # (M, T-1, L, L)
        for t in range(z.shape[2] - 1):
            total += jnp.sum(transitions[chains, t, z[:, :, t], z[:, :, t + 1]], axis=1)
        return total


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

    def expected_log_joint(self, family) -> Callable:
        def expected(params):
            return jnp.sum(jnp.exp(self.enumeration.log_q(params)) * self.table)

        return expected

    def exact_elbo(self, family) -> Callable:
        def elbo(params):
            log_q = self.enumeration.log_q(params)
            return jnp.sum(jnp.exp(log_q) * (self.table - log_q))

        return elbo

    def atoms(self, family) -> Callable:
        """params -> (log q, log p - log q) of every configuration (see `exact_bound`)."""

        def atoms(params):
            log_q = self.enumeration.log_q(params)
            return log_q, self.table - log_q

        return atoms


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

    def atoms(self, family, order: int) -> Callable:
        """The product of the Gaussian leaf's Gauss-Hermite atoms and the discrete configurations."""
        gaussian, _ = self.split(family)

        def atoms(params):
            mu_params, c_params = self.split(params)
            log_mass, mu, log_q_mu = gaussian_atoms(gaussian, mu_params, order)  # (A,), (A, dim), (A,)
            log_q_c = self.enumeration.log_q(c_params)  # (C,)
            distance = jnp.sum((mu[:, None] - jnp.asarray(self.centres)[None]) ** 2, axis=-1)  # (A, C)
            log_p = jnp.asarray(self.table)[None] - 0.5 * distance
            log_w = log_p - log_q_mu[:, None] - log_q_c[None]
            return (log_mass[:, None] + log_q_c[None]).ravel(), log_w.ravel()

        return atoms


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


@dataclasses.dataclass(frozen=True)
class GammaQTarget:
    """Gamma(a, b) log-densities (normalised) for a q of independent Gammas in their own arguments.

    q = Gamma(alpha, beta) as `NumpyroFamily(dist.Gamma)` stores it: `{"concentration": log alpha,
    "rate": log beta}`. E_q[log z] = digamma(alpha) - log beta, E_q[z] = alpha / beta and
    H[q] = alpha - log beta + lgamma(alpha) + (1 - alpha) digamma(alpha).
    """

    concentration: np.ndarray
    rate: np.ndarray

    def log_joint(self, z):
        a, b = self.concentration, self.rate
        return jnp.sum(a * jnp.log(b) - gammaln(a) + (a - 1) * jnp.log(z) - b * z)

    def expected_log_joint(self, family) -> Callable:
        a, b = self.concentration, self.rate

        def expected(params):
            alpha, beta = jnp.exp(params["concentration"]), jnp.exp(params["rate"])
            mean_log = digamma(alpha) - jnp.log(beta)
            return jnp.sum(a * jnp.log(b) - gammaln(a) + (a - 1) * mean_log - b * alpha / beta)

        return expected

    def exact_elbo(self, family) -> Callable:
        expected = self.expected_log_joint(family)

        def elbo(params):
            alpha, beta = jnp.exp(params["concentration"]), jnp.exp(params["rate"])
            entropy = alpha - jnp.log(beta) + gammaln(alpha) + (1 - alpha) * digamma(alpha)
            return expected(params) + jnp.sum(entropy)

        return elbo


@dataclasses.dataclass(frozen=True)
class BetaQTarget:
    """Beta(a, b) log-densities (normalised) for a q of independent Betas in their own arguments.

    q = Beta(alpha, beta) stored as `{"concentration1": log alpha, "concentration0": log beta}`.
    E_q[log z] = digamma(alpha) - digamma(alpha + beta) (and symmetrically for log(1 - z)), and
    H[q] = log B(alpha, beta) - (alpha - 1) psi(alpha) - (beta - 1) psi(beta)
    + (alpha + beta - 2) psi(alpha + beta).
    """

    concentration1: np.ndarray
    concentration0: np.ndarray

    def log_joint(self, z):
        a, b = self.concentration1, self.concentration0
        return jnp.sum((a - 1) * jnp.log(z) + (b - 1) * jnp.log1p(-z) - betaln(a, b))

    def exact_elbo(self, family) -> Callable:
        a, b = self.concentration1, self.concentration0

        def elbo(params):
            alpha, beta = jnp.exp(params["concentration1"]), jnp.exp(params["concentration0"])
            total = digamma(alpha + beta)
            mean_log, mean_log1m = digamma(alpha) - total, digamma(beta) - total
            expected = (a - 1) * mean_log + (b - 1) * mean_log1m - betaln(a, b)
            entropy = (
                betaln(alpha, beta)
                - (alpha - 1) * digamma(alpha)
                - (beta - 1) * digamma(beta)
                + (alpha + beta - 2) * total
            )
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
    compiled = lowered.compile(_NO_OPT)
    elbos, grads = compiled(params, keys)
    return np.concatenate([np.asarray(elbos, np.float64)[:, None], flat(grads)], axis=1)


def monte_carlo_many(
    value_and_grads: list[Callable], params, key: jax.Array, num_keys: int, same_key: bool = False
) -> list[np.ndarray]:
    """`monte_carlo` for several estimators compiled as one program (a third less compile time).

    With `same_key`, every estimator gets the same keys (the same draws, to compare them draw by
    draw); otherwise keys folded with the estimator's position (independent estimates).
    """

    def all_estimates(params, key):
        keys = [key if same_key else jax.random.fold_in(key, i) for i in range(len(value_and_grads))]
        return [value_and_grad(params, k) for value_and_grad, k in zip(value_and_grads, keys)]

    keys = jax.random.split(key, num_keys)
    estimates = fast_jit(jax.vmap(all_estimates, in_axes=(None, 0)))(params, keys)
    return [np.concatenate([np.asarray(v, np.float64)[:, None], flat(g)], axis=1) for v, g in estimates]


def exact_values(exact_elbo: Callable, params) -> np.ndarray:
    """`(1 + D,)`: the exact ELBO then its exact gradient (jax.grad of the closed form).

    Compiled as one program without backend optimisations: evaluated eagerly, op by op, the
    quadratures and enumerations would compile hundreds of tiny programs (seconds each case).
    """
    compiled = jax.jit(jax.value_and_grad(exact_elbo)).lower(params).compile(_NO_OPT)
    value, grad = compiled(params)
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


def warm_started(estimator: bbvi.GradientEstimator, warm_steps: int = 3) -> Callable:
    """`(params, key) -> (value, grad)` from a stateful estimator, its state warmed up first.

    The state comes from `warm_steps` earlier estimates at the same parameters, with keys split off
    the given one: as in `fit`, the control variate's state is independent of the current draws.
    """

    def value_and_grad(params, key):
        warm_key, key = jax.random.split(key)
        state = estimator.init(params)
        for k in jax.random.split(warm_key, warm_steps):
            _, _, state = estimator.estimate(params, state, k)
        value, grad, _ = estimator.estimate(params, state, key)
        return value, grad

    return value_and_grad


def gradient_draws(value_and_grad: Callable, params, key: jax.Array, num_keys: int) -> np.ndarray:
    """`(num_keys, D)`: the flattened gradient estimates only."""
    return monte_carlo(value_and_grad, params, key, num_keys)[:, 1:]
