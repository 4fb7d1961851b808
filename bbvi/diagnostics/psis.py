"""Pareto smoothed importance sampling (PSIS) and its Pareto k-hat diagnostic.

Importance weights `w = p(z) / q(z)` with `z ~ q` have a right tail; PSIS (Vehtari, Simpson, Gelman,
Yao and Gabry 2024, JMLR 25(72)) fits a generalised Pareto distribution (GPD) to the `M` largest
weights and replaces them by the GPD's expected order statistics, which lowers the variance of
importance-sampling estimates at a small bias. The fitted shape `k` says how heavy the tail is,
so how far q is from p (Yao, Vehtari, Simpson and Gelman 2018): the weights have `1 / k` finite
moments, so for `k < 0.5` their variance is finite and estimates converge at the usual rate.

- `k < 0.5`: good; `0.5 <= k < 0.7`: usable, slower convergence; `k >= 0.7`: unreliable.
- With few draws the usable band shrinks: the 2024 paper's threshold is `min(1 - 1 / log10(S), 0.7)`
  (`khat_threshold`), which is 0.7 from `S = 2155` draws up, 0.67 at 1000 and 0.5 at 100.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp

#: The fewest draws whose tail (`tail_length`) has the 5 points a GPD fit needs.
MIN_DRAWS = 21

# Zhang and Stephens (2009): the profile over b is evaluated on a grid of `30 + sqrt(M)` points
# spread by quantiles of a prior whose scale is 3 times the first quartile of the exceedances.
_GRID_BASE = 30
_PRIOR_B_SCALE = 3.0
# Vehtari et al. (2024): a weakly informative prior that pulls k towards 0.5 with the weight of
# 10 observations, which stabilises the estimate from short tails.
_PRIOR_K_COUNT = 10.0
_PRIOR_K_VALUE = 0.5


def tail_length(num_draws: int) -> int:
    """`M = ceil(min(S / 5, 3 sqrt(S)))`: how many of the largest weights the GPD is fitted to."""
    return int(math.ceil(min(num_draws / 5.0, 3.0 * math.sqrt(num_draws))))


def khat_threshold(num_draws: int) -> float:
    """The largest k at which PSIS with `num_draws` draws is still usable: `min(1 - 1/log10(S), 0.7)`.

    From Vehtari et al. (2024): below it, the Monte Carlo error of a PSIS estimate shrinks at a
    practical rate with S; it is 0.7 from 2155 draws up.
    """
    if num_draws < 2:
        return -math.inf
    return min(1.0 - 1.0 / math.log10(num_draws), 0.7)


def verdict(khat: float, num_draws: int) -> str:
    """`"good"` (k < 0.5), `"usable"` (k below `khat_threshold(num_draws)`) or `"unreliable"`."""
    khat = float(khat)
    if khat < 0.5:
        return "good"
    if khat < khat_threshold(num_draws):
        return "usable"
    return "unreliable"


def psis(log_weights: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Pareto-smoothed, normalised log importance weights and the Pareto shape estimate k-hat.

    The `M = ceil(min(S / 5, 3 sqrt(S)))` largest weights (`tail_length`) are replaced by the
    expected order statistics of a generalised Pareto distribution fitted to their excess over the
    next largest weight (Zhang and Stephens' 2009 estimator with the weakly informative prior of
    Vehtari et al. 2024), truncated at the largest raw weight; the rest are kept. The result is
    normalised (`logsumexp == 0`). Pure and `jit`/`vmap`-compatible (S is static).

    Zero weights (`-inf` log-weights) stay zero and take no part in the fit. Special values of k-hat:
    `inf` where fewer than 5 tail weights exceed the cutoff (too many ties to fit a tail: the weights
    are not smoothed, as ArviZ does), `-inf` where the `M + 1` largest weights are all equal (no
    tail: the weights are bounded, as when q is p), and `nan` where a log-weight is NaN or all are
    `-inf` (the weights are then NaN too; outside `jit` both raise an error instead).

    Args:
        log_weights: shape `(S,)`, `log p(z_s) - log q(z_s)` for draws `z_s ~ q`, up to a constant.
            At least `MIN_DRAWS` (21) of them.

    Returns:
        `(smoothed_log_weights, khat)`: shape `(S,)`, normalised, and a scalar. See `verdict` for
        how to read k-hat.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from bbvi.diagnostics import psis
        >>> log_w = jax.random.exponential(jax.random.key(0), (4000,)) / 2.0  # Pareto(2) weights: k = 0.5
        >>> smoothed, khat = psis(log_w)
        >>> bool(abs(khat - 0.5) < 0.2), float(jax.scipy.special.logsumexp(smoothed)) == 0.0
        (True, True)
    """
    log_weights = jnp.asarray(log_weights)
    if log_weights.ndim != 1:
        raise ValueError(f"psis: log_weights must be one-dimensional (S,), got shape {log_weights.shape}")
    num_draws = log_weights.shape[0]
    if num_draws < MIN_DRAWS:
        raise ValueError(
            f"psis: needs at least {MIN_DRAWS} draws (a tail of 5 weights to fit), got {num_draws}"
        )
    if not jnp.issubdtype(log_weights.dtype, jnp.floating):
        log_weights = log_weights.astype(jnp.result_type(float))
    if not isinstance(log_weights, jax.core.Tracer):
        values = np.asarray(log_weights)
        if np.isnan(values).any() or np.isposinf(values).any():
            bad = int(np.isnan(values).sum() + np.isposinf(values).sum())
            raise ValueError(f"psis: {bad} of {num_draws} log-weights are NaN or +inf")
        if np.isneginf(values).all():
            raise ValueError("psis: every log-weight is -inf (every weight is zero): nothing to normalise")
    return _psis(log_weights, tail_length(num_draws))


@functools.partial(jax.jit, static_argnums=1)
def _psis(log_weights, tail):
    dtype = log_weights.dtype
    # Work relative to the largest weight: exp() of the tail then cannot overflow.
    x = log_weights - jnp.max(log_weights)
    # The M + 1 largest, ascending: the tail and the cutoff below it (no full sort needed).
    largest, where = jax.lax.top_k(x, tail + 1)
    largest, where = largest[::-1], where[::-1]
    # Weights below the smallest normal float are treated as part of the body (as ArviZ does).
    cutoff = jnp.maximum(largest[0], jnp.log(jnp.finfo(dtype).tiny))
    top = largest[1:]
    # Ties with the cutoff are not exceedances; they sort first, so the fitted ones are the last n.
    in_tail = top > cutoff
    n = jnp.sum(in_tail)
    exceedances = jnp.where(in_tail, jnp.exp(top) - jnp.exp(cutoff), 0.0)
    khat, sigma = _fit_gpd(exceedances, n)

    rank = jnp.arange(tail) - (tail - n)  # 0-based rank among the exceedances
    expected = sigma * _gpd_quantile((rank + 0.5) / jnp.maximum(n, 1), khat)
    fitted = (n > 4) & jnp.isfinite(khat)
    smoothed_top = jnp.where(in_tail & fitted, jnp.log(expected + jnp.exp(cutoff)), top)
    # Truncate at the largest raw weight (0 here): smoothing must not create a weight above it.
    smoothed_top = jnp.minimum(smoothed_top, 0.0)
    smoothed = x.at[where[1:]].set(smoothed_top)
    smoothed = smoothed - logsumexp(smoothed)

    khat = jnp.where(n > 4, khat, jnp.inf)
    khat = jnp.where(n == 0, -jnp.inf, khat)
    broken = jnp.any(jnp.isnan(log_weights)) | jnp.all(jnp.isneginf(log_weights))
    khat = jnp.where(broken, jnp.nan, khat)
    smoothed = jnp.where(broken, jnp.nan, smoothed)
    return smoothed, khat


def _fit_gpd(exceedances, n):
    """Zhang and Stephens' (2009) posterior-mean estimate of the GPD's (k, sigma), with the k prior.

    `exceedances` are sorted ascending; only the last `n` take part (the others are 0, which adds
    nothing to the sums below). Returns k in the convention where a heavier tail has a larger k.
    """
    tail = exceedances.shape[0]
    dtype = exceedances.dtype
    n_float = n.astype(dtype)
    grid_size = _GRID_BASE + int(math.sqrt(tail))
    largest = exceedances[-1]
    quartile = exceedances[(tail - n) + jnp.floor(n_float / 4.0 + 0.5).astype(jnp.int32) - 1]
    j = jnp.arange(1, grid_size + 1, dtype=dtype)
    b = 1.0 / largest + (1.0 - jnp.sqrt(grid_size / (j - 0.5))) / (_PRIOR_B_SCALE * quartile)

    def mean_log1p(b_value):
        return jnp.sum(jnp.log1p(-b_value * exceedances)) / n_float

    k = jax.vmap(mean_log1p)(b)
    profile = n_float * (jnp.log(-b / k) - k - 1.0)
    weights = jax.nn.softmax(profile)
    # Grid points of negligible posterior mass are dropped (they only add rounding error).
    weights = jnp.where(weights >= 10 * jnp.finfo(dtype).eps, weights, 0.0)
    b_post = jnp.sum(b * weights) / jnp.sum(weights)
    k_post = mean_log1p(b_post)
    sigma = -k_post / b_post
    k_post = (n_float * k_post + _PRIOR_K_COUNT * _PRIOR_K_VALUE) / (n_float + _PRIOR_K_COUNT)
    return k_post, sigma


def _gpd_quantile(p, k):
    """The GPD's quantile function at unit scale: `((1 - p)^-k - 1) / k`, or `-log(1 - p)` at k = 0."""
    small = jnp.abs(k) < jnp.finfo(p.dtype).eps
    safe_k = jnp.where(small, 1.0, k)
    return jnp.where(small, -jnp.log1p(-p), jnp.expm1(-safe_k * jnp.log1p(-p)) / safe_k)
