"""Hostile log-joints: NaN, overflow and -inf in part of the space, non-finite slopes, exceptions, and
results that are not a real scalar. None may crash unexplained or return garbage silently.

The fit-level cases share one compiled program: the kind of fault is passed as `data` (a value,
not a new function), so every case below runs the same program with a different fault switched on.
Their target is N(3, 1) in one dimension, fitted by a Gaussian with the sticking-the-landing
gradient, whose variance vanishes at q = p: a clean fit reaches the exact optimum (loc 3,
log_scale 0) to float precision, so a hostile fit can be held to the same exact answer.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import bbvi
from bbvi.families import tree

stop = jax.lax.stop_gradient

FAMILY = bbvi.MeanFieldGaussian(())
START = {"loc": jnp.array(-3.0), "log_scale": jnp.array(0.0)}  # q = N(-3, 1), to move across a band
STL = bbvi.Estimator("reparam", entropy="stl")
# Clipping composes with the skipping (and Adam's moments must survive the skipped steps).
OPTIMIZER = optax.chain(optax.clip_by_global_norm(10.0), optax.adam(0.1))
NUM_STEPS = 400

CLEAN, NAN, OVERFLOW, NEG_INF, NAN_SLOPE, NAN_ABOVE_ZERO = range(6)


def hostile(z, fault):
    """log N(z; 3, 1) + const, with a fault in the band |z + 2| < 0.1 (or, last, wherever z > 0).

    q crosses the band on its way from -3 to 3 and then puts almost no mass there (5 sd away:
    3e-7 per draw), so the band costs some early steps and never the optimum.
    """
    kind, band = fault[0], jnp.abs(z + 2.0) < 0.1
    nan = jnp.where(band & (kind == NAN), jnp.nan, 0.0)
    overflow = jnp.exp(1000.0 * jnp.where(band & (kind == OVERFLOW), 1.0, 0.0)) - 1.0  # exp(1000) = inf
    neg_inf = jnp.log(jnp.where(band & (kind == NEG_INF), 0.0, 1.0))  # log 0
    # A finite value with an infinite slope: sqrt(|x - x|) is 0, its derivative 0.5 / 0.
    slope = jnp.sqrt(jnp.abs(jnp.where(band & (kind == NAN_SLOPE), z - stop(z), 1.0))) - 1.0
    above = jnp.where((kind == NAN_ABOVE_ZERO) & (z > 0), jnp.nan, 0.0)
    return -0.5 * (z - 3.0) ** 2 + nan + overflow + neg_inf + slope + above


def fit(fault, **options):
    return bbvi.fit(
        hostile,
        FAMILY,
        key=jax.random.key(0),
        num_steps=NUM_STEPS,
        estimator=STL,
        optimizer=OPTIMIZER,
        init_params=START,
        data=jnp.array([fault]),
        progress_bar=False,
        **options,
    )


@pytest.fixture(scope="module")
def clean():
    return fit(CLEAN)


def _params(result):
    return {k: float(v) for k, v in result.params.items()}


def test_the_clean_fit_reaches_the_exact_optimum(clean):
    assert int(clean.num_skipped) == 0
    # STL's gradient is exactly zero at q = p; what is left is float32 rounding of loc near 3.
    np.testing.assert_allclose(_params(clean)["loc"], 3.0, atol=1e-5)
    np.testing.assert_allclose(_params(clean)["log_scale"], 0.0, atol=1e-5)


@pytest.mark.parametrize(
    "fault", [NAN, OVERFLOW, NEG_INF, NAN_SLOPE], ids=["nan", "overflow", "neg_inf", "slope"]
)
def test_steps_that_meet_a_fault_are_skipped_and_the_fit_reaches_the_optimum(clean, fault):
    result = fit(fault)
    skipped = int(result.num_skipped)
    assert skipped > 0  # the band is met on the way
    assert int(result.num_steps) == NUM_STEPS and result.elbo.shape == (NUM_STEPS,)
    non_finite = ~np.isfinite(np.asarray(result.elbo))
    if fault == NAN_SLOPE:
        assert not non_finite.any()  # the value was finite, its gradient not: skipped all the same
    else:
        assert non_finite.sum() == skipped  # a skipped step's trace entry keeps its non-finite value
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves((result.params, result.opt_state)))
    np.testing.assert_allclose(_params(result)["loc"], 3.0, atol=1e-5)
    np.testing.assert_allclose(_params(result)["log_scale"], 0.0, atol=1e-5)
    # Every fault meets the same draws (the same keys), so every fault skips the same steps.
    reference = fit(NAN)
    assert skipped == int(reference.num_skipped)
    assert _params(result) == _params(reference)


def test_a_fit_that_cannot_make_a_finite_step_stops_with_the_step_and_the_last_finite_state():
    # NaN wherever z > 0: once q reaches zero nearly every draw set has one there, and the fit is stuck.
    with pytest.raises(bbvi.FitError) as info:
        fit(NAN_ABOVE_ZERO)
    error = info.value
    assert isinstance(error, FloatingPointError)
    result = error.result
    taken = int(result.num_steps)
    elbo = np.asarray(result.elbo)
    assert taken < NUM_STEPS and elbo.shape == (taken,)
    first_bad = int(np.flatnonzero(np.isfinite(elbo))[-1]) + 1  # the non-finite run at the end
    assert f"since step {first_bad} " in str(error)
    assert not np.isfinite(elbo[first_bad:]).any()
    # Its parameters are finite, on the finite side, and exactly those after the last finite step.
    params = _params(result)
    assert all(np.isfinite(list(params.values()))) and params["loc"] < 0
    paused = fit(NAN_ABOVE_ZERO, pause_at=first_bad)
    assert _params(paused) == params


class ModelError(Exception):
    pass


def _raises(z):
    raise ModelError("the simulator diverged")


@pytest.mark.parametrize("how", ["fit", "jit"])
def test_an_exception_in_the_log_joint_propagates_with_a_note(how):
    family = {"theta": bbvi.MeanFieldGaussian((2,)), "k": bbvi.Bernoulli(())}
    with pytest.raises(ModelError, match="the simulator diverged") as info:
        if how == "fit":
            bbvi.fit(_raises, family, key=jax.random.key(0), num_steps=3, progress_bar=False)
        else:
            vg = jax.jit(bbvi.elbo_value_and_grad(_raises, family, num_samples=2))
            vg(bbvi.init(family, jax.random.key(0)), jax.random.key(1))
    notes = "\n".join(info.value.__notes__)
    assert "bbvi: log_joint(z) failed on latents z = {'k': 'int32[]', 'theta': 'float32[2]'}" in notes


@pytest.mark.parametrize(
    ("log_joint", "error", "words"),
    [
        (lambda z: jnp.sum(z > 0), TypeError, "must return a float, but returned int32"),
        (lambda z: -0.5 * jnp.sum(z**2, keepdims=True), ValueError, r"must return a scalar.*shape \(1,\)"),
        (lambda z: -0.5 * jnp.sum(z**2) * (1 + 1j), TypeError, "complex64; return the real log-density"),
        (lambda z: None, TypeError, "must return a scalar float array, but returned NoneType"),
    ],
    ids=["int", "shape-1", "complex", "none"],
)
def test_log_joints_that_do_not_return_a_real_scalar(log_joint, error, words):
    family = bbvi.MeanFieldGaussian((2,))
    vg = bbvi.elbo_value_and_grad(log_joint, family, num_samples=2)
    with pytest.raises(error, match=words):
        # Traced only, nothing compiled: the error comes from tracing, before any run.
        jax.eval_shape(vg, tree.param_spec(family), jax.random.key(0))
