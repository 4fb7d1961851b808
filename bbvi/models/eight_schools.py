"""Eight schools (Rubin 1981), non-centred: the classic small hierarchical model (d = 10).

mu ~ N(0, 5),  tau ~ HalfCauchy(5),  theta_tilde_j ~ N(0, 1),
y_j ~ N(mu + tau * theta_tilde_j, sigma_j).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpyro.distributions as dist
from numpyro.distributions import constraints

import bbvi

Y = jnp.array([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])
SIGMA = jnp.array([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])

#: Mean field over (mu, log tau, theta_tilde), with tau pushed onto the positive reals.
FAMILY = {
    "mu": bbvi.MeanFieldGaussian(()),
    "tau": bbvi.Constrained(bbvi.MeanFieldGaussian(()), constraints.positive),
    "theta_tilde": bbvi.MeanFieldGaussian((8,)),
}


def log_joint(z, y=Y, sigma=SIGMA):
    """log p(y, mu, tau, theta_tilde) for latents `{"mu", "tau", "theta_tilde"}`."""
    theta = z["mu"] + z["tau"] * z["theta_tilde"]
    return (
        dist.Normal(0.0, 5.0).log_prob(z["mu"])
        + dist.HalfCauchy(5.0).log_prob(z["tau"])
        + dist.Normal(0.0, 1.0).log_prob(z["theta_tilde"]).sum()
        + dist.Normal(theta, sigma).log_prob(y).sum()
    )


#: Reference posterior moments and log evidence (posteriordb `eight_schools-eight_schools_noncentered`:
#: mu and tau marginals and log Z by exact 1-D quadrature over log tau; theta[0] from 10,000 NUTS draws).
REFERENCE = {
    "mu": {"mean": 4.397, "sd": 3.318},
    "tau": {"mean": 3.598, "sd": 3.220},
    "theta[0]": {"mean": 6.15, "sd": 5.62},
    "log_Z": -31.3113,
}
