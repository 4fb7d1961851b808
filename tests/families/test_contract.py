"""The contract every variational family keeps (STYLE practice 10), checked on one registry.

To add a family, add one line to `CASES` (a readable id and a zero-argument constructor); a new family
*type* also registers its reference oracles in `_helpers.py`. Every case is then checked for:
hashability, shapes and dtypes, normalisation (enumeration or quadrature where feasible), agreement with
a float64 reference density, moments of a large sample, entropy, jit/vmap, determinism in the key, and
reparameterisation. Parameters are random (init moved by noise), never the init point itself.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import zlib
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpyro.distributions import constraints
from scipy.integrate import trapezoid
from scipy.special import logsumexp

import bbvi
from bbvi.families import is_family

from ._helpers import (
    Case,
    assert_mc_close,
    batched_init,
    draw_dtype,
    draws_ignore_key,
    extra_cases,
    family_leaves,
    fast_jit,
    gaussian_loc_and_tril,
    has_oracle,
    mc_tolerance,
    perturb,
    quadrature_grid,
    split_like,
    support_points,
    tree_param_shapes,
    tree_reference_log_prob,
    tree_reference_statistics,
    tree_support_points,
)

MFG = bbvi.MeanFieldGaussian
Constrained = bbvi.Constrained


# fmt: off
CASES = [
    Case("mf_gaussian_scalar", lambda: MFG(())),
    Case("mf_gaussian_3x2", lambda: MFG((3, 2))),
    Case("full_rank_3", lambda: bbvi.FullRankGaussian(3)),
    Case("low_rank_4_r2", lambda: bbvi.LowRankGaussian(4, 2), log_prob_atol=2e-3),
    Case("bernoulli_4", lambda: bbvi.Bernoulli((4,))),
    Case("categorical_2x3_k4", lambda: bbvi.Categorical((2, 3), 4)),
    Case("positive_scalar", lambda: Constrained(MFG(()), constraints.positive)),
    Case("positive_mf", lambda: Constrained(MFG((3,)), constraints.positive)),
    Case("unit_interval_scalar", lambda: Constrained(MFG(()), constraints.unit_interval)),
    Case("unit_interval_mf", lambda: Constrained(MFG((2,)), constraints.unit_interval)),
    Case("simplex_k4", lambda: Constrained(MFG((3,)), constraints.simplex)),
    Case("dict_tree", lambda: {
        "mu": MFG((3, 2)), "c": bbvi.Categorical((5,), 3), "tau": Constrained(MFG(()), constraints.positive),
    }),
    Case("tuple_tree", lambda: (bbvi.Bernoulli((2,)), bbvi.Categorical((2,), 3))),  # discrete: enumerable
    Case("nested_tree", lambda: {
        "a": (MFG(()), [bbvi.Bernoulli(()), bbvi.Categorical((), 3)]),
        "b": {"w": Constrained(bbvi.FullRankGaussian(2), constraints.simplex)},  # a simplex over a dense base
    }),
]
# fmt: on
# Each `cases_*.py` module beside this one adds its families' cases (and registers their oracles).
CASES += extra_cases()

NUM_DRAWS = 20_000
BATCH = 3  # extra parameter sets for the vmap-over-params checks
SAMPLE_SHAPES = [(), (5,), (2, 3)]


def cases(select=lambda family: True):
    return pytest.mark.parametrize("case", [c for c in CASES if select(c.make())], ids=lambda c: c.id)


def is_tree(family) -> bool:
    return not is_family(family)


def all_leaves(predicate):
    return lambda family: all(predicate(leaf) for leaf in family_leaves(family))


def case_key(case: Case, salt: int = 0) -> jax.Array:
    # crc32, not hash(): str hashes change between processes.
    return jax.random.fold_in(jax.random.key(zlib.crc32(case.id.encode())), salt)


def init_keys(case: Case) -> jax.Array:
    return jax.random.split(case_key(case, 1), 1 + BATCH)


class Prepared(NamedTuple):
    family: Any
    params: Any  # random parameters
    batch: Any  # BATCH more parameter sets, stacked on a leading axis (params is not among them)
    draws: Any  # NUM_DRAWS draws from q(params): the latent pytree with a leading axis
    log_probs: np.ndarray  # bbvi.log_prob of the draws, float64 (NUM_DRAWS,)
    init: Callable  # jitted bbvi.init vmapped over keys; params and batch are init(init_keys(case)) + noise
    draw: Callable  # jitted (params, key) -> (NUM_DRAWS draws, their bbvi.log_prob)
    log_prob: Callable  # jitted bbvi.log_prob(family, params, z)


@functools.cache
def prepared(case: Case) -> Prepared:
    """Random parameters, jitted functions and one large sample per case, shared by the tests.

    Compilation dominates the cost of these tests, so tests reuse these jitted functions, check
    shapes by abstract evaluation, and only the jit-versus-eager test runs bbvi eagerly.
    """
    family = case.make()
    init = batched_init(family)
    stacked = perturb(init(init_keys(case)), seed=zlib.crc32(case.id.encode()))
    params = jax.tree.map(lambda x: x[0], stacked)
    batch = jax.tree.map(lambda x: x[1:], stacked)
    log_prob = fast_jit(functools.partial(bbvi.log_prob, family))

    @fast_jit
    def draw(params, key):
        draws = bbvi.sample(family, params, key, (NUM_DRAWS,))
        return draws, bbvi.log_prob(family, params, draws)

    draws, log_probs = draw(params, case_key(case, 2))
    log_probs = np.asarray(log_probs, np.float64)
    return Prepared(family, params, batch, draws, log_probs, init, draw, log_prob)


def assert_trees_close(actual, expected, rtol=1e-5, atol=1e-6):
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
        assert jnp.shape(a) == jnp.shape(e) and jnp.result_type(a) == jnp.result_type(e)
        np.testing.assert_allclose(np.asarray(a), np.asarray(e), rtol=rtol, atol=atol)


# --------------------------------------------------------------------------------------------------
# A family is a hashable description with no arrays inside.


@cases()
def test_equal_constructions_are_equal_hashable_and_static(case):
    traces = []

    @functools.partial(jax.jit, static_argnums=0)
    def static_use(family, x):  # jit's cache is keyed on the static family's hash and equality
        traces.append(family)
        return x + len(family.event_shape)

    for a, b in zip(family_leaves(case.make()), family_leaves(case.make()), strict=True):
        assert a is not b and a == b and hash(a) == hash(b)
        assert {a: "found"}[b] == "found"
        traces.clear()
        static_use(a, 1.0)
        static_use(b, 1.0)  # an equal family is the same static argument: no second trace
        assert len(traces) == 1


def test_registry_families_are_pairwise_distinct():
    # Catches an __eq__ / __hash__ that ignores a field (shape, K, base, support).
    singles = [(c.id, c.make()) for c in CASES if not is_tree(c.make())]
    for i, (id_a, a) in enumerate(singles):
        for id_b, b in singles[i + 1 :]:
            assert a != b, f"{id_a} == {id_b}"


@cases()
def test_family_holds_no_arrays(case):
    family = case.make()
    # Families are opaque leaves to jax.tree: closing over one never captures an array.
    assert all(is_family(leaf) for leaf in jax.tree.leaves(family))

    def walk(obj, path):
        if isinstance(obj, (jax.Array, np.ndarray, np.generic)):
            raise AssertionError(f"{case.id}: {path} is an array")
        if dataclasses.is_dataclass(obj):
            for field in dataclasses.fields(obj):
                walk(getattr(obj, field.name), f"{path}.{field.name}")

    for leaf in family_leaves(family):
        walk(leaf, type(leaf).__name__)


# --------------------------------------------------------------------------------------------------
# Shapes and dtypes (by abstract evaluation where no value is needed: nothing to compile).


@cases()
def test_init_params_shapes_and_dtypes(case):
    p = prepared(case)
    params = p.init(init_keys(case))  # bbvi.init under vmap over 1 + BATCH keys
    assert jax.tree.map(lambda x: x.shape[1:], params) == tree_param_shapes(p.family)
    for x in jax.tree.leaves(params):
        assert x.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(x)))
    assert_trees_close(p.init(init_keys(case)), params, rtol=0, atol=0)  # a pure function of the key
    one = jax.eval_shape(functools.partial(bbvi.init, p.family), jax.random.key(0))
    assert jax.tree.map(jnp.shape, one) == tree_param_shapes(p.family)
    for leaf, q in zip(family_leaves(p.family), split_like(p.family, one)):
        assert jax.tree.structure(jax.eval_shape(leaf.init, jax.random.key(0))) == jax.tree.structure(q)


@cases()
def test_init_params_are_not_weakly_typed(case):
    # A weak-typed leaf has a different jit cache key from the strong float32 array an optimiser
    # update returns, so a jitted step compiles twice: once for init, once for updated params.
    family = case.make()
    params = jax.eval_shape(functools.partial(bbvi.init, family), jax.random.key(0))
    paths, _ = jax.tree_util.tree_flatten_with_path(params)
    weak = [jax.tree_util.keystr(path) for path, x in paths if x.weak_type]
    assert not weak, f"weakly typed init params at {weak}"


@cases()
def test_sample_shapes_and_dtypes(case):
    family, params = prepared(case)[:2]
    key = case_key(case, 3)
    for leaf, p in zip(family_leaves(family), split_like(family, params)):
        x = jax.eval_shape(leaf.sample, p, key)
        assert x.shape == tuple(leaf.event_shape) and x.dtype == draw_dtype(leaf)
        if isinstance(leaf, bbvi.DistributionFamily):
            d = leaf.distribution(p)
            assert tuple(d.event_shape) == tuple(leaf.event_shape) and tuple(d.batch_shape) == ()
    for sample_shape in SAMPLE_SHAPES:
        z = jax.eval_shape(lambda p, k, shape=sample_shape: bbvi.sample(family, p, k, shape), params, key)
        assert jax.tree.structure(z) == jax.tree.structure(family, is_leaf=is_family)
        for leaf, x in zip(family_leaves(family), split_like(family, z)):
            assert x.shape == sample_shape + tuple(leaf.event_shape), (sample_shape, leaf)
            assert x.dtype == draw_dtype(leaf)


@cases()
def test_log_prob_shapes(case):
    p = prepared(case)
    assert p.log_probs.shape == (NUM_DRAWS,) and np.all(np.isfinite(p.log_probs))
    log_prob = functools.partial(bbvi.log_prob, p.family)
    one = jax.tree.map(lambda x: x[0], p.draws)
    lp = jax.eval_shape(log_prob, p.params, one)
    assert lp.shape == () and lp.dtype == jnp.float32
    for leaf, q, x in zip(family_leaves(p.family), split_like(p.family, p.params), split_like(p.family, one)):
        assert jax.eval_shape(leaf.log_prob, q, x).shape == ()
    batch = jax.tree.map(lambda x: x[:6].reshape((2, 3) + x.shape[1:]), p.draws)
    assert jax.eval_shape(log_prob, p.params, batch).shape == (2, 3)


# --------------------------------------------------------------------------------------------------
# The density: normalised, and the one the parameters describe.


@cases(lambda family: has_oracle(support_points, family))
def test_discrete_normalisation_by_enumeration(case):
    p = prepared(case)
    everything = tree_support_points(p.family)  # every configuration, once
    log_probs = np.asarray(p.log_prob(p.params, everything), np.float64)
    # float32 log-probabilities of at most a few dozen terms: errors ~1e-6, far below any bug's.
    assert abs(logsumexp(log_probs)) < 1e-5


def _one_dimensional_continuous(family):
    return is_family(family) and math.prod(family.event_shape) == 1 and has_oracle(quadrature_grid, family)


@cases(_one_dimensional_continuous)
def test_one_dimensional_normalisation_by_quadrature(case):
    p = prepared(case)
    grid = quadrature_grid(p.family, p.params)
    density = np.exp(np.asarray(p.log_prob(p.params, jnp.asarray(grid, jnp.float32)), np.float64))
    # 20001 points over +-12 sd of the base: trapezoid error ~1e-7 and float32 densities ~1e-6
    # relative, while a missing constant or Jacobian term is off by O(1).
    integral = trapezoid(density, grid.reshape(len(grid)))
    assert abs(integral - 1) < 1e-4, integral


@cases()
def test_log_prob_matches_reference_density(case):
    p = prepared(case)
    head = jax.tree.map(lambda x: np.asarray(x[:512]), p.draws)
    reference = tree_reference_log_prob(p.family, p.params, head)
    # float32 log-densities: a handful of terms of magnitude O(10), each with relative error ~1e-7.
    np.testing.assert_allclose(p.log_probs[:512], reference, rtol=1e-5, atol=case.log_prob_atol)


def test_full_rank_scale_tril_is_the_documented_parameterisation():
    # The reference oracle: L = diag(d) (I + N), N's strict lower triangle row by row, then log d.
    family = bbvi.FullRankGaussian(4)
    rng = np.random.default_rng(7)
    params = {"loc": np.zeros(4, np.float32), "scale_tril": rng.standard_normal(10).astype(np.float32)}
    _, tril = gaussian_loc_and_tril(family, params)
    np.testing.assert_allclose(fast_jit(bbvi.FullRankGaussian.scale_tril)(params), tril, rtol=1e-6)


# --------------------------------------------------------------------------------------------------
# Samples follow the density: moments and entropy.


@cases()
def test_sample_moments_match_closed_form(case):
    p = prepared(case)
    stats, expected = tree_reference_statistics(p.family, p.params)
    values = stats(jax.tree.map(np.asarray, p.draws))
    # Every coordinate's mean (and second central moment / category frequency) at once, each within
    # 4 sd/sqrt(n) Bonferroni-corrected for the number of statistics (see _helpers.z_threshold).
    assert_mc_close(values, expected, case.id)


@cases(all_leaves(lambda leaf: leaf.has_entropy))
def test_closed_form_entropy_matches_monte_carlo(case):
    p = prepared(case)
    entropy = fast_jit(functools.partial(bbvi.entropy, p.family))(p.params)
    assert entropy.shape == () and bool(jnp.isfinite(entropy))
    # -mean(log q(z)) for z ~ q is unbiased for the entropy; tolerance = 4 of its standard errors.
    (tolerance,) = mc_tolerance(p.log_probs[:, None])
    assert abs(-p.log_probs.mean() - float(entropy)) <= tolerance  # a constant log q (Uniform) is exact


@cases(lambda family: not all_leaves(lambda leaf: leaf.has_entropy)(family))
def test_entropy_without_closed_form_is_a_clear_error(case):
    family, params = prepared(case)[:2]
    paths, _ = jax.tree_util.tree_flatten_with_path(family, is_leaf=is_family)
    missing = [jax.tree_util.keystr(path) for path, leaf in paths if not leaf.has_entropy]
    with pytest.raises(ValueError, match="no closed-form entropy") as err:
        bbvi.entropy(family, params)
    for path in missing:
        assert path in str(err.value)


@cases()
def test_log_prob_and_entropy_are_sums_over_leaves(case):
    for name, (total, by_leaf) in transformed(case)["sums"].items():
        np.testing.assert_allclose(total, by_leaf, rtol=1e-5, atol=1e-5, err_msg=f"{case.id}: {name}")


# --------------------------------------------------------------------------------------------------
# Transformations: jit, vmap, keys, gradients.


@cases(is_family)
def test_jit_matches_eager(case):
    # A single family's own density and entropy, eagerly and jitted. (Trees are sums of these, checked
    # under jit in test_log_prob_and_entropy_are_sums_over_leaves. Sampling only ever runs jitted: an
    # eager draw costs seconds of op-by-op compilation, and trace-unsafe sampling code fails under jit
    # anyway; vmapped and per-example draws are compared below.)
    p = prepared(case)
    family, params = p.family, p.params
    z = jax.tree.map(lambda x: x[0], p.draws)
    np.testing.assert_allclose(fast_jit(family.log_prob)(params, z), family.log_prob(params, z), rtol=1e-5)
    if family.has_entropy:
        np.testing.assert_allclose(fast_jit(family.entropy)(params), family.entropy(params), rtol=1e-5)


@functools.cache
def transformed(case: Case) -> dict:
    """Everything the tree-sum, vmap and gradient tests compare, computed by one jitted program per case.

    Each vmapped quantity comes with the same quantity computed example by example (a sequential
    `lax.map`), so a batching bug shows as a mismatch; each tree-level quantity comes with the sum of
    its leaves' own. One program instead of one per test, because compilation dominates the cost.
    """
    p = prepared(case)
    family, leaves, single = p.family, family_leaves(p.family), not is_tree(p.family)
    has_entropy = all(leaf.has_entropy for leaf in leaves)
    key = case_key(case, 5)
    keys = jax.random.split(case_key(case, 6), 4)
    z_batch = jax.tree.map(lambda x: x[:BATCH], p.draws)  # one latent per parameter set
    z_head = jax.tree.map(lambda x: x[:64], p.draws)
    rng = np.random.default_rng(zlib.crc32(case.id.encode()))
    weights = [rng.standard_normal(leaf.event_shape).astype(np.float32) for leaf in leaves]

    def linear_functional(params):  # of the draws: its pathwise gradient is generically non-zero
        z = split_like(family, bbvi.sample(family, params, key))
        return sum(jnp.sum(w * x) for leaf, w, x in zip(leaves, weights, z) if leaf.reparameterized)

    def per_example(fn, *batched):  # a sequential loop (lax.map: one compiled body), not a batched call
        return jax.lax.map(lambda args: fn(*args), batched)

    def sample(q, k):
        return bbvi.sample(family, q, k)

    def sample_at_key(q):
        return sample(q, key)

    log_prob = functools.partial(bbvi.log_prob, family)
    entropy = functools.partial(bbvi.entropy, family)

    def sums_over_leaves(params, z):
        parts = list(zip(leaves, split_like(family, params), split_like(family, z)))
        sums = {
            "log_prob": (
                log_prob(params, z),
                sum(jax.vmap(leaf.log_prob, (None, 0))(q, x) for leaf, q, x in parts),
            )
        }
        if has_entropy:
            sums["entropy"] = (entropy(params), sum(leaf.entropy(q) for leaf, q, _ in parts))
        return sums

    @fast_jit
    def run(params, batch, z_batch, keys, z_head):
        over_params = {
            "sample": (jax.vmap(sample_at_key)(batch), per_example(sample_at_key, batch)),
            "log_prob": (jax.vmap(log_prob)(batch, z_batch), per_example(log_prob, batch, z_batch)),
        }
        draws_over_keys = jax.vmap(sample, (None, 0))(params, keys)
        over_keys = {"sample": (draws_over_keys, per_example(lambda k: sample(params, k), keys))}
        if has_entropy:
            over_params["entropy"] = (jax.vmap(entropy)(batch), per_example(entropy, batch))
        if single:  # the family's own method (bbvi.sample of a single family already vmaps its method)
            over_params["log_prob_method"] = (
                jax.vmap(family.log_prob)(batch, z_batch),
                per_example(family.log_prob, batch, z_batch),
            )
        out = {"over_params": over_params, "over_keys": over_keys, "sums": sums_over_leaves(params, z_head)}
        if any(leaf.reparameterized for leaf in leaves):
            out["grads"] = jax.grad(linear_functional)(params)
        return out

    return run(p.params, p.batch, z_batch, keys, z_head)


@cases()
@pytest.mark.parametrize("axis", ["over_params", "over_keys"])
def test_vmap_matches_per_example_calls(case, axis):
    for name, (vmapped, per_example) in transformed(case)[axis].items():
        assert jax.tree.structure(vmapped) == jax.tree.structure(per_example), name
        for a, b in zip(jax.tree.leaves(vmapped), jax.tree.leaves(per_example)):
            assert a.shape == b.shape and a.dtype == b.dtype, name
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=f"{case.id}: vmap {axis}: {name}")


@cases()
def test_sample_is_a_pure_function_of_the_key(case):
    p = prepared(case)
    again, _ = p.draw(p.params, case_key(case, 2))  # the key that drew p.draws
    assert_trees_close(again, p.draws, rtol=0, atol=0)
    other, _ = p.draw(p.params, case_key(case, 8))
    # Two keys giving identical draws (per leaf, all NUM_DRAWS of them) would mean the key is ignored,
    # except for a leaf whose draws do not depend on the key (a point mass): those must be identical.
    pairs = zip(split_like(p.family, p.draws), split_like(p.family, other))
    for leaf, (x, y) in zip(family_leaves(p.family), pairs):
        if draws_ignore_key(leaf):
            assert_trees_close(y, x, rtol=0, atol=0)
            continue
        for a, b in zip(jax.tree.leaves(x), jax.tree.leaves(y)):
            assert not np.array_equal(np.asarray(a), np.asarray(b))


@cases()
def test_reparameterised_draws_are_differentiable_in_the_params(case):
    family = prepared(case).family
    leaves = family_leaves(family)
    for leaf in leaves:
        if not leaf.reparameterized:  # discrete: score-function gradients only, integer draws
            assert leaf.reparameterized is False and jnp.issubdtype(draw_dtype(leaf), jnp.integer)
    if not any(leaf.reparameterized for leaf in leaves):
        return
    # The gradient of a random linear functional of one draw, with respect to the parameters.
    for leaf, g in zip(leaves, split_like(family, transformed(case)["grads"])):
        if leaf.reparameterized:
            for path, x in jax.tree_util.tree_flatten_with_path(g)[0]:
                assert bool(jnp.all(jnp.isfinite(x))), (leaf, jax.tree_util.keystr(path))
                assert bool(jnp.any(x != 0)), (leaf, jax.tree_util.keystr(path))


# --------------------------------------------------------------------------------------------------
# Constructors reject what cannot work, with a message that says why.

BAD_CONSTRUCTIONS = [
    ("mf_negative_shape", lambda: MFG((2, -1)), ValueError, "non-negative"),
    ("mf_shape_not_a_shape", lambda: MFG(None), TypeError, "tuple of ints"),
    ("mf_zero_init_scale", lambda: MFG((2,), init_scale=0.0), ValueError, "init_scale must be"),
    ("mf_negative_init_scale", lambda: MFG((2,), init_scale=-1.0), ValueError, "init_scale must be"),
    ("mf_nan_init_scale", lambda: MFG((2,), init_scale=float("nan")), ValueError, "init_scale must be"),
    ("full_rank_dim_0", lambda: bbvi.FullRankGaussian(0), ValueError, "dim must be a positive int"),
    ("full_rank_dim_float", lambda: bbvi.FullRankGaussian(2.0), ValueError, "dim must be a positive int"),
    ("full_rank_zero_init_scale", lambda: bbvi.FullRankGaussian(2, init_scale=0.0), ValueError, "init_scale"),
    ("bernoulli_negative_shape", lambda: bbvi.Bernoulli((-3,)), ValueError, "non-negative"),
    ("categorical_negative_shape", lambda: bbvi.Categorical((-1,), 3), ValueError, "non-negative"),
    ("categorical_k1", lambda: bbvi.Categorical((2,), 1), ValueError, "num_categories must be an int >= 2"),
    ("categorical_k_float", lambda: bbvi.Categorical((2,), 3.0), ValueError, "num_categories must be an int"),
]


@pytest.mark.parametrize(
    ("build", "error", "match"), [b[1:] for b in BAD_CONSTRUCTIONS], ids=[b[0] for b in BAD_CONSTRUCTIONS]
)
def test_bad_constructor_arguments_raise_clear_errors(build, error, match):
    with pytest.raises(error, match=re.escape(match)):
        build()


@pytest.mark.parametrize("shape", [(2.5,), ("a", 2)], ids=["float_entry", "str_entry"])
def test_non_integer_shape_entries_are_rejected(shape):
    with pytest.raises(TypeError, match="tuple of ints"):
        MFG(shape)


def test_shape_spellings_normalise_to_one_family():
    assert MFG(3) == MFG((3,)) == MFG([3]) and hash(MFG(3)) == hash(MFG([3]))
    assert MFG(3).event_shape == (3,)
