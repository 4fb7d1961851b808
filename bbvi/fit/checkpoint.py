"""Save a `FitResult` to disk and load it back: a plain numpy archive plus a structure check.

The archive holds every array of the result (PRNG keys as their raw key data) and a JSON header
with the family, each array's path in the result, shape and dtype. Loading needs the family, which
rebuilds and checks the parameters; the optimiser's and the control variate's states come back as
`Leaves` (their paths and arrays) and take their structure when `fit(..., resume=...)` builds the
same optimiser's state, which also checks that they match it. Nothing is unpickled.

A save writes a temporary file next to the target and renames it over the target (atomic on POSIX
and Windows): an interrupted save leaves the previous file intact, never a partial one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from bbvi.families import tree
from bbvi.fit.convergence import ConvergenceState
from bbvi.fit.result import Average, FitResult, FitState

_FORMAT = "bbvi.FitResult"
_VERSION = 1
_NAMES = {
    "opt_state": "optimiser state",
    "estimator_state": "control-variate state",
    "average": "Polyak average",
}
_STRUCTURED = ("opt_state", "estimator_state")  # their structure comes from the optimiser / control variate


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass(frozen=True)
class Leaves:
    """A state loaded from disk before it is given its structure: key paths and arrays."""

    paths: tuple[str, ...]
    arrays: tuple[Any, ...]

    def tree_flatten(self):
        return self.arrays, self.paths

    @classmethod
    def tree_unflatten(cls, paths, arrays):
        return cls(paths, tuple(arrays))


def _flat(tree_) -> tuple[list[str], list[Any]]:
    pairs = jax.tree_util.tree_flatten_with_path(tree_)[0]
    return [jax.tree_util.keystr(path) for path, _ in pairs], [leaf for _, leaf in pairs]


def _is_key(x) -> bool:
    return jnp.issubdtype(jnp.result_type(x), jax.dtypes.prng_key)


def save(path: str | os.PathLike, result: FitResult) -> None:
    """Write `result` to `path` (a numpy `.npz` archive), atomically.

    Args:
        path: the file to write; an existing file is replaced only once the new one is complete.
        result: a `FitResult` from `bbvi.fit` (not a batched one from `jax.vmap`: save each).

    Example:
        >>> import jax, jax.numpy as jnp, bbvi, tempfile, os
        >>> family = bbvi.MeanFieldGaussian((2,))
        >>> r = bbvi.fit(lambda z: -jnp.sum(z**2), family, key=jax.random.key(0), num_steps=10,
        ...              progress_bar=False)
        >>> path = os.path.join(tempfile.mkdtemp(), "fit.npz")
        >>> bbvi.save(path, r)
        >>> bool(jnp.all(bbvi.load(path, family).params["loc"] == r.params["loc"]))
        True
    """
    if not isinstance(result, FitResult):
        raise TypeError(f"save expects a FitResult, got {type(result).__name__}")
    if any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(result)):
        raise TypeError("save needs a concrete FitResult, not one inside jax.jit / jax.vmap")
    paths, leaves = _flat(result)
    arrays, key_impl = {}, None
    for i, leaf in enumerate(leaves):
        if _is_key(leaf):
            key_impl = str(jax.random.key_impl(leaf))
            leaf = jax.random.key_data(leaf)
        arrays[f"a{i}"] = np.asarray(leaf)
    header = {
        "format": _FORMAT,
        "version": _VERSION,
        "family": repr(result.family),
        "paths": paths,
        "key_impl": key_impl,
    }
    arrays["header"] = np.array(json.dumps(header))
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    handle, temporary = tempfile.mkstemp(dir=directory, prefix=".bbvi-save-", suffix=".npz")
    try:
        with os.fdopen(handle, "wb") as file:
            np.savez(file, **arrays)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def load(path: str | os.PathLike, family) -> FitResult:
    """Read a result written by `bbvi.save`, checked against `family`.

    The optimiser and control-variate states come back as `Leaves`; `fit(..., resume=result)`
    gives them their structure and checks that they match its optimiser.

    Raises:
        ValueError: the file is not a bbvi result, or it was saved for another family.
    """
    try:
        with np.load(os.fspath(path), allow_pickle=False) as archive:
            header = json.loads(str(archive["header"]))
            arrays = {name: archive[name] for name in archive.files if name != "header"}
    except (OSError, KeyError, ValueError) as err:
        raise ValueError(f"{path} is not a result saved by bbvi.save ({err})") from err
    if header.get("format") != _FORMAT or header.get("version") != _VERSION:
        raise ValueError(f"{path} is not a bbvi.save file of version {_VERSION}: {header.get('format')!r}")
    if header["family"] != repr(family):
        raise ValueError(f"{path} holds a fit of family {header['family']}, not of {family!r}")
    saved = dict(zip(header["paths"], (arrays[f"a{i}"] for i in range(len(header["paths"])))))

    def take(prefix, template):
        """The saved arrays under `prefix`, in `template`'s structure, checked."""
        paths, specs = _flat(template)
        missing = [p for p in paths if prefix + p not in saved]
        if missing:
            raise ValueError(f"{path} does not match family {family!r}: no {prefix + missing[0]}")
        leaves = []
        for p, spec in zip(paths, specs):
            array = saved[prefix + p]
            if array.shape != tuple(spec.shape):
                raise ValueError(
                    f"{path} does not match family {family!r}: {prefix + p} has shape {array.shape}, "
                    f"expected {tuple(spec.shape)}"
                )
            leaves.append(jnp.asarray(array, spec.dtype))
        return jax.tree.unflatten(jax.tree.structure(template), leaves)

    def unstructured(prefix):
        paths = [p for p in header["paths"] if p.startswith(prefix)]
        return Leaves(tuple(p[len(prefix) :] for p in paths), tuple(jnp.asarray(saved[p]) for p in paths))

    spec = tree.param_spec(family)
    params = take(".params", spec)
    key = jnp.asarray(saved[".state.key"])
    if header["key_impl"] is not None:
        key = jax.random.wrap_key_data(key, impl=header["key_impl"])
    average = ()
    if ".state.average.count" in saved:
        average = Average(take(".state.average.mean", spec), jnp.asarray(saved[".state.average.count"]))
    convergence = ConvergenceState(
        *(jnp.asarray(saved[f".state.convergence.{f}"]) for f in ConvergenceState._fields)
    )
    state = FitState(
        params=take(".state.params", spec),
        opt_state=unstructured(".state.opt_state"),
        estimator_state=unstructured(".state.estimator_state"),
        key=key,
        step=jnp.asarray(saved[".state.step"]),
        num_skipped=jnp.asarray(saved[".state.num_skipped"]),
        last_finite=jnp.asarray(saved[".state.last_finite"]),
        average=average,
        convergence=convergence,
    )
    return FitResult(params=params, elbo=jnp.asarray(saved[".elbo"]), family=family, state=state)


def restructure(state: FitState, template: FitState) -> FitState:
    """`state` in `template`'s structure: loaded `Leaves` take it, and everything is checked."""
    fields = {}
    for field in dataclasses.fields(FitState):
        name = field.name
        value, like = getattr(state, name), getattr(template, name)
        what = _NAMES.get(name, name.replace("_", " "))
        if isinstance(value, Leaves):
            paths, leaves = list(value.paths), list(value.arrays)
        else:
            paths, leaves = _flat(value)
        like_paths, like_leaves = _flat(like)
        if paths != like_paths:
            hint = " (was it fitted with another optimizer?)" if name in _STRUCTURED else ""
            raise ValueError(
                f"resume: the {what} does not match this fit's{hint}: it has {_summary(paths)}, this fit "
                f"expects {_summary(like_paths)}"
            )
        for p, x, t in zip(paths, leaves, like_leaves):
            if jnp.shape(x) != jnp.shape(t):
                raise ValueError(
                    f"resume: the {what} does not match this fit's: {p or name} has shape "
                    f"{jnp.shape(x)}, expected {jnp.shape(t)}"
                )
        if isinstance(value, Leaves):
            value = jax.tree.unflatten(jax.tree.structure(like), leaves)
        fields[name] = value
    return FitState(**fields)


def _summary(paths) -> str:
    shown = ", ".join(p or "(a single array)" for p in paths[:4])
    return f"{len(paths)} arrays [{shown}{', ...' if len(paths) > 4 else ''}]"
