"""Non-finite steps never corrupt a fit: they are skipped, counted, and a fit that cannot make a
finite step for a whole block stops with an error that names the step and keeps the last good state."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import bbvi

FAMILY = bbvi.MeanFieldGaussian((2,))
TARGET = jnp.array([1.0, -1.0])


def gaussian(z):
    return -0.5 * jnp.sum((z - TARGET) ** 2)


def nan_far_out(z):
    # NaN where q = N(target, 1) puts about 0.1% of its mass per draw: a few steps in a thousand.
    return jnp.where(z[0] > TARGET[0] + 3.1, jnp.nan, gaussian(z))


def fit(log_joint, **options):
    options.setdefault("progress_bar", False)
    options.setdefault("num_steps", 1000)
    return bbvi.fit(log_joint, FAMILY, key=jax.random.key(0), **options)


def test_steps_with_a_nan_elbo_are_skipped_and_counted_and_the_fit_is_unharmed():
    result = fit(nan_far_out)
    skipped = ~np.isfinite(np.asarray(result.elbo))
    assert int(result.num_skipped) == skipped.sum() > 0  # the trace keeps each skipped step's value
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves((result.params, result.opt_state)))
    # The NaN region is 3.1 sd out: the fit reaches the target as the clean one does (its own
    # sampling noise: loc within 0.1, five times the spread of the final iterates of a clean fit).
    np.testing.assert_allclose(result.params["loc"], TARGET, atol=0.1)
    np.testing.assert_allclose(result.params["log_scale"], 0.0, atol=0.1)


def test_a_skipped_step_leaves_parameters_and_optimiser_state_exactly_as_they_were():
    whole = fit(nan_far_out, num_steps=1000)
    bad = int(np.flatnonzero(~np.isfinite(np.asarray(whole.elbo)))[0])
    before = fit(nan_far_out, num_steps=1000, pause_at=bad)  # the same run, paused before the bad step
    after = fit(nan_far_out, num_steps=1000, pause_at=bad + 1)  # and after it
    kept = (before.params, before.opt_state, before.estimator_state)
    for x, y in zip(
        jax.tree.leaves(kept), jax.tree.leaves((after.params, after.opt_state, after.estimator_state))
    ):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert int(after.num_skipped) == int(before.num_skipped) + 1
    assert int(after.state.last_finite) == bad - 1 and int(after.num_steps) == bad + 1


def test_a_fit_that_cannot_make_a_finite_step_stops_with_an_error_that_keeps_the_last_good_state():
    # Finite near the start, NaN once the mean has moved past 0.5: the fit walks into the NaN region
    # and can never leave it (every draw is NaN there).
    def cliff(z):
        return jnp.where(jnp.mean(z) > -0.5, jnp.nan, -0.5 * jnp.sum((z + 3.0) ** 2)) + 0 * z[0]

    def walks_in(z):
        return -0.5 * jnp.sum((z - 3.0) ** 2) + jnp.where(jnp.min(z) > 1.0, jnp.nan, 0.0)

    rule = bbvi.Convergence(every=50, stop=False)
    with pytest.raises(bbvi.FitError, match=r"no step since step (\d+) had a finite ELBO") as caught:
        fit(walks_in, optimizer=optax.sgd(0.05), convergence=rule, num_samples=1)
    failed = caught.value.result
    first_bad = int(failed.state.last_finite) + 1
    assert f"since step {first_bad} " in str(caught.value)
    assert int(failed.num_steps) - first_bad >= rule.every  # a whole block's worth in a row
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(failed.params))
    assert np.isfinite(np.asarray(failed.elbo[:first_bad])).any()
    assert not np.isfinite(np.asarray(failed.elbo[first_bad:])).any()
    del cliff


def test_gradient_clipping_and_other_optax_wrappers_compose():
    clipped = optax.chain(optax.clip_by_global_norm(0.5), optax.adam(optax.cosine_decay_schedule(0.05, 1000)))
    result = fit(nan_far_out, optimizer=clipped)
    assert int(result.num_skipped) > 0
    np.testing.assert_allclose(result.params["loc"], TARGET, atol=0.1)
    # An optimiser whose update turns non-finite (a step size of inf from step 10 on) is caught too.
    blows_up = optax.sgd(lambda count: jnp.where(count < 10, 0.01, jnp.inf))
    with pytest.raises(bbvi.FitError, match="no step since step 10 "):
        fit(gaussian, optimizer=blows_up, num_steps=300)
    with pytest.raises(ValueError, match="the optimiser's update is not"):
        fit(gaussian, optimizer=optax.sgd(jnp.inf), num_steps=300)


def test_under_jit_non_finite_steps_are_skipped_and_counted_the_same_way():
    eager = fit(nan_far_out)
    jitted = jax.jit(lambda key: bbvi.fit(nan_far_out, FAMILY, key=key, num_steps=1000, progress_bar=False))(
        jax.random.key(0)
    )
    assert int(jitted.num_skipped) == int(eager.num_skipped)
    np.testing.assert_allclose(jitted.params["loc"], eager.params["loc"], rtol=1e-6)
