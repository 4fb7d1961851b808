"""Clear errors, raised before anything is traced or compiled, for what an estimator is given.

Each check names what is wrong (the leaf's path where there is one) and what was expected. The
user's own exceptions are kept, with a note saying what bbvi called them with.
"""

from __future__ import annotations

from collections.abc import Callable
from numbers import Number

import jax
import jax.numpy as jnp
import numpy as np

from bbvi.estimators.draws import is_stratified
from bbvi.families import tree

_ARRAY_TYPES = (jax.Array, np.ndarray, np.generic, Number)


def _describe(z) -> str:
    return str(jax.tree.map(lambda x: f"{jnp.result_type(x)}{list(jnp.shape(x))}", z))


def call_log_joint(log_joint: Callable, z, *data, name: str = "log_joint") -> jax.Array:
    """`log_joint(z[, data])`, with clear errors for a failing call or a non-scalar, non-float result."""
    try:
        value = log_joint(z, *data)
    except Exception as err:
        # A note keeps the user's own exception, type and traceback, and says what it was given.
        call = f"{name}(z, data)" if data else f"{name}(z)"
        given = f" and data {_describe(data[0])}" if data else ""
        err.add_note(
            f"bbvi: {call} failed on latents z = {_describe(z)}{given} (the structure, dtypes and "
            "shapes the family draws: continuous families draw floats, discrete ones ints); check "
            "that the family matches what the log-joint reads"
        )
        raise
    if not isinstance(value, _ARRAY_TYPES):
        raise TypeError(
            f"{name} must return a scalar float array, but returned {type(value).__name__} "
            f"{value!r:.80} for latents {_describe(z)}"
        )
    if jnp.shape(value) != ():
        raise ValueError(
            f"{name} must return a scalar, but returned shape {jnp.shape(value)} for latents "
            f"{_describe(z)}; sum the log-density over data points and latents"
        )
    if not jnp.issubdtype(jnp.result_type(value), jnp.floating):
        raise TypeError(
            f"{name} must return a float, but returned {jnp.result_type(value)}"
            + ("; return the real log-density" if jnp.iscomplexobj(value) else "")
        )
    return value


def check_num_samples(num_samples) -> int:
    if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
    return int(num_samples)


def check_sample_chunk_size(chunk) -> int | None:
    if chunk is None:
        return None
    if isinstance(chunk, bool) or not isinstance(chunk, (int, np.integer)) or chunk < 1:
        raise ValueError(f"sample_chunk_size must be a positive int or None, got {chunk!r}")
    return int(chunk)


def check_key(key, name: str = "key") -> None:
    """A single PRNG key: a typed key of shape `()` or a raw `uint32[2]`; works on tracers too."""
    dtype = jnp.result_type(key) if isinstance(key, _ARRAY_TYPES) else type(key).__name__
    if isinstance(key, jax.Array) and jnp.issubdtype(dtype, jax.dtypes.prng_key):
        if jnp.shape(key) == ():
            return
    elif dtype == jnp.uint32 and jnp.shape(key) == (2,):
        return
    raise TypeError(
        f"{name} must be a single PRNG key such as jax.random.key(0), got {dtype}{list(np.shape(key))}"
    )


def check_subsampled(model, prior):
    if model.num_data is None:
        raise ValueError(
            "Subsampled: num_data (the number of data points N) is not set; bbvi.fit sets it from "
            "its data, elsewhere pass Subsampled(..., num_data=N)"
        )
    if prior is not None:
        raise ValueError("a Subsampled model carries its own log_prior: pass prior=None")


def check_options(estimator, objective, cv, num_samples, bases, paths, pathwise):
    """Clear errors, before tracing, for options that cannot work together."""
    if estimator.gradient == "relaxed" and all(b.reparameterized for b in bases):
        # Nothing to relax: the user most likely meant another family, or "auto".
        raise ValueError(
            f"estimator 'relaxed' relaxes discrete leaves (Bernoulli, Categorical), but the families at "
            f"{paths} are all continuous; use estimator='auto' or 'reparam'"
        )
    if not objective.linear:
        if estimator.entropy == "stl":
            raise ValueError(
                f"entropy='stl' is biased for {objective}; use entropy='dreg' (doubly-reparameterised "
                "gradients), the unbiased path derivative for importance-weighted bounds"
            )
        if estimator.gradient == "relaxed" or cv.needs_scores or cv.per_factor:
            what = (
                "estimator 'relaxed'" if estimator.gradient == "relaxed" else f"control_variate={cv.name!r}"
            )
            raise ValueError(f"{what} needs the ELBO (a linear objective), not {objective}")
        if num_samples < 2 and not all(pathwise):
            raise ValueError(f"{objective} with score-function leaves needs num_samples >= 2")
    if estimator.entropy == "dreg":
        stratified = [p for b, p, pw in zip(bases, paths, pathwise) if pw and is_stratified(b)]
        if stratified:
            raise ValueError(
                f"entropy='dreg' does not support the stratified (mixture) families at {stratified}"
            )


def check_batch_objective(objective, batch_size) -> None:
    """Minibatches give an unbiased estimate of the ELBO's log-weights, which only the ELBO can use.

    A non-linear objective (IWAE, Renyi) of a noisy, rescaled minibatch log-weight is a biased
    estimate of the full-data bound, by an amount that grows with the minibatch noise.
    """
    if batch_size is not None and not objective.linear:
        raise ValueError(
            f"objective {objective} cannot be estimated from minibatches (batch_size={batch_size}): it is "
            "not linear in the log-weights, so a minibatch estimate is biased; use objective='elbo' or "
            "batch_size=None"
        )


def _is_traced(x) -> bool:
    return isinstance(x, jax.core.Tracer)


def check_params(family, params, name: str = "init_params"):
    """Parameters checked against the family and cast to its dtypes; a clear error naming the leaf.

    Checks the structure and shapes (`tree.split_params`), that every leaf holds real numbers (ints
    are cast exactly; bool, complex, strings and objects are refused), and, where the values are
    concrete (not under `jit` / `vmap`), that they are finite: a NaN start would otherwise surface
    later as a non-finite ELBO with nothing pointing at the parameters.

    Example:
        >>> import jax.numpy as jnp, bbvi
        >>> from bbvi.estimators.checks import check_params
        >>> family = bbvi.MeanFieldGaussian((2,))
        >>> params = check_params(family, {"loc": jnp.array([0, 1]), "log_scale": jnp.zeros(2)})
        >>> params["loc"]  # ints, cast exactly to the family's float dtype
        Array([0., 1.], dtype=float32)
        >>> check_params(family, {"loc": jnp.array([0.0, jnp.nan]), "log_scale": jnp.zeros(2)})
        ... # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: init_params['loc'] is not finite (nan or inf); expected finite parameters, ...
    """
    try:
        tree.split_params(family, params)
    except ValueError as err:
        raise ValueError(f"{name}: {err}") from None
    spec = tree.param_spec(family)

    def cast(path, x, expected):
        where = f"{name}{jax.tree_util.keystr(path)}"
        dtype = x.dtype if isinstance(x, jax.Array) else np.asarray(x).dtype
        real = jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)
        if not real or jnp.issubdtype(dtype, jnp.bool_):
            raise TypeError(f"{where} has dtype {dtype}; expected real numbers ({expected.dtype})")
        return jnp.asarray(x, dtype=expected.dtype)

    params = jax.tree_util.tree_map_with_path(cast, params, spec)
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    concrete = [(path, x) for path, x in leaves if not _is_traced(x)]
    if concrete:
        # One transfer to the host for all leaves, not one per leaf.
        finite = np.asarray(jnp.stack([jnp.all(jnp.isfinite(x)) for _, x in concrete]))
        bad = [jax.tree_util.keystr(path) for (path, _), ok in zip(concrete, finite) if not ok]
        if bad:
            more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
            raise ValueError(
                f"{name}{bad[0]} is not finite (nan or inf){more}; expected finite parameters, e.g. "
                "from bbvi.init(family, key)"
            )
    return params


def check_state(name: str, given, expected) -> None:
    """A state to continue from (optimiser, control variate) against the one a fresh start makes.

    `expected` is the fresh state or its `jax.eval_shape` (e.g. `jax.eval_shape(optimizer.init,
    params)`); structure and shapes must agree, so that a state from another optimiser, family or
    control variate fails here and not deep inside the optimiser's update.
    """
    given_leaves, given_def = jax.tree_util.tree_flatten_with_path(given)
    expected_leaves, expected_def = jax.tree_util.tree_flatten_with_path(expected)
    if given_def != expected_def:
        raise ValueError(
            f"{name} does not match what this optimiser, family and control variate use: expected the "
            f"structure {_short(expected_def)}, got {_short(given_def)}"
        )
    for (path, g), (_, e) in zip(given_leaves, expected_leaves):
        if jnp.shape(g) != jnp.shape(e):
            raise ValueError(
                f"{name}{jax.tree_util.keystr(path)} has shape {jnp.shape(g)}, expected {jnp.shape(e)}"
            )


def _short(treedef, limit: int = 300) -> str:
    text = str(treedef)
    return text if len(text) <= limit else text[:limit] + "..."
