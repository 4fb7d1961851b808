"""`sample_chunk_size`: the Monte Carlo samples in chunks give the same estimate in less memory."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest

import bbvi
from bbvi.models import logistic_regression

DATA = logistic_regression.simulate(0, 4000, 20)
LOG_JOINT = logistic_regression.log_joint_fn(DATA)
GAUSSIAN = bbvi.MeanFieldGaussian((20,))
MIXED = {"w": bbvi.MeanFieldGaussian((3,)), "b": bbvi.Bernoulli((4,))}


def _mixed_log_joint(z):
    return dist.Normal(0.0, 1.0).log_prob(z["w"]).sum() - jnp.sum((z["b"] - z["w"].sum()) ** 2)


def _assert_same(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=2e-5, atol=1e-4)


@pytest.mark.parametrize(
    "log_joint, family, estimator, chunk",
    [(LOG_JOINT, GAUSSIAN, "reparam", 1), (_mixed_log_joint, MIXED, "auto", 3)],
    ids=["pathwise-chunks-of-1", "pathwise+score-chunks-of-3-of-8"],
)
def test_chunked_samples_give_the_same_estimate(log_joint, family, estimator, chunk):
    params = bbvi.init(family, jax.random.key(0))
    key = jax.random.key(1)
    whole = bbvi.elbo_value_and_grad(log_joint, family, estimator=estimator, num_samples=8)
    chunked = bbvi.elbo_value_and_grad(
        log_joint, family, estimator=estimator, num_samples=8, sample_chunk_size=chunk
    )
    _assert_same(jax.jit(chunked)(params, key), jax.jit(whole)(params, key))


def test_fit_with_chunked_samples_follows_the_same_path():
    common = dict(key=jax.random.key(2), num_steps=20, num_samples=4, progress_bar=False)
    whole = bbvi.fit(LOG_JOINT, GAUSSIAN, **common)
    chunked = bbvi.fit(LOG_JOINT, GAUSSIAN, sample_chunk_size=1, **common)
    np.testing.assert_allclose(np.asarray(chunked.elbo), np.asarray(whole.elbo), rtol=1e-5)
    _assert_same(chunked.params, whole.params)


def _temp_bytes(chunk):
    vg = bbvi.elbo_value_and_grad(LOG_JOINT, GAUSSIAN, num_samples=32, sample_chunk_size=chunk)
    params = bbvi.init(GAUSSIAN, jax.random.key(0))
    compiled = jax.jit(vg).lower(params, jax.random.key(1)).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def test_chunks_bound_the_memory_by_one_chunk():
    # XLA's own accounting of the compiled program's scratch memory: with all 32 samples at once it
    # holds 32 copies of the per-datum intermediates (4000 rows each); one sample at a time, one.
    whole, one = _temp_bytes(None), _temp_bytes(1)
    assert one < whole / 8, (one, whole)


def test_chunk_size_must_be_a_positive_int():
    with pytest.raises(ValueError, match="sample_chunk_size must be a positive int"):
        bbvi.elbo_value_and_grad(LOG_JOINT, GAUSSIAN, sample_chunk_size=0)
    with pytest.raises(ValueError, match="sample_chunk_size must be a positive int"):
        bbvi.fit(LOG_JOINT, GAUSSIAN, key=jax.random.key(0), num_steps=1, sample_chunk_size=2.5)
