"""Clear errors, raised before anything is traced or compiled, for what an estimator is given."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from bbvi.estimators.draws import is_stratified


def _describe(z) -> str:
    return str(jax.tree.map(lambda x: f"{jnp.result_type(x)}{list(jnp.shape(x))}", z))


def call_log_joint(log_joint: Callable, z, *data, name: str = "log_joint") -> jax.Array:
    """`log_joint(z[, data])`, with clear errors for a failing call or a non-scalar, non-float result."""
    try:
        value = log_joint(z, *data)
    except Exception as err:
        # A note keeps the user's own exception, type and traceback, and says what it was given.
        err.add_note(
            f"bbvi: {name} failed on latents {_describe(z)} (the structure, dtypes and shapes the "
            "family draws); check that the family matches what the log-joint reads"
        )
        raise
    if jnp.shape(value) != ():
        raise ValueError(
            f"{name} must return a scalar, but returned shape {jnp.shape(value)} for latents "
            f"{_describe(z)}; sum the log-density over data points and latents"
        )
    if not jnp.issubdtype(jnp.result_type(value), jnp.floating):
        raise TypeError(f"{name} must return a float, but returned {jnp.result_type(value)}")
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
