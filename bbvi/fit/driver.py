"""`fit`: drive an ELBO gradient estimator with an optax optimiser, compiled end to end.

The optimisation is one jitted loop (`bbvi.fit.loop`); the host cuts it into calls only so that a
progress bar can report between them, and dispatches the next call before it reads the last one, so
the device never waits for the host. Step keys come from `fold_in(key, step)` and every piece of
bookkeeping is in the carried state, so the result does not depend on how the run is cut: with a
bar or without, under `jit` or not, paused and resumed or in one go.
"""

from __future__ import annotations

import collections
import math
import warnings
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import TqdmWarning

with warnings.catch_warnings():
    # In Jupyter without ipywidgets tqdm.auto warns and falls back to the text bar, which is fine.
    warnings.simplefilter("ignore", TqdmWarning)
    from tqdm.auto import tqdm

from bbvi import annealing, control_variates, objectives
from bbvi.estimators import choice
from bbvi.estimators.checks import (
    check_batch_objective,
    check_key,
    check_num_samples,
    check_sample_chunk_size,
)
from bbvi.families import tree
from bbvi.fit import arguments, loop, start
from bbvi.fit.convergence import WATCH, Convergence
from bbvi.fit.result import FitResult, FitState
from bbvi.subsampled import Subsampled

#: The default optimiser: Adam, its step size decaying from 0.03 to 0 on a cosine over each fit.
#: Chosen by `python -m benchmarks.accuracy` over 14 posteriordb and inference-gym posteriors:
#: against a constant 1e-2 it reaches 0.1 nats of the optimum on 12 of the 14 within 10,000 steps
#: instead of 9, with about half the gradient evaluations, and it ends within 0.1 nats of the best
#: ELBO of any configuration on 36 of 42 fits (mean field, full rank, a flow) instead of 16: the
#: decay removes the noise a constant step leaves. One instance for every fit length (the horizon
#: is in its state), so repeated fits reuse one compiled program.
DEFAULT_LEARNING_RATE = 0.03
DEFAULT_OPTIMIZER = annealing.cosine_annealed(optax.scale_by_adam(), DEFAULT_LEARNING_RATE)
DEFAULT_NUM_SAMPLES = 8

# About this many calls per run, each at least this many steps (a power of two, so that runs of
# similar length share one compiled program).
_TARGET_CHUNKS = 20
_MIN_CHUNK = 64
_CACHE_SIZE = 32


class FitError(FloatingPointError):
    """A fit that could not make a finite step for a whole block of steps.

    Attributes:
        result: the fit up to the failure: its parameters and optimiser state are the last finite
            ones, its ELBO trace ends with the non-finite steps.
    """

    def __init__(self, message: str, result: FitResult):
        super().__init__(message)
        self.result = result


_programs: collections.OrderedDict = collections.OrderedDict()


def _program(log_joint, family, options: loop.Options, trace_length: int) -> tuple[Callable, object]:
    """The compiled loop for these settings, reused across fits (no retrace, no recompile).

    Returns it with its cache key (None when it is not cached). A pytree of families (a dict, say)
    is not hashable itself; its leaves and structure are.
    """
    leaves, treedef = tree.flatten(family)
    key = (log_joint, tuple(leaves), treedef, options, trace_length)
    try:
        hash(key)
    except TypeError:  # an unhashable log-joint (e.g. a callable object holding arrays): no cache
        return loop.build(log_joint, family, options, trace_length), None
    if key not in _programs:
        _programs[key] = loop.build(log_joint, family, options, trace_length)
        if len(_programs) > _CACHE_SIZE:
            _programs.popitem(last=False)
    _programs.move_to_end(key)
    return _programs[key], key


def _forget(cache_key):
    """Drop a program built under a transformation: it closes over the transformation's tracers."""
    if cache_key is not None:
        _programs.pop(cache_key, None)


def _chunk_length(num_steps: int) -> int:
    per_chunk = math.ceil(num_steps / _TARGET_CHUNKS)
    return max(_MIN_CHUNK, 1 << (per_chunk - 1).bit_length())


def _is_traced(*trees) -> bool:
    return any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(trees))


def fit(
    log_joint: Callable,
    family,
    *,
    key: jax.Array | None = None,
    num_steps: int,
    optimizer: optax.GradientTransformation | None = None,
    estimator: str | choice.Estimator = "auto",
    objective: str | objectives.Objective = "elbo",
    num_samples: int = DEFAULT_NUM_SAMPLES,
    control_variate="auto",
    prior=None,
    data=None,
    batch_size: int | None = None,
    sample_chunk_size: int | None = None,
    convergence: Convergence | None = None,
    average: float | None = None,
    resume: FitResult | None = None,
    pause_at: int | None = None,
    init_params=None,
    init_opt_state=None,
    init_estimator_state=None,
    progress_bar: bool = True,
) -> FitResult:
    """Fit a variational family to an unnormalised log-density by stochastic ELBO ascent.

    Args:
        log_joint: `z -> scalar`, the model's log-density with the data closed over; `z` is a
            pytree of latents matching `family`. Or a `bbvi.Subsampled` model (a log-prior and a
            likelihood over `data`), for stochastic VI on minibatches.
        family: a family or a dict / tuple / list of families.
        key: a PRNG key; the same key gives the same result. Not with `resume`, which continues
            the result's own key stream.
        num_steps: optimisation steps in the whole run (a Python int): the most a convergence
            rule allows, the length of the default step-size decay, and, with `resume`, the
            total including the steps already taken.
        optimizer: any optax `GradientTransformation`, handed the negated ELBO gradient (optax
            minimises); wrappers such as `optax.chain(optax.clip_by_global_norm(1.0), ...)` compose
            as usual. Default: Adam with its step size decaying from 0.03 to 0 over `num_steps`
            on a cosine (`bbvi.fit.DEFAULT_OPTIMIZER`), chosen from time-to-accuracy benchmarks.
            A warm start (`init_opt_state`) with the default starts a new decay; `resume` does not.
        estimator: `"auto"` (pathwise for reparameterisable leaves, score function for the
            others), `"reparam"`, `"score"`, `"relaxed"`, or a `bbvi.Estimator`.
        objective: `"elbo"`, `"iwae"` or a `bbvi.Renyi(alpha)`; `result.elbo` traces it.
        num_samples: Monte Carlo samples per gradient estimate.
        control_variate: for score-function leaves: `"auto"`, `"loo"`, `"optimal"`,
            `"rao_blackwell"`, `bbvi.MovingAverage(decay)` or `None`.
        prior: the prior as numpyro distributions (a pytree matching the family), when
            `log_joint` is the log-likelihood only; see `bbvi.elbo_value_and_grad`.
        data: a pytree of arrays with a leading axis of data points. The log-joint is then called
            `log_joint(z, batch)`, and amortised families condition on the batch.
        batch_size: draw a minibatch of this many data points (without replacement, on device)
            at every step; default: all of `data` every step. A `bbvi.Subsampled` model is scaled
            by bbvi: its likelihood and its amortised (local) latents' log q by
            `num_data / batch_size`, an unbiased ELBO with global and local latents alike. A plain
            log-joint sees the minibatch and is responsible for its scaling. With global latents
            only, scale the minibatch's log-likelihood by `num_data / batch_size`. With amortised
            latents only, leave it unscaled: their entropy enters for the batch only, so the
            objective is then `batch_size / num_data` times the ELBO, with the same optimum;
            scaling the log-joint alone would fit q to a posterior tempered by that factor. With
            both, use `bbvi.Subsampled`.
        sample_chunk_size: evaluate the Monte Carlo samples this many at a time (`jax.lax.map`,
            recomputed in the backward pass), so that memory holds one chunk's intermediates, not
            `num_samples`'; default all at once, the fastest. The result is the same.
        convergence: a `bbvi.Convergence` rule (Stan ADVI's relative ELBO change) that stops the
            fit once the ELBO has settled, inside the compiled loop. Default: the rule with
            `stop=False`, which watches without stopping, so that `result.converged` always says
            whether the ELBO had settled. Its `every` is also how many steps in a row may be
            skipped as non-finite before the fit stops with a `bbvi.FitError`.
        average: return the Polyak average of the iterates over this last fraction of the run
            (e.g. 0.5: the second half) as `result.params`; default: the last iterate.
        resume: a `FitResult` (from `fit` or `bbvi.load`) to continue exactly: parameters,
            optimiser, control-variate and convergence state, step count and key stream. A run
            paused and resumed equals the run made in one go.
        pause_at: stop after this many steps of the run (fewer than `num_steps`), to `resume`
            later; the default step-size decay still spans `num_steps`.
        init_params: starting parameters (default `bbvi.init(family, key)`): a warm start.
        init_opt_state: starting optimiser state, for a warm start.
        init_estimator_state: starting control-variate state, for a warm start.
        progress_bar: show a tqdm bar with the step and a smoothed ELBO. It does not change what
            runs; it is ignored under `jax.jit` / `jax.vmap`.

    Returns:
        A `FitResult`: `params`, the ELBO trace `elbo`, `num_steps` taken, `num_skipped`,
        `converged`, the loop `state`, and `sample(key, n)`.

    Raises:
        ValueError, TypeError: before anything is compiled, for options that cannot work, a
            log-joint that is not scalar or does not accept the family's latents, parameters that
            do not match the family, or a non-finite ELBO or gradient at the initial parameters.
        FitError: when `convergence.every` steps in a row were not finite (the ELBO, gradient or
            update); it names the step and carries the last finite state as `.result`.

    Example:
        >>> import jax, jax.numpy as jnp, bbvi
        >>> log_joint = lambda z: -0.5 * jnp.sum((z - 3.0) ** 2)
        >>> result = bbvi.fit(log_joint, bbvi.MeanFieldGaussian((2,)), key=jax.random.key(0),
        ...                   num_steps=1000, progress_bar=False)
        >>> bool(jnp.allclose(result.params["loc"], 3.0, atol=0.1))
        True
    """
    num_steps = arguments.check_num_steps(num_steps)
    if resume is None:
        if key is None:
            raise TypeError("fit needs a key (e.g. key=jax.random.key(0)), or resume= to continue a fit")
        check_key(key)
    default = optimizer is None
    optimizer = DEFAULT_OPTIMIZER if default else optimizer
    arguments.check_optimizer(optimizer)
    rule = WATCH if convergence is None else convergence
    if not isinstance(rule, Convergence):
        raise TypeError(f"convergence must be a bbvi.Convergence or None, got {rule!r}")
    average_from = arguments.average_from(average, num_steps)
    num_samples = check_num_samples(num_samples)
    options = loop.Options(
        estimator=choice.resolve(estimator),
        objective=objectives.resolve(objective),
        num_samples=num_samples,
        control_variate=control_variates.resolve(control_variate, num_samples),
        prior=prior,
        sample_chunk_size=check_sample_chunk_size(sample_chunk_size),
        optimizer=optimizer,
        batch_size=None,
        rule=rule,
        averaging=average is not None,
    )
    tree.flatten(family)  # a clear error for anything that is not a family
    data, batch_size = arguments.check_data(data, batch_size)
    options = options._replace(batch_size=batch_size)
    log_joint = arguments.check_model(log_joint, data)
    if not isinstance(log_joint, Subsampled):  # a Subsampled model explains this itself
        check_batch_objective(options.objective, batch_size)

    init = dict(
        init_params=init_params, init_opt_state=init_opt_state, init_estimator_state=init_estimator_state
    )
    if resume is None:
        state, previous = start.new(family, key, num_steps, options, default, init), None
    else:
        state, previous = start.resumed(resume, family, key, num_steps, options, default, init), resume.elbo
    stop = num_steps if pause_at is None else arguments.check_num_steps(pause_at, "pause_at")
    if stop > num_steps:
        raise ValueError(f"pause_at ({stop}) must not exceed num_steps ({num_steps})")

    if _is_traced(state, data):
        return _run_traced(log_joint, family, options, state, previous, stop, num_steps, average_from, data)
    first = int(state.step)
    if first > stop:
        raise ValueError(
            f"resume: the result has already taken {first} steps, more than the {stop} asked for"
        )
    chunk = _chunk_length(num_steps)
    program, cache_key = _program(log_joint, family, options, chunk)
    calls = []  # (origin, trace, state after the call)
    if first == 0:
        # The first step runs alone, so that a non-finite start is reported before the fit goes on;
        # it shares the loop's program and its work is kept.
        trace = np.full((chunk,), np.nan, jnp.result_type(float))
        after, trace = program(state, trace, 0, 1, average_from, data)
        if _is_traced(after):  # inside jit / vmap after all: the log-joint closes over a tracer
            _forget(cache_key)
            return _run_traced(
                log_joint, family, options, state, previous, stop, num_steps, average_from, data
            )
        if int(after.num_skipped):  # one number to the host
            start.explain_non_finite(log_joint, family, options, state, trace[0], data)
        calls.append((0, trace, after))
        state = after
    else:
        previous = previous[:first]
    with _Progress(stop, first, progress_bar) as progress:
        for origin in range(max(first, 1), stop, chunk):
            trace = np.full((chunk,), np.nan, jnp.result_type(float))
            state, trace = program(state, trace, origin, min(origin + chunk, stop), average_from, data)
            calls.append((origin, trace, state))
            # Read the previous call while this one runs: the device never waits for the host.
            if len(calls) > 1 and progress.finished(calls[-2], rule):
                break
        if calls:
            progress.finished(calls[-1], rule)
    result = _result(family, options, state, _trace(previous, calls))
    if _status(state, rule)[2]:
        raise FitError(_stuck_message(state), result)
    return result


class _Progress:
    """The bar, fed with each call's steps once the call is done."""

    def __init__(self, total, first, show):
        self.show, self.reported = show, first
        self.bar = tqdm(
            total=total, initial=first, disable=not show, desc="fit", unit="step", dynamic_ncols=True
        )

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.bar.close()

    def finished(self, call, rule) -> bool:
        """Report a call's steps; whether the run stopped in it (converged or stuck)."""
        origin, trace, state = call
        step, finished, _ = _status(state, rule)
        if self.show and step > self.reported:
            values = np.asarray(trace)[max(self.reported - origin, 0) : step - origin]
            finite = values[np.isfinite(values)]
            self.bar.update(step - self.reported)
            self.bar.set_postfix(elbo=f"{finite.mean():.4g}" if finite.size else "nan", refresh=False)
        self.reported = max(self.reported, step)
        return finished


def _status(state: FitState, rule) -> tuple[int, bool, bool]:
    """(steps taken, stopped, stuck), computed on the host from one transfer of three numbers."""
    step, last_finite, converged_at = (
        int(x) for x in jax.device_get((state.step, state.last_finite, state.convergence.converged_at))
    )
    stuck = step - 1 - last_finite >= rule.every  # as `loop.stuck`, which the device uses
    return step, stuck or (rule.stop and converged_at >= 0), stuck


def _trace(previous, calls) -> jax.Array:
    """The run's ELBO trace: the resumed result's, then each call's steps (assembled on the host)."""
    pieces = [] if previous is None else [np.asarray(previous)]
    for origin, trace, state in calls:
        taken = int(state.step) - origin
        if taken > 0:
            pieces.append(np.asarray(trace)[:taken])
    return jnp.asarray(np.concatenate(pieces) if pieces else np.zeros((0,), jnp.result_type(float)))


def _run_traced(log_joint, family, options, state, previous, stop, num_steps, average_from, data):
    # Under jit / vmap there is no bar to feed and no value to check, and XLA would inline every
    # call into the enclosing program: run one loop, uncached (it may close over tracers). The
    # step keys make the result the same.
    program = loop.build(log_joint, family, options, num_steps)
    trace = jnp.full((num_steps,), jnp.nan, jnp.result_type(float))
    if previous is not None:
        trace = trace.at[: min(len(previous), num_steps)].set(previous[:num_steps])
    state, trace = program(state, trace, 0, stop, average_from, data)
    return _result(family, options, state, trace)


def _result(family, options, state: FitState, trace) -> FitResult:
    params = state.params
    if options.averaging:
        has_average = state.average.count > 0
        params = jax.tree.map(lambda m, p: jnp.where(has_average, m, p), state.average.mean, params)
    return FitResult(params=params, elbo=trace, family=family, state=state)


def _stuck_message(state: FitState) -> str:
    first_bad = int(state.last_finite) + 1
    return (
        f"fit stopped at step {int(state.step)}: no step since step {first_bad} had a finite ELBO, gradient "
        f"and update ({int(state.step) - first_bad} in a row). The parameters are those after step "
        f"{first_bad - 1} (error.result). Check the log-joint where q now puts its mass, lower the step "
        "size, or clip the gradient (optax.clip_by_global_norm)"
    )
