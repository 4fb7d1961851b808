"""What `fit` returns: the fitted parameters, the ELBO trace, and the state to continue exactly."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from bbvi.families import tree


class Average(NamedTuple):
    """The running mean of the iterates since averaging began, and how many went into it."""

    mean: Any
    count: jax.Array


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=[
        "params",
        "opt_state",
        "estimator_state",
        "key",
        "step",
        "num_skipped",
        "last_finite",
        "average",
        "convergence",
    ],
    meta_fields=[],
)
@dataclasses.dataclass(frozen=True)
class FitState:
    """Everything the loop carries: with it, `fit(..., resume=result)` continues exactly.

    Attributes:
        params: the last iterate (which `FitResult.params` is, unless averaging was asked for).
        opt_state: the optimiser state.
        estimator_state: the control variate's state (empty unless it keeps one).
        key: the run's key; step `t` draws with `jax.random.fold_in(key, t)`.
        step: steps taken so far in this run.
        num_skipped: steps skipped because their ELBO, gradient or update was not finite.
        last_finite: the last step that was not skipped (-1: none yet).
        average: the Polyak average of the iterates (`Average`), or `()` without averaging.
        convergence: the stopping rule's state (`bbvi.convergence.ConvergenceState`).
    """

    params: Any
    opt_state: Any
    estimator_state: Any
    key: jax.Array
    step: jax.Array
    num_skipped: jax.Array
    last_finite: jax.Array
    average: Any
    convergence: Any


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["params", "elbo", "state"],
    meta_fields=["family"],
)
@dataclasses.dataclass(frozen=True)
class FitResult:
    """What `fit` returns; a pytree, so fits can be `jit`ed and `vmap`ed.

    Attributes:
        params: the fitted variational parameters (unconstrained), a pytree matching the family:
            the last iterate, or the Polyak average of the iterates with `fit(..., average=...)`.
        elbo: the per-step Monte Carlo estimates of the objective (the ELBO unless another was
            chosen), one per step taken; a skipped step keeps its non-finite value. Under
            `jit` / `vmap` it has `num_steps` entries, nan after an early stop.
        family: the variational family (static).
        state: the loop's state (`FitState`), to continue with `fit(..., resume=result)`.
    """

    params: Any
    elbo: jax.Array
    family: Any
    state: FitState

    @property
    def opt_state(self):
        """The optimiser state (also `state.opt_state`)."""
        return self.state.opt_state

    @property
    def estimator_state(self):
        """The control variate's state (also `state.estimator_state`)."""
        return self.state.estimator_state

    @property
    def num_steps(self) -> jax.Array:
        """Steps taken: fewer than asked for when a `bbvi.Convergence` rule stopped the fit."""
        return self.state.step

    @property
    def num_skipped(self) -> jax.Array:
        """Steps skipped because their ELBO, gradient or update was not finite."""
        return self.state.num_skipped

    @property
    def converged(self) -> jax.Array:
        """Whether the convergence rule fired (it watches every fit; see `bbvi.Convergence`)."""
        return self.state.convergence.converged_at >= 0

    @property
    def converged_at(self) -> jax.Array:
        """The step at which the convergence rule fired, or -1."""
        return self.state.convergence.converged_at

    def sample(self, key: jax.Array, n: int, data=None):
        """`n` draws from the fitted q: the latent pytree with a leading axis `n`, on the supports.

        An amortised family needs the `data` (a batch) it conditions on.
        """
        return tree.sample(self.family, self.params, key, (n,), data=data)

    def diagnose(self, log_joint, key: jax.Array, num_draws: int = 4096, *, data=None):
        """PSIS k-hat, the ELBO and the log evidence with their standard errors, at the fitted q.

        `bbvi.diagnose(log_joint, result.family, result.params, key, num_draws, data=data)`.
        """
        from bbvi.diagnostics import diagnose  # the diagnostics build on fit's results, not the reverse

        return diagnose(log_joint, self.family, self.params, key, num_draws, data=data)

    def gradient_snr(self, log_joint, key: jax.Array, **options):
        """Per-leaf gradient mean, variance and signal-to-noise at the fitted parameters.

        `bbvi.gradient_snr(log_joint, result.family, result.params, key, **options)`.
        """
        from bbvi.diagnostics import gradient_snr

        return gradient_snr(log_joint, self.family, self.params, key, **options)

    def __repr__(self) -> str:
        try:
            steps, skipped = int(self.num_steps), int(self.num_skipped)
            at = int(self.converged_at)
        except (TypeError, jax.errors.ConcretizationTypeError):  # traced or batched
            return f"FitResult(family={self.family!r}, elbo={jnp.shape(self.elbo)})"
        finite = self.elbo[jnp.isfinite(self.elbo)]
        last = f"{float(finite[-min(len(finite), 100) :].mean()):.6g}" if finite.size else "nan"
        converged = f"converged at step {at}" if at >= 0 else "not converged"
        return (
            f"FitResult({steps} steps, {converged}, {skipped} skipped, ELBO of the last steps "
            f"{last}, family={self.family!r})"
        )
