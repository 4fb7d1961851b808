"""The mean field `q(mu_k) = N(m_k, s_k^2 I)`, `q(c_i) = Categorical(phi_i)`: its closed-form ELBO and CAVI.

The formulas are in the package docstring. Every function takes the `Data` and a `MeanField`; `s` may
be `(K,)` (isotropic, as CAVI keeps it) or `(K, D)` (one sd per coordinate, as bbvi's
`MeanFieldGaussian` fits it): the ELBO and the assignment update read it either way.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.special import entr

from bbvi.models.gaussian_mixture.model import Data, check_data, checked_jit, initial_means


class MeanField(NamedTuple):
    """The variational parameters: means `m (K, D)`, sds `s (K,)` or `(K, D)`, probabilities `phi (N, K)`."""

    m: jax.Array
    s: jax.Array
    phi: jax.Array


class CaviResult(NamedTuple):
    """CAVI's last iterate `q` and the ELBO after each update, `elbo[t] = (after phi, after mu)`."""

    q: MeanField
    elbo: jax.Array


def _coordinate_variances(s: jax.Array, k: int, d: int) -> jax.Array:
    """`s^2` as `(K, D)`: an isotropic `(K,)` broadcast over coordinates."""
    return jnp.broadcast_to(jnp.square(s).reshape(k, -1), (k, d))


def _expected_sq_dist(x: jax.Array, m: jax.Array, s: jax.Array) -> jax.Array:
    """`E_q ||x_i - mu_k||^2 = ||x_i - m_k||^2 + sum_d s_kd^2`, `(N, K)`."""
    k, d = m.shape
    sq = jnp.sum((x[:, None, :] - m[None, :, :]) ** 2, axis=-1)
    return sq + jnp.sum(_coordinate_variances(s, k, d), axis=-1)


@checked_jit
def elbo(data: Data, q: MeanField) -> jax.Array:
    """The mean field's ELBO in closed form (exact: no Monte Carlo)."""
    n, k, d = check_data(data)
    prior_var, noise_var = jnp.square(data.prior_scale), jnp.square(data.noise_scale)
    s2 = _coordinate_variances(q.s, k, d)
    log_2pi = jnp.log(2 * jnp.pi)
    e_log_prior_mu = -0.5 * k * d * (log_2pi + jnp.log(prior_var)) - jnp.sum(q.m**2 + s2) / (2 * prior_var)
    e_log_prior_c = -n * jnp.log(k)
    e_log_lik = jnp.sum(
        q.phi
        * (-0.5 * d * (log_2pi + jnp.log(noise_var)) - _expected_sq_dist(data.x, q.m, q.s) / (2 * noise_var))
    )
    entropy_mu = 0.5 * jnp.sum(log_2pi + 1 + jnp.log(s2))
    entropy_c = jnp.sum(entr(q.phi))  # -phi log phi, 0 at phi = 0
    return e_log_prior_mu + e_log_prior_c + e_log_lik + entropy_mu + entropy_c


@checked_jit
def optimal_assignments(data: Data, m: jax.Array, s: jax.Array) -> jax.Array:
    """The CAVI update of `phi` given q(mu), `(N, K)`: `phi_ik propto exp(-E||x_i - mu_k||^2 / (2 lambda^2))`.

    This is the exact maximiser of the ELBO in phi, whatever the shape of `s`.
    """
    return jax.nn.softmax(-_expected_sq_dist(data.x, m, s) / (2 * jnp.square(data.noise_scale)), axis=-1)


@checked_jit
def update_assignments(data: Data, q: MeanField) -> MeanField:
    """The phi block of CAVI: the exact maximiser of the ELBO in phi given q(mu)."""
    return q._replace(phi=optimal_assignments(data, q.m, q.s))


def means_natural_parameters(data: Data, phi: jax.Array, scale: float = 1.0) -> tuple[jax.Array, jax.Array]:
    """q(mu)'s optimum given `phi`, as natural parameters `(precision (K,), precision * m (K, D))`.

    `precision_k = 1/sigma^2 + scale sum_i phi_ik / lambda^2` and `precision_k m_k = scale sum_i phi_ik
    x_i / lambda^2`; `scale` is N/B when `phi` and `data.x` are a minibatch of B of the N points
    (stochastic VI's unbiased estimate of the full-data sums).
    """
    noise_var = jnp.square(data.noise_scale)
    precision = 1 / jnp.square(data.prior_scale) + scale * jnp.sum(phi, axis=0) / noise_var
    return precision, scale * (phi.T @ data.x) / noise_var


@checked_jit
def update_means(data: Data, q: MeanField) -> MeanField:
    """The mu block of CAVI, the exact maximiser of the ELBO in q(mu) given phi.

    `s_k^2 = 1 / (1/sigma^2 + sum_i phi_ik / lambda^2)`, `m_k = s_k^2 sum_i phi_ik x_i / lambda^2`.
    """
    precision, shift = means_natural_parameters(data, q.phi)
    return q._replace(m=shift / precision[:, None], s=jnp.sqrt(1 / precision))


@checked_jit
def init_mean_field(data: Data, key: jax.Array) -> MeanField:
    """A start for CAVI: means at `initial_means`, sds `noise_scale`, uniform assignments."""
    n, k, _ = check_data(data)
    m = initial_means(data, key)
    return MeanField(
        m, jnp.full((k,), data.noise_scale, dtype=m.dtype), jnp.full((n, k), 1 / k, dtype=m.dtype)
    )


@functools.partial(jax.jit, static_argnames="num_iterations")
def _cavi(data: Data, q: MeanField, num_iterations: int) -> CaviResult:
    def sweep(q, _):
        q = update_assignments(data, q)
        after_phi = elbo(data, q)
        q = update_means(data, q)
        return q, jnp.stack([after_phi, elbo(data, q)])

    q, trace = jax.lax.scan(sweep, q, length=num_iterations)
    return CaviResult(q, trace)


def cavi(
    data: Data, key: jax.Array | None = None, num_iterations: int = 50, init: MeanField | None = None
) -> CaviResult:
    """Coordinate ascent VI: `num_iterations` sweeps of (phi block, mu block), compiled as one scan.

    Each block maximises the ELBO exactly in its own parameters, so the ELBO never decreases; CAVI
    converges to a local optimum, which from `init_mean_field`'s spread-out start is the global one
    for well-separated clusters.

    Args:
        data: the observations and hyperparameters.
        key: picks the first of `initial_means` when `init` is not given.
        num_iterations: sweeps; each records the ELBO after its phi update and after its mu update.
        init: the starting mean field (its phi is overwritten by the first update).

    Returns:
        `CaviResult(q, elbo)` with `elbo` of shape `(num_iterations, 2)`.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from bbvi.models import gaussian_mixture as gm
        >>> data = gm.simulate(seed=0, num_data=60)
        >>> trace = gm.cavi(data, key=jax.random.key(0), num_iterations=10).elbo.ravel()
        >>> bool(jnp.all(jnp.diff(trace) > -1e-3))
        True
    """
    check_data(data)
    if isinstance(num_iterations, bool) or not isinstance(num_iterations, int) or num_iterations < 1:
        raise ValueError(f"num_iterations must be a positive int, got {num_iterations!r}")
    if init is None:
        if key is None:
            raise ValueError("cavi needs a key (to choose the initial means) or an init")
        init = init_mean_field(data, key)
    return _cavi(data, init, num_iterations)


@checked_jit
def from_bbvi_params(data: Data, params: dict) -> MeanField:
    """The `(m, s, phi)` of a black-box fit, so the closed-form ELBO can score it.

    `params` are those of `model.family` (`{"mu": {"loc", "log_scale"}, "c": {"logits"}}`: phi is
    q(c)'s probabilities), or of `model.collapsed_family` (`{"loc", "log_scale"}`: phi is then the
    CAVI-optimal assignment given q(mu), the best the mean field can do with that q(mu)).
    """
    if "mu" in params and "c" in params:
        mu = params["mu"]
        phi = jax.nn.softmax(params["c"]["logits"], axis=-1)
        return MeanField(mu["loc"], jnp.exp(mu["log_scale"]), phi)
    if "loc" in params and "log_scale" in params:
        m, s = params["loc"], jnp.exp(params["log_scale"])
        return MeanField(m, s, optimal_assignments(data, m, s))
    raise ValueError(
        "expected the parameters of gaussian_mixture.family ({'mu', 'c'}) or of collapsed_family "
        f"({{'loc', 'log_scale'}}), got keys {sorted(params)}"
    )
