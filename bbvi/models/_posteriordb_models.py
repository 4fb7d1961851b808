"""The ten posteriordb models of `bbvi.models.posteriordb`, written as Stan writes them.

Each builder takes the file's data (numpy) and returns `(latents, log_joint, quantities)`; the
public API, the conventions (constants, Jacobians) and GARCH's reparameterisation are documented in
`bbvi.models.posteriordb`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
from numpyro.distributions import constraints
from numpyro.distributions.constraints import Constraint


class Latent(NamedTuple):
    """One parameter block: its name in `z`, its shape, and its support (a numpyro constraint)."""

    name: str
    shape: tuple[int, ...]
    support: Constraint


# Each builder takes the file's data (numpy) and returns (latents, log_joint, quantities);
# derived data (logs, z-scores, lags) are computed in float64 before the cast to JAX's default float.

_REAL, _POSITIVE, _UNIT = constraints.real, constraints.positive, constraints.unit_interval


def as_array(x) -> jax.Array:
    return jnp.asarray(np.asarray(x, dtype=np.float64), dtype=jnp.result_type(float))


def _identity_quantities(z):
    return dict(z)


def _eight_schools(data):
    """theta_trans_j ~ N(0, 1), mu ~ N(0, 5), tau ~ HalfCauchy(5),
    y_j ~ N(mu + tau theta_trans_j, sigma_j)."""
    y, sigma = as_array(data["y"]), as_array(data["sigma"])
    latents = (
        Latent("theta_trans", (len(data["y"]),), _REAL),
        Latent("mu", (), _REAL),
        Latent("tau", (), _POSITIVE),
    )

    def log_joint(z):
        theta = z["mu"] + z["tau"] * z["theta_trans"]
        return (
            dist.Normal(0.0, 1.0).log_prob(z["theta_trans"]).sum()
            + dist.Normal(0.0, 5.0).log_prob(z["mu"])
            + dist.HalfCauchy(5.0).log_prob(z["tau"])
            + dist.Normal(theta, sigma).log_prob(y).sum()
        )

    def quantities(z):
        return {"theta": z["mu"] + z["tau"] * z["theta_trans"], "mu": z["mu"], "tau": z["tau"]}

    return latents, log_joint, quantities


def _blr(data):
    """beta ~ N(0, 10), sigma ~ HalfNormal(10), y ~ N(X beta, sigma)."""
    x, y = as_array(data["X"]), as_array(data["y"])
    latents = (Latent("beta", (x.shape[1],), _REAL), Latent("sigma", (), _POSITIVE))

    def log_joint(z):
        return (
            dist.Normal(0.0, 10.0).log_prob(z["beta"]).sum()
            + dist.HalfNormal(10.0).log_prob(z["sigma"])
            + dist.Normal(x @ z["beta"], z["sigma"]).log_prob(y).sum()
        )

    return latents, log_joint, _identity_quantities


def _ark(data):
    """AR(K): alpha, beta_k ~ N(0, 10), sigma ~ HalfCauchy(2.5),
    y_t ~ N(alpha + sum_k beta_k y_{t-k}, sigma)."""
    k, y64 = int(data["K"]), np.asarray(data["y"], dtype=np.float64)
    # lags[t - K, j] = y[t - 1 - j]: the regressors of y[t] for t = K..T-1 (Stan's t = K+1..T).
    lags = np.stack([y64[k - 1 - j : len(y64) - 1 - j] for j in range(k)], axis=1)
    lags, target = as_array(lags), as_array(y64[k:])
    latents = (Latent("alpha", (), _REAL), Latent("beta", (k,), _REAL), Latent("sigma", (), _POSITIVE))

    def log_joint(z):
        return (
            dist.Normal(0.0, 10.0).log_prob(z["alpha"])
            + dist.Normal(0.0, 10.0).log_prob(z["beta"]).sum()
            + dist.HalfCauchy(2.5).log_prob(z["sigma"])
            + dist.Normal(z["alpha"] + lags @ z["beta"], z["sigma"]).log_prob(target).sum()
        )

    return latents, log_joint, _identity_quantities


def _arma11(data):
    """ARMA(1,1): err_1 = y_1 - (mu + phi mu), err_t = y_t - (mu + phi y_{t-1} + theta err_{t-1}),
    err_t ~ N(0, sigma); mu ~ N(0, 10), phi, theta ~ N(0, 2), sigma ~ HalfCauchy(2.5)."""
    y = as_array(data["y"])
    latents = (
        Latent("mu", (), _REAL),
        Latent("phi", (), _REAL),
        Latent("theta", (), _REAL),
        Latent("sigma", (), _POSITIVE),
    )

    def log_joint(z):
        mu, phi, theta = z["mu"], z["phi"], z["theta"]
        first = y[0] - (mu + phi * mu)

        def step(err_prev, t):
            err = y[t] - (mu + phi * y[t - 1] + theta * err_prev)
            return err, err

        _, rest = jax.lax.scan(step, first, jnp.arange(1, y.shape[0]))
        errors = jnp.concatenate([first[None], rest])
        return (
            dist.Normal(0.0, 10.0).log_prob(mu)
            + dist.Normal(0.0, 2.0).log_prob(phi)
            + dist.Normal(0.0, 2.0).log_prob(theta)
            + dist.HalfCauchy(2.5).log_prob(z["sigma"])
            + dist.Normal(0.0, z["sigma"]).log_prob(errors).sum()
        )

    return latents, log_joint, _identity_quantities


def _garch11(data):
    """GARCH(1,1): sigma_1 = sigma1 (data), sigma_t^2 = alpha0 + alpha1 (y_{t-1} - mu)^2
    + beta1 sigma_{t-1}^2, y_t ~ N(mu, sigma_t); flat priors on mu, alpha0 > 0, alpha1 in (0, 1),
    beta1 in (0, 1 - alpha1)."""
    y, sigma1 = as_array(data["y"]), float(data["sigma1"])
    latents = (
        Latent("mu", (), _REAL),
        Latent("alpha0", (), _POSITIVE),
        Latent("alpha1", (), _UNIT),
        Latent("beta1_frac", (), _UNIT),
    )

    def beta1(z):
        return (1.0 - z["alpha1"]) * z["beta1_frac"]

    def log_joint(z):
        mu, alpha0, alpha1, b1 = z["mu"], z["alpha0"], z["alpha1"], beta1(z)

        def step(var_prev, y_prev):
            var = alpha0 + alpha1 * (y_prev - mu) ** 2 + b1 * var_prev
            return var, var

        var1 = jnp.asarray(sigma1**2, dtype=y.dtype)
        _, rest = jax.lax.scan(step, var1, y[:-1])
        scale = jnp.sqrt(jnp.concatenate([var1[None], rest]))
        # The flat prior on beta1 becomes log|d beta1 / d beta1_frac| = log(1 - alpha1) in beta1_frac.
        return jnp.log1p(-alpha1) + dist.Normal(mu, scale).log_prob(y).sum()

    def quantities(z):
        return {"mu": z["mu"], "alpha0": z["alpha0"], "alpha1": z["alpha1"], "beta1": beta1(z)}

    return latents, log_joint, quantities


def _gp_regr(data):
    """y ~ MVN(0, alpha^2 exp(-(x - x')^2 / (2 rho^2)) + sigma I) (sigma, not sigma^2, on the diagonal);
    rho ~ Gamma(25, rate 4), alpha ~ HalfNormal(2), sigma ~ HalfNormal(1)."""
    x, y = as_array(data["x"]), as_array(data["y"])
    sq_dist = (x[:, None] - x[None, :]) ** 2
    latents = (Latent("rho", (), _POSITIVE), Latent("alpha", (), _POSITIVE), Latent("sigma", (), _POSITIVE))

    def log_joint(z):
        cov = z["alpha"] ** 2 * jnp.exp(-sq_dist / (2.0 * z["rho"] ** 2)) + z["sigma"] * jnp.eye(x.shape[0])
        return (
            dist.Gamma(25.0, 4.0).log_prob(z["rho"])
            + dist.HalfNormal(2.0).log_prob(z["alpha"])
            + dist.HalfNormal(1.0).log_prob(z["sigma"])
            + dist.MultivariateNormal(jnp.zeros_like(y), covariance_matrix=cov).log_prob(y)
        )

    return latents, log_joint, _identity_quantities


def _linear_regression(design, target, sigma_prior):
    """y ~ N(design @ beta, sigma), flat prior on beta; sigma's prior a numpyro distribution, or None
    for a flat one."""
    design, target = as_array(design), as_array(target)
    latents = (Latent("beta", (design.shape[1],), _REAL), Latent("sigma", (), _POSITIVE))

    def log_joint(z):
        prior = 0.0 if sigma_prior is None else sigma_prior.log_prob(z["sigma"])
        return prior + dist.Normal(design @ z["beta"], z["sigma"]).log_prob(target).sum()

    return latents, log_joint, _identity_quantities


def _kidscore_momhsiq(data):
    """kid_score ~ N(beta_1 + beta_2 mom_hs + beta_3 mom_iq, sigma); flat beta, sigma ~ HalfCauchy(2.5)."""
    mom_hs, mom_iq = np.asarray(data["mom_hs"], float), np.asarray(data["mom_iq"], float)
    design = np.stack([np.ones_like(mom_hs), mom_hs, mom_iq], axis=1)
    return _linear_regression(design, data["kid_score"], dist.HalfCauchy(2.5))


def _logmesquite(data):
    """log weight ~ N(beta_1 + beta_2..6 . log(diam1, diam2, canopy_height, total_height, density)
    + beta_7 group, sigma); flat priors on beta and on sigma > 0."""
    logs = [np.log(np.asarray(data[k], float)) for k in ("diam1", "diam2", "canopy_height", "total_height")]
    logs.append(np.log(np.asarray(data["density"], float)))
    group = np.asarray(data["group"], float)
    design = np.stack([np.ones_like(group), *logs, group], axis=1)
    return _linear_regression(design, np.log(np.asarray(data["weight"], float)), None)


def _logearn_interaction_z(data):
    """log earn ~ N(beta_1 + beta_2 z + beta_3 male + beta_4 z male, sigma), z the height standardised
    with the sample sd (n - 1); flat priors on beta and on sigma > 0."""
    height, male = np.asarray(data["height"], float), np.asarray(data["male"], float)
    z_height = (height - height.mean()) / height.std(ddof=1)
    design = np.stack([np.ones_like(male), z_height, male, z_height * male], axis=1)
    return _linear_regression(design, np.log(np.asarray(data["earn"], float)), None)


def _low_dim_gauss_mix(data):
    """y_n ~ theta N(mu_1, sigma_1) + (1 - theta) N(mu_2, sigma_2), mu ordered; mu_k ~ N(0, 2),
    sigma_k ~ HalfNormal(2), theta ~ Beta(5, 5)."""
    y = as_array(data["y"])
    latents = (
        Latent("mu", (2,), constraints.ordered_vector),
        Latent("sigma", (2,), _POSITIVE),
        Latent("theta", (), _UNIT),
    )

    def log_joint(z):
        theta = z["theta"]
        weights = dist.Categorical(probs=jnp.stack([theta, 1.0 - theta]))
        mixture = dist.MixtureSameFamily(weights, dist.Normal(z["mu"], z["sigma"]))
        return (
            dist.Normal(0.0, 2.0).log_prob(z["mu"]).sum()
            + dist.HalfNormal(2.0).log_prob(z["sigma"]).sum()
            + dist.Beta(5.0, 5.0).log_prob(theta)
            + mixture.log_prob(y).sum()
        )

    return latents, log_joint, _identity_quantities


BUILDERS = {
    "eight_schools-eight_schools_noncentered": _eight_schools,
    "sblrc-blr": _blr,
    "arK-arK": _ark,
    "arma-arma11": _arma11,
    "garch-garch11": _garch11,
    "gp_pois_regr-gp_regr": _gp_regr,
    "kidiq-kidscore_momhsiq": _kidscore_momhsiq,
    "mesquite-logmesquite": _logmesquite,
    "earnings-logearn_interaction_z": _logearn_interaction_z,
    "low_dim_gauss_mix-low_dim_gauss_mix": _low_dim_gauss_mix,
}
