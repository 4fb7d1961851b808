"""Where a run starts: the state at step 0 or a resumed result's, checked; and, when the first
step is not finite, the error that says why."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from bbvi import annealing
from bbvi.estimators.checks import check_params, check_state
from bbvi.families import tree
from bbvi.fit import checkpoint, loop
from bbvi.fit.convergence import init as init_convergence
from bbvi.fit.result import Average, FitResult, FitState


def new(family, key, num_steps, options, default, init) -> FitState:
    """Step 0 of a run from `key`, or a warm start from `init`; the default decay spans `num_steps`."""
    init_key, run_key = jax.random.split(key)
    init_params, init_opt_state, init_estimator_state = init.values()
    params = tree.init(family, init_key) if init_params is None else init_params
    params = check_params(family, params)
    if init_opt_state is not None:
        check_state("init_opt_state", init_opt_state, jax.eval_shape(options.optimizer.init, params))
    if init_estimator_state is not None:
        check_state("init_estimator_state", init_estimator_state, options.control_variate.init_state())
    state = _fresh(family, params, run_key, options, init_opt_state, init_estimator_state)
    if default:  # the decay spans this run; a warm start begins a new one
        state = dataclasses.replace(state, opt_state=annealing.start(state.opt_state, num_steps))
    return jax.tree.map(strong, state)


def resumed(resume, family, key, num_steps, options, default, init) -> FitState:
    """`resume`'s state, checked against this fit; the default decay continues to `num_steps`."""
    state = _resumed_unchecked(resume, family, key, options, init)
    if default:  # the same decay, continued to this run's end
        state = dataclasses.replace(state, opt_state=annealing.extend(state.opt_state, num_steps))
    return jax.tree.map(strong, state)


def strong(x):
    """Drop weak types, so the loop's carry keeps one type and nothing recompiles."""
    x = jnp.asarray(x)
    return x if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x.astype(x.dtype)


def _fresh(family, params, key, options, init_opt_state, init_estimator_state) -> FitState:
    """The state at step 0 of a run."""
    dtype = jnp.result_type(float)
    opt_state = options.optimizer.init(params) if init_opt_state is None else init_opt_state
    cv_state = options.control_variate.init_state() if init_estimator_state is None else init_estimator_state
    average = (
        Average(jax.tree.map(jnp.zeros_like, params), jnp.zeros([], jnp.int32)) if options.averaging else ()
    )
    return FitState(
        params=params,
        opt_state=opt_state,
        estimator_state=cv_state,
        key=key,
        step=jnp.zeros([], jnp.int32),
        num_skipped=jnp.zeros([], jnp.int32),
        last_finite=jnp.full([], -1, jnp.int32),
        average=average,
        convergence=init_convergence(options.rule, dtype),
    )


def _resumed_unchecked(resume, family, key, options, init) -> FitState:
    """`resume`'s state, checked against this fit's family and options (clear errors)."""
    if not isinstance(resume, FitResult):
        raise TypeError(
            f"resume must be a FitResult (from bbvi.fit or bbvi.load), got {type(resume).__name__}"
        )
    if resume.family != family:
        raise ValueError(f"resume: the result was fitted to family {resume.family!r}, not {family!r}")
    if key is not None:
        raise ValueError(
            "resume continues the result's own key stream: drop key=, or start a new run from its "
            "parameters with init_params=result.params"
        )
    given = [name for name, value in init.items() if value is not None]
    if given:
        raise ValueError(f"resume sets the whole state: drop {', '.join(given)}")
    state = resume.state
    params = check_params(family, state.params, "resume: the parameters")
    template = _fresh(family, params, state.key, options, None, None)
    if options.averaging and state.average == ():  # averaging asked for only now: it starts empty
        state = dataclasses.replace(state, average=template.average)
    if not options.averaging:
        state = dataclasses.replace(state, average=())
    return checkpoint.restructure(state, template)


def explain_non_finite(log_joint, family, options, state, elbo, data):
    """Raise the error that says what is not finite in the first step."""
    if not np.isfinite(elbo):
        relaxed = options.estimator.gradient == "relaxed"
        hint = (
            "; with estimator 'relaxed' the log-joint sees relaxed values between 0 and 1 (numpyro's "
            "Bernoulli / Categorical log_prob is -inf there: write the discrete terms linearly in z)"
            if relaxed
            else ""
        )
        raise ValueError(
            f"the ELBO at the initial parameters is {float(elbo)}: the log-joint is not finite "
            "where q puts its mass; check its support (constrain positive or bounded latents "
            f"with bbvi.Constrained) or pass init_params{hint}"
        )
    estimate = loop.estimator(log_joint, family, options)
    _, grad, _ = jax.jit(estimate)(
        state.params, state.estimator_state, jax.random.fold_in(state.key, 0), data
    )
    bad = [
        jax.tree_util.keystr(path)
        for path, leaf in jax.tree_util.tree_flatten_with_path(grad)[0]
        if not np.all(np.isfinite(leaf))
    ]
    if bad:
        raise ValueError(
            f"the ELBO gradient at the initial parameters is not finite at params{bad[0]}"
            + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else "")
        )
    raise ValueError(
        "the first step is not finite: the ELBO and its gradient are, but the optimiser's update is "
        "not; check its step size and state"
    )
