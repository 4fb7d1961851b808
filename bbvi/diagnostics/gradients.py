"""Gradient signal-to-noise and variance per parameter: why a fit is slow, and which estimator helps.

Many independent gradient estimates at the same parameters give, per parameter coordinate, the
mean (the signal: the true gradient), the variance (the noise), and their ratio
`SNR = |mean| / sd`. An optimiser step is mostly noise where SNR is well below 1; a control
variate or another estimator that lowers the variance raises the SNR at the same cost.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from bbvi.estimators.elbo import elbo_value_and_grad
from bbvi.families import tree
from bbvi.subsampled import Subsampled, num_rows


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["mean", "variance", "snr", "value_mean", "value_sd"],
    meta_fields=["num_estimates"],
)
@dataclasses.dataclass(frozen=True)
class GradientStats:
    """Per-coordinate statistics of independent gradient estimates at fixed parameters.

    Attributes:
        mean: the mean estimate, a pytree like the parameters (the gradient, up to Monte Carlo error).
        variance: the variance of one estimate (unbiased, `ddof=1`), a pytree like the parameters.
        snr: `|mean| / sqrt(variance)`, a pytree like the parameters (`inf` where the estimate has
            no noise, `nan` where it is always 0).
        value_mean, value_sd: mean and sd of the objective's estimates (the ELBO's, by default).
        num_estimates: how many estimates the statistics are over.
    """

    mean: Any
    variance: Any
    snr: Any
    value_mean: jax.Array
    value_sd: jax.Array
    num_estimates: int

    def summary(self) -> dict[str, dict[str, float]]:
        """Per parameter array (by its path, e.g. `"['w']['loc']"`): size, mean SNR, total variance.

        `mean_snr` averages the coordinates' SNRs (ignoring NaN ones: coordinates whose gradient is
        always 0); `total_variance` sums the coordinates' variances, the trace of the estimate's
        covariance, which is what slows stochastic gradient steps.
        """
        rows = {}
        paths = jax.tree_util.tree_flatten_with_path(self.mean)[0]
        for (path, _), var, snr in zip(paths, jax.tree.leaves(self.variance), jax.tree.leaves(self.snr)):
            snr = np.asarray(snr, dtype=float)
            finite = snr[~np.isnan(snr)]
            rows[jax.tree_util.keystr(path) or "<root>"] = {
                "size": int(np.size(snr)),
                "mean_snr": float(np.mean(finite)) if finite.size else math.nan,
                "total_variance": float(np.sum(var)),
            }
        return rows

    def total_variance(self) -> float:
        """The sum of every coordinate's variance: one number to compare estimators by."""
        return float(sum(np.sum(v) for v in jax.tree.leaves(self.variance)))

    def __str__(self) -> str:
        rows = self.summary()
        width = max([9] + [len(name) for name in rows])
        lines = [
            f"Gradient estimates: {self.num_estimates}; objective {float(self.value_mean):.4f} "
            f"(sd {float(self.value_sd):.4f} per estimate)",
            f"{'parameter':<{width}}  {'size':>6}  {'mean SNR':>10}  {'total variance':>14}",
        ]
        for name, row in rows.items():
            lines.append(
                f"{name:<{width}}  {row['size']:>6}  {row['mean_snr']:>10.4g}  {row['total_variance']:>14.4g}"
            )
        lines.append(f"{'total':<{width}}  {'':>6}  {'':>10}  {self.total_variance():>14.4g}")
        return "\n".join(lines)


def gradient_snr(
    log_joint: Callable | Subsampled,
    family,
    params,
    key: jax.Array,
    *,
    num_estimates: int = 256,
    data=None,
    chunk_size: int | None = None,
    **estimator_options,
) -> GradientStats:
    """Mean, variance and signal-to-noise ratio of the gradient estimator at `params`, per coordinate.

    Draws `num_estimates` independent estimates from `bbvi.elbo_value_and_grad(log_joint, family,
    **estimator_options)` (one key each, vectorised with `vmap`) and summarises them; call it with
    different options, or use `compare_gradients`, to see which estimator or control variate helps.

    Args:
        log_joint: the model, as for `bbvi.fit` (a `bbvi.Subsampled` model takes its `num_data`
            from `data`, all of which every estimate uses).
        family: a family or a pytree of families.
        params: its parameters, where the gradient is estimated.
        key: a PRNG key.
        num_estimates: how many independent estimates (at least 2); the relative error of a
            variance is about `sqrt(2 / num_estimates)` (9% at the default).
        data: passed to every estimate, as `fit`'s `data` without minibatches.
        chunk_size: evaluate the estimates this many at a time (`jax.lax.map`) to bound memory.
        **estimator_options: `estimator`, `objective`, `num_samples`, `control_variate`, `prior`,
            `sample_chunk_size`, as for `bbvi.elbo_value_and_grad` (stateless control variates).

    Returns:
        A `GradientStats`: `.mean`, `.variance`, `.snr` like `params`; `print` it for a table.

    Example:
        >>> import jax, jax.numpy as jnp, bbvi
        >>> from bbvi.diagnostics import gradient_snr
        >>> family = bbvi.MeanFieldGaussian((2,))
        >>> params = {"loc": jnp.ones(2), "log_scale": jnp.zeros(2)}
        >>> stats = gradient_snr(lambda z: -0.5 * jnp.sum(z**2), family, params, jax.random.key(0),
        ...                      estimator="reparam", num_samples=1)
        >>> stats.variance["loc"].shape  # the gradient in loc is -(loc + eps): variance 1
        (2,)
    """
    if isinstance(num_estimates, bool) or not isinstance(num_estimates, (int, np.integer)):
        raise TypeError(f"gradient_snr: num_estimates must be an int, got {num_estimates!r}")
    if num_estimates < 2:
        raise ValueError(
            f"gradient_snr: num_estimates must be at least 2 for a variance, got {num_estimates}"
        )
    if chunk_size is not None and (
        isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1
    ):
        raise ValueError(f"gradient_snr: chunk_size must be a positive int or None, got {chunk_size!r}")
    if data is not None:
        data = jax.tree.map(jnp.asarray, data)
    if isinstance(log_joint, Subsampled):
        if data is None:
            raise ValueError(
                "gradient_snr: a Subsampled model needs its data: pass gradient_snr(..., data=...)"
            )
        if log_joint.num_data not in (None, num_rows(data)):
            raise ValueError(
                f"gradient_snr: the Subsampled model's num_data is {log_joint.num_data} but data has "
                f"{num_rows(data)} rows (every estimate uses all of data)"
            )
        log_joint = dataclasses.replace(log_joint, num_data=num_rows(data))
    tree.split_params(family, params)  # a clear error if params do not match the family
    # Building the estimator checks the options (and raises for a stateful control variate).
    options = tuple(sorted(estimator_options.items()))
    try:
        hash(options)
    except TypeError:  # e.g. a prior given as numpyro distributions: compile without the cache
        value_and_grad = elbo_value_and_grad(log_joint, family, **estimator_options)
        run = jax.jit(functools.partial(_estimates, value_and_grad, int(num_estimates), chunk_size))
        return run(params, key, data)
    # A pytree of families is a dict or list (unhashable): its leaves and structure are the key.
    leaves, treedef = tree.flatten(family)
    run = _cached(log_joint, tuple(leaves), treedef, options, int(num_estimates), chunk_size)
    return run(params, key, data)


@functools.lru_cache(maxsize=64)
def _cached(log_joint, leaves, treedef, options, num_estimates, chunk_size):
    """One compiled program per model, family and options: repeated calls do not retrace."""
    value_and_grad = elbo_value_and_grad(log_joint, treedef.unflatten(leaves), **dict(options))
    return jax.jit(functools.partial(_estimates, value_and_grad, num_estimates, chunk_size))


def _estimates(value_and_grad, num_estimates, chunk_size, params, key, data) -> GradientStats:
    keys = jax.random.split(key, num_estimates)

    def one(k):
        return value_and_grad(params, k, data)

    if chunk_size is None:
        values, grads = jax.vmap(one)(keys)
    else:
        values, grads = jax.lax.map(one, keys, batch_size=min(chunk_size, num_estimates))
    mean = jax.tree.map(lambda g: jnp.mean(g, axis=0), grads)
    variance = jax.tree.map(lambda g: jnp.var(g, axis=0, ddof=1), grads)
    snr = jax.tree.map(lambda m, v: jnp.abs(m) / jnp.sqrt(v), mean, variance)
    return GradientStats(mean, variance, snr, jnp.mean(values), jnp.std(values, ddof=1), num_estimates)


@dataclasses.dataclass(frozen=True)
class GradientComparison:
    """`GradientStats` for several estimator settings at the same parameters, printed as one table.

    Attributes:
        stats: the `GradientStats` of each setting, by name.
    """

    stats: Mapping[str, GradientStats]

    def __getitem__(self, name: str) -> GradientStats:
        return self.stats[name]

    def __str__(self) -> str:
        names = list(self.stats)
        summaries = {name: s.summary() for name, s in self.stats.items()}
        params = list(next(iter(summaries.values())))
        width = max([9] + [len(p) for p in params])
        col = max([22] + [len(n) for n in names])
        head = f"{'parameter':<{width}}" + "".join(f"  {n:>{col}}" for n in names)
        sub = f"{'':<{width}}" + "".join(f"  {'mean SNR / total var':>{col}}" for _ in names)
        lines = [head, sub]
        for p in params:
            cells = []
            for name in names:
                row = summaries[name][p]
                cell = "{:.3g} / {:.3g}".format(row["mean_snr"], row["total_variance"])
                cells.append(f"  {cell:>{col}}")
            lines.append(f"{p:<{width}}" + "".join(cells))
        totals = "".join(f"  {f'{self.stats[n].total_variance():.3g}':>{col}}" for n in names)
        lines.append(f"{'total var':<{width}}" + totals)
        return "\n".join(lines)


def compare_gradients(
    log_joint: Callable | Subsampled,
    family,
    params,
    key: jax.Array,
    options: Mapping[str, Mapping[str, Any]],
    *,
    num_estimates: int = 256,
    data=None,
    chunk_size: int | None = None,
) -> GradientComparison:
    """`gradient_snr` for each named setting of the estimator, at the same parameters and key.

    Example:
        >>> import jax, jax.numpy as jnp, bbvi
        >>> from bbvi.diagnostics import compare_gradients
        >>> family = bbvi.Bernoulli((3,))
        >>> params = bbvi.init(family, jax.random.key(0))
        >>> log_joint = lambda z: jnp.sum(z * jnp.array([1.0, -2.0, 0.5])) - 10.0  # with a constant
        >>> table = compare_gradients(
        ...     log_joint, family, params, jax.random.key(1),
        ...     {"none": {"control_variate": None, "num_samples": 4},
        ...      "loo": {"control_variate": "loo", "num_samples": 4}})
        >>> table["loo"].total_variance() < table["none"].total_variance()
        True
    """
    if not isinstance(options, Mapping) or not options:
        raise ValueError(
            "compare_gradients: options must be a non-empty dict of name -> estimator options, e.g. "
            '{"none": {"control_variate": None}, "loo": {"control_variate": "loo"}}'
        )
    for name, setting in options.items():
        if not isinstance(setting, Mapping):
            raise TypeError(f"compare_gradients: options[{name!r}] must be a dict of estimator options")
    stats = {
        str(name): gradient_snr(
            log_joint,
            family,
            params,
            key,
            num_estimates=num_estimates,
            data=data,
            chunk_size=chunk_size,
            **setting,
        )
        for name, setting in options.items()
    }
    return GradientComparison(stats)
