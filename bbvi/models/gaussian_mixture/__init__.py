"""The Bayesian Gaussian mixture, with its classic algorithms as ground truth for black-box VI.

The model (Blei, Kucukelbir and McAuliffe 2017, section 3), with `K` clusters in `D` dimensions and the
scales `sigma` (prior) and `lambda` (noise) known:

    mu_k ~ N(0, sigma^2 I)            k = 1..K
    c_i  ~ Categorical(1/K, ..., 1/K)  i = 1..N
    x_i | c_i, mu ~ N(mu_{c_i}, lambda^2 I)

The mean field `q(mu, c) = prod_k N(mu_k; m_k, s_k^2 I) prod_i Categorical(c_i; phi_i)` has a closed-form
ELBO (`mean_field.elbo`), writing `E||x_i - mu_k||^2 = ||x_i - m_k||^2 + D s_k^2`:

    ELBO = sum_k E[log N(mu_k; 0, sigma^2 I)] - N log K
           - sum_ik phi_ik (D/2 log(2 pi lambda^2) + E||x_i - mu_k||^2 / (2 lambda^2))
           + sum_k D/2 log(2 pi e s_k^2) - sum_ik phi_ik log phi_ik,

and closed-form coordinate updates (CAVI, `mean_field.cavi`), each of which maximises the ELBO in
its block, so the ELBO never decreases:

    phi_ik  propto exp(-E||x_i - mu_k||^2 / (2 lambda^2))                       (assignments)
    s_k^2 = 1 / (1/sigma^2 + sum_i phi_ik / lambda^2),  m_k = s_k^2 sum_i phi_ik x_i / lambda^2   (means)

The other algorithms, each in its module:

- `em`: expectation-maximisation for the non-Bayesian mixture (weights, means and full covariances by
  maximum likelihood), whose log-likelihood never decreases;
- `model`: the data (a simulator and the Old Faithful eruptions), the log-joint black-box VI fits over
  `{"mu": (K, D), "c": (N,) ints}` and its family, the collapsed log-joint with the assignments summed
  out (`log p(x, mu)`, fitted with `q(mu)` alone), and the map from bbvi's parameters to `(m, s, phi)`
  so the closed-form ELBO can score a black-box fit;
- `svi`: stochastic VI (Hoffman, Blei, Wang and Paisley 2013), natural-gradient steps on q(mu) from
  minibatches with a Robbins-Monro step size, whose fixed point is CAVI's.

Example:
    >>> import jax
    >>> from bbvi.models import gaussian_mixture as gm
    >>> data = gm.simulate(seed=0, num_data=60)
    >>> result = gm.cavi(data, key=jax.random.key(0), num_iterations=20)
    >>> result.q.m.shape, result.elbo.shape  # (K, D) means; the ELBO after each of the 2 blocks
    ((3, 2), (20, 2))
"""

from bbvi.models.gaussian_mixture.em import GMM, EMResult, e_step, em, init_gmm, log_likelihood, m_step
from bbvi.models.gaussian_mixture.mean_field import (
    CaviResult,
    MeanField,
    cavi,
    elbo,
    from_bbvi_params,
    init_mean_field,
    means_natural_parameters,
    optimal_assignments,
    update_assignments,
    update_means,
)
from bbvi.models.gaussian_mixture.model import (
    Data,
    collapsed_family,
    collapsed_log_joint_fn,
    family,
    init_bbvi_params,
    initial_means,
    load_old_faithful,
    log_joint_fn,
    match_labels,
    old_faithful,
    simulate,
)
from bbvi.models.gaussian_mixture.svi import SVIResult, step_sizes, svi

__all__ = [
    "CaviResult",
    "Data",
    "EMResult",
    "GMM",
    "MeanField",
    "SVIResult",
    "cavi",
    "collapsed_family",
    "collapsed_log_joint_fn",
    "e_step",
    "elbo",
    "em",
    "family",
    "from_bbvi_params",
    "init_bbvi_params",
    "init_gmm",
    "init_mean_field",
    "initial_means",
    "load_old_faithful",
    "log_joint_fn",
    "log_likelihood",
    "m_step",
    "means_natural_parameters",
    "match_labels",
    "old_faithful",
    "optimal_assignments",
    "simulate",
    "step_sizes",
    "svi",
    "update_assignments",
    "update_means",
]
