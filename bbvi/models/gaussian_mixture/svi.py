"""Stochastic variational inference (Hoffman, Blei, Wang and Paisley 2013) for the Gaussian mixture.

The global factor q(mu_k) = N(m_k, s_k^2 I) is held by its natural parameters, the precision
`P_k = 1/s_k^2` and `h_k = P_k m_k`. Each step draws a minibatch B of the N points (without
replacement), sets its local factors to their optimum given q(mu),

    phi_ik propto exp(-E||x_i - mu_k||^2 / (2 lambda^2)),   i in B,

forms the intermediate global parameters: CAVI's mu update as if the minibatch, repeated N/B times,
were the data set,

    P_hat_k = 1/sigma^2 + (N/B) sum_{i in B} phi_ik / lambda^2,
    h_hat_k = (N/B) sum_{i in B} phi_ik x_i / lambda^2,

and moves towards them, `(P, h) <- (1 - rho_t)(P, h) + rho_t (P_hat, h_hat)`. In natural parameters
`(P_hat, h_hat) - (P, h)` is the natural gradient of the ELBO (with phi at its optimum), and the step
size `rho_t = (t + tau)^(-kappa)`, `t = 1, 2, ...`, `kappa in (0.5, 1]`, `tau >= 0`, meets the
Robbins-Monro conditions, so the iterates converge to a point where `E[(P_hat, h_hat)] = (P, h)`: a fixed
point of CAVI's update. With B = N and rho = 1 a step is exactly one CAVI sweep.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from bbvi.models.gaussian_mixture.mean_field import (
    MeanField,
    init_mean_field,
    means_natural_parameters,
    optimal_assignments,
)
from bbvi.models.gaussian_mixture.model import Data, check_data


class SVIResult(NamedTuple):
    """The last iterate `q` (phi: its optimum over all the data) and q(mu) after every step.

    Attributes:
        q: the fitted mean field; `s` is `(K,)`.
        m: the means after each step, `(num_steps, K, D)`.
        s: the sds after each step, `(num_steps, K)`.
    """

    q: MeanField
    m: jax.Array
    s: jax.Array


def step_sizes(num_steps: int, tau: float = 1.0, kappa: float = 0.6) -> jax.Array:
    """The Robbins-Monro step sizes `rho_t = (t + tau)^(-kappa)`, `t = 1..num_steps`."""
    if not 0.5 < kappa <= 1:
        raise ValueError(
            f"kappa must be in (0.5, 1] (Robbins-Monro: sum rho = inf, sum rho^2 < inf), got {kappa}"
        )
    if not tau >= 0:
        raise ValueError(f"tau must be >= 0, so every rho_t <= 1, got {tau}")
    return (jnp.arange(1, num_steps + 1) + tau) ** (-kappa)


@functools.partial(jax.jit, static_argnames="batch_size")
def _svi(data: Data, m, s, keys, rhos, batch_size: int) -> SVIResult:
    n = data.x.shape[0]

    def step(natural, inputs):
        precision, shift = natural
        key, rho = inputs
        m, s = shift / precision[:, None], jnp.sqrt(1 / precision)
        batch = dataclasses.replace(data, x=data.x[jax.random.choice(key, n, (batch_size,), replace=False)])
        phi = optimal_assignments(batch, m, s)
        target = means_natural_parameters(batch, phi, scale=n / batch_size)
        natural = jax.tree.map(lambda old, new: (1 - rho) * old + rho * new, natural, target)
        precision, shift = natural
        return natural, (shift / precision[:, None], jnp.sqrt(1 / precision))

    precision = 1 / s**2
    _, (ms, ss) = jax.lax.scan(step, (precision, precision[:, None] * m), (keys, rhos))
    q = MeanField(ms[-1], ss[-1], optimal_assignments(data, ms[-1], ss[-1]))
    return SVIResult(q, ms, ss)


def svi(
    data: Data,
    key: jax.Array,
    num_steps: int,
    batch_size: int,
    tau: float = 1.0,
    kappa: float = 0.6,
    init: MeanField | None = None,
) -> SVIResult:
    """Stochastic VI: `num_steps` natural-gradient steps on q(mu), one minibatch each, as one scan.

    Args:
        data: the observations and hyperparameters.
        key: draws the minibatches (and the initial means when `init` is not given).
        num_steps: steps, one minibatch each.
        batch_size: points per minibatch, drawn without replacement, `K <= batch_size <= N`.
        tau, kappa: the step sizes `rho_t = (t + tau)^(-kappa)`.
        init: the starting q(mu) (its `m` and isotropic `s`); else `init_mean_field`.

    Example:
        >>> import jax
        >>> from bbvi.models import gaussian_mixture as gm
        >>> data = gm.simulate(seed=0, num_data=60)
        >>> gm.svi(data, jax.random.key(0), num_steps=100, batch_size=10).m.shape
        (100, 3, 2)
    """
    n, k, _ = check_data(data)
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive int, got {num_steps!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not k <= batch_size <= n:
        raise ValueError(f"batch_size must be an int in [K, N] = [{k}, {n}], got {batch_size!r}")
    rhos = step_sizes(num_steps, tau, kappa)
    key_init, key_steps = jax.random.split(key)
    if init is None:
        init = init_mean_field(data, key_init)
    if jnp.shape(init.s) != (k,):
        raise ValueError(
            f"svi keeps q(mu_k) isotropic: init.s must have shape ({k},), got {jnp.shape(init.s)}"
        )
    return _svi(data, init.m, init.s, jax.random.split(key_steps, num_steps), rhos, batch_size)
