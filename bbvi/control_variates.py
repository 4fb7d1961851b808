"""Control variates for score-function (REINFORCE) gradient terms.

The score-function estimate of the ELBO gradient for a leaf with parameters theta is
`mean_s f_s * h_s`, with `f_s` the per-sample ELBO integrand and `h_s = grad log q(z_s; theta)`.
Since `E[h] = 0`, subtracting any `a * h_s` with `a` independent of sample `s` keeps it unbiased.

Stateless kinds are functions of the per-sample values (and scores):

- a *baseline* gives one scalar `b_s` per sample, independent of sample `s`; the estimator
  uses `(f_s - b_s) * h_s` through the surrogate `(f_s - b_s) * (log q_s - stop_gradient(log q_s))`
  without forming per-sample scores;
- a *scaled score* control variate needs the per-sample scores themselves and returns the
  gradient, with one coefficient per parameter coordinate.

Beyond those: a moving-average baseline (state threaded by `fit`) and Rao-Blackwellisation per
factor of a mean-field family (the estimator re-evaluates the integrand with each factor redrawn).
With a multi-sample objective (IWAE, Renyi) the leave-one-out baseline becomes VIMCO's: each
sample's learning signal is the objective minus the objective with that sample's log-weight
replaced by the mean of the others'.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp


def no_baseline(values: jax.Array) -> jax.Array:
    """Plain REINFORCE: no baseline."""
    return jnp.zeros_like(values)


def leave_one_out(values: jax.Array) -> jax.Array:
    """Each sample's baseline is the mean of the other samples' values (needs >= 2 samples).

    Independent of the sample it centres, so the estimate stays unbiased; equivalent to
    `S / (S - 1) * (f_s - mean(f))`, the centred estimator of Kool et al. and of VIMCO-style methods.
    """
    n = values.shape[0]
    return (jnp.sum(values) - values) / (n - 1)


def _sum_of_others(x: jax.Array) -> jax.Array:
    """`sum_{t != s} x_t` for each `s` (leading axis), from prefix and suffix sums.

    Never forms `sum - x_s`: that subtraction's rounding depends on `x_s`, leaking the sample
    into its own leave-one-out statistics (and losing the others entirely when `x_s` dominates).
    """
    zeros = jnp.zeros_like(x[:1])
    before = jnp.concatenate([zeros, jnp.cumsum(x[:-1], axis=0)])
    after = jnp.concatenate([jnp.cumsum(x[:0:-1], axis=0)[::-1], zeros])
    return before + after


def optimal_scaling(values: jax.Array, scores):
    """Per-coordinate optimally scaled score control variate (Ranganath, Gerrish and Blei 2014).

    For coordinate d the variance-minimising coefficient is `a_d = Cov(f h_d, h_d) / Var(h_d)`.
    Estimating it from the same samples would bias the gradient, so each sample's coefficient is
    estimated from the *other* samples (leave-one-out), which keeps the estimate unbiased.
    Needs >= 3 samples (two others to estimate a variance from).

    Args:
        values: per-sample integrand values, shape `(S,)`.
        scores: pytree of per-sample scores `grad log q(z_s)`, each leaf with leading axis `S`.

    Returns:
        The gradient estimate, a pytree shaped like one sample of `scores`.
    """
    n = values.shape[0]

    def coordinate_wise(h):
        f = values.reshape((n,) + (1,) * (h.ndim - 1))
        fh = f * h

        def mean_of_others(x):
            return _sum_of_others(x) / (n - 1)

        mean_h, mean_fh, mean_hh = mean_of_others(h), mean_of_others(fh), mean_of_others(h * h)
        cov = mean_of_others(fh * h) - mean_fh * mean_h
        var = mean_hh - mean_h**2
        # Others whose scores coincide (common for discrete leaves) have zero variance, which
        # float arithmetic returns as rounding noise; below this relative floor, no coefficient.
        ok = var > 1e3 * jnp.finfo(var.dtype).eps * mean_hh
        a = jnp.where(ok, cov / jnp.where(ok, var, 1.0), 0.0)
        return jnp.mean((f - a) * h, axis=0)

    return jax.tree.map(coordinate_wise, scores)


@dataclasses.dataclass(frozen=True)
class ControlVariate:
    """A named control variate for score-function terms.

    Exactly one of:
    - `baseline(values)`: a per-sample baseline from the other samples (stateless);
    - `scaled(values, scores)`: the gradient itself, from per-sample scores;
    - `per_factor`: the estimator builds one baseline per independent factor of each mean-field
      leaf (Rao-Blackwellisation); see `RAO_BLACKWELL`.

    Stateful control variates (see `MovingAverage`) override `init_state`, `update_state` and
    `baseline_from_state`; `fit` threads their state through the steps.
    """

    name: str
    min_samples: int
    baseline: Callable | None = None
    scaled: Callable | None = None
    per_factor: bool = False

    @property
    def needs_scores(self) -> bool:
        return self.scaled is not None

    @property
    def stateful(self) -> bool:
        return False

    def init_state(self):
        return ()

    def update_state(self, state, signal: jax.Array):
        return state


@dataclasses.dataclass(frozen=True)
class MovingAverage(ControlVariate):
    """A baseline that is an exponential moving average of past learning signals (stateful).

    The baseline used at a step comes from earlier steps only, so it is independent of the
    current samples and the gradient stays unbiased; it works with a single sample, where no
    leave-one-out baseline exists. The average is bias-corrected as in Adam (the first step's
    baseline is zero, the second's is the first signal).

    Example:
        >>> import bbvi
        >>> cv = bbvi.MovingAverage(decay=0.9)   # fit(..., control_variate=cv)
    """

    name: str = "moving_average"
    min_samples: int = 1
    decay: float = 0.9

    def __post_init__(self):
        if not 0.0 <= self.decay < 1.0:
            raise ValueError(f"MovingAverage: decay must be in [0, 1), got {self.decay!r}")

    @property
    def stateful(self) -> bool:
        return True

    def init_state(self):
        # (decayed sum of signals, decayed sum of weights): the ratio is the bias-corrected average.
        zero = jnp.zeros((), jnp.result_type(float))
        return (zero, zero)

    def update_state(self, state, signal):
        total, weight = state
        signal = jax.lax.stop_gradient(signal)
        # A non-finite signal (a bad step) must not poison every later baseline.
        ok = jnp.isfinite(signal)
        new = (self.decay * total + (1 - self.decay) * signal, self.decay * weight + (1 - self.decay))
        return tuple(jnp.where(ok, n, o) for n, o in zip(new, state))

    def baseline_from_state(self, state):
        total, weight = state
        return jnp.where(weight > 0, total / jnp.where(weight > 0, weight, 1.0), 0.0)


NONE = ControlVariate("none", 1, baseline=no_baseline)
LOO = ControlVariate("loo", 2, baseline=leave_one_out)
OPTIMAL = ControlVariate("optimal", 3, scaled=optimal_scaling)
#: Rao-Blackwellisation for mean-field score-function leaves: each independent factor's score is
#: centred by the integrand re-evaluated with that factor redrawn from q (independent of the
#: factor's own draw, so unbiased), which removes every term of the log-joint not involving the
#: factor. It costs one extra log-joint evaluation per factor and sample (vmapped): worth it when
#: many discrete factors each touch a few terms. Leaves that do not factorise get the
#: leave-one-out baseline.
RAO_BLACKWELL = ControlVariate("rao_blackwell", 1, per_factor=True)
_BY_NAME = {
    "none": NONE,
    "loo": LOO,
    "optimal": OPTIMAL,
    "rao_blackwell": RAO_BLACKWELL,
    "moving_average": MovingAverage(),
}


def resolve(control_variate, num_samples: int) -> ControlVariate:
    """The control variate for a name (or object), checked against the number of samples.

    `"auto"` is the leave-one-out baseline when there are two or more samples (it cuts the
    score-function variance by 10-100x on typical models at no extra cost), and none otherwise.
    """
    if control_variate == "auto":
        control_variate = "loo" if num_samples >= 2 else None
    if control_variate is None:
        control_variate = "none"
    if isinstance(control_variate, str):
        if control_variate not in _BY_NAME:
            raise ValueError(
                f"unknown control_variate {control_variate!r}; expected one of "
                f"{sorted(_BY_NAME) + ['auto', None]} or a ControlVariate"
            )
        control_variate = _BY_NAME[control_variate]
    if not isinstance(control_variate, ControlVariate):
        raise TypeError(f"control_variate must be a name or a ControlVariate, got {control_variate!r}")
    if num_samples < control_variate.min_samples:
        raise ValueError(
            f"control_variate={control_variate.name!r} needs num_samples >= "
            f"{control_variate.min_samples} (it estimates from the other samples), got {num_samples}"
        )
    return control_variate
