"""Amortised families: an encoder network maps each datum to the parameters of a base family.

`Amortized` is what a VAE's inference network is: its variational parameters are the encoder's
weights, and q(z_i | x_i) = base(z_i; encoder(x_i)) for each datum of a minibatch. Conditioning on
a minibatch (`condition`) gives a data-free `Batched` family, B independent copies of the base
with per-datum parameters, which estimators then treat like any other family.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import operator

import jax
import jax.numpy as jnp
import numpy as np
from jax.example_libraries import stax
from jax.flatten_util import ravel_pytree

from bbvi.families.base import Family, check_shape
from bbvi.families.tree import param_spec

#: Elementwise activations between the encoder's hidden layers (stax layers, stateless).
ACTIVATIONS = {
    "tanh": stax.Tanh,
    "relu": stax.Relu,
    "elu": stax.Elu,
    "gelu": stax.Gelu,
    "selu": stax.Selu,
    "sigmoid": stax.Sigmoid,
    "softplus": stax.Softplus,
}

# The encoder's last layer starts with weights this much smaller than stax's Glorot init, so the
# initial q(z|x) is (nearly) the same for every x: a new fit starts where the base family would.
_LAST_LAYER_SCALE = 0.01


def _check_base(owner: str, base) -> None:
    if not isinstance(base, Family):
        raise TypeError(f"{owner}: base must be a bbvi family (MeanFieldGaussian, ...), got {base!r}")
    if base.needs_data:
        raise TypeError(
            f"{owner}: base must be a data-free family, got {type(base).__name__}, which needs data"
        )


def _check_positive_int(owner: str, name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{owner}: {name} must be a positive int, got {value!r}")


def _batched_factor_dims(base: Family) -> int:
    return 1 if base.factor_dims is None else 1 + base.factor_dims


class _PerDatum(Family):
    """What `batch_size` copies of a `base` family share, whether their parameters are free or encoded.

    Subclasses are dataclasses with the fields `base` and `batch_size`.
    """

    @property
    def reparameterized(self):
        return self.base.reparameterized

    @property
    def has_entropy(self):
        return self.base.has_entropy

    @property
    def factor_dims(self):
        return _batched_factor_dims(self.base)

    @property
    def event_shape(self):
        return (self.batch_size,) + tuple(self.base.event_shape)


@dataclasses.dataclass(frozen=True)
class Batched(_PerDatum):
    """`batch_size` independent copies of `base`, each with its own parameters.

    Parameters are the base's with a leading axis of size `batch_size`; a draw has shape
    `(batch_size,) + base.event_shape`, and `log_prob` / `entropy` are sums over the copies.
    This is what an `Amortized` family becomes once conditioned on a minibatch.

    Example:
        >>> import jax
        >>> from bbvi.families.amortized import Batched
        >>> from bbvi.families.gaussian import MeanFieldGaussian
        >>> family = Batched(MeanFieldGaussian((2,)), 3)
        >>> params = family.init(jax.random.key(0))
        >>> params["loc"].shape, family.sample(params, jax.random.key(1)).shape
        ((3, 2), (3, 2))
    """

    base: Family
    batch_size: int

    def __post_init__(self):
        _check_base("Batched", self.base)
        _check_positive_int("Batched", "batch_size", self.batch_size)

    def _keys(self, key):
        return jax.random.split(key, self.batch_size)

    def init(self, key):
        return jax.vmap(self.base.init)(self._keys(key))

    def sample(self, params, key):
        return jax.vmap(self.base.sample)(params, self._keys(key))

    def log_prob(self, params, z):
        return jnp.sum(jax.vmap(self.base.log_prob)(params, z))

    def entropy(self, params):
        return jnp.sum(jax.vmap(self.base.entropy)(params))

    def sample_and_log_prob(self, params, key):
        z, log_q = jax.vmap(self.base.sample_and_log_prob)(params, self._keys(key))
        return z, jnp.sum(log_q)

    def stratified_sample(self, params, key):
        points, log_w = jax.vmap(self.base.stratified_sample)(params, self._keys(key))
        if log_w.shape[1] != 1:
            # B copies with J points each would need J^B joint points (or a per-copy estimator).
            raise NotImplementedError(
                f"Batched: the base {type(self.base).__name__} stratifies into {log_w.shape[1]} points "
                "per draw (a mixture); stratified draws of a batch of such families are not supported yet"
            )
        # One point per copy: the joint draw is one point of weight 1 (leading axis 1).
        return jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), points), jnp.sum(log_w, axis=0)

    def factor_log_prob(self, params, z):
        if self.base.factor_dims is None:
            return jax.vmap(self.base.log_prob)(params, z)
        return jax.vmap(self.base.factor_log_prob)(params, z)

    def unconstrained(self):
        base, transform = self.base.unconstrained()
        if transform is None:
            return self, None
        # numpyro transforms act on the trailing (event) dimensions, so the base's bijection maps a
        # whole batch of draws, shape (B,) + shape, at once.
        return Batched(base, self.batch_size), transform


@functools.cache
def _param_layout(base: Family):
    """(number of scalars, unravel: flat vector -> the base's params pytree), from its init's spec."""
    spec = param_spec(base)
    flat, unravel = ravel_pytree(jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), spec))
    return int(flat.size), unravel


@dataclasses.dataclass(frozen=True)
class Amortized(_PerDatum):
    """q(z_i | x_i) = base(z_i; encoder(x_i)) for each datum of a minibatch of `batch_size`.

    The encoder is a stax MLP: each datum (of `data_shape`, flattened) goes through `hidden_sizes`
    dense layers with `activation` between them, then a dense layer to the base's parameters
    (raveled). The variational parameters are the encoder's weights, `{"encoder": stax params}`.
    `init(key)` starts the last layer's weights small (x 0.01) and its bias at the base's own
    `base.init(jax.random.split(key)[0])`, so q(z|x) first is close to the base's init for every x.

    q depends on the data: call `condition(params, data)` with a minibatch of shape
    `(batch_size,) + data_shape`; it returns `Batched(base, batch_size)` and the per-datum
    parameters. `sample`, `log_prob` and `entropy` of the unconditioned family are errors.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from bbvi.families.amortized import Amortized
        >>> from bbvi.families.gaussian import MeanFieldGaussian
        >>> family = Amortized(MeanFieldGaussian((2,)), data_shape=(5,), batch_size=8)
        >>> params = family.init(jax.random.key(0))
        >>> q, q_params = family.condition(params, jnp.ones((8, 5)))
        >>> q_params["loc"].shape, q.sample(q_params, jax.random.key(1)).shape
        ((8, 2), (8, 2))
    """

    base: Family
    data_shape: tuple[int, ...]
    batch_size: int
    hidden_sizes: tuple[int, ...] = (64,)
    activation: str = "tanh"

    needs_data = True

    def __post_init__(self):
        _check_base("Amortized", self.base)
        data_shape = check_shape(self.data_shape, "Amortized data_shape")
        if math.prod(data_shape) == 0:
            raise ValueError(f"Amortized: data_shape must have at least one element, got {data_shape}")
        object.__setattr__(self, "data_shape", data_shape)
        _check_positive_int("Amortized", "batch_size", self.batch_size)
        hidden = (self.hidden_sizes,) if isinstance(self.hidden_sizes, int) else self.hidden_sizes
        try:
            hidden = tuple(operator.index(h) for h in hidden)
        except TypeError:
            raise TypeError(
                f"Amortized: hidden_sizes must be a tuple of ints, got {self.hidden_sizes!r}"
            ) from None
        if any(h < 1 for h in hidden):
            raise ValueError(f"Amortized: hidden_sizes must be positive, got {hidden}")
        object.__setattr__(self, "hidden_sizes", hidden)
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"Amortized: unknown activation {self.activation!r}; expected one of {sorted(ACTIVATIONS)}"
            )

    @property
    def num_base_params(self) -> int:
        """The size of the encoder's output: the number of scalars in the base's parameters."""
        return _param_layout(self.base)[0]

    def encoder(self):
        """The stax `(init_fun, apply_fun)`: flattened data (n, prod(data_shape)) -> (n, num_base_params).

        Rebuilt from the static fields on each call (stax layers are pure functions), so the family
        holds no arrays and no closures.
        """
        layers = []
        for size in self.hidden_sizes:
            layers += [stax.Dense(size), ACTIVATIONS[self.activation]]
        return stax.serial(*layers, stax.Dense(self.num_base_params))

    def init(self, key):
        key_base, key_net = jax.random.split(key)
        init_fun, _ = self.encoder()
        _, layers = init_fun(key_net, (-1, math.prod(self.data_shape)))
        weights, _ = layers[-1]
        offset, _ = ravel_pytree(self.base.init(key_base))
        layers[-1] = (_LAST_LAYER_SCALE * weights, offset.astype(weights.dtype))
        return {"encoder": layers}

    def condition(self, params, data):
        """`(Batched(base, batch_size), per-datum base params)` for a minibatch `data`."""
        expected = (self.batch_size,) + self.data_shape
        if tuple(jnp.shape(data)) != expected:
            raise ValueError(
                f"Amortized: data must have shape (batch_size,) + data_shape = {expected}, "
                f"got {tuple(jnp.shape(data))}"
            )
        _, apply_fun = self.encoder()
        x = jnp.reshape(jnp.asarray(data), (self.batch_size, -1)).astype(jnp.result_type(float))
        flat = apply_fun(params["encoder"], x)
        _, unravel = _param_layout(self.base)
        return Batched(self.base, self.batch_size), jax.vmap(unravel)(flat)

    def unconstrained(self):
        base, transform = self.base.unconstrained()
        if transform is None:
            return self, None
        # The unconstrained base has the same parameters, so the encoder is unchanged.
        return dataclasses.replace(self, base=base), transform

    def _needs_data(self, method: str):
        raise ValueError(
            f"Amortized.{method}: q depends on the data; call `family.condition(params, data)` with a "
            "minibatch first and use the family and parameters it returns (or pass data= to bbvi.fit)"
        )

    def sample(self, params, key):
        self._needs_data("sample")

    def log_prob(self, params, z):
        self._needs_data("log_prob")

    def entropy(self, params):
        self._needs_data("entropy")

    def sample_and_log_prob(self, params, key):
        self._needs_data("sample_and_log_prob")

    def stratified_sample(self, params, key):
        self._needs_data("stratified_sample")

    def factor_log_prob(self, params, z):
        self._needs_data("factor_log_prob")
