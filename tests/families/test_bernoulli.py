"""The Bernoulli family's score, where the score-function estimator reads it."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import bbvi


def test_score_is_z_minus_p_at_every_logit_including_zero():
    # d/dl log q(z) = z - sigmoid(l). At l = 0, where every Bernoulli fit starts, numpyro's own
    # log-density differentiates to z (a clip's derivative at its kink), which biases the first
    # score-function steps; the family must give z - 1/2 there.
    family = bbvi.Bernoulli((4, 2))
    logits = jnp.array([[0.0, 0.0], [1.5, -2.0], [0.0, 30.0], [-30.0, 0.25]])
    for z in ([[1, 0], [1, 0], [0, 1], [1, 1]], [[0, 1], [0, 1], [1, 0], [0, 0]]):
        z = jnp.array(z, dtype=jnp.int32)
        score = jax.grad(lambda lg, z=z: family.log_prob({"logits": lg}, z))(logits)
        np.testing.assert_allclose(score, z - jax.nn.sigmoid(logits), atol=1e-6)
        np.testing.assert_allclose(
            family.log_prob({"logits": logits}, z),
            np.sum(np.where(z, jax.nn.log_sigmoid(logits), jax.nn.log_sigmoid(-logits))),
            rtol=1e-6,
        )
