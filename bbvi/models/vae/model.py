"""The VAE on binary images: an MLP decoder learned by maximum likelihood, an amortised Gaussian encoder.

    z_n ~ N(0, I_K),    x_n | z_n ~ prod_j Bernoulli(x_nj; sigmoid(f_theta(z_n)_j)),
    q_phi(z_n | x_n) = N(z_n; mu_phi(x_n), diag(sigma_phi(x_n)^2)),

with `f_theta` an MLP (tanh hidden layers) whose weights theta are point masses
(`bbvi.PointMass`: learned, with a flat prior) and `(mu_phi, log sigma_phi)` the encoder network of
`bbvi.Amortized`. See the package docstring for the objective and its minibatch scaling.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist

import bbvi
from bbvi.families import is_family

#: Encoder and decoder hidden layers, and minibatch size, used by the tests and the notebook.
DEFAULT_HIDDEN_SIZES = (128,)
DEFAULT_BATCH_SIZE = 64


def _check_sizes(owner: str, **sizes) -> None:
    for name, value in sizes.items():
        values = value if isinstance(value, tuple) else (value,)
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in values):
            raise ValueError(f"{owner}: {name} must be positive int(s), got {value!r}")


def decoder_family(latent_dim: int, hidden_sizes: Sequence[int], output_dim: int) -> list[dict]:
    """The MLP's weights as point masses: a list of layers `{"weights": (m, n), "bias": (n,)}`.

    Layer sizes run `latent_dim -> *hidden_sizes -> output_dim`. Weights start Glorot-uniform
    (`init_radius = sqrt(6 / (m + n))`, so activations neither vanish nor saturate), biases at zero.
    """
    hidden_sizes = tuple(hidden_sizes)
    _check_sizes("decoder_family", latent_dim=latent_dim, hidden_sizes=hidden_sizes, output_dim=output_dim)
    sizes = (latent_dim, *hidden_sizes, output_dim)
    return [
        {
            "weights": bbvi.PointMass((m, n), init_radius=math.sqrt(6.0 / (m + n))),
            "bias": bbvi.PointMass((n,), init_radius=0.0),
        }
        for m, n in zip(sizes[:-1], sizes[1:])
    ]


def decode(theta: list[dict], z: jax.Array) -> jax.Array:
    """The decoder's logits `f_theta(z)`, shape `z.shape[:-1] + (output_dim,)`."""
    h = z
    for layer in theta[:-1]:
        h = jnp.tanh(h @ layer["weights"] + layer["bias"])
    return h @ theta[-1]["weights"] + theta[-1]["bias"]


def encoder_family(
    latent_dim: int,
    data_shape: tuple[int, ...],
    batch_size: int = DEFAULT_BATCH_SIZE,
    hidden_sizes: Sequence[int] = DEFAULT_HIDDEN_SIZES,
) -> bbvi.Amortized:
    """q(z | x): a mean-field Gaussian over `latent_dim` whose parameters an MLP reads off each datum."""
    return bbvi.Amortized(
        bbvi.MeanFieldGaussian((latent_dim,)), data_shape, batch_size, tuple(hidden_sizes), activation="tanh"
    )


def family(
    latent_dim: int,
    image_shape: tuple[int, ...],
    batch_size: int = DEFAULT_BATCH_SIZE,
    hidden_sizes: Sequence[int] = DEFAULT_HIDDEN_SIZES,
) -> dict:
    """The VAE's family: `{"decoder": point masses (decoder_family), "z": the amortised encoder}`.

    The encoder and decoder get the same hidden sizes (mirrored). Fit it with `log_joint` and
    `bbvi.fit(..., data=images, batch_size=batch_size, num_samples=1)`.

    Example:
        >>> import jax, bbvi
        >>> from bbvi.models import vae
        >>> images = vae.sprites.simulate(seed=0, num_data=100, image_size=12).images
        >>> fam = vae.family(latent_dim=2, image_shape=(12, 12), batch_size=10, hidden_sizes=(16,))
        >>> result = bbvi.fit(vae.log_joint, fam, key=jax.random.key(0), num_steps=10, num_samples=1,
        ...                   data=images, batch_size=10, progress_bar=False)
        >>> result.elbo.shape
        (10,)
    """
    output_dim = math.prod(image_shape)
    return {
        "decoder": decoder_family(latent_dim, hidden_sizes, output_dim),
        "z": encoder_family(latent_dim, tuple(image_shape), batch_size, hidden_sizes),
    }


def log_joint(z: dict, batch: jax.Array) -> jax.Array:
    """`sum_n [log N(z_n; 0, I) + log p_theta(x_n | z_n)]` over a minibatch of images `(B, ...)`.

    `z = {"decoder": theta, "z": (B, K)}`. The minibatch sum is not scaled by N / B: see the
    package docstring (the encoder's entropy, taken by bbvi, is the minibatch's too).
    """
    theta, codes = z["decoder"], z["z"]
    pixels = jnp.reshape(batch, (batch.shape[0], -1))
    prior = dist.Normal(0.0, 1.0).log_prob(codes).sum()
    return prior + dist.Bernoulli(logits=decode(theta, codes)).log_prob(pixels).sum()


def point_estimates(params):
    """The fitted values of a pytree of point-mass parameters: each `{"loc": x}` replaced by `x`.

    Example:
        >>> point_estimates([{"weights": {"loc": 1.0}, "bias": {"loc": 0.0}}])
        [{'bias': 0.0, 'weights': 1.0}]
    """
    return jax.tree.map(
        lambda p: p["loc"], params, is_leaf=lambda p: isinstance(p, dict) and set(p) == {"loc"}
    )


def with_batch_size(family, batch_size: int):
    """The family with each amortised leaf reading batches of `batch_size` (its parameters unchanged).

    An encoder's weights do not depend on the batch size, so a family fitted on minibatches of 64
    evaluates q on a whole held-out set at once.
    """

    def resize(leaf):
        return dataclasses.replace(leaf, batch_size=batch_size) if leaf.needs_data else leaf

    return jax.tree.map(resize, family, is_leaf=is_family)


@functools.lru_cache(maxsize=16)
def _elbo_program(log_joint: Callable, leaves: tuple, treedef) -> Callable:
    """Jitted `(params, keys, data) -> one-sample ELBO estimates`, one per key; cached per model."""
    value_and_grad = bbvi.elbo_value_and_grad(log_joint, treedef.unflatten(leaves), num_samples=1)
    return jax.jit(jax.vmap(lambda params, key, data: value_and_grad(params, key, data)[0], (None, 0, None)))


def elbo_estimates(
    log_joint: Callable, family, params, data, key: jax.Array, num_repeats: int = 64
) -> np.ndarray:
    """`num_repeats` independent one-sample estimates of the ELBO per datum on `data` (all of it).

    Each estimate is `(1 / N) sum_n [log p(x_n, z_n) - log q(z_n | x_n)]` at one draw `z_n ~ q`
    per datum (the closed-form entropy where q has one): unbiased for the average ELBO per datum,
    so their mean estimates it with standard error `std / sqrt(num_repeats)`. Repeated calls with
    the same model and shapes reuse one compiled program.
    """
    num_data = jax.tree.leaves(data)[0].shape[0]
    leaves, treedef = jax.tree.flatten(with_batch_size(family, num_data), is_leaf=is_family)
    program = _elbo_program(log_joint, tuple(leaves), treedef)
    values = program(params, jax.random.split(key, num_repeats), data)
    return np.asarray(values, np.float64) / num_data


def independent_pixels_log_likelihood(train: jax.Array, test: jax.Array) -> float:
    """The log-likelihood per image on `test` of independent Bernoulli pixels fitted to `train`.

    The pixel probabilities are the posterior means under a uniform prior, `(ones + 1) / (N + 2)`
    (the maximum-likelihood frequency would give a pixel never on in training probability 0). A
    VAE whose decoder ignores z is this model, with ELBO = log-likelihood (q = prior), so a VAE
    that uses its latents should beat it: the no-latent baseline.
    """
    train = np.asarray(train, np.float64).reshape(len(train), -1)
    test = np.asarray(test, np.float64).reshape(len(test), -1)
    p = (train.sum(axis=0) + 1) / (len(train) + 2)
    return float(np.mean(test @ np.log(p) + (1 - test) @ np.log1p(-p)))
