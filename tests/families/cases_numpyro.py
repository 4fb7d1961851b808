"""Registry cases for `NumpyroFamily`, and its oracles from scipy in float64.

The oracles read the parameters through the documented parameterisation, written out by hand here
(real arguments as they are, positive ones as `exp(u)`, Uniform's `high` as `low + exp(u)`), and
describe the distributions with scipy (or a closed form, for the Dirichlet), never with numpyro.

Statistics: every continuous scalar case checks the probability integral transform, `u = F(z)` with
scipy's cdf: `E u = 1/2` and `E u^2 = 1/3` hold for ANY continuous distribution, so they test the
whole distribution even where moments do not exist (Cauchy) or are too heavy-tailed for a Monte Carlo
standard error (Pareto, LogNormal). Light-tailed cases check the mean and variance too.
"""

from __future__ import annotations

import numpy as np
import numpyro.distributions as dist
import scipy.stats
from jax import numpy as jnp
from scipy.special import expit, gammaln

from bbvi.families.numpyro_family import NumpyroFamily

from ._helpers import (
    Case,
    draw_dtype,
    param_shapes,
    quadrature_grid,
    reference_log_prob,
    reference_statistics,
)

NF = NumpyroFamily


def _real(u):
    return u


# Per distribution: how each argument is read from its unconstrained parameter, and scipy's
# distribution of those arguments (vectorised over the family's `shape`).
_SCIPY = {
    dist.Normal: ({"loc": _real, "scale": np.exp}, lambda a: scipy.stats.norm(a["loc"], a["scale"])),
    dist.LogNormal: (
        {"loc": _real, "scale": np.exp},
        lambda a: scipy.stats.lognorm(a["scale"], scale=np.exp(a["loc"])),
    ),
    dist.Gamma: (
        {"concentration": np.exp, "rate": np.exp},
        lambda a: scipy.stats.gamma(a["concentration"], scale=1 / a["rate"]),
    ),
    dist.Beta: (
        {"concentration1": np.exp, "concentration0": np.exp},
        lambda a: scipy.stats.beta(a["concentration1"], a["concentration0"]),
    ),
    dist.Exponential: ({"rate": np.exp}, lambda a: scipy.stats.expon(scale=1 / a["rate"])),
    dist.Laplace: ({"loc": _real, "scale": np.exp}, lambda a: scipy.stats.laplace(a["loc"], a["scale"])),
    dist.StudentT: (
        {"df": np.exp, "loc": _real, "scale": np.exp},
        lambda a: scipy.stats.t(a["df"], a["loc"], a["scale"]),
    ),
    dist.Cauchy: ({"loc": _real, "scale": np.exp}, lambda a: scipy.stats.cauchy(a["loc"], a["scale"])),
    dist.Logistic: ({"loc": _real, "scale": np.exp}, lambda a: scipy.stats.logistic(a["loc"], a["scale"])),
    dist.Gumbel: ({"loc": _real, "scale": np.exp}, lambda a: scipy.stats.gumbel_r(a["loc"], a["scale"])),
    dist.Weibull: (
        {"scale": np.exp, "concentration": np.exp},
        lambda a: scipy.stats.weibull_min(a["concentration"], scale=a["scale"]),
    ),
    dist.Pareto: (
        {"scale": np.exp, "alpha": np.exp},
        lambda a: scipy.stats.pareto(a["alpha"], scale=a["scale"]),
    ),
    # "high" is read as exp(u) = high - low, the width: scipy's uniform(loc=low, scale=width).
    dist.Uniform: ({"low": _real, "high": np.exp}, lambda a: scipy.stats.uniform(a["low"], a["high"])),
    dist.Poisson: ({"rate": np.exp}, lambda a: scipy.stats.poisson(a["rate"])),
}

# Distributions whose fourth moments are finite for every parameter value, so that sample means of
# z and (z - mean)^2 have a trustworthy Monte Carlo standard error.
_LIGHT_TAILED = {dist.Normal, dist.Gamma, dist.Beta, dist.Exponential, dist.Laplace, dist.Logistic}
_LIGHT_TAILED |= {dist.Gumbel, dist.Uniform, dist.Poisson, dist.Dirichlet}

# fmt: off
CASES = [
    Case("numpyro_normal_3", lambda: NF(dist.Normal, (3,))),
    Case("numpyro_lognormal", lambda: NF(dist.LogNormal, init={"scale": 0.5})),
    Case("numpyro_gamma_2", lambda: NF(dist.Gamma, (2,), init={"concentration": 3.0})),
    Case("numpyro_beta", lambda: NF(dist.Beta, init={"concentration1": 2.0, "concentration0": 2.0})),
    Case("numpyro_dirichlet_k3", lambda: NF(dist.Dirichlet, (), (3,), init={"concentration": 2.0})),
    Case("numpyro_laplace", lambda: NF(dist.Laplace)),
    Case("numpyro_student_t", lambda: NF(dist.StudentT, init={"df": 4.0})),
    Case("numpyro_cauchy", lambda: NF(dist.Cauchy)),
    Case("numpyro_logistic", lambda: NF(dist.Logistic)),
    Case("numpyro_gumbel", lambda: NF(dist.Gumbel)),
    Case("numpyro_weibull", lambda: NF(dist.Weibull, init={"concentration": 2.0})),
    Case("numpyro_pareto", lambda: NF(dist.Pareto, init={"alpha": 3.0})),
    # A Uniform's log q is constant, so alone its Monte Carlo entropy check would have a standard error
    # of zero (and test_contract's strict `<` fails on an exact match): paired with an Exponential.
    Case("numpyro_uniform_2_and_exponential", lambda: {
        "u": NF(dist.Uniform, (2,), init={"low": -1.0, "high": 2.0}), "e": NF(dist.Exponential),
    }),
    Case("numpyro_poisson_3", lambda: NF(dist.Poisson, (3,), init={"rate": 3.0})),  # score-function gradients
]
# fmt: on


def _f64(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def _batch(family, z) -> np.ndarray:
    """`z` as float64 with one leading batch axis."""
    return _f64(z).reshape((-1,) + family.event_shape)


def _dirichlet_concentration(params) -> np.ndarray:
    return np.exp(_f64(params["concentration"]))


def scipy_distribution(family: NumpyroFamily, params):
    """scipy's frozen distribution (arrays of the family's `shape`) that `params` describe."""
    readers, build = _SCIPY[family.dist_type]
    return build({name: read(_f64(params[name])) for name, read in readers.items()})


@param_shapes.register
def _(family: NumpyroFamily):
    if family.dist_type is dist.Dirichlet:
        return {"concentration": family.shape + family.dist_event_shape}
    return {name: family.shape for name in _SCIPY[family.dist_type][0]}


@draw_dtype.register
def _(family: NumpyroFamily):
    return jnp.dtype(jnp.int32 if family.dist_type is dist.Poisson else jnp.float32)


@reference_log_prob.register
def _(family: NumpyroFamily, params, z):
    z = _batch(family, z)
    if family.dist_type is dist.Dirichlet:
        alpha = _dirichlet_concentration(params)
        lp = np.sum((alpha - 1) * np.log(z), -1) + gammaln(alpha.sum(-1)) - gammaln(alpha).sum(-1)
    elif family.dist_type is dist.Poisson:
        lp = scipy_distribution(family, params).logpmf(z)
    else:
        lp = scipy_distribution(family, params).logpdf(z)
    return lp.reshape(len(z), -1).sum(axis=1)


@reference_statistics.register
def _(family: NumpyroFamily, params):
    if family.dist_type is dist.Dirichlet:  # Beta(alpha_i, alpha_0 - alpha_i) marginals
        alpha = _dirichlet_concentration(params)
        marginal = scipy.stats.beta(alpha, alpha.sum(-1, keepdims=True) - alpha)
    else:
        marginal = scipy_distribution(family, params)
    continuous = family.dist_type is not dist.Poisson
    moments = family.dist_type in _LIGHT_TAILED
    mean = np.broadcast_to(marginal.mean(), family.event_shape).ravel()
    var = np.broadcast_to(marginal.var(), family.event_shape).ravel()

    def stats(z):
        z = _batch(family, z)
        columns = []
        if continuous:
            u = marginal.cdf(z).reshape(len(z), -1)
            columns += [u, u**2]
        if moments:
            flat = z.reshape(len(z), -1)
            columns += [flat, (flat - mean) ** 2]
        return np.concatenate(columns, axis=1)

    size = mean.size
    expected = ([np.full(size, 1 / 2), np.full(size, 1 / 3)] if continuous else []) + (
        [mean, var] if moments else []
    )
    return stats, np.concatenate(expected)


@quadrature_grid.register
def _(family: NumpyroFamily, params, num: int = 20_001):
    if family.dist_type in (dist.Poisson, dist.Dirichlet):
        raise NotImplementedError(f"no quadrature grid for {family}")
    marginal = scipy_distribution(family, params)
    # Points evenly spaced in the logit of the cdf, out to 1e-9 of the mass in each tail: dense where
    # the mass is, and successive points' densities differ by a small factor even in heavy tails and
    # at the Gamma's or Beta's integrable singularities, where an evenly spaced grid fails.
    t = np.linspace(-20.72, 20.72, num)
    grid = np.where(t < 0, marginal.ppf(expit(t)), marginal.isf(expit(-t)))
    return grid.reshape((num,) + family.event_shape)
