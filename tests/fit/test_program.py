"""`fit` as a program: one trace of the log-joint, no recompiles, jit/vmap, determinism, and a
progress bar and chunking that never change what runs."""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from numpyro.distributions import constraints

import bbvi

fit_module = importlib.import_module("bbvi.fit.driver")

FAMILY = {
    "w": bbvi.MeanFieldGaussian((3,)),
    "s": bbvi.Constrained(bbvi.MeanFieldGaussian(()), constraints.positive),
    "b": bbvi.Bernoulli((2,)),
}


class CountingLogJoint:
    """A log-joint that counts how often Python runs it (i.e. how often it is traced)."""

    def __init__(self):
        self.calls = 0

    def __call__(self, z):
        self.calls += 1
        bits = z["b"].astype(jnp.float32)
        return (
            -0.5 * jnp.sum((z["w"] - 1.0) ** 2)
            - z["s"]
            + jnp.log(z["s"])
            + jnp.sum(bits * jnp.array([1.0, -1.0]))
        )


def run(log_joint, key=0, num_steps=200, **options):
    options.setdefault("progress_bar", False)
    return bbvi.fit(log_joint, FAMILY, key=jax.random.key(key), num_steps=num_steps, **options)


def assert_same(a, b):
    for x, y in zip(
        jax.tree.leaves((a.params, a.opt_state, a.elbo)), jax.tree.leaves((b.params, b.opt_state, b.elbo))
    ):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_log_joint_traced_once_per_fit_and_not_again_for_a_repeat():
    log_joint = CountingLogJoint()
    first = run(log_joint, num_steps=500)
    assert log_joint.calls == 1, "the log-joint must be traced once, not per step or per chunk"
    # Same settings, another key and a length in the same chunk bucket: nothing is traced again.
    run(log_joint, key=1, num_steps=700)
    assert log_joint.calls == 1
    assert first.elbo.shape == (500,)


def test_progress_bar_does_not_change_what_runs(capsys):
    log_joint = CountingLogJoint()
    quiet = run(log_joint, num_steps=300, progress_bar=False)
    shown = run(log_joint, num_steps=300, progress_bar=True)
    assert log_joint.calls == 1
    assert_same(quiet, shown)
    assert "300/300" in capsys.readouterr().err


def test_result_does_not_depend_on_how_the_run_is_chunked(monkeypatch):
    log_joint = CountingLogJoint()
    reference = run(log_joint, num_steps=300)
    default_chunk = fit_module._chunk_length(300)
    monkeypatch.setattr(fit_module, "_MIN_CHUNK", 16)
    monkeypatch.setattr(fit_module, "_TARGET_CHUNKS", 50)
    assert fit_module._chunk_length(300) != default_chunk
    rechunked = run(log_joint, num_steps=300)
    assert log_joint.calls == 2, "a new chunk length is a new program"
    np.testing.assert_allclose(np.asarray(rechunked.elbo), np.asarray(reference.elbo), rtol=1e-6)
    for x, y in zip(jax.tree.leaves(rechunked.params), jax.tree.leaves(reference.params)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)


def test_same_key_same_result_other_key_other_result():
    log_joint = CountingLogJoint()
    assert_same(run(log_joint, key=3), run(log_joint, key=3))
    assert not np.allclose(run(log_joint, key=3).elbo, run(log_joint, key=4).elbo)


def test_fit_under_vmap_over_keys_matches_separate_fits():
    log_joint = CountingLogJoint()
    keys = jax.random.split(jax.random.key(5), 3)
    batched = jax.vmap(lambda k: bbvi.fit(log_joint, FAMILY, key=k, num_steps=150, progress_bar=False))(keys)
    assert batched.elbo.shape == (3, 150)
    for i in range(3):
        single = bbvi.fit(log_joint, FAMILY, key=keys[i], num_steps=150, progress_bar=False)
        np.testing.assert_allclose(np.asarray(batched.elbo[i]), np.asarray(single.elbo), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(
            np.asarray(batched.params["w"]["loc"][i]), np.asarray(single.params["w"]["loc"]), rtol=1e-5
        )


def test_fit_under_jit_matches_eager_fit():
    log_joint = CountingLogJoint()
    jitted = jax.jit(lambda k: bbvi.fit(log_joint, FAMILY, key=k, num_steps=150, progress_bar=True))
    inside = jitted(jax.random.key(6))  # the bar is ignored under jit rather than breaking it
    eager = run(log_joint, key=6, num_steps=150)
    np.testing.assert_allclose(np.asarray(inside.elbo), np.asarray(eager.elbo), rtol=1e-5, atol=1e-5)


def test_any_optax_optimizer_and_continuing_a_fit():
    log_joint = CountingLogJoint()
    optimizer = optax.chain(
        optax.clip_by_global_norm(10.0), optax.sgd(optax.cosine_decay_schedule(0.05, 400))
    )
    first = run(log_joint, num_steps=200, optimizer=optimizer)
    more = run(
        log_joint,
        key=1,
        num_steps=200,
        optimizer=optimizer,
        init_params=first.params,
        init_opt_state=first.opt_state,
    )
    # The schedule's step count carries over, so the second half continues the first.
    counts = [x for x in jax.tree.leaves(more.opt_state) if jnp.issubdtype(x.dtype, jnp.integer)]
    assert counts and all(int(c) == 400 for c in counts)
    assert np.mean(more.elbo[-50:]) > np.mean(first.elbo[:50])


def test_fit_result_samples_on_the_supports():
    result = run(CountingLogJoint(), num_steps=300)
    draws = result.sample(jax.random.key(0), 1000)
    assert draws["w"].shape == (1000, 3)
    assert draws["s"].shape == (1000,) and bool(jnp.all(draws["s"] > 0))
    assert draws["b"].shape == (1000, 2) and set(np.unique(draws["b"])) <= {0, 1}
    # The optimum of this product target is known: w ~ N(1, 1) exactly, so the mean is within MC error.
    assert np.all(np.abs(np.asarray(draws["w"]).mean(0) - 1.0) < 0.3)
    assert np.isfinite(result.elbo).all()


def test_an_unhashable_log_joint_still_fits():
    class Unhashable(CountingLogJoint):
        __hash__ = None  # e.g. a callable object holding arrays: it cannot key the compile cache

    log_joint = Unhashable()
    with pytest.raises(TypeError):
        hash(log_joint)
    result = run(log_joint, num_steps=100)
    assert result.elbo.shape == (100,) and np.isfinite(result.elbo).all()
    assert_same(result, run(CountingLogJoint(), num_steps=100))


def test_default_optimizer_anneals_over_each_fit_and_restarts_when_continued():
    log_joint = CountingLogJoint()
    first = run(log_joint, num_steps=50)
    # The decay ends at a step size of 0; continuing starts a new decay, so the continued fit moves
    # (without the restart its step size would stay 0 and the parameters would not change at all).
    more = run(log_joint, num_steps=50, init_params=first.params, init_opt_state=first.opt_state)
    moved = [
        float(jnp.max(jnp.abs(a - b)))
        for a, b in zip(jax.tree.leaves(more.params), jax.tree.leaves(first.params))
    ]
    assert max(moved) > 1e-3
