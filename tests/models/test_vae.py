"""The VAE (bbvi.models.vae): its closed-form linear-Gaussian reference (PPCA), a linear VAE that must
reach it, and a short VAE fit on the sprites that must beat the best model without latents.

Fits share one module-scoped fixture each: compilation dominates their cost.
"""

from __future__ import annotations

import math

import jax
import numpy as np
import optax
import pytest

import bbvi
from bbvi.models import vae
from bbvi.models.vae import ppca, sprites

# PPCA: D = 5 observed dimensions, K = 2 latent ones, N = 500 data in minibatches of 100.
NUM_DATA, DIM, LATENT_DIM, BATCH = 500, 5, 2, 100
PPCA_STEPS = 5000


def rotation(angle: float) -> np.ndarray:
    return np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])


@pytest.fixture(scope="module")
def ppca_data():
    data = ppca.simulate(seed=0, num_data=NUM_DATA, dim=DIM, latent_dim=LATENT_DIM)
    return data, ppca.max_log_likelihood(data.x, LATENT_DIM)


# --------------------------------------------------------------------------------------------------
# The closed-form references check each other (numpy float64: nothing to compile).


def test_max_log_likelihood_is_the_likelihood_at_the_solution_and_a_maximum(ppca_data):
    data, ml = ppca_data
    at_solution = ppca.log_likelihood(data.x, ml.weights, ml.mean, ml.noise_scale)
    np.testing.assert_allclose(ml.log_likelihood, at_solution, rtol=1e-10)
    # W is determined up to a rotation R of the latent space.
    rotated = ppca.log_likelihood(data.x, ml.weights @ rotation(0.7), ml.mean, ml.noise_scale)
    np.testing.assert_allclose(rotated, ml.log_likelihood, rtol=1e-10)
    # Every other (W, b, sigma) is lower: the data-generating one and random moves from the maximum.
    assert ppca.log_likelihood(data.x, data.weights, data.mean, data.noise_scale) < ml.log_likelihood
    rng = np.random.default_rng(0)
    for _ in range(20):
        moved = ppca.log_likelihood(
            data.x,
            ml.weights + 0.05 * rng.standard_normal(ml.weights.shape),
            ml.mean + 0.05 * rng.standard_normal(DIM),
            ml.noise_scale * math.exp(0.05 * rng.standard_normal()),
        )
        assert moved < ml.log_likelihood


def test_elbo_of_the_exact_posterior_is_the_max_log_likelihood(ppca_data):
    # At W = U (Lambda - sigma^2)^{1/2} (R = I) the posterior covariance is diagonal, so a mean-field
    # q can be the exact posterior: KL = 0 and the ELBO is the log-likelihood, the optimum a linear
    # VAE can reach.
    data, ml = ppca_data
    means, cov = ppca.exact_posterior(data.x, ml.weights, ml.mean, ml.noise_scale)
    np.testing.assert_allclose(cov, np.diag(np.diag(cov)), atol=1e-12)
    value = ppca.elbo(data.x, ml.weights, ml.mean, ml.noise_scale, means, np.sqrt(np.diag(cov)))
    np.testing.assert_allclose(value, ml.log_likelihood, rtol=1e-10)


def test_best_mean_field_gap_is_the_closed_form_kl(ppca_data):
    # A rotated W correlates the posterior: the best factorised q falls short of log p(x) by
    # KL(q* || p) = (sum_k log Lambda_kk - log det Lambda) / 2 per datum, Lambda the posterior precision.
    data, ml = ppca_data
    weights = ml.weights @ rotation(0.6)
    log_lik = ppca.log_likelihood(data.x, weights, ml.mean, ml.noise_scale)
    loc, scale = ppca.best_mean_field(data.x, weights, ml.mean, ml.noise_scale)
    best = ppca.elbo(data.x, weights, ml.mean, ml.noise_scale, loc, scale)
    precision = np.linalg.inv(ppca.exact_posterior(data.x, weights, ml.mean, ml.noise_scale)[1])
    kl = 0.5 * (np.sum(np.log(np.diag(precision))) - np.linalg.slogdet(precision)[1])
    assert kl > 0.01
    np.testing.assert_allclose(log_lik - best, NUM_DATA * kl, rtol=1e-8)
    rng = np.random.default_rng(1)
    for _ in range(10):  # and it is the best: any other factorised q is lower
        other = ppca.elbo(
            data.x,
            weights,
            ml.mean,
            ml.noise_scale,
            loc + 0.05 * rng.standard_normal(loc.shape),
            scale * np.exp(0.05 * rng.standard_normal(scale.shape)),
        )
        assert other < best


# --------------------------------------------------------------------------------------------------
# A linear VAE (Kingma and Welling: minibatches, one sample, pathwise) reaches the PPCA maximum.


@pytest.fixture(scope="module")
def linear_vae(ppca_data):
    data, _ = ppca_data
    family = ppca.family(DIM, LATENT_DIM, BATCH)
    # A large step first: the slowest direction is the rotation of the latent space that makes the
    # posterior covariance diagonal (W's columns orthogonal), which only the mean-field encoder's KL
    # drives, weakly; then the decay quiets the one-sample minibatch noise. (With minibatches of 50
    # that noise drowns the rotation's gradient and the fit stalls ~20 nats short; 100 converge.)
    optimizer = optax.adam(optax.cosine_decay_schedule(3e-2, PPCA_STEPS, alpha=0.01))
    result = bbvi.fit(
        ppca.log_joint,
        family,
        key=jax.random.key(1),
        num_steps=PPCA_STEPS,
        optimizer=optimizer,
        data=data.x,
        batch_size=BATCH,
        num_samples=1,
        progress_bar=False,
    )
    return family, result


def test_linear_vae_elbo_approaches_the_ppca_max_log_likelihood_from_below(ppca_data, linear_vae):
    data, ml = ppca_data
    family, result = linear_vae
    fitted = ppca.fitted(result.params, family, data.x)
    closed_form = ppca.elbo(data.x, *fitted)
    # Every ELBO bounds log p(x | theta) <= the maximum (float64 closed forms: rounding ~1e-10).
    assert closed_form <= ml.log_likelihood + 1e-8 * abs(ml.log_likelihood)
    # How close is close: the log-likelihood ratio of the maximum over the data-generating theta is
    # chi^2_p / 2 (Wilks), p/2 in expectation, with p = DK + D + 1 - K(K-1)/2 free decoder parameters
    # (the latent rotation is not identified). A fit within p/2 of the maximum is as good as the data
    # can tell apart; a fit that missed the principal subspace or the noise level is off by far more.
    p = DIM * LATENT_DIM + DIM + 1 - LATENT_DIM * (LATENT_DIM - 1) // 2
    gap = ml.log_likelihood - closed_form
    assert gap <= p / 2, f"ELBO {gap:.2f} nats below the maximum log-likelihood (tolerance {p / 2})"
    # The fit started far below (the initial ELBO estimate, per datum, times N).
    assert ml.log_likelihood - NUM_DATA * float(result.elbo[:10].mean()) / BATCH > 10 * p

    # bbvi's own Monte Carlo ELBO of the fitted (theta, encoder) on all the data agrees with the closed
    # form within 4 standard errors (256 independent one-sample estimates), and so is within the same
    # tolerance of the maximum.
    estimates = vae.elbo_estimates(ppca.log_joint, family, result.params, data.x, jax.random.key(2), 256)
    se = estimates.std(ddof=1) / math.sqrt(len(estimates))
    assert abs(estimates.mean() - closed_form / NUM_DATA) <= 4 * se
    assert ml.log_likelihood / NUM_DATA - p / 2 / NUM_DATA - 4 * se <= estimates.mean()
    assert estimates.mean() <= ml.log_likelihood / NUM_DATA + 4 * se


def test_linear_vae_decoder_spans_the_principal_subspace(ppca_data, linear_vae):
    data, ml = ppca_data
    family, result = linear_vae
    weights, _, noise_scale, _, _ = ppca.fitted(result.params, family, data.x)
    # The data pin the principal subspace down only to its sampling error (Anderson's first-order
    # standard error, ~0.02 here; the generating W is that far from the ML one). The fit must find
    # the maximum-likelihood subspace more precisely than that.
    tolerance = ppca.subspace_standard_error(data.x, LATENT_DIM)
    assert ppca.subspace_distance(weights, ml.weights) < tolerance
    assert ppca.subspace_distance(data.weights, ml.weights) > ppca.subspace_distance(weights, ml.weights)
    # And the noise scale: log sigma's sampling sd is about 1 / sqrt(2 N (D - K)) relative.
    assert abs(math.log(noise_scale / ml.noise_scale)) < 1 / math.sqrt(2 * NUM_DATA * (DIM - LATENT_DIM))


# --------------------------------------------------------------------------------------------------
# Sprites: the data and a short VAE fit.

IMAGE_SIZE, NUM_TRAIN, NUM_TEST, VAE_BATCH, VAE_STEPS = 12, 1000, 200, 32, 400


def test_sprites_are_reproducible_and_match_their_factors():
    data = sprites.simulate(seed=3, num_data=300, image_size=IMAGE_SIZE)
    again = sprites.simulate(seed=3, num_data=300, image_size=IMAGE_SIZE)
    np.testing.assert_array_equal(data.images, again.images)
    assert not np.array_equal(
        data.images, sprites.simulate(seed=4, num_data=300, image_size=IMAGE_SIZE).images
    )
    images = np.asarray(data.images)
    x, y, r = (np.asarray(v, np.float64) for v in (data.x, data.y, data.radius))
    assert set(np.unique(images)) == {0.0, 1.0}
    assert set(np.unique(np.asarray(data.shape))) == {0, 1}  # both shapes occur
    centres = np.arange(IMAGE_SIZE) + 0.5
    on = images.sum(axis=(1, 2))
    # The on-pixels' centroid is the shape's centre to within half a pixel (pixel centres are on a
    # unit grid, and both shapes are symmetric about their centre).
    np.testing.assert_array_less(np.abs(images.sum(axis=1) @ centres / on - x), 0.5 + 1e-9)
    np.testing.assert_array_less(np.abs(images.sum(axis=2) @ centres / on - y), 0.5 + 1e-9)
    # Pixel counts: a square covers between 2r - 1 and 2r + 1 pixel centres per side; a disc contains
    # every pixel within r - sqrt(2)/2 of its centre and none beyond r + sqrt(2)/2 (area bounds).
    square = np.asarray(data.shape) == sprites.SHAPES.index("square")
    assert np.all((on[square] >= (2 * r[square] - 1) ** 2) & (on[square] <= (2 * r[square] + 1) ** 2))
    half_diag = math.sqrt(2) / 2
    disc_r = r[~square]
    assert np.all(
        (on[~square] >= math.pi * (disc_r - half_diag) ** 2)
        & (on[~square] <= math.pi * (disc_r + half_diag) ** 2)
    )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_data": 0}, "num_data must be a positive int"),
        ({"image_size": 8, "max_radius": 4.0}, "does not fit"),
        ({"min_radius": 3.0, "max_radius": 2.0}, "min_radius <= max_radius"),
    ],
    ids=["no_data", "too_big", "radii_swapped"],
)
def test_sprites_reject_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sprites.simulate(**kwargs)


def test_ppca_rejects_bad_arguments():
    with pytest.raises(ValueError, match="latent_dim"):
        ppca.simulate(dim=3, latent_dim=3)
    with pytest.raises(ValueError, match="noise_scale"):
        ppca.simulate(noise_scale=0.0)
    with pytest.raises(ValueError, match="latent_dim"):
        ppca.max_log_likelihood(np.zeros((10, 3)), 0)
    with pytest.raises(ValueError, match="hidden_sizes"):
        vae.decoder_family(2, (0,), 10)


@pytest.fixture(scope="module")
def sprites_vae():
    data = sprites.simulate(seed=0, num_data=NUM_TRAIN + NUM_TEST, image_size=IMAGE_SIZE)
    train, test = data.images[:NUM_TRAIN], data.images[NUM_TRAIN:]
    family = vae.family(2, (IMAGE_SIZE, IMAGE_SIZE), VAE_BATCH, hidden_sizes=(64,))
    init = bbvi.init(family, jax.random.key(0))
    optimizer = optax.adam(optax.cosine_decay_schedule(1e-2, VAE_STEPS, alpha=0.1))
    result = bbvi.fit(
        vae.log_joint,
        family,
        key=jax.random.key(1),
        num_steps=VAE_STEPS,
        optimizer=optimizer,
        data=train,
        batch_size=VAE_BATCH,
        num_samples=1,
        init_params=init,
        progress_bar=False,
    )
    return train, test, family, init, result


def test_vae_held_out_elbo_beats_its_start_and_the_best_model_without_latents(sprites_vae):
    train, test, family, init, result = sprites_vae
    key = jax.random.key(2)
    before = vae.elbo_estimates(vae.log_joint, family, init, test, key, 32)
    after = vae.elbo_estimates(vae.log_joint, family, result.params, test, key, 32)
    se_before, se_after = (e.std(ddof=1) / math.sqrt(len(e)) for e in (before, after))
    gain = after.mean() - before.mean()
    assert gain > 4 * math.hypot(se_before, se_after), (before.mean(), after.mean())
    # The clear margin: a decoder that ignores z is the independent-pixel model, whose best held-out
    # log-likelihood is closed form; the ELBO (a lower bound) must beat it, so the VAE uses its latents.
    baseline = vae.independent_pixels_log_likelihood(train, test)
    assert after.mean() > baseline + 4 * se_after, (after.mean(), baseline)
    assert np.all(np.isfinite(np.asarray(result.elbo)))
