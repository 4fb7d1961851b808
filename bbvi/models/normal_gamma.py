r"""The Normal-Gamma model: a Normal with unknown mean and precision, where every VI quantity is exact.

    tau ~ Gamma(a_0, b_0)              (shape a_0, rate b_0)
    mu | tau ~ N(mu_0, 1 / (lambda_0 tau))
    x_n | mu, tau ~ N(mu, 1 / tau),    n = 1, ..., N

With xbar the sample mean and s = sum_n (x_n - xbar)^2, the exact posterior is Normal-Gamma,
p(mu, tau | x) = N(mu | mu_N, 1 / (lambda_N tau)) Gamma(tau | a_N, b_N), with

    lambda_N = lambda_0 + N,   mu_N = (lambda_0 mu_0 + N xbar) / lambda_N,   a_N = a_0 + N / 2,
    b_N = b_0 + s / 2 + lambda_0 N (xbar - mu_0)^2 / (2 lambda_N),

and the log evidence is closed form (`log_evidence`). The factorised family q(mu) q(tau) with
q(mu) = N(m, 1 / l) and q(tau) = Gamma(a, b) (a `MeanField`) cannot hold the posterior's dependence of
mu's spread on tau, so its best member sits strictly below log p(x). Everything about it is closed form
here: its ELBO (`elbo`), its KL divergence to the exact posterior (`kl_to_posterior`), with
`log p(x) = ELBO(q) + KL(q || p(mu, tau | x))` for every q, and the coordinate-ascent (CAVI) updates
(Bishop 2006, section 10.1.3):

    q(mu):  m = mu_N,  l = (lambda_0 + N) E_q[tau]
    q(tau): a = a_0 + (N + 1) / 2,
            b = b_0 + E_q(mu)[sum_n (x_n - mu)^2 + lambda_0 (mu - mu_0)^2] / 2.

Note a = a_0 + (N + 1) / 2, not a_0 + N / 2: log q(tau) collects (N + 1) / 2 powers of log tau, N / 2
from the likelihood and one half from the prior of mu, whose precision lambda_0 tau involves tau. (The
exact posterior's a_N = a_0 + N / 2 has that half cancelled by integrating mu out.) The CAVI fixed point
is closed form too (`cavi_fixed_point`): its E_q[tau] = (a_0 + N/2) / b_N equals the exact posterior mean
of tau, which gives l and then b = b_N (a_0 + (N + 1) / 2) / (a_0 + N / 2).

Black-box VI fits the same factorised family, `FAMILY`: a Normal for mu and numpyro's Gamma for tau
(pathwise gradients through its implicit reparameterisation); `mean_field(params)` reads the fitted
(m, l, a, b) off its parameters, so the closed forms judge the fit.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpyro.distributions as dist
from jax.scipy.special import digamma, gammaln
from numpyro.distributions import constraints
from numpyro.distributions.transforms import biject_to

import bbvi

#: q(mu) q(tau) = N(mu; loc, scale^2) x Gamma(tau; concentration, rate): the family CAVI optimises too.
FAMILY = {"mu": bbvi.MeanFieldGaussian(()), "tau": bbvi.NumpyroFamily(dist.Gamma)}


class Data(NamedTuple):
    """The observations and the prior's hyperparameters (mu_0, lambda_0, a_0, b_0; b_0 is a rate)."""

    x: jax.Array
    mu0: float = 0.0
    lambda0: float = 1.0
    a0: float = 1.0
    b0: float = 1.0


class Posterior(NamedTuple):
    """The exact posterior N(mu | mu_n, 1 / (lambda_n tau)) Gamma(tau | a_n, b_n)."""

    mu_n: jax.Array
    lambda_n: jax.Array
    a_n: jax.Array
    b_n: jax.Array


class MeanField(NamedTuple):
    """A factorised q(mu) q(tau) = N(mu | m, 1 / l) Gamma(tau | a, b) (l a precision, b a rate)."""

    m: jax.Array
    l: jax.Array  # noqa: E741 (the precision's name in the literature)
    a: jax.Array
    b: jax.Array


def _check_hyperparameters(data: Data) -> None:
    for name in ("lambda0", "a0", "b0"):
        value = getattr(data, name)
        if isinstance(value, (int, float)) and not value > 0:
            raise ValueError(f"normal_gamma.Data: {name} must be positive, got {value}")
    if jnp.ndim(data.x) != 1 or jnp.shape(data.x)[0] < 1:
        raise ValueError(f"normal_gamma.Data: x must be a non-empty 1-D array, got shape {jnp.shape(data.x)}")


def simulate(
    seed: int = 0,
    num_data: int = 20,
    loc: float = 1.0,
    scale: float = 2.0,
    mu0: float = 0.0,
    lambda0: float = 1.0,
    a0: float = 1.0,
    b0: float = 1.0,
) -> Data:
    """`num_data` draws from N(loc, scale^2), with the prior's hyperparameters.

    The data are not drawn from the prior: a fixed true mean and sd make the posterior's location
    predictable, and the model is exact for any data.
    """
    if not isinstance(num_data, int) or num_data < 1:
        raise ValueError(f"normal_gamma.simulate: num_data must be a positive int, got {num_data!r}")
    if not scale > 0:
        raise ValueError(f"normal_gamma.simulate: scale must be positive, got {scale}")
    x = loc + scale * jax.random.normal(jax.random.key(seed), (num_data,))
    data = Data(x, mu0, lambda0, a0, b0)
    _check_hyperparameters(data)
    return data


def log_joint_fn(data: Data):
    """`z -> log p(x, mu, tau)` for latents `{"mu": scalar, "tau": positive scalar}`."""
    _check_hyperparameters(data)

    def log_joint(z):
        mu, tau = z["mu"], z["tau"]
        return (
            dist.Gamma(data.a0, data.b0).log_prob(tau)
            + dist.Normal(data.mu0, jax.lax.rsqrt(data.lambda0 * tau)).log_prob(mu)
            + dist.Normal(mu, jax.lax.rsqrt(tau)).log_prob(data.x).sum()
        )

    return log_joint


def _stats(data: Data):
    """(N, xbar, sum_n (x_n - xbar)^2): centred, so the sum of squares does not cancel."""
    x = jnp.asarray(data.x)
    n = x.shape[0]
    xbar = x.mean()
    return n, xbar, jnp.sum((x - xbar) ** 2)


def _sum_squares_about(data: Data, m, l):  # noqa: E741
    """E over mu ~ N(m, 1/l) of sum_n (x_n - mu)^2 + lambda_0 (mu - mu_0)^2."""
    n, xbar, s = _stats(data)
    return s + n * (xbar - m) ** 2 + n / l + data.lambda0 * ((m - data.mu0) ** 2 + 1.0 / l)


def exact_posterior(data: Data) -> Posterior:
    """The Normal-Gamma posterior p(mu, tau | x) (conjugacy)."""
    _check_hyperparameters(data)
    n, xbar, s = _stats(data)
    lambda_n = data.lambda0 + n
    mu_n = (data.lambda0 * data.mu0 + n * xbar) / lambda_n
    a_n = data.a0 + n / 2
    b_n = data.b0 + 0.5 * s + 0.5 * data.lambda0 * n * (xbar - data.mu0) ** 2 / lambda_n
    return Posterior(mu_n, jnp.asarray(lambda_n, b_n.dtype), jnp.asarray(a_n, b_n.dtype), b_n)


def log_evidence(data: Data) -> jax.Array:
    """log p(x), the ratio of the prior's to the posterior's normalising constants."""
    post = exact_posterior(data)
    n = jnp.shape(data.x)[0]
    return (
        gammaln(post.a_n)
        - gammaln(data.a0)
        + data.a0 * jnp.log(data.b0)
        - post.a_n * jnp.log(post.b_n)
        + 0.5 * jnp.log(data.lambda0 / post.lambda_n)
        - 0.5 * n * jnp.log(2 * jnp.pi)
    )


def _moments(q: MeanField):
    """E_q[tau] and E_q[log tau] under q(tau) = Gamma(a, b)."""
    return q.a / q.b, digamma(q.a) - jnp.log(q.b)


def _entropy(q: MeanField) -> jax.Array:
    return dist.Normal(q.m, jax.lax.rsqrt(q.l)).entropy() + dist.Gamma(q.a, q.b).entropy()


def elbo(data: Data, q: MeanField) -> jax.Array:
    """The ELBO E_q[log p(x, mu, tau)] + H[q] of a factorised q, in closed form."""
    _check_hyperparameters(data)
    n = jnp.shape(data.x)[0]
    e_tau, e_log_tau = _moments(q)
    expected_log_joint = (
        -0.5 * (n + 1) * jnp.log(2 * jnp.pi)
        + 0.5 * jnp.log(data.lambda0)
        + 0.5 * (n + 1) * e_log_tau
        - 0.5 * e_tau * _sum_squares_about(data, q.m, q.l)
        + data.a0 * jnp.log(data.b0)
        - gammaln(data.a0)
        + (data.a0 - 1) * e_log_tau
        - data.b0 * e_tau
    )
    return expected_log_joint + _entropy(q)


def kl_to_posterior(data: Data, q: MeanField) -> jax.Array:
    """KL(q || p(mu, tau | x)) = -H[q] - E_q[log p(mu, tau | x)], in closed form.

    Derived from the exact posterior alone (not as log p(x) - ELBO), so that
    `log_evidence = elbo + kl_to_posterior` is a check, not a definition.
    """
    post = exact_posterior(data)
    e_tau, e_log_tau = _moments(q)
    expected_log_posterior = (
        -0.5 * jnp.log(2 * jnp.pi)
        + 0.5 * jnp.log(post.lambda_n)
        + 0.5 * e_log_tau
        - 0.5 * post.lambda_n * e_tau * ((q.m - post.mu_n) ** 2 + 1.0 / q.l)
        + post.a_n * jnp.log(post.b_n)
        - gammaln(post.a_n)
        + (post.a_n - 1) * e_log_tau
        - post.b_n * e_tau
    )
    return -expected_log_posterior - _entropy(q)


def cavi_update_mu(data: Data, q: MeanField) -> MeanField:
    """The optimal q(mu) given q(tau): N(mu_N, 1 / ((lambda_0 + N) E[tau]))."""
    n, xbar, _ = _stats(data)
    e_tau, _ = _moments(q)
    m = (data.lambda0 * data.mu0 + n * xbar) / (data.lambda0 + n)
    return q._replace(m=m, l=(data.lambda0 + n) * e_tau)


def cavi_update_tau(data: Data, q: MeanField) -> MeanField:
    """The optimal q(tau) given q(mu): Gamma(a_0 + (N + 1)/2, b_0 + E_mu[...] / 2)."""
    n = jnp.shape(data.x)[0]
    a = jnp.full_like(q.b, data.a0 + 0.5 * (n + 1))
    return q._replace(a=a, b=data.b0 + 0.5 * _sum_squares_about(data, q.m, q.l))


def cavi(data: Data, init: MeanField, num_iterations: int = 10) -> tuple[MeanField, jax.Array]:
    """Coordinate ascent from `init`: each iteration updates q(mu), then q(tau).

    Returns:
        The final q and the ELBO after every half-update, shape `(2 * num_iterations + 1,)` (the
        first entry is the ELBO at `init`); CAVI never lets it decrease.
    """
    _check_hyperparameters(data)
    if not isinstance(num_iterations, int) or num_iterations < 1:
        raise ValueError(f"normal_gamma.cavi: num_iterations must be a positive int, got {num_iterations!r}")
    init = MeanField(*(jnp.asarray(v, dtype=jnp.result_type(float)) for v in init))

    def iteration(q, _):
        q_mu = cavi_update_mu(data, q)
        q_tau = cavi_update_tau(data, q_mu)
        return q_tau, jnp.stack([elbo(data, q_mu), elbo(data, q_tau)])

    final, elbos = jax.lax.scan(iteration, init, None, length=num_iterations)
    return final, jnp.concatenate([elbo(data, init)[None], elbos.reshape(-1)])


def cavi_fixed_point(data: Data) -> MeanField:
    """CAVI's fixed point in closed form (the optimum of the factorised family).

    At the fixed point b = b_N + (lambda_0 + N) / (2 l) with l = (lambda_0 + N) a / b, so
    b = b_N a / (a - 1/2), E_q[tau] = (a_0 + N/2) / b_N (the exact posterior mean of tau), and
    l = (lambda_0 + N) (a_0 + N/2) / b_N, with m = mu_N and a = a_0 + (N + 1) / 2.
    """
    post = exact_posterior(data)
    a = post.a_n + 0.5
    return MeanField(post.mu_n, post.lambda_n * post.a_n / post.b_n, a, post.b_n * a / post.a_n)


def mean_field(params) -> MeanField:
    """The (m, l, a, b) of `FAMILY`'s parameters, e.g. a fit's `result.params`."""
    gamma = FAMILY["tau"].constrained_params(params["tau"])
    return MeanField(
        params["mu"]["loc"], jnp.exp(-2.0 * params["mu"]["log_scale"]), gamma["concentration"], gamma["rate"]
    )


def params_from_mean_field(q: MeanField):
    """`FAMILY`'s parameters for (m, l, a, b): the inverse of `mean_field` (e.g. to start a fit)."""
    dtype = jnp.result_type(float)
    positive = biject_to(constraints.positive)  # how NumpyroFamily stores Gamma's arguments
    return {
        "mu": {"loc": jnp.asarray(q.m, dtype), "log_scale": -0.5 * jnp.log(jnp.asarray(q.l, dtype))},
        "tau": {
            "concentration": positive.inv(jnp.asarray(q.a, dtype)),
            "rate": positive.inv(jnp.asarray(q.b, dtype)),
        },
    }
