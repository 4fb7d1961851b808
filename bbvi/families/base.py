"""The family protocol: an immutable description of a variational distribution.

A family holds shapes and options only; its parameters live in a separate pytree of
unconstrained arrays, so a family is hashable and can be closed over by `jit`.
Every method works on a single draw; vectorisation happens in one place
(`bbvi.families.tree`).
"""

from __future__ import annotations

import abc
import operator
from typing import Any

import jax
import jax.numpy as jnp
import numpyro.distributions as dist

Params = Any  # a pytree of unconstrained arrays
Latent = Any  # one draw of the latent variables


class Family(abc.ABC):
    """A variational family over one block of latent variables.

    Subclasses are frozen dataclasses (hashable, no arrays inside) and implement
    `init`, `sample`, `log_prob` and, where closed-form, `entropy`.
    """

    #: Whether `sample` is a differentiable function of the parameters (pathwise gradients).
    reparameterized: bool = False
    #: Whether `entropy` is available in closed form.
    has_entropy: bool = False
    #: For a mean-field family, the number of leading event dimensions that index independent
    #: factors (`factor_log_prob` returns one value per factor); `None` where q does not factorise.
    factor_dims: int | None = None
    #: Whether q depends on data (an amortised family): then `condition` must be called first.
    needs_data: bool = False
    #: Whether q is a point mass (a parameter fitted as a point estimate): it has no density to
    #: push through a bijection and a zero score, so only pathwise gradients reach it.
    point_mass: bool = False
    #: The shape of the standard-normal noise one draw is a function of (`from_noise`), or `None`
    #: where draws are not made that way. Estimators draw the noise of all such leaves of a sample
    #: at once: one random-number call instead of one per leaf, which dominates a tiny model's step.
    noise_shape: tuple[int, ...] | None = None

    @property
    @abc.abstractmethod
    def event_shape(self) -> tuple[int, ...]:
        """Shape of one draw of the latents."""

    @abc.abstractmethod
    def init(self, key: jax.Array) -> Params:
        """Initial unconstrained parameters."""

    @abc.abstractmethod
    def sample(self, params: Params, key: jax.Array) -> Latent:
        """One draw from q(z; params)."""

    @abc.abstractmethod
    def log_prob(self, params: Params, z: Latent) -> jax.Array:
        """log q(z; params), a scalar for one draw."""

    def from_noise(self, params: Params, eps: jax.Array) -> Latent:
        """The draw of q whose standard-normal noise is `eps` (of shape `noise_shape`)."""
        raise NotImplementedError(f"{type(self).__name__} does not draw from standard-normal noise")

    def entropy(self, params: Params) -> jax.Array:
        """Closed-form entropy of q; only where `has_entropy` is true."""
        raise NotImplementedError(f"{type(self).__name__} has no closed-form entropy")

    def sample_and_log_prob(self, params: Params, key: jax.Array) -> tuple[Latent, jax.Array]:
        """One draw and its log q, together: families that can (flows) reuse the forward pass."""
        z = self.sample(params, key)
        return z, self.log_prob(params, z)

    def stratified_sample(self, params: Params, key: jax.Array) -> tuple[Latent, jax.Array]:
        """Points `z_j` (a leading axis) and log-weights `log w_j` (summing to one in probability).

        `sum_j w_j f(z_j)` is an unbiased estimate of `E_q[f]`; the estimators average over these
        points. A mixture returns one draw per component, weighted by the mixture weights, so its
        gradient is exact in the weights and pathwise inside each component. Default: one draw.
        """
        z = self.sample(params, key)
        return jax.tree.map(lambda x: x[None], z), jnp.zeros((1,))

    def factor_log_prob(self, params: Params, z: Latent) -> jax.Array:
        """log q of each independent factor, shape `event_shape[:factor_dims]` (mean-field families)."""
        raise NotImplementedError(f"{type(self).__name__} does not factorise (factor_dims is None)")

    def condition(self, params: Params, data: Any) -> tuple[Family, Params]:
        """The family and parameters of q given a batch of data (amortised families).

        Estimators call this first; an amortised family returns a data-free family (e.g. a
        batch of base families) and its parameters computed from the data. Default: unchanged.
        """
        return self, params

    def unconstrained(self) -> tuple[Family, Any]:
        """The family in the space where its draws are unconstrained, and the bijection out of it.

        Returns `(base, transform)` with `transform` a numpyro transform, or `None` for the identity.
        """
        return self, None


def is_family(x: Any) -> bool:
    """Whether `x` is a single family (a leaf of a family pytree)."""
    return isinstance(x, Family)


def check_shape(shape: Any, what: str) -> tuple[int, ...]:
    """Normalise a shape argument, with a clear error for anything that is not one."""
    if isinstance(shape, int):
        shape = (shape,)
    try:
        shape = tuple(operator.index(s) for s in shape)
    except TypeError:
        raise TypeError(f"{what}: shape must be a tuple of ints, got {shape!r}") from None
    if any(s < 0 for s in shape):
        raise ValueError(f"{what}: shape must be non-negative, got {shape}")
    return shape


def check_count(owner: str, name: str, value: Any, minimum: int = 1) -> int:
    """A count argument (chains, states, steps) as an int >= `minimum`, with a clear error otherwise."""
    # bool is an int subclass, but a count of True is a mistake, not one.
    if isinstance(value, bool):
        raise TypeError(f"{owner}: {name} must be an int >= {minimum}, got {value!r}")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{owner}: {name} must be an int >= {minimum}, got {value!r}") from None
    if value < minimum:
        raise ValueError(f"{owner}: {name} must be an int >= {minimum}, got {value}")
    return value


class DistributionFamily(Family):
    """A family that is a numpyro distribution of its parameters.

    Subclasses implement `init` and `distribution(params)`; sampling, densities and entropy
    come from numpyro, so no log-density is derived here twice.
    """

    @abc.abstractmethod
    def distribution(self, params: Params):
        """The numpyro distribution (event shape = `event_shape`) these parameters describe."""

    def sample(self, params, key):
        return self.distribution(params).sample(key)

    def log_prob(self, params, z):
        return self.distribution(params).log_prob(z)

    def entropy(self, params):
        return self.distribution(params).entropy()

    def factor_log_prob(self, params, z):
        if self.factor_dims is None:
            return super().factor_log_prob(params, z)
        d = self.distribution(params)
        # numpyro's Independent wraps the elementwise distribution; sum what lies below the factors.
        elementwise = d.base_dist.log_prob(z) if isinstance(d, dist.Independent) else d.log_prob(z)
        extra = elementwise.ndim - self.factor_dims
        return jnp.sum(elementwise, axis=tuple(range(self.factor_dims, self.factor_dims + extra)))
