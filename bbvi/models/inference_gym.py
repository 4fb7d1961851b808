"""Four inference-gym targets with exact answers, as ready log-densities over a flat vector `x`.

    import jax, optax, bbvi
    from bbvi.models import inference_gym

    target = inference_gym.load("brownian_motion_missing_middle_observations")
    result = bbvi.fit(target.log_joint, target.full_rank_family, key=jax.random.key(0), num_steps=4000,
                      optimizer=optax.adam(optax.cosine_decay_schedule(0.01, 4000)),
                      estimator=bbvi.Estimator("reparam", entropy="stl"))
    result.elbo[-100:].mean(), target.reference.log_Z   # 5.613 both: the posterior is Gaussian

(With a constant Adam step of 1e-2, bbvi's default, that fit jitters around an ELBO of -2 instead:
the posterior sds are ~0.07, so the step must decay.)

The targets (TensorFlow Probability's inference_gym, recomputed independently in
`inference_gym_exact.json`; every density keeps its normalising constants, scales are sds):

- `ill_conditioned_gaussian` (d = 100): `x ~ N(0, Sigma)`, `Sigma = Q diag(1 / sort(g)) Q^T`, with
  `g ~ Gamma(0.5, 1)` (100 draws) and `Q` from the QR decomposition of a 100 x 100 standard Normal
  matrix (columns' signs fixed by `diag(R) > 0`), drawn in that order from numpy's
  `RandomState(10)`: condition number ~1.3e5. Normalised: log Z = 0.
- `banana` (d = 2): `x_0 ~ N(0, 10)`, `x_1 ~ N(0.03 (x_0^2 - 100), 1)`. Normalised: log Z = 0.
- `neals_funnel` (d = 10): `x_0 ~ N(0, 3)`, `x_i ~ N(0, exp(x_0 / 2))`, i = 1..9. Normalised: log Z = 0.
- `brownian_motion_missing_middle_observations` (d = 30): `x_0 ~ N(0, 0.1)`, `x_t ~ N(x_{t-1}, 0.1)`,
  `y_t ~ N(x_t, 0.15)` observed for t outside 10..19 (0-based). `log_joint` is log p(y, x), so
  log Z = log p(y) = 5.6130; the posterior is exactly Gaussian, so the full-rank Gaussian optimum
  attains ELBO = log Z, while the mean-field optimum stops at 0.5250 (`reference.vi_optima`).

For the Gaussian targets `reference.cov` is the exact posterior covariance, and `gaussian_vi_optima`
gives the optimal full-rank and mean-field ELBOs of any Gaussian posterior in closed form.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist

import bbvi
from bbvi.models._reference_json import check_name, locate, parse

__all__ = [
    "FILE",
    "Reference",
    "Target",
    "brownian_motion_posterior",
    "gaussian_vi_optima",
    "ill_conditioned_covariance",
    "load",
    "names",
]

FILE = "inference_gym_exact.json"

_NAMES = (
    "ill_conditioned_gaussian",
    "banana",
    "neals_funnel",
    "brownian_motion_missing_middle_observations",
)


@dataclasses.dataclass(frozen=True, eq=False)
class Reference:
    """The exact answer: posterior `mean` and `sd` per coordinate, `cov` (Gaussian targets, else None),
    `log_Z`, and `vi_optima` (where the file gives them): `{"optimal_fullrank_elbo",
    "optimal_meanfield_elbo", "meanfield_kl_gap", "meanfield_sd"}`."""

    mean: np.ndarray
    sd: np.ndarray
    cov: np.ndarray | None
    log_Z: float
    vi_optima: Mapping[str, float | np.ndarray] | None


@dataclasses.dataclass(frozen=True, eq=False)
class Target:
    """An inference-gym target, ready to fit: `bbvi.fit(target.log_joint, target.family, ...)`.

    Attributes:
        name: the target's name (one of `names()`).
        description: the density in words.
        dim: the dimension of `x`.
        log_joint: `x -> scalar`, `x` of shape `(dim,)`, every normalising constant kept.
        family: the recommended mean-field family, `bbvi.MeanFieldGaussian((dim,))`.
        full_rank_family: `bbvi.FullRankGaussian(dim)`.
        reference: a `Reference`.
    """

    name: str
    description: str
    dim: int
    log_joint: Callable[[jax.Array], jax.Array]
    family: bbvi.MeanFieldGaussian
    full_rank_family: bbvi.FullRankGaussian
    reference: Reference


def names() -> tuple[str, ...]:
    """The targets `load` knows."""
    return _NAMES


def ill_conditioned_covariance(ndims: int = 100, gamma_shape: float = 0.5, seed: int = 10) -> np.ndarray:
    """inference_gym's ill-conditioned covariance, rebuilt in float64 from its recipe (see the module)."""
    rng = np.random.RandomState(seed)
    eigenvalues = 1.0 / np.sort(rng.gamma(shape=gamma_shape, scale=1.0, size=ndims))
    q, r = np.linalg.qr(rng.randn(ndims, ndims))
    q = q * np.sign(np.diag(r))
    return (q * eigenvalues) @ q.T


def brownian_motion_posterior(
    observed, innovation_noise: float, observation_noise: float
) -> tuple[np.ndarray, np.ndarray, float]:
    """The exact Gaussian posterior of the Brownian motion and its evidence, in float64.

    `observed` holds y_t, NaN (or None) where y_t is missing. The prior is x = C e with C lower
    triangular ones and e ~ N(0, innovation_noise^2 I), so Cov(x)_{st} = innovation_noise^2 (min(s, t) + 1);
    conditioning on the observed coordinates is Gaussian linear algebra.

    Returns:
        `(mean, cov, log_Z)`, with log_Z = log p(y_observed).
    """
    y = np.asarray([np.nan if v is None else v for v in observed], dtype=np.float64)
    t = np.arange(y.shape[0])
    prior_cov = innovation_noise**2 * (np.minimum.outer(t, t) + 1.0)
    seen = ~np.isnan(y)
    h = np.eye(y.shape[0])[seen]  # picks the observed coordinates
    cov_y = h @ prior_cov @ h.T + observation_noise**2 * np.eye(seen.sum())
    gain = np.linalg.solve(cov_y, h @ prior_cov).T  # prior_cov H^T cov_y^{-1}
    mean = gain @ y[seen]
    cov = prior_cov - gain @ h @ prior_cov
    _, logdet = np.linalg.slogdet(2.0 * np.pi * cov_y)
    log_z = -0.5 * (logdet + y[seen] @ np.linalg.solve(cov_y, y[seen]))
    return mean, cov, float(log_z)


def gaussian_vi_optima(cov: np.ndarray, log_z: float) -> dict:
    """The best ELBOs of Gaussian families against a Gaussian posterior N(m, cov) with evidence log_z.

    The full-rank optimum is the posterior itself (ELBO = log_z). The mean-field optimum keeps the
    mean and takes sds 1/sqrt(diag(precision)); its KL gap is
    0.5 (sum log diag(precision) + log det cov), since tr(precision diag(1/diag precision)) = d.
    """
    precision = np.linalg.inv(cov)
    _, logdet = np.linalg.slogdet(cov)
    gap = 0.5 * (np.sum(np.log(np.diag(precision))) + logdet)
    return {
        "optimal_fullrank_elbo": log_z,
        "optimal_meanfield_elbo": log_z - gap,
        "meanfield_kl_gap": gap,
        "meanfield_sd": 1.0 / np.sqrt(np.diag(precision)),
    }


def _vi_optima(entries: dict, name: str):
    entry = entries.get(f"{name}_vi_optima")
    if entry is None:
        return None
    keys = ("optimal_fullrank_elbo", "optimal_meanfield_elbo", "meanfield_kl_gap")
    return {**{k: float(entry[k]) for k in keys}, "meanfield_sd": np.asarray(entry["meanfield_sd"])}


def _as_float(x) -> jax.Array:
    return jnp.asarray(x, dtype=jnp.result_type(float))


def _ill_conditioned(entry):
    cov = ill_conditioned_covariance(int(entry["ndims"]))
    scale_tril = _as_float(np.linalg.cholesky(cov))  # factored in float64: the condition number is ~1e5
    loc = _as_float(np.asarray(entry["mean"]))
    target = dist.MultivariateNormal(loc, scale_tril=scale_tril)
    description = "x ~ N(0, Sigma), d = 100, Sigma's condition number ~1.3e5 (inference_gym's recipe)"
    return target.log_prob, description, cov


def _banana(entry):
    curvature, scale0 = float(entry["curvature"]), float(entry["sd"][0])

    def log_joint(x):
        return dist.Normal(0.0, scale0).log_prob(x[0]) + dist.Normal(
            curvature * (x[0] ** 2 - scale0**2), 1.0
        ).log_prob(x[1])

    return log_joint, f"x0 ~ N(0, {scale0:g}), x1 ~ N({curvature:g} (x0^2 - {scale0**2:g}), 1)", None


def _funnel(entry):
    scale0 = float(entry["sd"][0])

    def log_joint(x):
        return (
            dist.Normal(0.0, scale0).log_prob(x[0])
            + dist.Normal(0.0, jnp.exp(x[0] / 2.0)).log_prob(x[1:]).sum()
        )

    return log_joint, f"x0 ~ N(0, {scale0:g}), x_i ~ N(0, exp(x0 / 2)), i = 1..{len(entry['sd']) - 1}", None


def _brownian(entry):
    innovation, noise = float(entry["innovation_noise"]), float(entry["observation_noise"])
    observed = np.asarray([np.nan if v is None else v for v in entry["observed_locs"]], dtype=np.float64)
    seen = np.flatnonzero(~np.isnan(observed))
    y = _as_float(observed[seen])

    def log_joint(x):
        steps = jnp.diff(x, prepend=0.0)  # x_0 - 0, x_1 - x_0, ...: the innovations
        return (
            dist.Normal(0.0, innovation).log_prob(steps).sum() + dist.Normal(x[seen], noise).log_prob(y).sum()
        )

    _, cov, _ = brownian_motion_posterior(entry["observed_locs"], innovation, noise)
    missing = np.flatnonzero(np.isnan(observed))
    description = (
        f"x_0 ~ N(0, {innovation:g}), x_t ~ N(x_(t-1), {innovation:g}), y_t ~ N(x_t, {noise:g}), "
        f"y missing at t = {missing.min()}..{missing.max()}"
    )
    return log_joint, description, cov


_BUILDERS = {
    "ill_conditioned_gaussian": _ill_conditioned,
    "banana": _banana,
    "neals_funnel": _funnel,
    "brownian_motion_missing_middle_observations": _brownian,
}


def load(name: str, path=None) -> Target:
    """The target `name` (one of `names()`), read from `inference_gym_exact.json`.

    Args:
        name: e.g. `"banana"`.
        path: the reference data folder (default: `$BBVI_DATA`, else `../shared/data`).

    Returns:
        A `Target`; the same object for the same name and file (loading is cached).

    Raises:
        ValueError: for an unknown name (the message lists the known ones).
        bbvi.models._data.DataNotFoundError: where the data file is absent.
    """
    check_name(name, names(), "inference-gym")
    return _load(name, locate(FILE, path))


@functools.cache
def _load(name: str, file: str) -> Target:
    entries = parse(file)
    entry = entries[name]
    log_joint, description, cov = _BUILDERS[name](entry)
    mean_key, sd_key = ("exact_mean", "exact_sd") if "exact_mean" in entry else ("mean", "sd")
    dim = int(entry["ndims"])
    reference = Reference(
        mean=np.asarray(entry[mean_key], dtype=np.float64),
        sd=np.asarray(entry[sd_key], dtype=np.float64),
        cov=cov,
        log_Z=float(entry["log_Z"]),
        vi_optima=_vi_optima(entries, name),
    )
    return Target(
        name=name,
        description=description,
        dim=dim,
        log_joint=log_joint,
        family=bbvi.MeanFieldGaussian((dim,)),
        full_rank_family=bbvi.FullRankGaussian(dim),
        reference=reference,
    )
