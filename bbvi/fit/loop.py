"""The compiled fit loop: optimiser steps that never keep a non-finite update, in blocks that
check convergence, in one `jax.jit`ed program.

A call runs `lax.while_loop` over blocks of `rule.every` steps (a `fori_loop` each) until it reaches
`stop_step`, the convergence rule stops it, or a whole block's worth of steps in a row was skipped.
Blocks are aligned to absolute step numbers and all bookkeeping lives in the carried `FitState`,
so how the host cuts a run into calls (for a progress bar, a pause, a resume) never changes it.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from bbvi.estimators.elbo import gradient_estimator
from bbvi.fit import convergence
from bbvi.fit.minibatch import minibatch
from bbvi.fit.result import Average, FitState


class Options(NamedTuple):
    """Everything static about a fit's program (hashable: it keys the compile cache)."""

    estimator: object
    objective: object
    num_samples: int
    control_variate: object
    prior: object
    sample_chunk_size: int | None
    optimizer: object
    batch_size: int | None
    rule: convergence.Convergence
    averaging: bool


def all_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def _keep_if(ok, new, old):
    return jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)


def stuck(state: FitState, rule: convergence.Convergence) -> jax.Array:
    """No finite step in the last `rule.every` steps: the fit cannot go on."""
    return state.step - 1 - state.last_finite >= rule.every


def finished(state: FitState, rule: convergence.Convergence) -> jax.Array:
    """Stopped by the rule, or stuck."""
    return (rule.stop & (state.convergence.converged_at >= 0)) | stuck(state, rule)


def estimator(log_joint, family, options: Options):
    """The fit's gradient estimate `(params, estimator_state, key, data) -> (elbo, grad, state)`."""
    return gradient_estimator(
        log_joint,
        family,
        estimator=options.estimator,
        objective=options.objective,
        num_samples=options.num_samples,
        control_variate=options.control_variate,
        prior=options.prior,
        sample_chunk_size=options.sample_chunk_size,
    ).estimate


def build(log_joint, family, options: Options, trace_length: int):
    """The jitted `(state, trace, origin, stop_step, average_from, data) -> (state, trace)`.

    Step `t` writes its ELBO estimate to `trace[t - origin]`; `trace` has `trace_length` entries.
    """
    estimate = estimator(log_joint, family, options)
    optimizer, rule = options.optimizer, options.rule

    def step(state: FitState, trace, origin, average_from, data):
        key = jax.random.fold_in(state.key, state.step)
        batch = data
        if options.batch_size is not None:
            key, batch_key = jax.random.split(key)
            batch = minibatch(data, batch_key, options.batch_size)
        elbo, grad, estimator_state = estimate(state.params, state.estimator_state, key, batch)
        descent = jax.tree.map(jnp.negative, grad)
        updates, opt_state = optimizer.update(descent, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        # A non-finite ELBO, gradient or update is never kept: everything stays at its last finite value.
        ok = jnp.isfinite(elbo) & all_finite(grad) & all_finite(params)
        params, opt_state, estimator_state = _keep_if(
            ok,
            (params, opt_state, estimator_state),
            (state.params, state.opt_state, state.estimator_state),
        )
        trace = trace.at[state.step - origin].set(elbo)
        average = state.average
        if options.averaging:
            include = ok & (state.step >= average_from)
            count = average.count + include
            mean = optax.incremental_update(params, average.mean, 1.0 / jnp.maximum(count, 1))
            average = Average(_keep_if(include, mean, average.mean), count)
        state = FitState(
            params=params,
            opt_state=opt_state,
            estimator_state=estimator_state,
            key=state.key,
            step=state.step + 1,
            num_skipped=state.num_skipped + ~ok,
            last_finite=jnp.where(ok, state.step, state.last_finite),
            average=average,
            convergence=convergence.record(state.convergence, elbo),
        )
        return state, trace

    def run(state: FitState, trace, origin, stop_step, average_from, data):
        def more(carry):
            state, _ = carry
            return (state.step < stop_step) & ~finished(state, rule)

        def block(carry):
            state, trace = carry
            end = jnp.minimum((state.step // rule.every + 1) * rule.every, stop_step)
            state, trace = jax.lax.fori_loop(
                state.step,
                end,
                lambda _, carry: step(*carry, origin, average_from, data),
                (state, trace),
            )
            complete = end % rule.every == 0  # a block cut by stop_step stays open for the next call
            closed = convergence.close_block(rule, state.convergence, end)
            state = dataclasses.replace(state, convergence=_keep_if(complete, closed, state.convergence))
            return state, trace

        return jax.lax.while_loop(more, block, (state, trace))

    return jax.jit(run)
