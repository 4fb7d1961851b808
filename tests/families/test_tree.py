"""Pytrees of families: structure, independent keys per leaf, and clear errors for what does not fit.

The per-family contract (including for dict, tuple and nested trees) lives in test_contract.py; this
module covers what only the tree functions (`bbvi.init`, `sample`, `log_prob`, `entropy`) do.
"""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpyro.distributions import constraints

import bbvi
from bbvi.families import is_family

from ._helpers import family_leaves, fast_jit

MFG = bbvi.MeanFieldGaussian

TREES = {
    "dict": lambda: {"mu": MFG((3, 2)), "c": bbvi.Categorical((4,), 3)},
    "tuple": lambda: (bbvi.Bernoulli((2,)), bbvi.FullRankGaussian(2)),
    "list": lambda: [MFG(()), bbvi.Categorical((), 5)],
    "nested": lambda: {"a": (MFG(()), [bbvi.Bernoulli(())]), "b": {"c": bbvi.Categorical((2,), 3)}},
}


def tree_cases():
    return pytest.mark.parametrize("make", list(TREES.values()), ids=list(TREES))


def _containers_match(family, tree):
    """Whether `tree` has exactly the dict / tuple / list nodes of `family` above its leaves."""
    if is_family(family):
        return True
    if type(family) is not type(tree):
        return False
    if isinstance(family, dict):
        return family.keys() == tree.keys() and all(_containers_match(family[k], tree[k]) for k in family)
    return len(family) == len(tree) and all(_containers_match(f, t) for f, t in zip(family, tree))


@tree_cases()
def test_init_and_sample_mirror_the_family_tree(make):
    family, key = make(), jax.random.key(0)
    params = jax.eval_shape(functools.partial(bbvi.init, family), key)
    z = jax.eval_shape(functools.partial(bbvi.sample, family), params, key)
    assert _containers_match(family, params) and _containers_match(family, z)
    per_leaf = jax.tree.map(lambda leaf: jax.eval_shape(leaf.init, key), family, is_leaf=is_family)
    assert jax.tree.structure(params) == jax.tree.structure(per_leaf)
    assert jax.tree.map(jnp.shape, params) == jax.tree.map(jnp.shape, per_leaf)


def test_leaves_get_independent_keys():
    # Two identical leaves with identical parameters: equal draws (or equal inits) would mean that
    # the tree functions hand the same key to every leaf.
    family = {"a": MFG((4,)), "b": MFG((4,))}
    params = fast_jit(functools.partial(bbvi.init, family))(jax.random.key(0))
    assert not np.array_equal(params["a"]["loc"], params["b"]["loc"])
    params["b"] = params["a"]
    z = fast_jit(functools.partial(bbvi.sample, family), static_argnums=2)(params, jax.random.key(1), (8,))
    assert not np.array_equal(z["a"], z["b"])


def test_sample_shape_spellings():
    family = {"a": MFG((2,)), "b": bbvi.Bernoulli(())}
    params = jax.eval_shape(functools.partial(bbvi.init, family), jax.random.key(0))
    for sample_shape, expected in [([2, 3], (2, 3)), ((0,), (0,)), ((), ())]:
        draw = functools.partial(bbvi.sample, family, sample_shape=sample_shape)
        z = jax.eval_shape(draw, params, jax.random.key(1))
        assert z["a"].shape == expected + (2,) and z["b"].shape == expected


def test_log_prob_keeps_leading_batch_dimensions_of_leaves_with_different_event_ranks():
    family = {"m": MFG((3, 2)), "s": MFG(()), "c": bbvi.Categorical((4,), 3)}
    params = jax.eval_shape(functools.partial(bbvi.init, family), jax.random.key(0))
    z = jax.eval_shape(lambda p, k: bbvi.sample(family, p, k, (5, 7)), params, jax.random.key(1))
    assert jax.eval_shape(functools.partial(bbvi.log_prob, family), params, z).shape == (5, 7)


# --------------------------------------------------------------------------------------------------
# Clear errors.

TREE_FUNCTIONS = {
    "init": lambda family: bbvi.init(family, jax.random.key(0)),
    "sample": lambda family: bbvi.sample(family, {}, jax.random.key(0)),
    "log_prob": lambda family: bbvi.log_prob(family, {}, {}),
    "entropy": lambda family: bbvi.entropy(family, {}),
}
NOT_FAMILIES = [
    ({"a": 3}, "['a'] is 3"),
    ({"a": [MFG(()), "x"]}, "['a'][1] is 'x'"),
    ((MFG(()), bbvi.MeanFieldGaussian), "[1] is <class"),
    (3, "the family is 3"),
]


@pytest.mark.parametrize("call", list(TREE_FUNCTIONS.values()), ids=list(TREE_FUNCTIONS))
@pytest.mark.parametrize(("family", "where"), NOT_FAMILIES, ids=["int", "nested_str", "class", "bare_int"])
def test_a_leaf_that_is_not_a_family_is_a_type_error_naming_its_path(call, family, where):
    with pytest.raises(TypeError, match=re.escape(where) + ".*not a bbvi family"):
        call(family)


@pytest.mark.parametrize("empty", [{}, [], ()], ids=["dict", "list", "tuple"])
def test_a_family_without_families_is_a_value_error(empty):
    with pytest.raises(ValueError, match="at least one bbvi family"):
        bbvi.init(empty, jax.random.key(0))


def _family_and_params():
    family = {"mu": MFG((2,)), "c": bbvi.Categorical((3,), 4)}
    params = {"mu": {"loc": jnp.zeros(2), "log_scale": jnp.zeros(2)}, "c": {"logits": jnp.zeros((3, 4))}}
    return family, params


def _latents(batch_shape=()):
    return {"mu": jnp.zeros(batch_shape + (2,)), "c": jnp.zeros(batch_shape + (3,), jnp.int32)}


WRONG_PARAMS = {
    "missing_key": lambda p: {"mu": p["mu"]},
    "extra_key": lambda p: {**p, "tau": p["mu"]},
    "list_for_dict": lambda p: [p["c"], p["mu"]],
}
WRONG_LEAF_PARAMS = {
    "leaf_params_nested_wrongly": lambda p: {"mu": p["mu"], "c": {"x": p["c"]}},
    "leaf_params_too_long": lambda p: {"mu": jax.tree.map(lambda x: jnp.zeros(5), p["mu"]), "c": p["c"]},
    "leaf_params_broadcastable": lambda p: {"mu": jax.tree.map(lambda x: jnp.zeros(1), p["mu"]), "c": p["c"]},
}


@pytest.mark.parametrize(
    "corrupt",
    [pytest.param(c, id=name) for name, c in WRONG_PARAMS.items()]
    + [pytest.param(c, id=name) for name, c in WRONG_LEAF_PARAMS.items()],
)
def test_params_with_the_wrong_structure_are_a_value_error(corrupt):
    family, params = _family_and_params()
    z, bad = _latents(), corrupt(params)
    for call in [
        lambda: bbvi.entropy(family, bad),
        lambda: bbvi.log_prob(family, bad, z),
        lambda: bbvi.sample(family, bad, jax.random.key(1)),
    ]:
        with pytest.raises(ValueError, match=r"parameters.* do not match"):
            call()


def test_latents_with_the_wrong_structure_are_a_value_error():
    family, params = _family_and_params()
    z = _latents()
    with pytest.raises(ValueError, match="latents do not match the family's structure"):
        bbvi.log_prob(family, params, {"mu": z["mu"]})
    with pytest.raises(ValueError, match="latents do not match the family's structure"):
        bbvi.log_prob(family, params, (z["mu"], z["c"]))


def test_latents_with_inconsistent_batch_shapes_are_a_value_error():
    family, params = _family_and_params()
    z = _latents((5,))
    with pytest.raises(ValueError, match="different batch shapes"):
        bbvi.log_prob(family, params, {"mu": z["mu"], "c": z["c"][:4]})


@pytest.mark.parametrize(
    ("event_shape", "z_shape"),
    [((2, 3), (3, 2)), ((3,), (4,)), ((3,), (5, 4))],
    ids=["transposed", "short", "batched"],
)
def test_latents_whose_trailing_shape_is_not_the_event_shape_are_a_value_error(event_shape, z_shape):
    family = MFG(event_shape)
    params = {"loc": jnp.zeros(event_shape), "log_scale": jnp.zeros(event_shape)}
    with pytest.raises(ValueError, match="event shape"):
        bbvi.log_prob(family, params, jnp.zeros(z_shape))


def test_entropy_of_a_tree_with_a_constrained_leaf_names_that_leaf():
    family = {"mu": MFG((2,)), "tau": bbvi.Constrained(MFG(()), constraints.positive)}
    params = {"mu": {"loc": jnp.zeros(2), "log_scale": jnp.zeros(2)}, "tau": {"loc": 0.0, "log_scale": 0.0}}
    with pytest.raises(ValueError, match=r"no closed-form entropy.*\['tau'\]"):
        bbvi.entropy(family, params)
    assert family_leaves(family)[0].has_entropy  # the Gaussian leaf alone is fine
    assert bbvi.entropy(family["mu"], params["mu"]).shape == ()
