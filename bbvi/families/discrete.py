"""Discrete families: fitted with score-function gradients (they cannot be reparameterised)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpyro.distributions as dist

from bbvi.families.base import DistributionFamily, Family, check_shape


class _BernoulliLogits(dist.BernoulliLogits):
    """numpyro's Bernoulli with a log-density whose gradient is right at logits = 0.

    numpyro 0.22 writes it with `clip(logits, 0)`, whose derivative JAX takes as 1 at 0: the
    gradient there is z instead of z - 1/2. Every Bernoulli family starts at logits = 0, so the
    score-function gradient of the first steps would be biased wherever the baseline does not cancel it.
    """

    def log_prob(self, value):
        value = jnp.asarray(value, dtype=self.logits.dtype)
        return value * jax.nn.log_sigmoid(self.logits) + (1 - value) * jax.nn.log_sigmoid(-self.logits)

    def entropy(self):
        # numpyro's ((1 + e^-x) log1p(e^-x) + e^-x x) / (1 + e^-x) cancels catastrophically below
        # x ~ -17 (value 0, gradient rounding noise), which a natural gradient divides by p (1 - p).
        # H is even in x, and at |x| it is a sum of two small positive terms.
        a = jnp.abs(self.logits)
        return jax.nn.softplus(-a) + a * jax.nn.sigmoid(-a)


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
        return _BernoulliLogits(logits=params["logits"]).to_event(len(self.shape))

    def relaxed_sample(self, params, key, temperature):
        """A draw from the binary concrete relaxation, in (0, 1), differentiable in the logits.

        `sigmoid((logits + logistic noise) / temperature)`: at temperature -> 0 it is a draw of q.
        """
        noise = jax.random.logistic(key, self.shape, dtype=params["logits"].dtype)
        return jax.nn.sigmoid((params["logits"] + noise) / temperature)


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


@dataclasses.dataclass(frozen=True)
class OneHotCategorical(Family):
    """Categorical latents drawn as one-hot vectors: z has shape `shape + (num_categories,)`.

    The same q as `Categorical` (same parameters `{"logits": shape + (num_categories,)}`), with
    each draw one-hot encoded. That encoding is what the Gumbel-softmax relaxation (estimator
    `"relaxed"`) replaces by points of the simplex, so a log-joint written for one-hot draws (e.g.
    `z @ means`) accepts relaxed ones too. Draws are int32.
    """

    shape: tuple[int, ...]
    num_categories: int

    reparameterized = False
    has_entropy = True

    def __post_init__(self):
        object.__setattr__(self, "shape", self._indices.shape)  # validates, normalises the shape

    @property
    def _indices(self) -> Categorical:
        """The categorical family over the indices, which does the work."""
        return Categorical(self.shape, self.num_categories)

    @property
    def event_shape(self):
        return self.shape + (self.num_categories,)

    @property
    def factor_dims(self):
        return len(self.shape)

    def init(self, key):
        return self._indices.init(key)

    def sample(self, params, key):
        return jax.nn.one_hot(self._indices.sample(params, key), self.num_categories, dtype=jnp.int32)

    def log_prob(self, params, z):
        return self._indices.log_prob(params, jnp.argmax(z, axis=-1))

    def entropy(self, params):
        return self._indices.entropy(params)

    def factor_log_prob(self, params, z):
        return self._indices.factor_log_prob(params, jnp.argmax(z, axis=-1))

    def relaxed_sample(self, params, key, temperature):
        """A Gumbel-softmax draw on the simplex, differentiable in the logits."""
        noise = jax.random.gumbel(key, params["logits"].shape, dtype=params["logits"].dtype)
        return jax.nn.softmax((params["logits"] + noise) / temperature, axis=-1)
