"""Ten posteriordb reference posteriors (d = 3..10) as ready log-densities, fitted by name.

    import jax, bbvi
    from bbvi.models import posteriordb

    post = posteriordb.load("arK-arK")
    result = bbvi.fit(post.log_joint, post.family, key=jax.random.key(0), num_steps=3000)
    result.elbo[-500:].mean(), post.reference.log_Z   # the gap is KL(q || posterior)

Each `Posterior` carries the log-density `log_joint(z)`, with `z` a dict of the Stan model's
parameters on their constrained supports (`{"alpha": (), "beta": (5,), "sigma": ()}` for arK),
the recommended mean-field family (a `bbvi.MeanFieldGaussian` per parameter, wrapped in
`bbvi.Constrained` with numpyro's `positive`, `unit_interval` or `ordered_vector` where Stan
declares `lower=0`, `(0, 1)` or `ordered`), a full-rank alternative over the unconstrained vector,
and the `reference`: the posterior means and sds of the reported quantities from 10,000 NUTS draws,
the mean, sd and covariance in the unconstrained space, and `log_Z`. The data are read from
`posteriordb_dev.json` in bbvi's reference data folder (see `bbvi.models._data`), once.

The densities are exactly those `log_Z` is defined with (`_meta.log_normaliser_definition` in the
file): every normalising constant is kept (numpyro's `log_prob`, as scipy's `logpdf`), half-Normal
and half-Cauchy priors include log 2, improper flat priors contribute 0, and

    log_Z = log integral exp(log p(y, T(u)) + log|det J_T(u)|) du

over the unconstrained vector `u` (Stan's order, `reference.unconstrained_names`), where `T` maps
it onto the supports: the identity on the reals, exp for `lower=0`, the logistic sigmoid for
`(0, 1)`, and numpyro's `OrderedTransform` (`mu[1]`, `mu[1] + exp(u_2)`) for `ordered`.

`log_joint` is the density on the constrained space, without that Jacobian: `bbvi.Constrained`
adds it on the q side. q on the support has density `q_u(u) / |det J_T(u)|`, so

    log p(y, z) - log q(z) = [log p(y, T(u)) + log|det J_T(u)|] - log q_u(u),

and the ELBO of `family` against `log_joint` equals the ELBO of its unconstrained base against
`log_density_unconstrained`: every such ELBO is at most `reference.log_Z`, and the gap is
KL(q || posterior).

GARCH(1,1)'s `beta1` has a bound that depends on another parameter, `beta1 < 1 - alpha1`, which no
fixed constraint expresses. Its latent is `beta1_frac` in (0, 1), with `beta1 = (1 - alpha1) *
beta1_frac` (Stan's own transform for that bound); `log_joint` adds the Jacobian of that map,
`log(1 - alpha1)`, so the density in `(mu, alpha0, alpha1, beta1_frac)` is the flat prior on
`beta1` times the likelihood, and the unconstrained density is Stan's. `quantities(z)` gives
`beta1` back (and eight schools' `theta`), keyed as `reference.mean`.

From bbvi's default initialisation (locations in [-1, 1], scales 0.1), mean field with Adam at 0.05
and a cosine decay reaches its optimum in 1,500-2,000 steps on eight schools, arma, garch, gp_regr
and low_dim_gauss_mix; mesquite and earnings need ~10,000 steps at 0.1; sblrc (sds ~1e-3 against
covariates of ~600) and kidiq (an intercept of ~26 tied to a slope by a 0.95 correlation) are still
far off after 10,000. `Posterior.meanfield_params()` and `full_rank_params()` give warm starts.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.distributions import constraints
from numpyro.distributions.transforms import biject_to

import bbvi
from bbvi.models._posteriordb_models import BUILDERS, Latent, as_array
from bbvi.models._reference_json import check_name, locate, parse

__all__ = ["FILE", "Latent", "Posterior", "Reference", "load", "names"]

FILE = "posteriordb_dev.json"


@dataclasses.dataclass(frozen=True, eq=False)
class Reference:
    """What posteriordb (and the file's own computations) know about a posterior.

    `mean`, `sd` are keyed by the reported quantities (`quantities(z)`'s keys: Stan's names, with
    `beta[1..5]` gathered into one array `"beta"`), from 10,000 NUTS draws (Monte Carlo SE of the
    means ~sd/100). The `unconstrained_*` entries describe the same draws in the unconstrained space a
    Gaussian family lives in, in `unconstrained_names` order. `meanfield_sd` and `meanfield_kl_gap`
    treat that posterior as Gaussian: the optimal mean-field sds and KL(q || p) at that optimum
    (exact only for Gaussian posteriors). `log_Z` (standard error `log_Z_se`) is the log evidence,
    see the module docstring.
    """

    mean: Mapping[str, np.ndarray]
    sd: Mapping[str, np.ndarray]
    unconstrained_names: tuple[str, ...]
    unconstrained_mean: np.ndarray
    unconstrained_sd: np.ndarray
    unconstrained_cov: np.ndarray
    meanfield_sd: np.ndarray
    meanfield_kl_gap: float
    log_Z: float
    log_Z_se: float
    log_Z_method: str


@dataclasses.dataclass(frozen=True, eq=False)
class Posterior:
    """A posteriordb posterior, ready to fit: `bbvi.fit(post.log_joint, post.family, ...)`.

    Attributes:
        name: the posteriordb name, `"<data>-<model>"`.
        description: the model in words, and its difficulty.
        latents: the parameter blocks, in the order of the unconstrained vector.
        log_joint: `z -> log p(y, z)`, `z` a dict `{latent.name: array of latent.shape}` on the
            supports (no Jacobian; see the module docstring).
        family: the recommended mean-field family, a dict matching `z`.
        quantities: `z -> dict` of the quantities the reference reports (one draw; `jax.vmap` it).
        reference: a `Reference`.
        data: the data as numpy arrays, as read from the file.

    Example (a full-rank fit in the unconstrained space, then the reported quantities):

        post = load("eight_schools-eight_schools_noncentered")
        result = bbvi.fit(post.log_density_unconstrained, post.full_rank_family,
                          key=jax.random.key(0), num_steps=3000)
        z, _ = jax.vmap(post.from_unconstrained)(result.sample(jax.random.key(1), 1000))
        jax.vmap(post.quantities)(z)["tau"].mean(), post.reference.mean["tau"]
    """

    name: str
    description: str
    latents: tuple[Latent, ...]
    log_joint: Callable[[dict], jax.Array]
    family: dict
    quantities: Callable[[dict], dict]
    reference: Reference
    data: Mapping[str, Any]

    @property
    def dim(self) -> int:
        """The number of unconstrained coordinates."""
        return sum(math.prod(latent.shape) for latent in self.latents)

    @property
    def full_rank_family(self) -> bbvi.FullRankGaussian:
        """A full-rank Gaussian over the unconstrained vector: fit it to `log_density_unconstrained`."""
        return bbvi.FullRankGaussian(self.dim)

    def from_unconstrained(self, u) -> tuple[dict, jax.Array]:
        """The latents `z = T(u)` of one unconstrained vector `u` (shape `(dim,)`), and log|det J_T(u)|."""
        u = jnp.asarray(u, dtype=jnp.result_type(float))
        if u.shape != (self.dim,):
            raise ValueError(f"{self.name}: u must have shape ({self.dim},), got {u.shape}")
        z, log_det, start = {}, 0.0, 0
        for latent in self.latents:
            size = math.prod(latent.shape)
            part = u[start : start + size].reshape(latent.shape)
            start += size
            transform = biject_to(latent.support)
            z[latent.name] = transform(part)
            log_det = log_det + jnp.sum(transform.log_abs_det_jacobian(part, z[latent.name]))
        return z, log_det

    def to_unconstrained(self, z) -> jax.Array:
        """The unconstrained vector of one draw `z` (the inverse of `from_unconstrained`)."""
        parts = [jnp.ravel(biject_to(latent.support).inv(z[latent.name])) for latent in self.latents]
        return jnp.concatenate(parts)

    def log_density_unconstrained(self, u) -> jax.Array:
        """`log p(y, T(u)) + log|det J_T(u)|`: the density whose integral over `u` is `exp(log_Z)`."""
        z, log_det = self.from_unconstrained(u)
        return self.log_joint(z) + log_det

    def meanfield_params(self, loc=None, scale=None) -> dict:
        """Parameters of `family` with unconstrained means `loc` and sds `scale` (flat, `(dim,)`).

        The defaults, the reference's unconstrained mean and `meanfield_sd`, are the mean-field
        optimum of the Gaussian approximation to the posterior: a warm start, or a yardstick.
        """
        ref = self.reference
        loc = np.asarray(ref.unconstrained_mean if loc is None else loc, dtype=np.float64)
        scale = np.asarray(ref.meanfield_sd if scale is None else scale, dtype=np.float64)
        if loc.shape != (self.dim,) or scale.shape != (self.dim,):
            raise ValueError(f"{self.name}: loc and scale must have shape ({self.dim},)")
        params, start = {}, 0
        for latent in self.latents:
            part = slice(start, start + math.prod(latent.shape))
            start = part.stop
            params[latent.name] = {
                "loc": as_array(loc[part].reshape(latent.shape)),
                "log_scale": as_array(np.log(scale[part]).reshape(latent.shape)),
            }
        return params

    def full_rank_params(self, loc=None, cov=None) -> dict:
        """Parameters of `full_rank_family` for N(loc, cov) in the unconstrained space (default: the
        reference's unconstrained mean and covariance, the moment-matched Gaussian)."""
        ref = self.reference
        loc = np.asarray(ref.unconstrained_mean if loc is None else loc, dtype=np.float64)
        cov = np.asarray(ref.unconstrained_cov if cov is None else cov, dtype=np.float64)
        if loc.shape != (self.dim,) or cov.shape != (self.dim, self.dim):
            raise ValueError(
                f"{self.name}: loc must have shape ({self.dim},) and cov ({self.dim}, {self.dim})"
            )
        scale_tril = np.linalg.cholesky(cov)  # in float64: some posteriors' sds span four decades
        params = bbvi.FullRankGaussian.params_from_scale_tril(loc, scale_tril)
        return {"loc": as_array(loc), "scale_tril": as_array(params["scale_tril"])}


def names() -> tuple[str, ...]:
    """The posteriordb names `load` knows."""
    return tuple(BUILDERS)


def _gather(params: dict, field: str) -> dict[str, np.ndarray]:
    """`{"beta[1]": {...}, "beta[2]": {...}, "sigma": {...}}` -> `{"beta": array(2), "sigma": array()}`."""
    grouped: dict[str, dict[int, float]] = {}
    for key, entry in params.items():
        match = re.fullmatch(r"(\w+)\[(\d+)\]", key)
        name, index = (match[1], int(match[2]) - 1) if match else (key, None)
        grouped.setdefault(name, {})[index] = entry[field]
    return {
        name: np.asarray(values[None]) if None in values else np.asarray([values[i] for i in sorted(values)])
        for name, values in grouped.items()
    }


def _reference(entry: dict) -> Reference:
    unconstrained, log_z = entry["unconstrained"], entry["log_Z"]
    return Reference(
        mean=_gather(entry["params"], "mean"),
        sd=_gather(entry["params"], "sd"),
        unconstrained_names=tuple(unconstrained["names"]),
        unconstrained_mean=np.asarray(unconstrained["mean"]),
        unconstrained_sd=np.asarray(unconstrained["sd"]),
        unconstrained_cov=np.asarray(unconstrained["cov"]),
        meanfield_sd=np.asarray(unconstrained["gaussian_approx_meanfield_sd"]),
        meanfield_kl_gap=float(unconstrained["gaussian_approx_meanfield_kl_gap"]),
        log_Z=float(log_z["value"]),
        log_Z_se=float(log_z["se"]),
        log_Z_method=log_z["method"],
    )


def _mean_field(latents) -> dict:
    family = {}
    for latent in latents:
        base = bbvi.MeanFieldGaussian(latent.shape)
        family[latent.name] = (
            base if latent.support is constraints.real else bbvi.Constrained(base, latent.support)
        )
    return family


def load(name: str, path=None) -> Posterior:
    """The posterior `name` (one of `names()`), read from `posteriordb_dev.json`.

    Args:
        name: a posteriordb name such as `"eight_schools-eight_schools_noncentered"`.
        path: the reference data folder (default: `$BBVI_DATA`, else `../shared/data`).

    Returns:
        A `Posterior`; the same object for the same name and file (loading is cached, so repeated
        fits of its `log_joint` reuse their compiled program).

    Raises:
        ValueError: for an unknown name (the message lists the known ones).
        bbvi.models._data.DataNotFoundError: where the data file is absent.
    """
    check_name(name, names(), "posteriordb")
    return _load(name, locate(FILE, path))


@functools.cache
def _load(name: str, file: str) -> Posterior:
    entry = parse(file)[name]
    data = {k: (np.asarray(v) if isinstance(v, list) else v) for k, v in entry["data"].items()}
    latents, log_joint, quantities = BUILDERS[name](data)
    return Posterior(
        name=name,
        description=f"{entry['model_description']} Difficulty: {entry['difficulty']}.",
        latents=latents,
        log_joint=log_joint,
        family=_mean_field(latents),
        quantities=quantities,
        reference=_reference(entry),
        data=data,
    )
