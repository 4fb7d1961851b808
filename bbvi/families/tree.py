"""Functions over pytrees of families: a dict, tuple or list of families is itself a family.

A pytree of families describes a product distribution over the matching pytree of latents;
its parameters are the matching pytree of each family's parameters.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp

from bbvi.families.base import Family, is_family


def flatten(family) -> tuple[list[Family], Any]:
    """The families at the leaves of a family pytree, with its structure; clear error otherwise."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(family, is_leaf=is_family)
    if not leaves:
        raise ValueError(f"a family must contain at least one bbvi family, got {family!r}")
    for path, leaf in leaves:
        if not is_family(leaf):
            where = jax.tree_util.keystr(path) or "the family"
            raise TypeError(
                f"{where} is {leaf!r}, not a bbvi family: a family is a bbvi family "
                "(MeanFieldGaussian, Bernoulli, ...) or a dict, tuple or list of them"
            )
    return [leaf for _, leaf in leaves], treedef


def leaf_paths(family) -> list[str]:
    """Readable names of the leaves, e.g. `['mu']`, `["['c']"]`, for error messages."""
    paths = jax.tree_util.tree_flatten_with_path(family, is_leaf=is_family)[0]
    return [jax.tree_util.keystr(path) or "<root>" for path, _ in paths]


def _param_spec(leaf: Family):
    """Shapes and dtypes of a leaf family's parameters (what its `init` returns), traced once per family
    and precision (the dtypes follow `jax_enable_x64`, which can change in-process)."""
    return _param_spec_cached(leaf, bool(jax.config.jax_enable_x64))


@functools.cache
def _param_spec_cached(leaf: Family, x64: bool):
    return jax.eval_shape(leaf.init, jax.random.key(0))


def param_spec(family):
    """The `jax.ShapeDtypeStruct` pytree of a family's parameters, without computing any."""
    leaves, treedef = flatten(family)
    return treedef.unflatten([_param_spec(leaf) for leaf in leaves])


def split_params(family, params) -> list[Any]:
    """Each leaf family's parameters, in `flatten` order; clear error on a structure or shape mismatch."""
    leaves, treedef = flatten(family)
    try:
        leaf_params = treedef.flatten_up_to(params)
    except (ValueError, TypeError) as err:
        raise ValueError(f"parameters do not match the family's structure {treedef}: {err}") from None
    for path, leaf, p in zip(leaf_paths(family), leaves, leaf_params):
        spec = _param_spec(leaf)
        expected = jax.tree.map(jnp.shape, spec)
        if jax.tree.structure(p) != jax.tree.structure(spec) or jax.tree.map(jnp.shape, p) != expected:
            raise ValueError(
                f"parameters at {path} do not match {type(leaf).__name__}: expected shapes {expected}, "
                f"got {jax.tree.map(jnp.shape, p)}"
            )
    return leaf_params


def init(family, key: jax.Array):
    """Initial unconstrained parameters for a family or pytree of families.

    Example:
        >>> import jax, bbvi
        >>> params = bbvi.init({"w": bbvi.MeanFieldGaussian((2,))}, jax.random.key(0))
        >>> sorted(params["w"])
        ['loc', 'log_scale']
    """
    leaves, treedef = flatten(family)
    keys = jax.random.split(key, len(leaves))
    return treedef.unflatten([leaf.init(k) for leaf, k in zip(leaves, keys)])


def _draw(leaves, leaf_params, key):
    keys = jax.random.split(key, len(leaves))
    return [leaf.sample(p, k) for leaf, p, k in zip(leaves, leaf_params, keys)]


def condition(family, params, data):
    """The data-free family pytree and its parameters: amortised leaves mapped through their encoders.

    Families that do not need data are returned unchanged; `data` is the batch the amortised
    leaves read (see `bbvi.Amortized`).
    """
    leaves, treedef = flatten(family)
    leaf_params = split_params(family, params)
    if data is None:
        needy = [path for path, leaf in zip(leaf_paths(family), leaves) if leaf.needs_data]
        if needy:
            raise ValueError(f"the families at {needy} are amortised: pass the data they condition on")
        return family, params
    conditioned, leaf_params = condition_leaves(leaves, leaf_params, data)
    return treedef.unflatten(conditioned), treedef.unflatten(leaf_params)


def condition_leaves(leaves, leaf_params, data) -> tuple[list[Family], list[Any]]:
    """`condition` on flat lists: each amortised leaf maps the data to its base family's parameters."""
    pairs = [
        leaf.condition(p, data) if leaf.needs_data else (leaf, p) for leaf, p in zip(leaves, leaf_params)
    ]
    return [f for f, _ in pairs], [p for _, p in pairs]


def sample(family, params, key: jax.Array, sample_shape: tuple[int, ...] = (), data=None):
    """Draws from q: the latent pytree, each leaf with `sample_shape` in front of its event shape.

    `data` is the batch an amortised family conditions on.

    Example:
        >>> import jax, bbvi
        >>> family = {"a": bbvi.MeanFieldGaussian((2,)), "b": bbvi.Bernoulli((3,))}
        >>> params = bbvi.init(family, jax.random.key(0))
        >>> z = bbvi.sample(family, params, jax.random.key(1), (5,))
        >>> z["a"].shape, z["b"].shape
        ((5, 2), (5, 3))
    """
    family, params = condition(family, params, data)
    leaves, treedef = flatten(family)
    leaf_params = split_params(family, params)
    sample_shape = tuple(sample_shape)
    keys = jax.random.split(key, math.prod(sample_shape))
    draws = jax.vmap(lambda k: _draw(leaves, leaf_params, k))(keys)
    draws = [d.reshape(sample_shape + d.shape[1:]) for d in draws]
    return treedef.unflatten(draws)


def log_prob(family, params, z, data=None):
    """log q(z): summed over the family's leaves; leading batch dimensions of `z` are kept."""
    family, params = condition(family, params, data)
    leaves, treedef = flatten(family)
    leaf_params = split_params(family, params)
    try:
        z_leaves = treedef.flatten_up_to(z)
    except (ValueError, TypeError) as err:
        raise ValueError(f"latents do not match the family's structure {treedef}: {err}") from None
    for path, leaf, x in zip(leaf_paths(family), leaves, z_leaves):
        event, shape = tuple(leaf.event_shape), tuple(jnp.shape(x))
        if len(shape) < len(event) or shape[len(shape) - len(event) :] != event:
            raise ValueError(
                f"latents at {path} have shape {shape}, which does not end in the event shape {event}"
            )
    batch_shapes = {
        tuple(jnp.shape(x)[: jnp.ndim(x) - len(leaf.event_shape)]) for leaf, x in zip(leaves, z_leaves)
    }
    if len(batch_shapes) != 1:
        raise ValueError(f"latent leaves have different batch shapes {sorted(batch_shapes)}")
    (batch_shape,) = batch_shapes

    def single(z_leaves):
        return sum(leaf.log_prob(p, x) for leaf, p, x in zip(leaves, leaf_params, z_leaves))

    flat = [jnp.reshape(x, (-1,) + tuple(leaf.event_shape)) for leaf, x in zip(leaves, z_leaves)]
    return jax.vmap(single)(flat).reshape(batch_shape)


def entropy(family, params) -> jax.Array:
    """Closed-form entropy of q (the sum over leaves); an error if a leaf has none."""
    leaves, _ = flatten(family)
    leaf_params = split_params(family, params)
    missing = [path for path, leaf in zip(leaf_paths(family), leaves) if not leaf.has_entropy]
    if missing:
        raise ValueError(f"no closed-form entropy for the families at {missing}")
    return sum(leaf.entropy(p) for leaf, p in zip(leaves, leaf_params))


def unconstrained(family):
    """`(base_leaves, transforms)`: each leaf's family in unconstrained space and its bijection."""
    leaves, _ = flatten(family)
    pairs = [leaf.unconstrained() for leaf in leaves]
    return [base for base, _ in pairs], [t for _, t in pairs]


def to_constrained(transforms, u_leaves, weights=None):
    """Push unconstrained draws onto their supports: `(z_leaves, log|det J|)`.

    `weights` (one per leaf, default 1) scale each leaf's log-determinant, as a minibatch's
    per-datum terms are scaled in stochastic VI.
    """
    weights = [1.0] * len(u_leaves) if weights is None else weights
    z_leaves, log_det = [], 0.0
    for t, u, w in zip(transforms, u_leaves, weights):
        if t is None:
            z_leaves.append(u)
        else:
            z = t(u)
            log_det = log_det + w * jnp.sum(t.log_abs_det_jacobian(u, z))
            z_leaves.append(z)
    return z_leaves, log_det
