"""Many independent problems in one program: `jax.vmap` of `fit` over data sets and hyperparameters.

(Over keys, for restarts, see test_program.py.) Each vmapped fit must be the fit of its own problem:
the same ELBO trace and parameters as a separate fit, up to float32 rounding.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist

import bbvi
from bbvi.models import linear_regression

FAMILY = bbvi.MeanFieldGaussian((3,))
STEPS = 150


def _log_joint(w, batch, prior_scale=1.0):
    x, y = batch
    return dist.Normal(0.0, prior_scale).log_prob(w).sum() + dist.Normal(x @ w, 1.0).log_prob(y).sum()


def _datasets(n):
    sims = [linear_regression.simulate(seed=s, num_data=40, dim=3) for s in range(n)]
    return jnp.stack([d.x for d in sims]), jnp.stack([d.y for d in sims])


def _assert_same_fit(batched, i, single):
    np.testing.assert_allclose(np.asarray(batched.elbo[i]), np.asarray(single.elbo), rtol=1e-5, atol=1e-4)
    for a, b in zip(jax.tree.leaves(single.params), jax.tree.leaves(batched.params)):
        np.testing.assert_allclose(np.asarray(b[i]), np.asarray(a), rtol=1e-4, atol=1e-5)


def test_vmap_over_data_sets_fits_each_its_own():
    xs, ys = _datasets(3)
    key = jax.random.key(0)

    def fit_one(x, y):
        return bbvi.fit(_log_joint, FAMILY, key=key, num_steps=STEPS, data=(x, y), progress_bar=False)

    batched = jax.jit(jax.vmap(fit_one))(xs, ys)
    assert batched.elbo.shape == (3, STEPS)
    finals = []
    for i in range(3):
        single = bbvi.fit(
            _log_joint, FAMILY, key=key, num_steps=STEPS, data=(xs[i], ys[i]), progress_bar=False
        )
        _assert_same_fit(batched, i, single)
        finals.append(float(single.elbo[-1]))
    assert len(set(finals)) == 3  # three different problems, not one repeated


def test_vmap_over_a_hyperparameter_fits_each_its_own():
    xs, ys = _datasets(1)
    data = (xs[0], ys[0])
    scales = jnp.array([0.1, 1.0, 10.0])
    key = jax.random.key(1)

    def fit_one(prior_scale):
        def log_joint(w, batch):
            return _log_joint(w, batch, prior_scale)

        return bbvi.fit(log_joint, FAMILY, key=key, num_steps=STEPS, data=data, progress_bar=False)

    batched = jax.jit(jax.vmap(fit_one))(scales)
    for i, scale in enumerate(np.asarray(scales)):
        single = fit_one(float(scale))
        _assert_same_fit(batched, i, single)
    # The tightest prior shrinks the weights most: the fits really saw different hyperparameters.
    norms = np.linalg.norm(np.asarray(batched.params["loc"]), axis=1)
    assert norms[0] < norms[1] and norms[0] < norms[2]


def test_fits_under_a_transformation_leave_no_compiled_program_holding_its_tracers():
    # A log-joint closing over a vmapped hyperparameter closes over a tracer: a program built for it
    # must not outlive the transformation in fit's compile cache (nor give wrong answers later).
    from bbvi.fit import driver

    xs, ys = _datasets(1)
    data = (xs[0], ys[0])
    before = set(driver._programs)

    def fit_one(prior_scale):
        return bbvi.fit(
            lambda w, batch: _log_joint(w, batch, prior_scale),
            FAMILY,
            key=jax.random.key(1),
            num_steps=STEPS,
            data=data,
            progress_bar=False,
        )

    eager = jax.vmap(fit_one)(jnp.array([0.1, 10.0]))  # no jit: fit's host path meets the tracer
    jitted = jax.jit(jax.vmap(fit_one))(jnp.array([0.1, 10.0]))
    assert not set(driver._programs) - before  # nothing new (the LRU may have evicted older entries)
    np.testing.assert_allclose(eager.params["loc"], jitted.params["loc"], rtol=1e-5, atol=1e-6)
