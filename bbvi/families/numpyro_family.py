"""Any numpyro distribution as a variational family, fitted in its own arguments.

The family's parameters are the distribution's constructor arguments, each stored unconstrained
through numpyro's `biject_to` of the constraint numpyro declares for it (positive arguments as
their log, unit-interval ones as their logit, ...). Sampling, densities and entropies are numpyro's.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import numbers
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
from numpyro.distributions import constraints
from numpyro.distributions.transforms import biject_to

from bbvi.families.base import DistributionFamily, check_shape


class _Argument(NamedTuple):
    """A free argument of a numpyro distribution, as the family parameterises it."""

    name: str
    constraint: constraints.Constraint  # of the stored value's image (the gap, for an offset argument)
    offset: str | None = None  # the argument's value is `offset`'s value plus the image (Uniform's high)


# Arguments whose constraint numpyro can only state in terms of other arguments (`dependent`):
# Uniform's support needs low < high, so high is stored as the log of its gap above low.
_DEPENDENT = {
    dist.Uniform: {"low": (constraints.real, None), "high": (constraints.positive, "low")},
}


def _name(dist_type) -> str:
    return f"NumpyroFamily({getattr(dist_type, '__name__', dist_type)})"


@functools.cache
def _arguments(dist_type) -> tuple[_Argument, ...]:
    """The free arguments, in the constructor's order; a clear error for one that cannot be fitted."""
    declared = dist_type.arg_constraints
    found = []
    for name, parameter in inspect.signature(dist_type.__init__).parameters.items():
        # Arguments without a constraint (validate_args, is_sparse, ...) are options, not parameters;
        # those defaulting to None are alternative parameterisations (covariance_matrix / scale_tril).
        if name not in declared or parameter.default is None:
            continue
        constraint, offset = declared[name], None
        if constraints.is_dependent(constraint):
            if name not in _DEPENDENT.get(dist_type, {}):
                raise ValueError(
                    f"{_name(dist_type)}: argument {name!r} has a constraint that depends on the other "
                    "arguments (numpyro's `dependent`), which this family cannot unconstrain"
                )
            constraint, offset = _DEPENDENT[dist_type][name]
        try:
            biject_to(constraint)
        except NotImplementedError:
            raise ValueError(
                f"{_name(dist_type)}: argument {name!r} has constraint {constraint}, which no bijection "
                "from unconstrained space reaches (integer-valued?); only continuous arguments are fitted"
            ) from None
        found.append(_Argument(name, constraint, offset))
    if not found:
        raise ValueError(f"{_name(dist_type)}: the distribution has no free continuous arguments to fit")
    return tuple(found)


def _event_part(argument: _Argument, event_shape: tuple[int, ...], dist_type) -> tuple[int, ...]:
    """The trailing shape of an argument's value that its constraint spans (Dirichlet's K)."""
    event_dim = argument.constraint.event_dim
    if event_dim > len(event_shape):
        raise ValueError(
            f"{_name(dist_type)}: argument {argument.name!r} is constrained over {event_dim} trailing "
            f"dimension(s), but event_shape is {event_shape}; pass the distribution's event shape "
            "(e.g. event_shape=(K,) for a Dirichlet over K categories)"
        )
    return event_shape[len(event_shape) - event_dim :]


def _normalise_init(init) -> tuple[tuple[str, float], ...]:
    if init is None:
        return ()
    items = init.items() if isinstance(init, dict) else init
    try:
        pairs = [(name, value) for name, value in items]
    except (TypeError, ValueError):
        raise TypeError(
            f"NumpyroFamily: init must be a dict or tuple of (name, value) pairs, got {init!r}"
        ) from None
    for name, value in pairs:
        number = isinstance(value, numbers.Real) and not isinstance(value, bool)
        if not isinstance(name, str) or not number or not math.isfinite(value):
            raise TypeError(f"NumpyroFamily: init entries must be (str, finite float), got {(name, value)!r}")
    names = [name for name, _ in pairs]
    if len(set(names)) < len(names):
        raise ValueError(f"NumpyroFamily: init names an argument twice: {names}")
    return tuple(sorted((name, float(value)) for name, value in pairs))


def _check_distribution(distribution) -> None:
    if isinstance(distribution, type) and issubclass(distribution, dist.Distribution):
        return
    hint = ""
    if isinstance(distribution, dist.Distribution):
        hint = " (the class, not an instance: its arguments are what is fitted)"
    elif inspect.isfunction(distribution):  # numpyro's Bernoulli, Binomial, ... are functions picking a class
        hint = f" or BernoulliProbs (not the function {distribution.__name__}, which picks a class)"
    raise TypeError(
        "NumpyroFamily: distribution must be a numpyro distribution class, e.g. "
        f"numpyro.distributions.Gamma{hint}; got {distribution!r}"
    )


def _check_init_value(argument: _Argument, values: dict, event_shape, dist_type) -> None:
    value = values[argument.name]
    if argument.offset is not None:
        low = values.get(argument.offset, 0.0)
        ok, where = value > low, f"above {argument.offset} = {low}"
    else:
        event = _event_part(argument, event_shape, dist_type)
        ok, where = bool(np.all(argument.constraint(np.full(event, value)))), f"in {argument.constraint}"
    if not ok:
        raise ValueError(f"{_name(dist_type)}: init value {value} of {argument.name!r} must lie {where}")


def _shapes(dist_type, shape, event_shape) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
    """{argument: (constrained shape, unconstrained shape)}."""
    shapes = {}
    for argument in _arguments(dist_type):
        constrained = shape + _event_part(argument, event_shape, dist_type)
        shapes[argument.name] = constrained, tuple(biject_to(argument.constraint).inverse_shape(constrained))
    return shapes


def _constrain(dist_type, params) -> dict[str, jax.Array]:
    values = {}
    for argument in _arguments(dist_type):
        value = biject_to(argument.constraint)(params[argument.name])
        values[argument.name] = value if argument.offset is None else values[argument.offset] + value
    return values


@functools.cache
def _probe(dist_type, event_shape: tuple[int, ...]) -> bool:
    """Builds the distribution abstractly (nothing is computed) to check that numpyro accepts these
    arguments and event shape; returns whether numpyro has its entropy in closed form."""
    found = {}

    def build(key):
        params = {name: jnp.zeros(u) for name, (_, u) in _shapes(dist_type, (), event_shape).items()}
        d = dist_type(**_constrain(dist_type, params))
        found["event_shape"] = tuple(d.batch_shape), tuple(d.event_shape)
        try:
            d.entropy()
            found["entropy"] = True
        except NotImplementedError:
            found["entropy"] = False
        return d.sample(key)

    names = [argument.name for argument in _arguments(dist_type)]
    try:
        jax.eval_shape(build, jax.random.key(0))
    except Exception as err:  # whatever numpyro raises, say which family and arguments it was
        if str(err).startswith(_name(dist_type)):
            raise
        raise ValueError(
            f"{_name(dist_type)}: numpyro cannot build it from the arguments {names}: {err}"
        ) from err
    if found["event_shape"] != ((), event_shape):
        raise ValueError(
            f"{_name(dist_type)}: event_shape {event_shape} does not match the distribution, whose event "
            f"shape is {found['event_shape'][1]}; use shape for independent copies"
        )
    return found["entropy"]


@dataclasses.dataclass(frozen=True, init=False)
class NumpyroFamily(DistributionFamily):
    """A numpyro distribution over an array of independent latents, fitted in its own arguments.

    `NumpyroFamily(distribution, shape=(), event_shape=(), init=())`: `distribution` is a numpyro
    distribution class (`numpyro.distributions.Gamma`, ...); `shape` indexes independent copies,
    each with its own parameters; `event_shape` is the distribution's own event shape, needed for
    multivariate ones (`(K,)` for a Dirichlet over K categories); `init` gives initial values of
    arguments, as a dict or (name, value) pairs, e.g. `{"concentration": 2.0}`.

    Parameters are `{argument: array}`, one per free constructor argument, each unconstrained by
    numpyro's `biject_to` of the argument's constraint: positive arguments are stored as their log,
    unit-interval ones as their logit, real ones as they are. `Uniform`'s `high` is stored as
    `log(high - low)`, so `low < high` always. The default init is zero in unconstrained space:
    real 0, positive 1, unit interval 1/2, simplex uniform, `Uniform(0, 1)` (high = low + 1).
    `constrained_params(params)` gives the arguments themselves.

    Draws live on the distribution's own support (positive for a Gamma, the simplex for a
    Dirichlet): the log-joint must accept values there. Gradients are pathwise where numpyro samples
    reparameterisably in every argument (implicitly for Gamma, Beta, Dirichlet), score-function
    otherwise (e.g. `Poisson`). Dense multivariate Normals are `FullRankGaussian` / `LowRankGaussian`.
    The constructor's arguments are stored as the fields `dist_type`, `shape`, `dist_event_shape` and
    `init_values`: `distribution`, `event_shape` and `init` are the family's methods.

    Example:
        >>> import jax, numpyro.distributions as dist
        >>> from bbvi.families.numpyro_family import NumpyroFamily
        >>> family = NumpyroFamily(dist.Gamma, (2,), init={"concentration": 3.0})
        >>> params = family.init(jax.random.key(0))
        >>> sorted(params), params["rate"].shape
        (['concentration', 'rate'], (2,))
        >>> family.sample(params, jax.random.key(1)).shape
        (2,)
    """

    dist_type: type
    shape: tuple[int, ...]
    dist_event_shape: tuple[int, ...]
    init_values: tuple[tuple[str, float], ...]

    def __init__(self, distribution: type, shape=(), event_shape=(), init=()):
        _check_distribution(distribution)
        what = _name(distribution)
        object.__setattr__(self, "dist_type", distribution)
        object.__setattr__(self, "shape", check_shape(shape, what))
        object.__setattr__(self, "dist_event_shape", check_shape(event_shape, f"{what} event_shape"))
        object.__setattr__(self, "init_values", _normalise_init(init))
        arguments = _arguments(distribution)
        values = dict(self.init_values)
        unknown = sorted(set(values) - {argument.name for argument in arguments})
        if unknown:
            names = [argument.name for argument in arguments]
            raise ValueError(f"{what}: init names {unknown}, which are not among its arguments {names}")
        for argument in arguments:
            if argument.name in values:
                _check_init_value(argument, values, self.dist_event_shape, distribution)
        _probe(distribution, self.dist_event_shape)

    @property
    def event_shape(self):
        return self.shape + self.dist_event_shape

    @property
    def factor_dims(self):
        return len(self.shape)  # the copies indexed by `shape` are independent factors

    @property
    def reparameterized(self):
        # Pathwise only if numpyro's sampler is differentiable in every fitted argument: a partly
        # reparameterised sampler (VonMises's concentration) would give silently biased gradients.
        pathwise = set(self.dist_type.reparametrized_params)
        return all(argument.name in pathwise for argument in _arguments(self.dist_type))

    @property
    def has_entropy(self):
        return _probe(self.dist_type, self.dist_event_shape)

    def init(self, key):
        del key  # deterministic: the default (or given) values, the same for every key
        values, params = dict(self.init_values), {}
        dtype = jnp.result_type(float)  # strongly typed, so a jitted step does not compile twice
        shapes = _shapes(self.dist_type, self.shape, self.dist_event_shape)
        for argument in _arguments(self.dist_type):
            constrained, unconstrained = shapes[argument.name]
            if argument.name not in values:
                params[argument.name] = jnp.zeros(unconstrained, dtype)
                continue
            value = values[argument.name]
            if argument.offset is not None:
                value -= values.get(argument.offset, 0.0)
            transform = biject_to(argument.constraint)
            params[argument.name] = transform.inv(jnp.full(constrained, value, dtype)).astype(dtype)
        return params

    def constrained_params(self, params) -> dict[str, jax.Array]:
        """The distribution's constructor arguments that `params` describe (e.g. a fitted rate)."""
        return _constrain(self.dist_type, params)

    def _elementwise(self, params):
        """The numpyro distribution with batch shape `shape` (one per factor), before `to_event`."""
        return self.dist_type(**_constrain(self.dist_type, params))

    def distribution(self, params):
        return self._elementwise(params).to_event(len(self.shape))

    def factor_log_prob(self, params, z):
        # Not the base class's `.base_dist` route: with shape () there is no Independent wrapper, and
        # a TransformedDistribution (LogNormal, Pareto) has a `base_dist` of its own.
        return self._elementwise(params).log_prob(z)
