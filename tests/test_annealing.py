"""The default optimiser is optax's Adam with a cosine decay, the horizon set per fit."""

import jax.numpy as jnp
import numpy as np
import optax

from bbvi import annealing


def test_cosine_annealed_adam_is_optax_adam_with_a_cosine_decay_schedule():
    params = {"a": jnp.arange(3.0)}
    ours = annealing.cosine_annealed(optax.scale_by_adam(), 0.03)
    reference = optax.adam(optax.cosine_decay_schedule(0.03, 20))
    state, ref_state = annealing.start(ours.init(params), 20), reference.init(params)
    for i in range(25):  # past the horizon the step size stays 0, as optax's schedule does
        grad = {"a": jnp.sin(jnp.arange(3.0) + i)}
        update, state = ours.update(grad, state, params)
        ref_update, ref_state = reference.update(grad, ref_state, params)
        np.testing.assert_allclose(update["a"], ref_update["a"], rtol=1e-6, atol=1e-9)
    assert float(jnp.max(jnp.abs(update["a"]))) == 0.0


def test_start_restarts_the_decay_and_keeps_adams_moments():
    params = {"a": jnp.ones(2)}
    opt = annealing.cosine_annealed(optax.scale_by_adam(), 0.1)
    state = annealing.start(opt.init(params), 4)
    for _ in range(6):
        _, state = opt.update({"a": jnp.ones(2)}, state, params)
    restarted = annealing.start(state, 10)
    assert int(restarted.count) == 0 and int(restarted.horizon) == 10
    np.testing.assert_array_equal(restarted.inner.mu["a"], state.inner.mu["a"])
