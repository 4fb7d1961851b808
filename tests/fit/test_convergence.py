"""The stopping rule: Stan ADVI's relative change and the trend test, checked on traces whose
answer is worked out by hand, and inside fit, where it stops the compiled loop."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bbvi
from bbvi.fit import convergence

FAMILY = bbvi.MeanFieldGaussian((2,))


def gaussian(z):
    return -0.5 * jnp.sum((z - 1.0) ** 2)


def run_rule(rule, block_means):
    """Feed the rule blocks whose every step has the given ELBO; the step at which it fires."""
    state = convergence.init(rule, jnp.float32)
    for i, mean in enumerate(block_means):
        for _ in range(rule.every):
            state = convergence.record(state, jnp.float32(mean))
        state = convergence.close_block(rule, state, jnp.int32((i + 1) * rule.every))
    return int(state.converged_at)


def test_relative_rule_fires_when_the_mean_or_median_relative_change_falls_below_tol():
    rule = bbvi.Convergence(tol=0.01, every=10, window=3)
    # Block means -100, -50, -45, -44.8, -44.7: relative changes 0.5, 0.1, 0.0044, 0.0022. The
    # window holds the last 3 changes: after block 4 they are (0.5, 0.1, 0.0044): median 0.1, mean
    # 0.2; after block 5 (0.1, 0.0044, 0.0022): median 0.0044 < 0.01: fires at step 50.
    assert run_rule(rule, [-100, -50, -45, -44.8, -44.7]) == 50
    # A lone change below tol fires at once (Stan's rule looks at what it has).
    assert run_rule(rule, [-100, -100.5]) == 20
    # Changes are relative to max(|ELBO|, 1): near zero an absolute change of 0.005 is small.
    assert run_rule(rule, [0.01, 0.015]) == 20
    assert run_rule(rule, [0.01, 0.5, 0.01, 0.5]) == -1


def test_trend_rule_fires_once_the_slope_is_within_its_noise():
    rule = bbvi.Convergence("trend", every=10, window=4, z=2.0)
    rising = [-10.0 + 0.5 * i + 0.01 * (-1) ** i for i in range(12)]
    assert run_rule(rule, rising) == -1  # a clear upward trend never counts as converged
    # Flat with alternating noise: the slope is small against its standard error, once the window
    # (5 block means) is full.
    flat = [-3.0 + 0.1 * (-1) ** i for i in range(8)]
    assert run_rule(rule, flat) == 50
    # The trend test does not depend on the scale: the same noise around -1e6 fires alike.
    assert run_rule(rule, [x - 1e6 for x in flat]) == 50


def test_min_steps_and_bad_rules():
    rule = bbvi.Convergence(tol=0.01, every=10, window=3, min_steps=45)
    assert run_rule(rule, [-100, -100.5, -100.5, -100.5, -100.5]) == 50
    for bad in (
        dict(rule="stan"),
        dict(tol=0),
        dict(every=0),
        dict(window=1.5),
        dict(min_steps=-1),
        dict(rule="trend", window=1),
    ):
        with pytest.raises(ValueError, match="Convergence"):
            bbvi.Convergence(**bad)


def test_fit_stops_when_converged_and_says_so_and_jit_agrees():
    rule = bbvi.Convergence("trend", every=50, min_steps=500)

    def go(key):
        return bbvi.fit(gaussian, FAMILY, key=key, num_steps=20_000, convergence=rule, progress_bar=False)

    eager = go(jax.random.key(0))
    steps = int(eager.num_steps)
    assert bool(eager.converged) and 500 <= steps < 20_000 and steps % 50 == 0
    assert int(eager.converged_at) == steps and eager.elbo.shape == (steps,)
    np.testing.assert_allclose(eager.params["loc"], 1.0, atol=0.2)
    jitted = jax.jit(go)(jax.random.key(0))
    assert int(jitted.num_steps) == steps and jitted.elbo.shape == (20_000,)
    assert np.isnan(np.asarray(jitted.elbo[steps:])).all()
    np.testing.assert_array_equal(np.asarray(jitted.elbo[:steps]), np.asarray(eager.elbo))
    np.testing.assert_allclose(jitted.params["loc"], eager.params["loc"], rtol=1e-6)


def test_by_default_the_rule_watches_without_stopping():
    result = bbvi.fit(gaussian, FAMILY, key=jax.random.key(0), num_steps=3000, progress_bar=False)
    assert int(result.num_steps) == 3000 and result.elbo.shape == (3000,)
    # The default rule is Stan's at tol 0.01: the ELBO (about 1.8 here) settles within its noise
    # well before the end, and the result records when.
    assert bool(result.converged) and 0 < int(result.converged_at) < 3000
