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

    def entropy(self, params: Params) -> jax.Array:
        """Closed-form entropy of q; only where `has_entropy` is true."""
        raise NotImplementedError(f"{type(self).__name__} has no closed-form entropy")

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
