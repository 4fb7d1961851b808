"""Discrete families: fitted with score-function gradients (they cannot be reparameterised)."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpyro.distributions as dist

from bbvi.families.base import DistributionFamily, check_shape


@dataclasses.dataclass(frozen=True)
class Bernoulli(DistributionFamily):
    """Independent Bernoulli latents: q(z) = prod_i p_i^z_i (1 - p_i)^(1 - z_i).

    Parameters are `{"logits": shape}`, initialised at zero (p = 1/2). Draws are int32 0/1.
    """

    shape: tuple[int, ...]

    reparameterized = False
    has_entropy = True

    def __post_init__(self):
        object.__setattr__(self, "shape", check_shape(self.shape, "Bernoulli"))

    @property
    def event_shape(self):
        return self.shape

    @property
    def factor_dims(self):
        return len(self.shape)  # every element is an independent factor

    def init(self, key):
        return {"logits": jnp.zeros(self.shape)}

    def distribution(self, params):
        return dist.Bernoulli(logits=params["logits"]).to_event(len(self.shape))


@dataclasses.dataclass(frozen=True)
class Categorical(DistributionFamily):
    """Independent categorical latents over `num_categories` values: z_i in {0, ..., K-1}.

    Parameters are `{"logits": shape + (num_categories,)}`, initialised at zero (uniform).
    Draws are int32 arrays of `shape`.
    """

    shape: tuple[int, ...]
    num_categories: int

    reparameterized = False
    has_entropy = True

    def __post_init__(self):
        object.__setattr__(self, "shape", check_shape(self.shape, "Categorical"))
        if not isinstance(self.num_categories, int) or self.num_categories < 2:
            raise ValueError(f"Categorical: num_categories must be an int >= 2, got {self.num_categories!r}")

    @property
    def event_shape(self):
        return self.shape

    @property
    def factor_dims(self):
        return len(self.shape)  # every element is an independent factor

    def init(self, key):
        return {"logits": jnp.zeros(self.shape + (self.num_categories,))}

    def distribution(self, params):
        return dist.Categorical(logits=params["logits"]).to_event(len(self.shape))
