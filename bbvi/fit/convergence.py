"""When has a fit converged? A rule on the ELBO trace, checked inside the compiled loop.

Every `every` steps the rule closes a block: the mean of its finite ELBO estimates is a smoothed
ELBO (the per-step estimates are noisy), and the rule keeps the last `window + 1` block means.

- `"relative"`, Stan ADVI's rule (Kucukelbir et al. 2017; Stan's `tol_rel_obj`, `eval_elbo` and its
  circular buffer): the relative changes between consecutive block means; converged when their mean
  or their median is below `tol`. Its verdict depends on the ELBO's scale: with an ELBO near zero
  the block-to-block noise alone exceeds any relative tolerance.
- `"trend"`, a statistical test: the least-squares slope of the block means over the window is not
  significantly positive (below `z` standard errors): the ELBO no longer improves by more than its
  own noise. It does not depend on the ELBO's scale.
- `"either"`: whichever fires first.

The state is a small pytree carried by the loop, so the rule costs nothing on the host, and a fit
cut in two and resumed sees the same decisions as one run.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

_RULES = ("relative", "trend", "either")


@dataclasses.dataclass(frozen=True)
class Convergence:
    """A stopping rule for `bbvi.fit`: has the smoothed ELBO settled? (See the module docstring.)

    Attributes:
        rule: `"relative"` (Stan ADVI's: relative change below `tol`), `"trend"` (the ELBO's slope
            over the window not significantly positive) or `"either"`.
        tol: for `"relative"`: the tolerance on the mean or median relative change of the block-mean
            ELBO (Stan's `tol_rel_obj`, default 0.01), taken relative to `max(|ELBO|, 1)` so that an
            ELBO near zero cannot make it explode.
        z: for `"trend"`: the slope must be below `z` standard errors to count as flat.
        every: steps per block (Stan's `eval_elbo`, default 100).
        window: how many block-to-block changes (`window + 1` block means) the rule looks at.
        min_steps: never converge before this many steps.
        stop: stop the fit when the rule fires (default). With `False` the rule only watches: the
            result still says whether and when the ELBO settled, and the fit runs all its steps.

    Example:
        >>> import jax, jax.numpy as jnp, bbvi
        >>> result = bbvi.fit(lambda z: -0.5 * jnp.sum(z**2), bbvi.MeanFieldGaussian((2,)),
        ...                   key=jax.random.key(0), num_steps=20_000, progress_bar=False,
        ...                   convergence=bbvi.Convergence("trend", min_steps=1000))
        >>> bool(result.converged), int(result.num_steps) < 20_000
        (True, True)
    """

    rule: str = "relative"
    tol: float = 0.01
    z: float = 2.0
    every: int = 100
    window: int = 10
    min_steps: int = 0
    stop: bool = True

    def __post_init__(self):
        if self.rule not in _RULES:
            raise ValueError(f"Convergence: rule must be one of {_RULES}, got {self.rule!r}")
        for name in ("tol", "z"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"Convergence: {name} must be a positive number, got {value!r}")
        for name in ("every", "window"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"Convergence: {name} must be a positive int, got {value!r}")
        if self.rule != "relative" and self.window < 2:
            raise ValueError("Convergence: the trend test needs window >= 2")
        if isinstance(self.min_steps, bool) or not isinstance(self.min_steps, (int, np.integer)):
            raise ValueError(f"Convergence: min_steps must be an int, got {self.min_steps!r}")
        if self.min_steps < 0:
            raise ValueError(f"Convergence: min_steps must be >= 0, got {self.min_steps}")
        if not isinstance(self.stop, bool):
            raise TypeError(f"Convergence: stop must be True or False, got {self.stop!r}")


#: What `fit` does without a `convergence=` argument: watch, and report, but run every step.
WATCH = Convergence(stop=False)


class ConvergenceState(NamedTuple):
    """The rule's memory: the open block's running sums and the latest block means."""

    block_sum: jax.Array  # sum of the open block's finite ELBO estimates
    block_count: jax.Array  # how many of its steps had a finite ELBO
    means: jax.Array  # (window + 1,) the latest block means, oldest first (nan: none yet)
    converged_at: jax.Array  # the step at which the rule first fired; -1 if it has not


def init(rule: Convergence, dtype) -> ConvergenceState:
    return ConvergenceState(
        block_sum=jnp.zeros([], dtype),
        block_count=jnp.zeros([], jnp.int32),
        means=jnp.full([rule.window + 1], jnp.nan, dtype),
        converged_at=jnp.full([], -1, jnp.int32),
    )


def record(state: ConvergenceState, elbo: jax.Array) -> ConvergenceState:
    """Add one step's ELBO estimate to the open block (non-finite ones are left out)."""
    finite = jnp.isfinite(elbo)
    return state._replace(
        block_sum=state.block_sum + jnp.where(finite, elbo, 0.0).astype(state.block_sum.dtype),
        block_count=state.block_count + finite,
    )


def _relative_fires(rule, means):
    changes = jnp.abs(jnp.diff(means)) / jnp.maximum(jnp.abs(means[:-1]), 1.0)
    valid = jnp.isfinite(changes)
    count = jnp.sum(valid)
    mean = jnp.sum(jnp.where(valid, changes, 0.0)) / jnp.maximum(count, 1)
    ordered = jnp.sort(jnp.where(valid, changes, jnp.inf))  # the invalid ones sort last
    median = 0.5 * (ordered[(count - 1) // 2] + ordered[count // 2])
    return (count > 0) & ((mean < rule.tol) | (median < rule.tol))


def _trend_fires(rule, means):
    """The least-squares slope of the block means is below `z` of its standard errors."""
    valid = jnp.isfinite(means)
    n = jnp.sum(valid)
    t = jnp.arange(means.shape[0], dtype=means.dtype)
    t_mean = jnp.sum(jnp.where(valid, t, 0.0)) / jnp.maximum(n, 1)
    y_mean = jnp.sum(jnp.where(valid, means, 0.0)) / jnp.maximum(n, 1)
    dt = jnp.where(valid, t - t_mean, 0.0)
    dy = jnp.where(valid, means - y_mean, 0.0)
    sxx = jnp.sum(dt**2)
    slope = jnp.sum(dt * dy) / jnp.maximum(sxx, 1e-30)
    residual = jnp.sum((dy - slope * dt) ** 2) / jnp.maximum(n - 2, 1)
    se = jnp.sqrt(residual / jnp.maximum(sxx, 1e-30))
    return (n == means.shape[0]) & (slope < rule.z * se)


def close_block(rule: Convergence, state: ConvergenceState, step: jax.Array) -> ConvergenceState:
    """At a block's end (`step` steps taken): record its mean and check the rule.

    A block without a finite estimate records nothing (the loop treats a run of them as a failure).
    """
    has_mean = state.block_count > 0
    mean = (state.block_sum / jnp.maximum(state.block_count, 1)).astype(state.means.dtype)
    means = jnp.where(has_mean, jnp.roll(state.means, -1).at[-1].set(mean), state.means)
    fires = {
        "relative": lambda: _relative_fires(rule, means),
        "trend": lambda: _trend_fires(rule, means),
        "either": lambda: _relative_fires(rule, means) | _trend_fires(rule, means),
    }[rule.rule]()
    fires = fires & has_mean & (step >= rule.min_steps) & (state.converged_at < 0)
    return ConvergenceState(
        block_sum=jnp.zeros_like(state.block_sum),
        block_count=jnp.zeros_like(state.block_count),
        means=means,
        converged_at=jnp.where(fires, step, state.converged_at).astype(jnp.int32),
    )
