"""Known numerical faults, reproduced and pinned: full-rank sticking the landing in float32.

Before the fix, `FullRankGaussian` stored L's raw off-diagonal entries, and sticking the landing
(STL) evaluated log q at the rounded draw `x = loc + L eps` by solving `L r = x - loc`. Adam moves
every raw entry by about its step size: on a narrow posterior (sds ~0.05) the off-diagonals grew
to several times the diagonal within tens of steps, L's condition number grew exponentially with
the dimension (1e9 to 1e18 in 12 to 30 dimensions), the solve amplified x's rounding by it, and the
fit diverged with ELBO estimates of 1e8 to 1e16, far above log Z (impossible for a bound). Now the
off-diagonals are stored relative to their row's scale, and log q comes from the noise.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import bbvi

STL = bbvi.Estimator("reparam", entropy="stl")


def test_parameterisation_round_trip_and_init():
    family = bbvi.FullRankGaussian(4, init_scale=0.3)
    params = bbvi.init(family, jax.random.key(0))
    assert jax.tree.map(jnp.shape, params) == {"loc": (4,), "scale_tril": (10,)}
    np.testing.assert_allclose(family.scale_tril(params), 0.3 * np.eye(4), rtol=1e-6)
    tril = np.tril(np.random.default_rng(0).normal(size=(4, 4)), -1) + np.diag([2.0, 0.1, 1.0, 0.01])
    params = family.params_from_scale_tril(np.zeros(4), tril)
    # The documented layout: N = L_ij / L_ii row by row, then log of L's diagonal.
    expected = np.concatenate(
        [(tril / np.diag(tril)[:, None])[np.tril_indices(4, -1)], np.log(np.diag(tril))]
    )
    np.testing.assert_allclose(params["scale_tril"], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(family.scale_tril(params), tril, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match=r"scale_tril of shape \(dim, dim\), got \(4,\) and \(3, 3\)"):
        family.params_from_scale_tril(np.zeros(4), np.eye(3))


def test_log_q_from_the_noise_is_exact_where_solving_is_not():
    # L = 0.05 (I + 3 S), S the subdiagonal shift: condition number 5e9, far past float32's 1e7.
    dim = 20
    tril = 0.05 * (np.eye(dim) + np.diag(np.full(dim - 1, 3.0), -1))
    family = bbvi.FullRankGaussian(dim)
    params = family.params_from_scale_tril(jnp.ones(dim, jnp.float32), jnp.asarray(tril, jnp.float32))
    eps = jax.random.normal(jax.random.key(0), (dim,))
    e64 = np.asarray(eps, np.float64)
    exact = -0.5 * e64 @ e64 - dim * math.log(0.05) - 0.5 * dim * math.log(2 * math.pi)
    x, log_q = jax.jit(family.from_noise_and_log_prob)(params, eps)
    # Solving at the rounded x gave -1.1e6 here; from the noise it is exact to float32 rounding
    # of a few terms of size ~60.
    assert abs(float(log_q) - exact) < 1e-4 * abs(exact)
    np.testing.assert_allclose(x, np.ones(dim) + tril @ e64, rtol=1e-5)

    # STL's gradient in loc: -Sigma^-1 (x - loc) = -L^-T eps (entries up to 4e10). The solve at the
    # rounded x was off by 800 times its size; on x's tangent it has float32 relative accuracy.
    def stl_log_q(params):
        return family.from_noise_and_log_prob(params, eps, True)[1]

    grad = jax.jit(jax.grad(stl_log_q))(params)
    expected = -np.linalg.solve(tril.T, e64)
    assert np.max(np.abs(np.asarray(grad["loc"], np.float64) - expected)) < 1e-5 * np.max(np.abs(expected))
    # The value does not depend on which parameters are held fixed.
    assert float(stl_log_q(params)) == float(log_q)


@pytest.mark.slow
def test_stl_full_rank_lands_on_a_narrow_correlated_target():  # about 5 s
    """The regression: an AR(1) Gaussian target (rho 0.8, sd 0.05, 12 dimensions), STL with Adam at
    0.1 decayed on a cosine. Before the fix every key diverged (KL 1e4 to 3e5, condition number of
    L 1e8 to 1e14, ELBO estimates up to 1e16). The optimum is q = target (KL 0)."""
    dim, sd, rho, steps = 12, 0.05, 0.8, 3000
    idx = np.arange(dim)
    cov = sd**2 * rho ** np.abs(np.subtract.outer(idx, idx))
    mean = np.random.default_rng(0).normal(size=dim)
    precision = np.linalg.inv(cov)
    prec32, mean32 = jnp.asarray(precision, jnp.float32), jnp.asarray(mean, jnp.float32)

    def log_joint(z):
        r = z - mean32
        return -0.5 * r @ prec32 @ r

    family = bbvi.FullRankGaussian(dim)
    result = bbvi.fit(
        log_joint,
        family,
        key=jax.random.key(0),
        num_steps=steps,
        optimizer=optax.adam(optax.cosine_decay_schedule(0.1, steps)),
        estimator=STL,
        num_samples=4,
        progress_bar=False,
    )
    loc = np.asarray(result.params["loc"], np.float64)
    tril = np.asarray(family.scale_tril(result.params), np.float64)
    fitted = tril @ tril.T
    r = loc - mean
    kl = 0.5 * (
        np.trace(precision @ fitted)
        + r @ precision @ r
        - dim
        + np.linalg.slogdet(cov)[1]
        - np.linalg.slogdet(fitted)[1]
    )
    # 1e-3 nats: the mean within ~0.05 sd and the covariance within a few percent. (The fit reaches
    # 3e-5 with this key; any divergence is off by orders of magnitude.)
    assert kl < 1e-3, kl
    # The estimates: log Z = 1/2 log det(2 pi Sigma) bounds their mean, not each one (a 4-sample
    # estimate far from the optimum exceeds it by about a nat); the divergence gave 1e8 and more.
    log_z = 0.5 * np.linalg.slogdet(2 * np.pi * cov)[1]
    elbo = np.asarray(result.elbo, np.float64)
    assert np.all(np.isfinite(elbo)) and elbo.max() < log_z + 10.0
    # At the optimum STL's estimate has no noise: the late ones average to log Z - KL within 4
    # standard errors, plus 1e-4 for float32 rounding of log p (terms up to ~1e3).
    late = elbo[-500:]
    se = late.std(ddof=1) / math.sqrt(late.size)
    assert abs(late.mean() - log_z) < 1e-3 + 4 * se + 1e-4, (late.mean(), log_z, se)
