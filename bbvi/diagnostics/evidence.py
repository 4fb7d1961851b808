"""Diagnose an approximation: importance weights of q against p, PSIS k-hat, evidence and ELBO with SEs.

With draws `z_s ~ q` and log-weights `log w_s = log p(x, z_s) - log q(z_s)`:

- the ELBO is `mean(log w)`, with Monte Carlo standard error `sd(log w) / sqrt(S)`;
- `log p(x)` is estimated by `log mean(w)` (importance sampling with q as proposal), with the
  delta-method standard error `sd(w) / (sqrt(S) mean(w))`;
- PSIS smooths the weights and its k-hat says whether to trust them (`bbvi.diagnostics.psis`);
  PSIS-weighted draws give expectations under p, and resampled draws approximate p.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp

from bbvi.diagnostics.psis import MIN_DRAWS, khat_threshold, psis, verdict
from bbvi.estimators.checks import call_log_joint
from bbvi.families import tree
from bbvi.subsampled import Subsampled


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=[
        "draws",
        "log_weights",
        "raw_log_weights",
        "khat",
        "elbo",
        "elbo_se",
        "log_evidence",
        "log_evidence_se",
        "ess",
    ],
    meta_fields=[],
)
@dataclasses.dataclass(frozen=True)
class Diagnostics:
    """What `diagnose` returns: draws from q, their importance weights, and the estimates from them.

    A pytree (every field is an array). `S` is the number of draws.

    Attributes:
        draws: the latent pytree drawn from q, each leaf with a leading axis `S`, on the supports.
        log_weights: the PSIS-smoothed log importance weights, normalised (`logsumexp == 0`), `(S,)`.
        raw_log_weights: `log p(z_s) - log q(z_s)`, `(S,)`.
        khat: the Pareto shape estimate: below 0.5 good, below 0.7 usable, above unreliable
            (`verdict`).
        elbo: the ELBO estimate `mean(raw_log_weights)`.
        elbo_se: its Monte Carlo standard error, `sd(raw_log_weights) / sqrt(S)`.
        log_evidence: `log mean exp(raw_log_weights)`, the importance-sampling estimate of
            `log p(x)` with q as proposal (consistent; biased low by about `log_evidence_se**2 / 2`).
        log_evidence_se: its delta-method standard error `sd(w) / (sqrt(S) mean(w))`. The weights'
            variance is finite only for k < 0.5: there the SE is sound; for k in [0.5, 0.7) it is
            a rough guide; above it, it means nothing (the estimate may be far off however small
            the SE looks).
        ess: the PSIS effective sample size, `1 / sum(normalised smoothed weights ** 2)`.
    """

    draws: Any
    log_weights: jax.Array
    raw_log_weights: jax.Array
    khat: jax.Array
    elbo: jax.Array
    elbo_se: jax.Array
    log_evidence: jax.Array
    log_evidence_se: jax.Array
    ess: jax.Array

    @property
    def num_draws(self) -> int:
        return int(self.raw_log_weights.shape[-1])

    @property
    def verdict(self) -> str:
        """`"good"` (k-hat < 0.5), `"usable"` (below `khat_threshold(S)`, 0.7 from 2155 draws) or
        `"unreliable"`: whether q is close enough to p for PSIS estimates to be trusted."""
        return verdict(self.khat, self.num_draws)

    def _weighted_values(self, fn: Callable):
        values = jax.vmap(fn)(self.draws)
        return jnp.exp(self.log_weights), values

    def expectation(self, fn: Callable):
        """The PSIS estimate of `E_p[fn(z)]`: `fn` maps one draw to a pytree of arrays.

        Trust it as far as `verdict` says; `expectation_se` gives its Monte Carlo error.
        """
        weights, values = self._weighted_values(fn)
        return jax.tree.map(lambda v: jnp.tensordot(weights, v, axes=1), values)

    def expectation_se(self, fn: Callable):
        """Monte Carlo standard errors of `expectation(fn)`, elementwise.

        The self-normalised importance-sampling error `sqrt(sum_s w_s^2 (f_s - E)^2)` with the
        normalised smoothed weights (Vehtari et al. 2024, eq. 6 with independent draws).
        """
        weights, values = self._weighted_values(fn)

        def se(v):
            centred = v - jnp.tensordot(weights, v, axes=1)
            return jnp.sqrt(jnp.tensordot(weights**2, centred**2, axes=1))

        return jax.tree.map(se, values)

    def resample(self, key: jax.Array, n: int):
        """`n` draws picked with replacement with probabilities the smoothed weights: approximately p.

        Each draw appears in proportion to its weight (multinomial resampling), so the result is a
        sample from p as good as `verdict` says.
        """
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"resample: n must be a positive int, got {n!r}")
        rows = jax.random.categorical(key, self.log_weights, shape=(int(n),))
        return jax.tree.map(lambda d: d[rows], self.draws)

    def __str__(self) -> str:
        s = self.num_draws
        if jnp.ndim(self.khat) != 0:
            return f"Diagnostics(batch of {jnp.shape(self.khat)}, {s} draws each)"
        k = float(self.khat)
        lines = [
            f"PSIS diagnostics of q against p ({s} draws)",
            f"  Pareto k-hat       {k:.2f}: {self.verdict} (below 0.5 good, below "
            f"{khat_threshold(s):.2f} usable, else unreliable)",
            f"  ELBO               {float(self.elbo):.4f} +- {float(self.elbo_se):.4f} (MC standard error)",
            f"  log evidence (IS)  {float(self.log_evidence):.4f} +- {float(self.log_evidence_se):.4f}"
            + ("" if k < 0.7 else " (the SE is not to be trusted at this k-hat)"),
            f"  PSIS ESS           {float(self.ess):.0f} of {s}",
        ]
        return "\n".join(lines)


def diagnose(
    log_joint: Callable | Subsampled,
    family,
    params,
    key: jax.Array,
    num_draws: int = 4096,
    *,
    data=None,
    chunk_size: int | None = None,
) -> Diagnostics:
    """Importance-sample p with q at `params`: PSIS k-hat, the ELBO and `log p(x)` with their SEs.

    Draws `num_draws` latents from q, weighs each by `p(z) / q(z)`, and Pareto-smooths the weights.
    Constrained leaves are weighed in their unconstrained space (the log-joint pulled back with its
    log-Jacobian, as the estimators do), which gives the same weights without inverting the
    bijection. Point-mass leaves are held at their value: the estimates are then conditional on it.

    Args:
        log_joint: `z -> scalar` (or `(z, data) -> scalar` with `data`), or a `bbvi.Subsampled`
            model, whose full-data log-joint `log_prior(z) + log_likelihood(z, data)` is used
            (all of `data`, not a minibatch: no `N / B` scaling).
        family: a family or a dict / tuple / list of families.
        params: its parameters (e.g. `fit(...).params`).
        key: a PRNG key for the draws.
        num_draws: how many draws, at least 21 (PSIS needs a tail of 5); the default gives k-hat
            to about +-0.1.
        data: what the log-joint and amortised families condition on.
        chunk_size: evaluate the draws this many at a time (`jax.lax.map`) to bound memory;
            default all at once.

    Returns:
        A `Diagnostics` (see its attributes; `.verdict`, `.expectation(fn)`, `.resample(key, n)`).

    Example:
        >>> import jax, jax.numpy as jnp, bbvi
        >>> from bbvi.diagnostics import diagnose
        >>> log_joint = lambda z: -0.5 * z**2  # an unnormalised N(0, 1): log Z = log sqrt(2 pi)
        >>> family = bbvi.MeanFieldGaussian(())
        >>> params = {"loc": jnp.array(0.1), "log_scale": jnp.array(0.1)}
        >>> d = diagnose(log_joint, family, params, jax.random.key(0))
        >>> d.verdict, bool(abs(d.log_evidence - 0.5 * jnp.log(2 * jnp.pi)) < 5 * d.log_evidence_se)
        ('good', True)
    """
    if isinstance(num_draws, bool) or not isinstance(num_draws, (int, np.integer)):
        raise TypeError(f"diagnose: num_draws must be an int, got {num_draws!r}")
    if num_draws < MIN_DRAWS:
        raise ValueError(f"diagnose: num_draws must be at least {MIN_DRAWS} for PSIS, got {num_draws}")
    if chunk_size is not None and (
        isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1
    ):
        raise ValueError(f"diagnose: chunk_size must be a positive int or None, got {chunk_size!r}")
    if isinstance(log_joint, Subsampled):
        if data is None:
            raise ValueError("diagnose: a Subsampled model needs its data: pass diagnose(..., data=...)")
    elif not callable(log_joint):
        raise TypeError(f"diagnose: log_joint must be callable or a bbvi.Subsampled model, got {log_joint!r}")
    _check_key(key)
    tree.split_params(family, params)  # a clear error if params do not match the family
    if data is not None:
        data = jax.tree.map(jnp.asarray, data)
    chunk = None if chunk_size is None else min(int(chunk_size), int(num_draws))
    # A pytree of families is a dict or list (unhashable): its leaves and structure are static.
    leaves, treedef = tree.flatten(family)
    draws, raw = _draw(log_joint, tuple(leaves), treedef, int(num_draws), chunk, params, key, data)
    _check_weights(raw)
    # PSIS and the summaries compile once per number of draws, whatever the model.
    return _summarise(draws, raw)


def _check_key(key) -> None:
    if isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key) and key.shape == ():
        return
    if isinstance(key, (jax.Array, np.ndarray)) and key.dtype == jnp.uint32 and key.shape == (2,):
        return
    raise TypeError(f"diagnose: key must be a single PRNG key such as jax.random.key(0), got {key!r:.80}")


def _check_weights(raw) -> None:
    """Clear errors, outside `jit`, for weights that no estimate can be made from."""
    if isinstance(raw, jax.core.Tracer):
        return
    raw = np.asarray(raw)
    nan, posinf = int(np.isnan(raw).sum()), int(np.isposinf(raw).sum())
    if nan or posinf:
        raise ValueError(
            f"diagnose: log p(z) - log q(z) is NaN at {nan} and +inf at {posinf} of {raw.size} draws "
            "from q; the log-joint must be finite (or -inf outside its support) wherever q puts mass"
        )
    if np.isneginf(raw).all():
        raise ValueError(
            f"diagnose: the log-joint is -inf at all {raw.size} draws from q: q puts its mass outside "
            "the model's support"
        )


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4))
def _draw(log_joint, leaves, treedef, num_draws, chunk, params, key, data):
    """`num_draws` draws from q and their log-weights."""
    draw = _draw_and_weigh(log_joint, treedef.unflatten(leaves), params, data)
    keys = jax.random.split(key, num_draws)
    if chunk is None:
        return jax.vmap(draw)(keys)
    return jax.lax.map(draw, keys, batch_size=chunk)


def _summarise(draws, raw) -> Diagnostics:
    return Diagnostics(draws=draws, **_weights_summary(raw))


@jax.jit
def _weights_summary(raw) -> dict[str, jax.Array]:
    """Every field of `Diagnostics` but the draws: one compiled program per number of draws."""
    num_draws = raw.shape[0]
    smoothed, khat = psis(raw)
    log_mean_w = logsumexp(raw) - math.log(num_draws)
    normalised = jnp.exp(raw - logsumexp(raw))
    # Delta method: var(log mean w) ~ var(w) / (S mean(w)^2) = (S sum(normalised^2) - 1) / (S - 1).
    evidence_var = (num_draws * jnp.sum(normalised**2) - 1.0) / (num_draws - 1)
    return dict(
        log_weights=smoothed,
        raw_log_weights=raw,
        khat=khat,
        elbo=jnp.mean(raw),
        elbo_se=jnp.std(raw, ddof=1) / math.sqrt(num_draws),
        log_evidence=log_mean_w,
        log_evidence_se=jnp.sqrt(jnp.maximum(evidence_var, 0.0)),
        ess=1.0 / jnp.sum(jnp.exp(2.0 * smoothed)),
    )


def _draw_and_weigh(log_joint, family, params, data):
    """`key -> (z, log p(z) - log q(z))` for one draw, in unconstrained space as the estimators work."""
    local = [leaf.needs_data for leaf in tree.flatten(family)[0]]
    conditioned, params = tree.condition(family, params, data)
    leaves, treedef = tree.flatten(conditioned)
    leaf_params = tree.split_params(conditioned, params)
    bases, transforms = tree.unconstrained(leaves)
    extra = () if data is None else (data,)

    def log_model(z):
        if not isinstance(log_joint, Subsampled):
            return call_log_joint(log_joint, z, *extra)
        likelihood = functools.partial(log_joint.batch_log_likelihood, local=treedef.unflatten(local))
        return call_log_joint(log_joint.log_prior, z, name="log_prior") + call_log_joint(
            likelihood, z, data, name="log_likelihood"
        )

    def draw(key):
        keys = jax.random.split(key, len(bases))
        pairs = [b.sample_and_log_prob(p, k) for b, p, k in zip(bases, leaf_params, keys)]
        z_leaves, log_det = tree.to_constrained(transforms, [u for u, _ in pairs])
        z = treedef.unflatten(z_leaves)
        return z, log_model(z) + log_det - sum(lq for _, lq in pairs)

    return draw
