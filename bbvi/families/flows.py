"""Normalising flows: inverse autoregressive flows (IAF) over a diagonal Gaussian base.

Built from numpyro's parts: its MADE network (`numpyro.nn.AutoregressiveNN`, a stax
`(init_fun, apply_fun)` pair), its `InverseAutoregressiveTransform` and `PermuteTransform`, and a
`TransformedDistribution` for sampling and densities, arranged as numpyro's `AutoIAFNormal` does.
"""

from __future__ import annotations

import dataclasses
import functools
import operator

import jax
import jax.numpy as jnp
import numpyro.distributions as dist
from jax.example_libraries import stax
from numpyro.distributions.flows import InverseAutoregressiveTransform
from numpyro.distributions.transforms import PermuteTransform
from numpyro.nn import AutoregressiveNN

from bbvi.families.base import DistributionFamily, Family
from bbvi.families.gaussian import (
    _DEFAULT_INIT_RADIUS,
    _DEFAULT_INIT_SCALE,
    _check_init_scale,
    _init_loc,
    _init_log_scale,
)

_NAME = "InverseAutoregressiveFlow"


def _check_count(name: str, value, minimum: int, why: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{_NAME}: {name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{_NAME}: {name} must be >= {minimum}{why}, got {value}")
    return value


def _check_hidden_dims(hidden_dims, dim: int) -> tuple[int, ...]:
    expected = f"a non-empty tuple of ints >= dim = {dim} (a MADE layer needs a unit per input degree)"
    try:
        dims = tuple(operator.index(h) for h in hidden_dims)
    except TypeError:
        dims = None
    if dims is None or any(isinstance(h, bool) for h in hidden_dims):
        raise TypeError(f"{_NAME}: hidden_dims must be {expected}, got {hidden_dims!r}")
    if not dims or min(dims) < dim:
        raise ValueError(f"{_NAME}: hidden_dims must be {expected}, got {hidden_dims!r}")
    return dims


@dataclasses.dataclass(frozen=True)
class InverseAutoregressiveFlow(DistributionFamily):
    """An inverse autoregressive flow (Kingma et al., 2016) over a diagonal Gaussian base.

    A draw is `z = P^(K-1) f_K(P f_{K-1}(... P f_1(x)))` with `x ~ N(loc, diag(exp(log_scale))^2)`,
    `P` the reversal of the coordinates (so the final `P^(K-1)` undoes the others' net effect:
    an identity flow leaves `z = x`), each layer `f(x) = exp(clip(s(x), -5, 3)) * x + m(x)`,
    where `(m, s)` are the two halves of the output of numpyro's MADE network (`AutoregressiveNN`,
    ELU, the identity input order), so `m_i, s_i` depend on `x_1..x_{i-1}` only and
    `log|det df/dx| = sum_i clip(s_i(x))`. The clip is numpyro's (it passes gradients through).

    Parameters are `{"base": {"loc": (dim,), "log_scale": (dim,)}, "flows": [layer_1, ...]}`, each
    layer the stax parameters `((W, b), (), ..., (W, b))` of its network. Every layer's output
    weights start at zero, so the flow starts as the identity and q as its base Gaussian,
    initialised like `MeanFieldGaussian` (loc uniform in `[-init_radius, init_radius]`, scale
    `init_scale`).

    Sampling and `sample_and_log_prob` cost one pass through the layers. `log_prob` of an
    arbitrary `z` inverts each layer, which takes `dim` sequential passes of its network.
    One dimension is refused: there the network's input cannot reach its outputs, so the flow
    would be an affine map of the base, a Gaussian (use `MeanFieldGaussian`).

    Args:
        dim: the number of latent coordinates, at least 2.
        num_flows: the number of IAF layers.
        hidden_dims: hidden-layer widths of each layer's network, each at least `dim`; default
            one layer of `max(2 * dim, 8)` units.
        init_scale: the base's initial standard deviation.
        init_radius: the base's initial locations are uniform in `[-init_radius, init_radius]`.

    Example:
        >>> import jax
        >>> from bbvi.families.flows import InverseAutoregressiveFlow
        >>> flow = InverseAutoregressiveFlow(2)
        >>> params = flow.init(jax.random.key(0))
        >>> z, log_q = flow.sample_and_log_prob(params, jax.random.key(1))
        >>> z.shape, log_q.shape
        ((2,), ())
    """

    dim: int
    num_flows: int = 2
    hidden_dims: tuple[int, ...] | None = None
    init_scale: float = _DEFAULT_INIT_SCALE
    init_radius: float = _DEFAULT_INIT_RADIUS

    reparameterized = True
    has_entropy = False

    def __post_init__(self):
        _check_count("dim", self.dim, 2, " (a one-dimensional IAF is a Gaussian: use MeanFieldGaussian)")
        _check_count("num_flows", self.num_flows, 1)
        hidden_dims = (max(2 * self.dim, 8),) if self.hidden_dims is None else self.hidden_dims
        # Resolved here, so that the default and its explicit spelling are one (equal, hashable) family.
        object.__setattr__(self, "hidden_dims", _check_hidden_dims(hidden_dims, self.dim))
        _check_init_scale(_NAME, self.init_scale)

    @property
    def event_shape(self):
        return (self.dim,)

    def _network(self):
        # Built afresh on each call, never cached: numpyro makes the masks with jnp, and masks made
        # while tracing are tracers, which a cache would leak out of the trace.
        return AutoregressiveNN(
            self.dim, list(self.hidden_dims), permutation=jnp.arange(self.dim), nonlinearity=stax.Elu
        )

    def init(self, key):
        key_loc, *keys = jax.random.split(key, 1 + self.num_flows)
        init_network, _ = self._network()
        flows = []
        for k in keys:
            _, layers = init_network(k, (self.dim,))
            # A zero output layer makes every flow layer the identity at init; the random hidden
            # weights still give the output layer non-zero gradients from the first step.
            *hidden, (w, b) = layers
            flows.append((*hidden, (jnp.zeros_like(w), jnp.zeros_like(b))))
        return {
            "base": {
                "loc": _init_loc(key_loc, (self.dim,), self.init_radius),
                "log_scale": _init_log_scale((self.dim,), self.init_scale),
            },
            "flows": flows,
        }

    def distribution(self, params):
        base = params["base"]
        _, apply_network = self._network()
        reverse = jnp.arange(self.dim)[::-1]
        transforms = []
        for i, layer in enumerate(params["flows"]):
            if i > 0:  # alternate the autoregressive order, so every coordinate can depend on every other
                transforms.append(PermuteTransform(reverse))
            transforms.append(InverseAutoregressiveTransform(functools.partial(apply_network, layer)))
        if self.num_flows % 2 == 0:
            # An odd number of reversals so far: undo it, so that an identity flow leaves z = x.
            transforms.append(PermuteTransform(reverse))
        return dist.TransformedDistribution(
            dist.Normal(base["loc"], jnp.exp(base["log_scale"])).to_event(1), transforms
        )

    def sample_and_log_prob(self, params, key):
        """One draw and its log q from the same forward pass: no network inversion."""
        d = self.distribution(params)
        z, intermediates = d.sample_with_intermediates(key)
        return z, d.log_prob(z, intermediates)

    def log_prob(self, params, z):
        """log q(z) for any `z`: inverts every layer, `dim` sequential network passes each.

        A steep flow maps many base points to one float32 `z`, so there the inverse, and so log q,
        is only as accurate as `z` pins its base point down. For the log q of q's own draws (the
        ELBO's term) `sample_and_log_prob` is cheaper and needs no inverse.
        """
        return self.distribution(params).log_prob(z)

    def entropy(self, params):
        return Family.entropy(self, params)  # no closed form: the base class's clear error
