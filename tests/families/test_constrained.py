"""Constrained families: the push-forward onto a support, its density, identity, and constructor errors.

The shared contract (moments, normalisation, jit/vmap, ...) of the registry's constrained cases lives in
test_contract.py; this module checks more supports, against three references for the density:
numpyro's TransformedDistribution built from the family's own base distribution, the change of variables
with the Jacobian from autodiff (independent of numpyro's log-det code), and scipy's lognormal.
"""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
import scipy.stats
from numpyro.distributions import constraints
from numpyro.distributions.transforms import biject_to

import bbvi

from ._helpers import fast_jit

MFG = bbvi.MeanFieldGaussian
FRG = bbvi.FullRankGaussian
Constrained = bbvi.Constrained


def _on_simplex(z):
    return (z > 0) & (np.abs(z.sum(-1, keepdims=True) - 1) < 1e-5)


# (id, family, its event shape, a predicate every draw must satisfy, written without numpyro)
SUPPORTS = [
    ("positive_mf", Constrained(MFG((3,)), constraints.positive), (3,), lambda z: z > 0),
    ("greater_than_2", Constrained(MFG((2,)), constraints.greater_than(2.0)), (2,), lambda z: z > 2),
    ("unit_interval", Constrained(MFG((2,)), constraints.unit_interval), (2,), lambda z: abs(z - 0.5) < 0.5),
    ("interval_m1_3", Constrained(MFG(()), constraints.interval(-1.0, 3.0)), (), lambda z: abs(z - 1) < 2),
    ("simplex_k4", Constrained(MFG((3,)), constraints.simplex), (4,), _on_simplex),
    ("simplex_batch_2_k3", Constrained(MFG((2, 2)), constraints.simplex), (2, 3), _on_simplex),
    ("ordered_4", Constrained(MFG((4,)), constraints.ordered_vector), (4,), lambda z: np.diff(z) > 0),
    ("simplex_full_rank_k3", Constrained(FRG(2), constraints.simplex), (3,), _on_simplex),
]
NUM = 256


def supports():
    return pytest.mark.parametrize(
        ("family", "event_shape", "inside"), [s[1:] for s in SUPPORTS], ids=[s[0] for s in SUPPORTS]
    )


def _autodiff_log_prob(family, params, z):
    """log q(z) by the change of variables, with log|det J| from jax.jacfwd of the transform itself.

    Densities on a simplex are with respect to Lebesgue measure on all but the last coordinate
    (numpyro's convention), so the Jacobian is that of u -> z[..., :-1].
    """
    transform = biject_to(family.support)
    u = transform.inv(z)
    base_shape = family.base.event_shape
    on_simplex = isinstance(family.support, type(constraints.simplex))

    def forward_flat(u_flat):
        z = transform(u_flat.reshape(base_shape))
        return (z[..., :-1] if on_simplex else z).reshape(-1)

    jacobian = jax.jacfwd(forward_flat)(u.reshape(-1))
    return family.base.log_prob(params, u) - jnp.linalg.slogdet(jacobian)[1]


@functools.cache
def _evaluated(family):
    """Draws, bbvi's log q and the references, by one jitted program per family."""
    # Every parameter N(0, 0.5^2): scales within a factor e of 1, so no draw saturates float32 at the
    # boundary of its support. Built from the init's shapes alone, with nothing to compile.
    rng = np.random.default_rng(11)
    shapes = jax.eval_shape(family.init, jax.random.key(0))
    params = jax.tree.map(lambda s: jnp.asarray(0.5 * rng.standard_normal(s.shape), s.dtype), shapes)

    @fast_jit
    def run(params, key):
        z = bbvi.sample(family, params, key, (NUM,))
        reference = dist.TransformedDistribution(family.base.distribution(params), biject_to(family.support))
        return {
            "z": z,
            "log_prob": jax.vmap(family.log_prob, (None, 0))(params, z),
            "numpyro": reference.log_prob(z),
            "autodiff": jax.vmap(functools.partial(_autodiff_log_prob, family), (None, 0))(params, z),
        }

    return params, jax.tree.map(np.asarray, run(params, jax.random.key(12)))


@supports()
def test_draws_lie_on_the_support(family, event_shape, inside):
    _, out = _evaluated(family)
    z = out["z"]
    assert tuple(family.event_shape) == event_shape
    assert z.shape == (NUM,) + event_shape and z.dtype == np.float32
    assert np.all(inside(z))
    assert np.all(np.asarray(family.support(jnp.asarray(z))))  # numpyro's own membership check


@supports()
def test_log_prob_is_base_log_prob_minus_log_det_jacobian(family, event_shape, inside):
    _, out = _evaluated(family)
    assert out["log_prob"].shape == (NUM,) and np.all(np.isfinite(out["log_prob"]))
    # float32 throughout; the log-densities are O(10), so 1e-4 absolute is a few ulps of each term.
    np.testing.assert_allclose(out["log_prob"], out["numpyro"], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(out["log_prob"], out["autodiff"], rtol=1e-5, atol=1e-4)


def test_positive_mean_field_is_lognormal():
    family = SUPPORTS[0][1]
    params, out = _evaluated(family)
    scale, loc = np.exp(np.asarray(params["log_scale"], np.float64)), np.asarray(params["loc"], np.float64)
    reference = scipy.stats.lognorm(s=scale, scale=np.exp(loc)).logpdf(out["z"].astype(np.float64)).sum(-1)
    np.testing.assert_allclose(out["log_prob"], reference, rtol=1e-5, atol=1e-4)


def test_unconstrained_view_is_the_base_and_its_bijection():
    family = Constrained(MFG((3,)), constraints.simplex)
    base, transform = family.unconstrained()
    assert base == family.base
    u = jnp.array([0.3, -1.0, 2.0])
    np.testing.assert_allclose(transform(u), biject_to(constraints.simplex)(u), rtol=1e-6)
    assert MFG(()).unconstrained() == (MFG(()), None)


# --------------------------------------------------------------------------------------------------
# Identity: equal descriptions are equal, hash equal, and are one static argument to jit.

EQUAL_PAIRS = {
    "positive": (lambda: Constrained(MFG((2,)), constraints.positive),) * 2,
    "simplex": (lambda: Constrained(MFG((3,)), constraints.simplex),) * 2,
    "interval": (lambda: Constrained(MFG(()), constraints.interval(0.0, 2.0)),) * 2,
    "interval_array_bounds": (
        lambda: Constrained(MFG(()), constraints.interval(0.0, 2.0)),
        lambda: Constrained(MFG(()), constraints.interval(jnp.array(0.0), np.float64(2.0))),
    ),
    "greater_than": (lambda: Constrained(MFG(()), constraints.greater_than(1.5)),) * 2,
}
UNEQUAL_PAIRS = {
    "support": (
        Constrained(MFG(()), constraints.positive),
        Constrained(MFG(()), constraints.softplus_positive),
    ),
    "bounds": (
        Constrained(MFG(()), constraints.interval(0.0, 1.0)),
        Constrained(MFG(()), constraints.interval(0.0, 2.0)),
    ),
    "unit_vs_interval": (  # the same set, but different bijections: different families
        Constrained(MFG(()), constraints.unit_interval),
        Constrained(MFG(()), constraints.interval(0.0, 1.0)),
    ),
    "base_shape": (
        Constrained(MFG((2,)), constraints.positive),
        Constrained(MFG((3,)), constraints.positive),
    ),
    "base_type": (
        Constrained(MFG((2,)), constraints.simplex),
        Constrained(FRG(2), constraints.simplex),
    ),
    "base_options": (
        Constrained(MFG(()), constraints.positive),
        Constrained(MFG((), init_scale=0.5), constraints.positive),
    ),
    "unconstrained_base": (Constrained(MFG(()), constraints.positive), MFG(())),
}


@pytest.mark.parametrize("pair", list(EQUAL_PAIRS.values()), ids=list(EQUAL_PAIRS))
def test_equal_constraints_give_equal_families(pair):
    a, b = pair[0](), pair[1]()
    assert a == b and hash(a) == hash(b) and {a: 1}[b] == 1
    traces = []

    @functools.partial(jax.jit, static_argnums=0)
    def static_use(family, x):
        traces.append(family)
        return x + len(family.event_shape)

    static_use(a, 1.0)
    static_use(b, 1.0)
    assert len(traces) == 1


@pytest.mark.parametrize("pair", list(UNEQUAL_PAIRS.values()), ids=list(UNEQUAL_PAIRS))
def test_different_constrained_families_are_unequal(pair):
    a, b = pair
    assert a != b and b != a


def test_integer_and_float_bounds_give_equal_families():
    assert constraints.interval(0, 2) == constraints.interval(0.0, 2.0)  # numpyro's own view
    a = Constrained(MFG(()), constraints.interval(0, 2))
    b = Constrained(MFG(()), constraints.interval(0.0, 2.0))
    assert a == b and hash(a) == hash(b)


def test_hashing_a_support_with_traced_bounds_is_a_clear_error():
    @jax.jit
    def build(lower):
        family = Constrained(MFG(()), constraints.greater_than(lower))
        with pytest.raises(TypeError, match="must be concrete"):
            hash(family)
        return lower

    build(1.0)


# --------------------------------------------------------------------------------------------------
# Constructor errors.

BAD = [
    ("base_not_a_family", lambda: Constrained({"a": MFG(())}, constraints.real), TypeError, "bbvi family"),
    ("base_discrete", lambda: Constrained(bbvi.Bernoulli((2,)), constraints.real), TypeError, "continuous"),
    (
        "base_categorical",
        lambda: Constrained(bbvi.Categorical((2,), 3), constraints.simplex),
        TypeError,
        "continuous",
    ),
    (
        "base_already_constrained",
        lambda: Constrained(Constrained(MFG(()), constraints.positive), constraints.positive),
        TypeError,
        "already constrained",
    ),
    ("support_a_string", lambda: Constrained(MFG(()), "positive"), TypeError, "numpyro constraint"),
    ("support_a_function", lambda: Constrained(MFG(()), jnp.exp), TypeError, "numpyro constraint"),
    ("support_a_transform", lambda: Constrained(MFG(()), biject_to(constraints.real)), TypeError, "numpyro"),
    ("simplex_scalar_base", lambda: Constrained(MFG(()), constraints.simplex), ValueError, "does not fit"),
    (
        "lower_cholesky_not_triangular",
        lambda: Constrained(MFG((5,)), constraints.lower_cholesky),
        ValueError,
        "does not fit",
    ),
]


@pytest.mark.parametrize(("build", "error", "match"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_constructor_arguments_raise_clear_errors(build, error, match):
    with pytest.raises(error, match=re.escape(match)):
        build()


def test_ordered_vector_with_a_scalar_base_is_rejected_at_construction():
    with pytest.raises(ValueError, match="does not fit"):
        Constrained(MFG(()), constraints.ordered_vector)


def test_support_without_a_bijection_is_a_clear_error():
    with pytest.raises((TypeError, ValueError), match="biject"):
        Constrained(MFG((3,)), constraints.sphere)
