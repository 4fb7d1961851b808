"""Shared machinery for the family tests: Monte Carlo tolerances and reference oracles.

The oracles say, from the parameters alone and in float64, what a family's draws should look like:
its parameter shapes, draw dtype, log-density, moments, support (discrete) or integration grid (1-D).
They use closed forms (numpy / scipy) wherever one exists, so a wrong wrapper in bbvi cannot agree
with them by construction; numpyro is the reference only where bbvi is meant to *be* numpyro (the
stick-breaking simplex, whose Jacobian bbvi must not re-derive).

A new family type joins by registering its oracles (`@reference_log_prob.register(NewFamily)`, ...).
A family type without an oracle makes its contract tests fail with NotImplementedError rather than be
skipped silently.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import itertools
import math
import pathlib
import pkgutil
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import scipy.stats
from numpyro.distributions import constraints
from numpyro.distributions.transforms import biject_to
from scipy.special import expit, log_expit, log_softmax, logit, softmax

import bbvi
from bbvi.families import is_family


@dataclasses.dataclass(frozen=True)
class Case:
    """One entry of the family registry."""

    id: str
    make: Callable[[], Any]  # builds the family afresh: two calls must give equal families
    # Absolute tolerance on float32 log-densities against the float64 reference. The default covers
    # a handful of O(10) terms; numpyro's low-rank density goes through the Woodbury identity (a
    # capacitance Cholesky and two triangular solves), whose float32 rounding reaches ~5e-4.
    log_prob_atol: float = 1e-4


def extra_cases() -> list[Case]:
    """The `CASES` of every `cases_*.py` module in this package (importing them registers their oracles)."""
    found = []
    for info in sorted(pkgutil.iter_modules([str(pathlib.Path(__file__).parent)])):
        if info.name.startswith("cases_"):
            found += importlib.import_module(f"{__package__}.{info.name}").CASES
    return found


# --------------------------------------------------------------------------------------------------
# Family pytrees, seen from outside bbvi (the tests must not reuse the code they test).


def family_leaves(family) -> list:
    """The single families of a family pytree (families are opaque leaves to `jax.tree`)."""
    return jax.tree.leaves(family, is_leaf=is_family)


def split_like(family, tree) -> list:
    """The subtrees of `tree` (params or latents) that belong to each leaf family, in leaf order."""
    return jax.tree.structure(family, is_leaf=is_family).flatten_up_to(tree)


def unflatten_like(family, leaves):
    return jax.tree.structure(family, is_leaf=is_family).unflatten(leaves)


#: `jax.jit` for tests: XLA's backend optimisations cost seconds per random-number program on CPU
#: and buy nothing at these sizes, so test programs are compiled without them (3-5x faster).
fast_jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


def batched_init(family):
    """`bbvi.init` vmapped over a batch of keys, jitted: (keys,) -> params stacked on a leading axis."""
    return fast_jit(jax.vmap(functools.partial(bbvi.init, family)))


def perturb(params, seed: int, spread: float = 0.75):
    """`params` moved by N(0, spread^2) noise in every coordinate (numpy noise: nothing to compile).

    Generic over families (a new family needs nothing here), and far enough from init that a bug
    which only shows away from zero logits / equal scales / identity Cholesky factors is exposed.
    """
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: x + spread * rng.standard_normal(x.shape).astype(x.dtype), params)


def random_params(family, key, num: int, spread: float = 0.75):
    """`num` sets of non-trivial parameters (init moved by noise), stacked on a leading axis."""
    init_key, noise_key = jax.random.split(key)
    seed = np.asarray(jax.random.key_data(noise_key))
    return perturb(batched_init(family)(jax.random.split(init_key, num)), seed, spread)


# --------------------------------------------------------------------------------------------------
# Monte Carlo tolerances (STYLE practice 8: derived from the standard error, never hand-tuned).

#: Two-sided false-alarm rate of a single check at 4 standard errors (about 6.3e-5).
FOUR_SD_FALSE_ALARM = 2 * scipy.stats.norm.sf(4.0)


def z_threshold(num_checks: int) -> float:
    """The |z| bound for `num_checks` simultaneous checks at the false-alarm rate of one 4-sd check.

    Bonferroni: each of m checks gets rate FOUR_SD_FALSE_ALARM / m, so the chance that *any* of them
    fires on a correct family stays at most that of a single 4-sd check, whatever their dependence.
    One check gives exactly 4; 24 give about 4.8. (With a fixed key the tests are deterministic; the
    margin is what makes a *new* key or a harmless refactor of the sampler safe too.)
    """
    return float(scipy.stats.norm.isf(FOUR_SD_FALSE_ALARM / (2 * num_checks)))


def mc_z_scores(values, expected) -> np.ndarray:
    """(sample mean - expected) / (sample sd / sqrt(n)) for each column of `values` (n, m).

    A column with zero sample variance is a constant: it must match exactly (z = 0) or is flagged (inf).
    """
    values = np.asarray(values, np.float64)
    expected = np.asarray(expected, np.float64)
    n = values.shape[0]
    diff = values.mean(axis=0) - expected
    se = values.std(axis=0, ddof=1) / math.sqrt(n)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(se > 0, diff / se, np.where(np.abs(diff) <= 1e-12, 0.0, np.inf))


def mc_tolerance(values) -> np.ndarray:
    """4 standard errors of the mean of each column of `values` (n, m): the single-check tolerance."""
    values = np.asarray(values, np.float64)
    return 4.0 * values.std(axis=0, ddof=1) / math.sqrt(values.shape[0])


def assert_mc_close(values, expected, what: str) -> None:
    """Column means of `values` match `expected`, all at once, at the Bonferroni-corrected |z| bound."""
    z = np.atleast_1d(mc_z_scores(values, expected))
    bound = z_threshold(z.size)
    worst = int(np.argmax(np.abs(z)))
    assert np.all(np.abs(z) < bound), (
        f"{what}: statistic {worst} of {z.size} is {z[worst]:+.2f} standard errors off "
        f"(bound {bound:.2f}); sample mean {np.mean(np.asarray(values)[:, worst]):.6g}, "
        f"expected {np.asarray(expected).ravel()[worst]:.6g}"
    )


# --------------------------------------------------------------------------------------------------
# Oracles. Each dispatches on the type of a single family; `tree_*` wrappers handle family pytrees.


def _no_oracle(name):
    def fail(family, *args):
        raise NotImplementedError(
            f"no `{name}` oracle for {type(family).__name__}: register one in tests/families/_helpers.py"
        )

    return fail


param_shapes = functools.singledispatch(_no_oracle("param_shapes"))
draw_dtype = functools.singledispatch(_no_oracle("draw_dtype"))
reference_log_prob = functools.singledispatch(_no_oracle("reference_log_prob"))
reference_statistics = functools.singledispatch(_no_oracle("reference_statistics"))
support_points = functools.singledispatch(_no_oracle("support_points"))
quadrature_grid = functools.singledispatch(_no_oracle("quadrature_grid"))


@functools.singledispatch
def draws_ignore_key(family) -> bool:
    """Whether a family's draws are the same for every key (a point mass): False unless registered."""
    return False


def has_oracle(oracle, family) -> bool:
    """Whether every leaf of `family` has its own implementation of `oracle`."""
    return all(oracle.dispatch(type(leaf)) is not oracle.dispatch(object) for leaf in family_leaves(family))


def _f64(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def _batch(z, event_shape) -> np.ndarray:
    """`z` with exactly one leading batch axis, as float64."""
    z = _f64(z)
    return z.reshape((-1,) + tuple(event_shape))


def _sum_event(x, n) -> np.ndarray:
    return np.asarray(x).reshape(n, -1).sum(axis=1)


def gaussian_loc_and_tril(family, params) -> tuple[np.ndarray, np.ndarray]:
    """(mean, Cholesky factor) of a Gaussian family over its flattened event, in float64."""
    if isinstance(family, bbvi.MeanFieldGaussian):
        loc = _f64(params["loc"]).ravel()
        return loc, np.diag(np.exp(_f64(params["log_scale"]).ravel()))
    if isinstance(family, bbvi.FullRankGaussian):
        # Independent of numpyro's lower_cholesky bijection (the documented parameterisation):
        # L = diag(d) (I + N), N's strict lower triangle filled row by row, then log d.
        d = family.dim
        vec = _f64(params["scale_tril"])
        relative = np.zeros((d, d))
        relative[np.tril_indices(d, -1)] = vec[: d * (d - 1) // 2]
        diag = np.exp(vec[d * (d - 1) // 2 :])
        return _f64(params["loc"]), diag[:, None] * relative + np.diag(diag)
    if isinstance(family, bbvi.LowRankGaussian):
        # The documented covariance W W^T + diag(exp(log_diag_scale))^2, factorised here in float64.
        factor = _f64(params["cov_factor"])
        cov = factor @ factor.T + np.diag(np.exp(2 * _f64(params["log_diag_scale"])))
        return _f64(params["loc"]), np.linalg.cholesky(cov)
    raise NotImplementedError(f"{type(family).__name__} is not a Gaussian family")


# Gaussians ------------------------------------------------------------------------------------------


@param_shapes.register
def _(family: bbvi.MeanFieldGaussian):
    return {"loc": family.shape, "log_scale": family.shape}


@param_shapes.register
def _(family: bbvi.FullRankGaussian):
    return {"loc": (family.dim,), "scale_tril": (family.dim * (family.dim + 1) // 2,)}


@draw_dtype.register(bbvi.MeanFieldGaussian)
@draw_dtype.register(bbvi.FullRankGaussian)
@draw_dtype.register(bbvi.LowRankGaussian)
@draw_dtype.register(bbvi.Constrained)
def _(family):
    return jnp.dtype(jnp.float32)


@reference_log_prob.register
def _(family: bbvi.MeanFieldGaussian, params, z):
    z = _batch(z, family.shape)
    lp = scipy.stats.norm.logpdf(z, _f64(params["loc"]), np.exp(_f64(params["log_scale"])))
    return _sum_event(lp, len(z))


@reference_log_prob.register
def _(family: bbvi.FullRankGaussian, params, z):
    loc, tril = gaussian_loc_and_tril(family, params)
    z = _batch(z, family.event_shape)
    return np.atleast_1d(scipy.stats.multivariate_normal(loc, tril @ tril.T).logpdf(z)).reshape(len(z))


@reference_statistics.register
def _(family: bbvi.MeanFieldGaussian, params):
    loc, scale = _f64(params["loc"]).ravel(), np.exp(_f64(params["log_scale"])).ravel()

    def stats(z):  # E z = loc, E (z - loc)^2 = scale^2
        z = _batch(z, family.shape).reshape(len(z), -1)
        return np.concatenate([z, (z - loc) ** 2], axis=1)

    return stats, np.concatenate([loc, scale**2])


@reference_statistics.register
def _(family: bbvi.FullRankGaussian, params):
    loc, tril = gaussian_loc_and_tril(family, params)
    rows, cols = np.tril_indices(family.dim)

    def stats(z):  # E z = loc, E (z - loc)(z - loc)^T = L L^T (lower triangle, diagonal included)
        z = _batch(z, family.event_shape)
        centred = z - loc
        return np.concatenate([z, centred[:, rows] * centred[:, cols]], axis=1)

    return stats, np.concatenate([loc, (tril @ tril.T)[rows, cols]])


@quadrature_grid.register
def _(family: bbvi.MeanFieldGaussian, params, num: int = 20_001):
    (loc,), tril = gaussian_loc_and_tril(family, params)
    scale = tril[0, 0]
    # +-12 sd leaves out < 1e-32 of the mass.
    return np.linspace(loc - 12 * scale, loc + 12 * scale, num).reshape((num,) + family.shape)


@param_shapes.register
def _(family: bbvi.LowRankGaussian):
    return {"loc": (family.dim,), "cov_factor": (family.dim, family.rank), "log_diag_scale": (family.dim,)}


# The dense-Gaussian oracles read only the mean and the Cholesky factor, so they serve low rank too.
reference_log_prob.register(bbvi.LowRankGaussian, reference_log_prob.dispatch(bbvi.FullRankGaussian))
reference_statistics.register(bbvi.LowRankGaussian, reference_statistics.dispatch(bbvi.FullRankGaussian))


# Discrete -------------------------------------------------------------------------------------------


@param_shapes.register
def _(family: bbvi.Bernoulli):
    return {"logits": family.shape}


@param_shapes.register
def _(family: bbvi.Categorical):
    return {"logits": family.shape + (family.num_categories,)}


@draw_dtype.register(bbvi.Bernoulli)
@draw_dtype.register(bbvi.Categorical)
def _(family):
    return jnp.dtype(jnp.int32)


@reference_log_prob.register
def _(family: bbvi.Bernoulli, params, z):
    z = _batch(z, family.shape)
    logits = _f64(params["logits"])
    return _sum_event(z * log_expit(logits) + (1 - z) * log_expit(-logits), len(z))


@reference_log_prob.register
def _(family: bbvi.Categorical, params, z):
    z = _batch(z, family.shape).astype(np.int64)
    log_p = np.broadcast_to(log_softmax(_f64(params["logits"]), axis=-1), z.shape + (family.num_categories,))
    return _sum_event(np.take_along_axis(log_p, z[..., None], axis=-1), len(z))


@reference_statistics.register
def _(family: bbvi.Bernoulli, params):
    def stats(z):
        return _batch(z, family.shape).reshape(len(z), -1)

    return stats, expit(_f64(params["logits"])).ravel()


@reference_statistics.register
def _(family: bbvi.Categorical, params):
    k = family.num_categories

    def stats(z):  # category frequencies per coordinate
        z = _batch(z, family.shape).astype(np.int64).reshape(len(z), -1)
        return (z[..., None] == np.arange(k)).reshape(len(z), -1).astype(np.float64)

    return stats, softmax(_f64(params["logits"]), axis=-1).ravel()


def _enumerate(values, shape) -> np.ndarray:
    size = math.prod(shape)
    return np.array(list(itertools.product(values, repeat=size)), np.int32).reshape((-1,) + tuple(shape))


@support_points.register
def _(family: bbvi.Bernoulli):
    return _enumerate((0, 1), family.shape)


@support_points.register
def _(family: bbvi.Categorical):
    return _enumerate(range(family.num_categories), family.shape)


def tree_support_points(family):
    """Every configuration of a discrete family pytree: the latent pytree with one leading axis."""
    per_leaf = [support_points(leaf) for leaf in family_leaves(family)]
    index = np.unravel_index(np.arange(math.prod(len(s) for s in per_leaf)), [len(s) for s in per_leaf])
    return unflatten_like(family, [s[i] for s, i in zip(per_leaf, index)])


# Constrained ----------------------------------------------------------------------------------------


def _elementwise_bijection(support):
    """(forward, inverse, log|dz/du|) in float64 numpy for the elementwise supports, else None."""
    if type(support) is type(constraints.positive):
        return np.exp, np.log, lambda u: u
    if isinstance(support, type(constraints.interval(0.0, 1.0))):  # unit_interval is a subclass
        lo, hi = float(support.lower_bound), float(support.upper_bound)
        return (
            lambda u: lo + (hi - lo) * expit(u),
            lambda z: logit((z - lo) / (hi - lo)),
            lambda u: math.log(hi - lo) + log_expit(u) + log_expit(-u),
        )
    return None


def _base_numpyro(family, params):
    """The base Gaussian as a numpyro distribution built from the oracle's own (loc, L)."""
    loc, tril = gaussian_loc_and_tril(family, params)
    if isinstance(family, bbvi.MeanFieldGaussian):
        scale = np.diag(tril).reshape(family.shape)
        return dist.Normal(loc.reshape(family.shape), scale).to_event(len(family.shape))
    return dist.MultivariateNormal(loc, scale_tril=tril)


def numpyro_pushforward(family: bbvi.Constrained, params):
    """numpyro's own density of the pushed-forward base: the reference for `Constrained.log_prob`."""
    return dist.TransformedDistribution(_base_numpyro(family.base, params), biject_to(family.support))


@param_shapes.register
def _(family: bbvi.Constrained):
    return param_shapes(family.base)


@reference_log_prob.register
def _(family: bbvi.Constrained, params, z):
    bijection = _elementwise_bijection(family.support)
    z = _batch(z, family.event_shape)
    if bijection is None:
        lp = fast_jit(lambda z: numpyro_pushforward(family, params).log_prob(z))(jnp.asarray(z, jnp.float32))
        return _f64(lp).reshape(len(z))
    _, inverse, log_det = bijection
    u = inverse(z)
    return reference_log_prob(family.base, params, u) - _sum_event(log_det(u), len(z))


def _gauss_hermite(dim: int, order: int):
    """Tensor-product Gauss-Hermite nodes (G, dim) and weights (G,) for E f(x), x ~ N(0, I_dim)."""
    x, w = np.polynomial.hermite_e.hermegauss(order)
    nodes = np.stack([g.ravel() for g in np.meshgrid(*[x] * dim, indexing="ij")], axis=-1)
    weights = np.prod(np.meshgrid(*[w / math.sqrt(2 * math.pi)] * dim, indexing="ij"), axis=0).ravel()
    return nodes, weights


@reference_statistics.register
def _(family: bbvi.Constrained, params):
    loc, tril = gaussian_loc_and_tril(family.base, params)
    if type(family.support) is type(constraints.positive):
        # Lognormal marginals: E z = exp(mu + s^2/2), Var z = (exp(s^2) - 1) exp(2 mu + s^2).
        s2 = np.sum(tril**2, axis=1)
        mean, var = np.exp(loc + s2 / 2), np.expm1(s2) * np.exp(2 * loc + s2)
    else:
        # E T(u) and Var T(u) by tensor Gauss-Hermite quadrature over the Gaussian base
        # (d <= 3 in the registry: at most 24^3 nodes; the integrands are smooth and bounded).
        nodes, weights = _gauss_hermite(len(loc), order=24)
        u = (loc + nodes @ tril.T).reshape((-1,) + family.base.event_shape)
        bijection = _elementwise_bijection(family.support)
        if bijection is None:
            transform = biject_to(family.support)
            z = _f64(fast_jit(lambda u: transform(u))(jnp.asarray(u, jnp.float32)))
        else:
            z = bijection[0](u)
        z = z.reshape(len(u), -1)
        mean = weights @ z
        var = weights @ (z - mean) ** 2

    def stats(z):
        z = _batch(z, family.event_shape).reshape(len(z), -1)
        return np.concatenate([z, (z - mean) ** 2], axis=1)

    return stats, np.concatenate([mean, var])


@quadrature_grid.register
def _(family: bbvi.Constrained, params, num: int = 20_001):
    bijection = _elementwise_bijection(family.support)
    # A grid over the support placed by pushing the base's grid forward; only its coverage matters.
    base_grid = quadrature_grid(family.base, params, num)
    if bijection is None:
        transform = biject_to(family.support)
        return _f64(fast_jit(lambda u: transform(u))(jnp.asarray(base_grid, jnp.float32)))
    return bijection[0](base_grid)


# Trees ----------------------------------------------------------------------------------------------


def tree_param_shapes(family):
    return unflatten_like(family, [param_shapes(leaf) for leaf in family_leaves(family)])


def tree_reference_log_prob(family, params, z) -> np.ndarray:
    """float64 log q(z) for a batch of latent pytrees (one leading axis)."""
    parts = zip(family_leaves(family), split_like(family, params), split_like(family, z))
    return sum(reference_log_prob(leaf, p, x) for leaf, p, x in parts)


def tree_reference_statistics(family, params):
    """(stats, expected): `stats` maps a batch of latent pytrees to (n, m) statistics of mean `expected`."""
    leaves = family_leaves(family)
    pairs = [reference_statistics(leaf, p) for leaf, p in zip(leaves, split_like(family, params))]

    def stats(z):
        return np.concatenate([g(x) for (g, _), x in zip(pairs, split_like(family, z))], axis=1)

    return stats, np.concatenate([expected for _, expected in pairs])
