"""`fit`: drive an ELBO gradient estimator with an optax optimiser, compiled end to end.

The optimisation is one jitted loop over steps; it is cut into chunks only so that a progress bar
can report between them. Chunks run the same compiled program whether or not the bar is shown,
the next chunk is dispatched before the host reads the last one's ELBO, and the step keys come
from `fold_in(key, step)`, so the result does not depend on how the run is cut.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings
from collections.abc import Callable
from typing import Any

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
from bbvi.estimators.checks import check_num_samples, check_sample_chunk_size
from bbvi.estimators.elbo import gradient_estimator
from bbvi.families import tree
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

# About this many chunks per run, each at least this many steps (a power of two, so that runs
# of similar length share one compiled program).
_TARGET_CHUNKS = 20
_MIN_CHUNK = 64


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["params", "opt_state", "elbo", "estimator_state"],
    meta_fields=["family"],
)
@dataclasses.dataclass(frozen=True)
class FitResult:
    """What `fit` returns; a pytree, so fits can be `jit`ed and `vmap`ed.

    Attributes:
        params: the fitted variational parameters (unconstrained), a pytree matching the family.
        opt_state: the optimiser state, to continue the fit (`fit(..., init_params=r.params,
            init_opt_state=r.opt_state)`).
        elbo: the per-step Monte Carlo estimates of the objective (the ELBO unless another was
            chosen), shape `(num_steps,)`.
        family: the variational family (static).
        estimator_state: the control variate's state (empty unless it keeps one), to continue.
    """

    params: Any
    opt_state: Any
    elbo: jax.Array
    family: Any
    estimator_state: Any = ()

    def sample(self, key: jax.Array, n: int, data=None):
        """`n` draws from the fitted q: the latent pytree with a leading axis `n`, on the supports.

        An amortised family needs the `data` (a batch) it conditions on.
        """
        return tree.sample(self.family, self.params, key, (n,), data=data)


def _build(
    log_joint,
    family,
    estimator,
    objective,
    num_samples,
    cv,
    prior,
    sample_chunk,
    optimizer,
    batch_size,
    chunk,
):
    """The jitted chunk `(params, opt_state, cv_state, key, start, length, data) -> (..., elbos)`."""
    estimate = gradient_estimator(
        log_joint,
        family,
        estimator=estimator,
        objective=objective,
        num_samples=num_samples,
        control_variate=cv,
        prior=prior,
        sample_chunk_size=sample_chunk,
    ).estimate

    def run_chunk(params, opt_state, cv_state, key, start, length, data):
        def step(i, carry):
            params, opt_state, cv_state, elbos = carry
            step_key = jax.random.fold_in(key, start + i)
            batch = data
            if batch_size is not None:
                step_key, batch_key = jax.random.split(step_key)
                batch = _minibatch(data, batch_key, batch_size)
            elbo, grad, cv_state = estimate(params, cv_state, step_key, batch)
            descent = jax.tree.map(jnp.negative, grad)
            updates, opt_state = optimizer.update(descent, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, cv_state, elbos.at[i].set(elbo)

        elbos = jnp.full((chunk,), jnp.nan, dtype=jnp.result_type(float))
        # A dynamic trip count: every chunk length, the first single step included, shares one program.
        return jax.lax.fori_loop(0, length, step, (params, opt_state, cv_state, elbos))

    return jax.jit(run_chunk)


def _minibatch(data, key, batch_size):
    """`batch_size` rows drawn without replacement, on device, from every leaf of `data`."""
    rows = sample_rows(key, jax.tree.leaves(data)[0].shape[0], batch_size)
    return jax.tree.map(lambda x: x[rows], data)


def sample_rows(key, num_rows: int, batch_size: int) -> jax.Array:
    """`batch_size` distinct rows of `num_rows`, uniformly without replacement, in O(B log B).

    `jax.random.choice(replace=False)` permutes all N rows (a sort, O(N log N)) to keep B of them:
    seconds per step at N = 10^7. Here: draw 2B rows with replacement and keep the first B distinct
    ones in draw order. Drawing until B distinct rows are seen is sequential sampling without
    replacement, so the result is uniform over ordered B-subsets; and since the event "fewer than B
    distinct among 2B" treats every row alike, retrying in that case (a while loop) keeps it so.
    With N > 4B, 2B draws hold about 1.6B distinct rows: the retry essentially never runs. Small N,
    where the permutation is cheap, uses `choice`.
    """
    if num_rows <= 4 * batch_size:
        return jax.random.choice(key, num_rows, (batch_size,), replace=False)
    draws = 2 * batch_size

    def attempt(key):
        rows = jax.random.randint(key, (draws,), 0, num_rows)
        order = jnp.argsort(rows, stable=True)  # stable: a row's first draw comes first
        ordered = rows[order]
        first_sorted = jnp.concatenate([jnp.ones(1, bool), ordered[1:] != ordered[:-1]])
        first = jnp.zeros(draws, bool).at[order].set(first_sorted)  # back in draw order
        slot = jnp.where(first, jnp.cumsum(first) - 1, draws)  # rank among the distinct draws
        kept = jnp.zeros(batch_size, rows.dtype).at[slot].set(rows, mode="drop")
        return kept, jnp.sum(first) >= batch_size

    def retry(carry):
        key, _, _ = carry
        key, sub = jax.random.split(key)
        return (key, *attempt(sub))

    key, sub = jax.random.split(key)
    _, rows, _ = jax.lax.while_loop(lambda carry: ~carry[2], retry, (key, *attempt(sub)))
    return rows


def _check_data(data, batch_size):
    if data is None:
        if batch_size is not None:
            raise ValueError("batch_size needs data to draw minibatches from")
        return None, None
    data = jax.tree.map(jnp.asarray, data)
    rows = {x.shape[0] if x.ndim else None for x in jax.tree.leaves(data)}
    if not rows or None in rows or len(rows) != 1:
        raise ValueError(
            f"data must be a pytree of arrays sharing a leading axis of data points, got shapes "
            f"{jax.tree.map(jnp.shape, data)}"
        )
    if batch_size is not None:
        (num_rows,) = rows
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)):
            raise TypeError(f"batch_size must be an int, got {batch_size!r}")
        if not 1 <= batch_size <= num_rows:
            raise ValueError(
                f"batch_size must be in [1, {num_rows}] (the number of data points), got {batch_size}"
            )
        batch_size = int(batch_size)
    return data, batch_size


def _check_model(log_joint, data):
    """A `Subsampled` model learns its number of data points from `data`."""
    if not isinstance(log_joint, Subsampled):
        if not callable(log_joint):
            raise TypeError(f"log_joint must be callable or a bbvi.Subsampled model, got {log_joint!r}")
        return log_joint
    if data is None:
        raise ValueError("a Subsampled model needs its data: pass fit(..., data=...)")
    num_data = jax.tree.leaves(data)[0].shape[0]
    if log_joint.num_data not in (None, num_data):
        raise ValueError(f"Subsampled: num_data is {log_joint.num_data} but data has {num_data} rows")
    return dataclasses.replace(log_joint, num_data=num_data)


@functools.lru_cache(maxsize=32)
def _build_cached(log_joint, family_leaves, family_treedef, *options) -> Callable:
    return _build(log_joint, family_treedef.unflatten(family_leaves), *options)


def _program(log_joint, family, *options) -> Callable:
    """The compiled chunk for these settings, reused across fits (no retrace, no recompile).

    A pytree of families (a dict, say) is not hashable itself; its leaves and structure are.
    """
    leaves, treedef = tree.flatten(family)
    key = (log_joint, tuple(leaves), treedef, *options)
    try:
        hash(key)
    except TypeError:  # an unhashable log-joint (e.g. a callable object holding arrays): no cache
        return _build(log_joint, family, *options)
    return _build_cached(*key)


def _chunk_length(num_steps: int) -> int:
    per_chunk = math.ceil(num_steps / _TARGET_CHUNKS)
    return max(_MIN_CHUNK, 1 << (per_chunk - 1).bit_length())


def _is_traced(*trees) -> bool:
    return any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(trees))


def _strong(x):
    """Drop weak types, so the loop's carry keeps one type and nothing recompiles."""
    x = jnp.asarray(x)
    return x.astype(x.dtype)


def _check_key(key):
    dtype = jnp.result_type(key)
    if jnp.issubdtype(dtype, jax.dtypes.prng_key):
        if jnp.shape(key) == ():
            return
    elif dtype == jnp.uint32 and jnp.shape(key) == (2,):
        return
    raise TypeError(
        f"key must be a single PRNG key such as jax.random.key(0), got {dtype}{list(jnp.shape(key))}"
    )


def _check_init_params(family, params):
    """Parameters checked against the family (clear errors) and cast to its dtypes."""
    tree.split_params(family, params)
    return jax.tree.map(lambda x, spec: jnp.asarray(x, dtype=spec.dtype), params, tree.param_spec(family))


def fit(
    log_joint: Callable,
    family,
    *,
    key: jax.Array,
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
        key: a PRNG key; the same key gives the same result.
        num_steps: optimisation steps (a Python int).
        optimizer: any optax `GradientTransformation`, handed the negated ELBO gradient (optax
            minimises). Default: Adam with its step size decaying from 0.03 to 0 over `num_steps`
            on a cosine (`bbvi.fit.DEFAULT_OPTIMIZER`), chosen from time-to-accuracy benchmarks.
            Continuing a fit (`init_opt_state`) with the default starts a new decay.
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
        init_params: starting parameters (default `bbvi.init(family, key)`).
        init_opt_state: starting optimiser state, to continue an earlier fit.
        init_estimator_state: starting control-variate state, to continue an earlier fit.
        progress_bar: show a tqdm bar with the step and a smoothed ELBO. It does not change what
            runs; it is ignored under `jax.jit` / `jax.vmap`.

    Returns:
        A `FitResult` with `params`, `opt_state`, the ELBO trace `elbo` and `sample(key, n)`.

    Raises:
        ValueError, TypeError: before anything is compiled, for options that cannot work, a
            log-joint that is not scalar or does not accept the family's latents, parameters that
            do not match the family, or a non-finite ELBO or gradient at the initial parameters.

    Example:
        >>> import jax, jax.numpy as jnp, bbvi
        >>> log_joint = lambda z: -0.5 * jnp.sum((z - 3.0) ** 2)
        >>> result = bbvi.fit(log_joint, bbvi.MeanFieldGaussian((2,)), key=jax.random.key(0),
        ...                   num_steps=1000, progress_bar=False)
        >>> bool(jnp.allclose(result.params["loc"], 3.0, atol=0.1))
        True
    """
    if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive int, got {num_steps!r}")
    num_steps = int(num_steps)
    _check_key(key)
    default = optimizer is None
    optimizer = DEFAULT_OPTIMIZER if default else optimizer
    if not (callable(getattr(optimizer, "init", None)) and callable(getattr(optimizer, "update", None))):
        raise TypeError(f"optimizer must be an optax GradientTransformation, got {optimizer!r}")
    estimator = choice.resolve(estimator)
    objective = objectives.resolve(objective)
    num_samples = check_num_samples(num_samples)
    cv = control_variates.resolve(control_variate, num_samples)
    tree.flatten(family)  # a clear error for anything that is not a family
    data, batch_size = _check_data(data, batch_size)
    log_joint = _check_model(log_joint, data)
    sample_chunk = check_sample_chunk_size(sample_chunk_size)
    options = (estimator, objective, num_samples, cv, prior, sample_chunk, optimizer, batch_size)

    init_key, run_key = jax.random.split(key)
    if init_params is None:
        params = tree.init(family, init_key)
    else:
        params = _check_init_params(family, init_params)
    params = jax.tree.map(_strong, params)
    opt_state = optimizer.init(params) if init_opt_state is None else init_opt_state
    if default:  # the decay spans this fit's steps; a continued fit starts a new one
        opt_state = annealing.start(opt_state, num_steps)
    opt_state = jax.tree.map(_strong, opt_state)
    cv_state = cv.init_state() if init_estimator_state is None else init_estimator_state
    cv_state = jax.tree.map(_strong, cv_state)
    state = (params, opt_state, cv_state)

    if _is_traced(key, state, data):
        # Under jit / vmap there is no bar to feed and no value to check, and XLA would inline every
        # chunk into the enclosing program: run one loop. The step keys make the result the same.
        run_chunk = _program(log_joint, family, *options, num_steps)
        *state, elbo = run_chunk(*state, run_key, 0, num_steps, data)
        return _result(family, state, elbo)

    chunk = _chunk_length(num_steps)
    run_chunk = _program(log_joint, family, *options, chunk)
    # The first step runs alone, so that a non-finite start is reported before the fit goes on; it
    # shares the loop's compiled program and its work is kept. Shape and structure errors surface
    # earlier still, when the program is traced.
    *state, elbos = run_chunk(*state, run_key, 0, 1, data)
    if not _all_finite(elbos[0], state[0]):  # one boolean to the host, not the parameters
        _explain_non_finite_start(elbos[0], state[0], relaxed=estimator.gradient == "relaxed")
    traces = [(elbos, 1)]
    with tqdm(total=num_steps, disable=not progress_bar, desc="fit", unit="step", dynamic_ncols=True) as bar:
        for start in range(1, num_steps, chunk):
            length = min(chunk, num_steps - start)
            *state, elbos = run_chunk(*state, run_key, start, length, data)
            # Report the previous chunk while this one runs: the device never waits for the host.
            if progress_bar:
                _report(bar, *traces[-1])
            traces.append((elbos, length))
        if progress_bar:
            _report(bar, *traces[-1])
    elbo = jnp.concatenate([elbos[:length] for elbos, length in traces])
    return _result(family, state, elbo)


def _result(family, state, elbo) -> FitResult:
    params, opt_state, cv_state = state
    return FitResult(params=params, opt_state=opt_state, elbo=elbo, family=family, estimator_state=cv_state)


@jax.jit
def _all_finite(elbo, params) -> jax.Array:
    return jnp.isfinite(elbo) & jnp.all(
        jnp.array([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(params)])
    )


def _explain_non_finite_start(elbo, params, relaxed=False):
    """Raise the error that says what is not finite after the first step."""
    if not np.isfinite(elbo):
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
    bad = [
        jax.tree_util.keystr(path)
        for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
        if not np.all(np.isfinite(leaf))
    ]
    if bad:
        raise ValueError(
            f"the ELBO gradient at the initial parameters is not finite: the first step made "
            f"params{bad[0]} non-finite (and {len(bad) - 1} more)"
        )


def _report(bar, elbos, length):
    values = np.asarray(elbos)[:length]  # slice on the host: no device op per report
    finite = values[np.isfinite(values)]
    bar.update(length)
    bar.set_postfix(elbo=f"{finite.mean():.4g}" if finite.size else "nan", refresh=False)
