"""Variational autoencoders (Kingma and Welling 2014): amortised VI with a decoder learned alongside.

For data x_1..x_N with one latent each, a decoder p_theta(x | z) and a prior p(z) = N(0, I_K),

    log p_theta(x) >= ELBO(theta, phi) = sum_n E_{q_phi(z_n | x_n)}[log p_theta(x_n | z_n) + log p(z_n)
                                                                   - log q_phi(z_n | x_n)],

where q_phi(z_n | x_n) is *amortised*: one encoder network with weights phi maps every datum to
the parameters of its q (`bbvi.Amortized`), instead of free parameters per datum. The decoder's
weights theta are learned too: in bbvi they are latents with a point-mass family (`bbvi.PointMass`)
under a flat prior, so the ELBO is maximised over theta (maximum likelihood, variational EM) and
bounds `log p_theta(x)`, the log-likelihood at the fitted theta, not a marginal over theta.

Kingma and Welling's algorithm is `bbvi.fit(log_joint, family, data=x, batch_size=B,
num_samples=1)`: each step draws a minibatch, one reparameterised z_n per datum, and takes a
gradient step in (theta, phi) together.

**Minibatch scaling.** The log-joint of a minibatch is the plain sum over its B data, *not* scaled
by N / B: bbvi adds the encoder's entropy for the same B data, so the minibatch objective is
`sum_{n in batch} ELBO_n`, an unbiased estimate of (B / N) ELBO. Scaling the log-joint alone would
weigh the entropies by B / N and shrink q. (A prior on theta, if one were wanted, would enter the
minibatch log-joint as (B / N) log p(theta).) Divide a fit's ELBO trace by B for the ELBO per datum.

Modules:
    model: the VAE on binary images (MLP decoder, Bernoulli pixels), held-out ELBO estimates, and
        the no-latent baseline (independent pixels).
    sprites: small binary images of discs and squares with known factors, generated from a seed.
    ppca: the linear-Gaussian VAE, which is probabilistic PCA, with its closed-form references
        (maximum likelihood, exact posterior, the ELBO of any Gaussian q).
"""

from bbvi.models.vae import ppca, sprites
from bbvi.models.vae.model import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_HIDDEN_SIZES,
    decode,
    decoder_family,
    elbo_estimates,
    encoder_family,
    family,
    independent_pixels_log_likelihood,
    log_joint,
    point_estimates,
    with_batch_size,
)

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_HIDDEN_SIZES",
    "decode",
    "decoder_family",
    "elbo_estimates",
    "encoder_family",
    "family",
    "independent_pixels_log_likelihood",
    "log_joint",
    "point_estimates",
    "ppca",
    "sprites",
    "with_batch_size",
]
