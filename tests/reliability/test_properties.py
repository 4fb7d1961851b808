"""Property-based tests (hypothesis) over random family pytrees, shapes, dtypes and options.

Each example draws a dict / tuple nesting of leaf families (Gaussian, low-rank, full-rank,
Bernoulli, Categorical, Constrained) with small random shapes, and a log-joint that is the sum of
one numpyro log-density per leaf on that leaf's support. Properties: draws have the family's
shapes and dtypes and a finite log q; the ELBO estimate is finite with a gradient shaped like the
parameters, the same for the same key, under `jit` or not; a log-joint that reads latents the
family does not draw fails with an error that says so; a short fit returns finite parameters.

Compilation dominates the cost (about a second per example), so example counts are small and
`derandomize=True` fixes them: the suite is reproducible and its time bounded. Explore more with
`BBVI_HYPOTHESIS_EXAMPLES=200 pytest tests/reliability/test_properties.py` (random examples).
"""

from __future__ import annotations

import contextlib
import itertools
import os

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from numpyro.distributions import constraints

import bbvi
from bbvi.families import tree
from bbvi.families.base import is_family

_EXPLORE = int(os.environ.get("BBVI_HYPOTHESIS_EXAMPLES", "0"))


def _settings(examples: int):
    return settings(
        max_examples=_EXPLORE or examples,
        derandomize=not _EXPLORE,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# --- random families -------------------------------------------------------------------------------

_SHAPES = st.sampled_from([(), (1,), (2,), (2, 2)])
_SUPPORTS = [constraints.positive, constraints.interval(-1.0, 2.0), constraints.simplex]

_leaf_families = st.one_of(
    _SHAPES.map(bbvi.MeanFieldGaussian),
    st.integers(1, 3).map(bbvi.FullRankGaussian),
    st.integers(2, 3).flatmap(lambda d: st.integers(1, d - 1).map(lambda r: bbvi.LowRankGaussian(d, r))),
    _SHAPES.map(bbvi.Bernoulli),
    st.tuples(st.sampled_from([(), (2,)]), st.integers(2, 3)).map(lambda a: bbvi.Categorical(*a)),
    st.tuples(st.sampled_from([(), (2,)]), st.sampled_from(_SUPPORTS)).map(
        # A simplex needs a vector (of K - 1 unconstrained coordinates).
        lambda a: bbvi.Constrained(bbvi.MeanFieldGaussian(a[0] or (2,)), a[1])
    ),
)

_families = st.recursive(
    _leaf_families,
    lambda inner: st.one_of(
        st.dictionaries(st.sampled_from("abcd"), inner, min_size=1, max_size=3),
        st.lists(inner, min_size=1, max_size=2).map(tuple),
    ),
    max_leaves=4,
)


def _leaf_log_density(family, z):
    """A log-density on the leaf's support (numpyro's), summed over the leaf's coordinates."""
    if isinstance(family, bbvi.Bernoulli):
        return jnp.sum(dist.Bernoulli(probs=0.7).log_prob(z))
    if isinstance(family, bbvi.Categorical):
        # Indexing a table with the draws: a float latent here would be an error.
        table = jax.nn.log_softmax(jnp.arange(family.num_categories, dtype=jnp.result_type(float)))
        return jnp.sum(table[z])
    if isinstance(family, bbvi.Constrained):
        support = family.support
        if support is constraints.positive:
            return jnp.sum(dist.Gamma(2.0, 1.0).log_prob(z))
        if support is constraints.simplex:
            return dist.Dirichlet(jnp.full(z.shape[-1], 2.0)).log_prob(z)
        return jnp.sum(dist.Beta(2.0, 2.0).log_prob((z + 1.0) / 3.0))
    return jnp.sum(dist.Normal(0.5, 1.0).log_prob(z))


def make_log_joint(family):
    def log_joint(z):
        terms = jax.tree.map(_leaf_log_density, family, z, is_leaf=is_family)
        return sum(jax.tree.leaves(terms))

    return log_joint


def _discrete_leaves(family) -> list[bool]:
    return [not leaf.reparameterized for leaf in tree.flatten(family)[0]]


def _discrete(family) -> bool:
    return any(_discrete_leaves(family))


def _x64(enabled: bool):
    return jax.enable_x64(True) if enabled else contextlib.nullcontext()


def _float_dtype():
    return jnp.result_type(float)


# --- init, sample, log_prob ------------------------------------------------------------------------


@_settings(4)
@given(family=_families, x64=st.booleans(), num=st.sampled_from([1, 3]), seed=st.integers(0, 2**16))
def test_draws_have_the_family_shapes_and_dtypes(family, x64, num, seed):
    with _x64(x64):
        key_init, key_draw = jax.random.split(jax.random.key(seed))
        params = bbvi.init(family, key_init)
        assert len(tree.split_params(family, params)) == len(tree.flatten(family)[0])
        spec = tree.param_spec(family)
        assert jax.tree.structure(params) == jax.tree.structure(spec)
        for x in jax.tree.leaves(params):
            assert x.dtype == _float_dtype() and bool(jnp.all(jnp.isfinite(x)))

        @jax.jit  # one compiled program per example: eager dispatch would compile every operation
        def draw(params, key):
            z = bbvi.sample(family, params, key, (num,))
            first = jax.tree.map(lambda x: x[0], z)
            return z, bbvi.log_prob(family, params, z), bbvi.log_prob(family, params, first)

        z, log_q, log_q_first = draw(params, key_draw)
        leaves, treedef = tree.flatten(family)
        for leaf, x in zip(leaves, treedef.flatten_up_to(z)):
            assert x.shape == (num, *leaf.event_shape), (leaf, x.shape)
            kind = jnp.floating if leaf.reparameterized else jnp.integer
            assert jnp.issubdtype(x.dtype, kind), (leaf, x.dtype)
            assert x.dtype.itemsize == (8 if x64 else 4), (leaf, x.dtype)
        again, _, _ = draw(params, key_draw)  # same key, same draws
        assert all(bool(jnp.all(x == y)) for x, y in zip(jax.tree.leaves(z), jax.tree.leaves(again)))

        assert log_q.shape == (num,) and log_q.dtype == _float_dtype()
        assert bool(jnp.all(jnp.isfinite(log_q)))
        # A single draw (no batch axis): a scalar, the same value up to rounding.
        assert log_q_first.shape == ()
        np.testing.assert_allclose(log_q_first, log_q[0], rtol=1e-5 if not x64 else 1e-12)


def test_parameter_specs_follow_the_precision_in_use():
    """`param_spec` (which `fit` casts `init_params` to) is float64 under x64, even for a family
    whose spec was first asked for in float32: switching precision in-process must not leave a
    stale float32 spec that silently casts a float64 warm start down."""
    family = bbvi.MeanFieldGaussian((3,))
    assert tree.param_spec(family)["loc"].dtype == jnp.float32
    with jax.enable_x64(True):
        assert tree.param_spec(family)["loc"].dtype == jnp.float64
    assert tree.param_spec(family)["loc"].dtype == jnp.float32


_discrete_families = st.recursive(
    st.one_of(
        st.sampled_from([(), (2,)]).map(bbvi.Bernoulli),
        st.integers(2, 3).map(lambda k: bbvi.Categorical((), k)),
    ),
    lambda inner: st.dictionaries(st.sampled_from("abc"), inner, min_size=1, max_size=2),
    max_leaves=3,
)


@_settings(3)
@given(family=_discrete_families, seed=st.integers(0, 2**16))
def test_discrete_log_prob_is_normalised(family, seed):
    """Summing q over every joint configuration gives 1 (enumerated: at most 3 * 4 * 4 points)."""
    params = bbvi.init(family, jax.random.key(seed))
    params = jax.tree.map(lambda x: x + jax.random.normal(jax.random.key(seed + 1), x.shape), params)
    leaves, treedef = tree.flatten(family)
    axes = []
    for leaf in leaves:
        k = leaf.num_categories if isinstance(leaf, bbvi.Categorical) else 2
        size = int(np.prod(leaf.event_shape))
        axes.append([np.reshape(c, leaf.event_shape) for c in itertools.product(range(k), repeat=size)])
    grid = list(itertools.product(*axes))
    z = treedef.unflatten(
        [jnp.asarray(np.stack([g[i] for g in grid]), jnp.int32) for i in range(len(leaves))]
    )
    total = jax.jit(lambda p, z: jax.scipy.special.logsumexp(bbvi.log_prob(family, p, z)))(params, z)
    np.testing.assert_allclose(total, 0.0, atol=1e-5)  # float32 rounding of a sum of <= 48 terms


# --- the ELBO estimate -----------------------------------------------------------------------------


@st.composite
def _options(draw, family):
    """Estimator options that can work with this family (the invalid ones are tested below)."""
    discrete = _discrete(family)
    estimator = draw(st.sampled_from(["auto", "score"] + ([] if discrete else ["reparam"])))
    score = discrete or estimator == "score"
    objective = draw(st.sampled_from(["elbo", "iwae"]))
    cvs = (
        [None, "auto"] if not score else [None, "auto", "loo"] + (["optimal"] if objective == "elbo" else [])
    )
    control_variate = draw(st.sampled_from(cvs))
    least = {"loo": 2, "optimal": 3}.get(control_variate, 2 if score and objective == "iwae" else 1)
    num_samples = draw(st.integers(least, 4))
    return dict(
        estimator=estimator, objective=objective, control_variate=control_variate, num_samples=num_samples
    )


def _same_structure(grad, params):
    assert jax.tree.structure(grad) == jax.tree.structure(params)
    for g, p in zip(jax.tree.leaves(grad), jax.tree.leaves(params)):
        assert g.shape == p.shape and g.dtype == p.dtype, (g.shape, p.shape, g.dtype, p.dtype)


@_settings(3)
@given(data=st.data(), family=_families, x64=st.booleans(), seed=st.integers(0, 2**16))
def test_elbo_estimates_are_finite_and_reproducible(data, family, x64, seed):
    options = data.draw(_options(family))
    with _x64(x64):
        vg = jax.jit(bbvi.elbo_value_and_grad(make_log_joint(family), family, **options))
        params = bbvi.init(family, jax.random.key(seed))
        key = jax.random.key(seed + 1)
        value, grad = vg(params, key)
        assert value.shape == () and value.dtype == _float_dtype() and bool(jnp.isfinite(value))
        _same_structure(grad, params)
        assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grad))

        value_again, grad_again = vg(params, key)
        assert bool(value == value_again)
        assert all(bool(jnp.all(g == h)) for g, h in zip(jax.tree.leaves(grad), jax.tree.leaves(grad_again)))
        if not all(_discrete_leaves(family)):  # continuous draws: another key, another estimate (a.s.)
            assert bool(vg(params, jax.random.key(seed + 2))[0] != value)


# Without jit every operation is dispatched (and compiled) on its own: seconds per family, so one
# family with a pathwise and a score-function leaf stands for the rest.
_MIXED = {"g": bbvi.MeanFieldGaussian((2,)), "c": bbvi.Categorical((2,), 3)}


@pytest.mark.slow
@pytest.mark.parametrize("options", [dict(control_variate="loo", num_samples=3)], ids=["auto-loo"])
def test_elbo_estimates_are_the_same_with_and_without_jit(options):
    vg = bbvi.elbo_value_and_grad(make_log_joint(_MIXED), _MIXED, **options)
    params, key = bbvi.init(_MIXED, jax.random.key(0)), jax.random.key(1)
    value, grad = jax.jit(vg)(params, key)
    eager_value, eager_grad = vg(params, key)
    # The same operations; XLA may fuse and reorder float arithmetic, so float32 rounding apart.
    np.testing.assert_allclose(eager_value, value, rtol=1e-4, atol=1e-4)
    for g, h in zip(jax.tree.leaves(eager_grad), jax.tree.leaves(grad)):
        np.testing.assert_allclose(g, h, rtol=1e-4, atol=1e-4)


def _invalid_options(family):
    """Option sets that cannot work, with the words their error must contain."""
    cases = [
        (dict(control_variate="loo", num_samples=1), "needs num_samples >= 2"),
        (dict(control_variate="optimal", num_samples=2), "needs num_samples >= 3"),
        (dict(estimator="score", objective="iwae", num_samples=1), "num_samples >= 2"),
        (
            dict(estimator="score", objective="iwae", control_variate="optimal", num_samples=4),
            "linear objective",
        ),
    ]
    if _discrete(family):
        cases.append((dict(estimator="reparam"), "not (discrete)"))
    else:
        cases.append((dict(estimator="relaxed"), "all continuous"))
    return st.sampled_from(cases)


@_settings(8)
@given(data=st.data(), family=_families)
def test_invalid_options_fail_before_the_log_joint_is_called(data, family):
    options, words = data.draw(_invalid_options(family))
    calls = []

    def log_joint(z):
        calls.append(z)
        return make_log_joint(family)(z)

    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")):
        bbvi.elbo_value_and_grad(log_joint, family, **options)
    assert calls == []


# --- log-joints that do not match the family -------------------------------------------------------


def _paths(family):
    return [path for path, _ in jax.tree_util.tree_flatten_with_path(family, is_leaf=is_family)[0]]


def _read(z, path):
    for entry in path:
        z = z[entry.key if hasattr(entry, "key") else entry.idx]
    return z


@st.composite
def _mismatched(draw):
    """A family, a leaf's path, and a log-joint reading that leaf wrongly (a missing key, a wrong shape)."""
    family = draw(_families)
    paths = _paths(family)
    path = draw(st.sampled_from(paths))
    how = draw(st.sampled_from(["missing", "shape"]))
    good = make_log_joint(family)

    def log_joint(z):
        if how == "missing":
            if path:  # the container holding the leaf, asked for an entry it does not have
                parent, last = _read(z, path[:-1]), path[-1]
                _ = parent[last.key + "_" if hasattr(last, "key") else len(parent)]
            else:
                _ = z["z"]
        else:  # a length-(n + 1) vector where the family draws n numbers
            x = _read(z, path)
            _ = jnp.dot(jnp.ravel(x).astype(jnp.float32), jnp.ones(x.size + 1))
        return good(z)

    return family, path, how, log_joint


@_settings(8)
@given(case=_mismatched())
def test_a_log_joint_that_does_not_match_the_family_is_explained(case):
    family, path, how, log_joint = case
    with pytest.raises((KeyError, IndexError, TypeError, ValueError)) as info:
        # Traced only (nothing runs or compiles): the error is raised while tracing.
        vg = bbvi.elbo_value_and_grad(log_joint, family, num_samples=2)
        jax.eval_shape(vg, tree.param_spec(family), jax.random.key(1))
    message = str(info.value) + "\n".join(getattr(info.value, "__notes__", []))
    # The user's own error (which entry, which shapes) with bbvi's note naming the latents it drew.
    assert "log_joint(z) failed on latents z = " in message
    leaf = _read(family, path)
    dtype = "float32" if leaf.reparameterized else "int32"
    assert f"{dtype}{list(leaf.event_shape)}" in message
    if how == "missing" and path and hasattr(path[-1], "key"):
        assert f"{path[-1].key}_" in message
    if how == "shape":
        assert f"({jnp.size(jnp.zeros(leaf.event_shape))},)" in message  # the shape it drew


# --- a short fit -----------------------------------------------------------------------------------


@pytest.mark.slow
@_settings(2)
@given(family=_families, seed=st.integers(0, 2**16))
def test_a_short_fit_returns_finite_parameters_of_the_family(family, seed):
    result = bbvi.fit(
        make_log_joint(family), family, key=jax.random.key(seed), num_steps=2, progress_bar=False
    )
    initial = bbvi.init(family, jax.random.key(0))
    _same_structure(result.params, initial)
    tree.split_params(family, result.params)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(result.params))
    assert result.elbo.shape == (2,) and bool(jnp.all(jnp.isfinite(result.elbo)))
