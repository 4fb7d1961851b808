"""`Subsampled`: a model given as a log-prior plus a likelihood over data, for stochastic VI.

With `N` data points and a minibatch `B` of them, the ELBO

    E_q[log p(z)] + sum_{i <= N} E_q[log p(x_i, z_i | z)] - E_q[log q(z)] - sum_{i <= N} E_q[log q(z_i | x_i)]

has the unbiased estimate in which every per-datum term, the likelihood and the local latents'
log q alike, is summed over the batch and scaled by `N / |B|` (Hoffman et al. 2013). Global latents
are those of data-free families; local latents are those of amortised families (`bbvi.Amortized`),
one per datum of the batch. A plain log-joint cannot say which of its terms are per-datum, so bbvi
cannot scale it; given apart, they are scaled exactly, local entropies included.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import numpy as np


@dataclasses.dataclass(frozen=True)
class Subsampled:
    """A model split into a log-prior over the global latents and a likelihood over data points.

    Pass it to `bbvi.fit` in place of a log-joint, with `data=` and `batch_size=`: each step draws a
    minibatch and scales the likelihood, and the amortised (local) latents' log q, by
    `num_data / batch_size`, so the ELBO and its gradient are unbiased. Without `batch_size` the
    scale is 1: the full-data ELBO. Latents of data-free families are global and their prior
    belongs in `log_prior`; latents of amortised families are local, one per data point.

    Args:
        log_prior: `z -> scalar`, the log-density of the global latents (their prior).
        log_likelihood: `(z, batch) -> scalar`, the log-density of a batch of data points, summed
            over them, with the local latents' prior (the amortised leaves of `z` have a leading
            batch axis). With `per_datum=True`, `(z_i, x_i) -> scalar` for one data point instead:
            `x_i` is one row of every data leaf and `z_i` has the global latents and row `i` of the
            local ones; bbvi vectorises it over the batch.
        per_datum: whether `log_likelihood` takes one data point (see above).
        num_data: the number of data points `N`. `fit` sets it from its `data`; set it yourself to
            call `bbvi.elbo_value_and_grad` on minibatches.

    Example:
        >>> import jax, jax.numpy as jnp, bbvi
        >>> from numpyro import distributions as dist
        >>> x = 3.0 + jax.random.normal(jax.random.key(0), (10_000,))
        >>> model = bbvi.Subsampled(
        ...     log_prior=lambda z: dist.Normal(0.0, 10.0).log_prob(z),
        ...     log_likelihood=lambda z, x_i: dist.Normal(z, 1.0).log_prob(x_i),
        ...     per_datum=True,
        ... )
        >>> result = bbvi.fit(model, bbvi.MeanFieldGaussian(()), key=jax.random.key(1), num_steps=2000,
        ...                   data=x, batch_size=100, progress_bar=False)
        >>> bool(abs(result.params["loc"] - x.mean()) < 0.05)
        True
    """

    log_prior: Callable
    log_likelihood: Callable
    per_datum: bool = False
    num_data: int | None = None

    def __post_init__(self):
        for name in ("log_prior", "log_likelihood"):
            if not callable(getattr(self, name)):
                raise TypeError(f"Subsampled: {name} must be callable, got {getattr(self, name)!r}")
        if not isinstance(self.per_datum, bool):
            raise TypeError(f"Subsampled: per_datum must be a bool, got {self.per_datum!r}")
        if self.num_data is not None:
            if isinstance(self.num_data, bool) or not isinstance(self.num_data, (int, np.integer)):
                raise TypeError(f"Subsampled: num_data must be an int, got {self.num_data!r}")
            if self.num_data < 1:
                raise ValueError(f"Subsampled: num_data must be positive, got {self.num_data}")
            object.__setattr__(self, "num_data", int(self.num_data))

    def batch_log_likelihood(self, z, batch, local) -> jax.Array:
        """The likelihood summed over `batch`; `local` is the pytree of `z`'s per-datum flags."""
        if not self.per_datum:
            return self.log_likelihood(z, batch)
        axes = jax.tree.map(lambda is_local: 0 if is_local else None, local)
        per_datum = jax.vmap(self.log_likelihood, in_axes=(axes, 0))(z, batch)
        if per_datum.ndim != 1:
            raise ValueError(
                "Subsampled: a per_datum log_likelihood must return a scalar for one data point, got "
                f"shape {per_datum.shape[1:]}"
            )
        return per_datum.sum()


def num_rows(data) -> int:
    """The number of data points in a batch: the leading axis its leaves share."""
    return int(jax.tree.leaves(data)[0].shape[0])
