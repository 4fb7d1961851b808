"""Export a fit to ArviZ `InferenceData`: posterior draws by name, the ELBO trace, diagnostics.

arviz is an optional extra (`pip install 'bbvi[arviz]'`), imported when `to_inference_data` is
called, so `import bbvi` never needs it.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import numpy as np

from bbvi.families import tree

#: The group holding the per-step ELBO trace (dimension "step"); not one of ArviZ's schema groups,
#: which all index draws by chain and draw.
TRACE_GROUP = "vi_trace"

_FIT_FACTS = ("num_steps", "num_skipped", "converged", "converged_at")
_DIAGNOSTIC_FACTS = ("khat", "verdict", "elbo", "elbo_se", "log_evidence", "log_evidence_se", "ess")


def _import_arviz():
    try:
        import arviz
    except ImportError as err:
        raise ImportError(
            "bbvi.to_inference_data needs arviz, an optional extra: pip install 'bbvi[arviz]'"
        ) from err
    return arviz


def _name(path) -> str:
    """A variable name from a key path: `mu`, `theta.scale`, `z[0]`; a bare array is `z`."""
    name = ""
    for entry in path:
        if isinstance(entry, jax.tree_util.DictKey):
            name += ("." if name else "") + str(entry.key)
        elif isinstance(entry, jax.tree_util.SequenceKey):
            name = (name or "z") + f"[{entry.idx}]"
        elif isinstance(entry, jax.tree_util.GetAttrKey):
            name += ("." if name else "") + entry.name
        else:
            name += str(entry)
    return name or "z"


def _by_name(draws) -> dict[str, np.ndarray]:
    """Each leaf of a draws pytree (leading axis: draws) as a `(chain=1, draw, ...)` array by name."""
    named = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(draws)[0]:
        name = _name(path)
        if name in named:
            raise ValueError(f"two leaves of the draws are both named {name!r}")
        named[name] = np.asarray(leaf)[None]
    return named


def _scalar(value) -> Any:
    """A fact as a plain Python number or string (netCDF attributes take no bools or 0-d arrays)."""
    if isinstance(value, str):
        return value
    value = np.asarray(value)
    if value.shape != ():
        raise ValueError(f"expected a scalar, got shape {value.shape}")
    if value.dtype == bool:
        return int(value)
    return value.item()


def _facts(source, names) -> dict[str, Any]:
    """The named facts `source` has (`getattr(..., None)`), as attributes."""
    facts = {}
    for name in names:
        value = getattr(source, name, None)
        if value is not None:
            facts[name] = _scalar(value)
    return facts


@functools.partial(jax.jit, static_argnums=(0, 3))
def _sample(family, params, key, n, data):
    """`result.sample(key, n, data)` as one compiled program (eagerly, each operation compiles alone)."""
    leaves, treedef = family  # hashable: the program is reused for the same family and n
    return tree.sample(treedef.unflatten(leaves), params, key, (n,), data=data)


def to_inference_data(
    result,
    key: jax.Array | None,
    num_draws: int = 1000,
    *,
    model=None,
    diagnostics=None,
    data=None,
):
    """A fit as ArviZ `InferenceData`: q's draws as the posterior, the ELBO trace, fit facts.

    Groups:
        - `posterior`: `num_draws` draws from the fitted q (`result.sample(key, num_draws)`), with
          dimensions `(chain=1, draw, ...)`. Variables are named by the latents' dict keys (nested
          keys joined by ".", sequence entries as `[i]`; a bare array is `"z"`). With a
          `NumpyroModel`, by site name on the supports, deterministic sites included.
        - `vi_trace`: the per-step ELBO estimates `elbo` with dimension `step` (the steps taken).
        - `sample_stats` (with `diagnostics`): `log_weight`, the PSIS-smoothed normalised log
          importance weights of the posterior draws, and `raw_log_weight`, the raw ones.
        - `observed_data` (with a `NumpyroModel`): the model's observed sites.

    The attributes of the data and of its posterior, sample_stats and vi_trace groups hold the
    fit's facts where the result has them (`num_steps`, `num_skipped`, `converged` as 0 / 1,
    `converged_at`) and, with `diagnostics`, `khat` and its `verdict`, `elbo`, `elbo_se`,
    `log_evidence`, `log_evidence_se` and `ess`.

    The posterior draws are q's, unweighted: ArviZ's summaries describe q. With `diagnostics`,
    the PSIS weights in `sample_stats` turn them into estimates under the posterior.

    Args:
        result: a `bbvi.FitResult`.
        key: the PRNG key for the draws (unused with `diagnostics`, whose draws are taken).
        num_draws: how many draws (unused with `diagnostics`).
        model: the `bbvi.interop.NumpyroModel` that was fitted (`fit(m.log_joint, ...)`): the
            draws are then named by site and mapped onto the supports.
        diagnostics: a `bbvi.diagnostics.Diagnostics` of this fit: its draws become the posterior
            and its weights and estimates are added.
        data: the data an amortised family conditions on, if any.

    Returns:
        An `arviz.InferenceData`.

    Raises:
        ImportError: arviz is not installed.
        ValueError: a bad `num_draws`, no `key` without `diagnostics`, or diagnostics whose weights
            do not match their draws.

    Example:
        >>> import jax, jax.numpy as jnp, arviz as az, bbvi
        >>> from bbvi.interop import to_inference_data
        >>> result = bbvi.fit(lambda z: -0.5 * jnp.sum((z - 1.0) ** 2), bbvi.MeanFieldGaussian((2,)),
        ...                   key=jax.random.key(0), num_steps=200, progress_bar=False)
        >>> idata = to_inference_data(result, jax.random.key(1), 500)
        >>> idata.posterior["z"].shape, idata.vi_trace["elbo"].dims
        ((1, 500, 2), ('step',))
    """
    if diagnostics is None:
        if isinstance(num_draws, bool) or not isinstance(num_draws, (int, np.integer)) or num_draws < 1:
            raise ValueError(f"num_draws must be a positive int, got {num_draws!r}")
        if key is None:
            raise ValueError("to_inference_data needs a key to draw from q (or diagnostics with draws)")
    az = _import_arviz()
    import xarray  # an arviz dependency

    if diagnostics is None:
        if model is not None:
            draws = model.sample(result, key, int(num_draws), data=data)
        else:
            leaves, treedef = tree.flatten(result.family)
            draws = _sample((tuple(leaves), treedef), result.params, key, int(num_draws), data)
    else:
        draws = diagnostics.draws
        if model is not None:
            draws = model.constrain(draws, deterministic=True)
    posterior = _by_name(draws)
    num = {value.shape[1] for value in posterior.values()}
    if len(num) != 1:
        raise ValueError(f"the draws' leaves have different numbers of draws {sorted(num)}")

    attrs = {"inference_library": "bbvi", **_facts(result, _FIT_FACTS)}
    sample_stats = None
    if diagnostics is not None:
        attrs.update(_facts(diagnostics, _DIAGNOSTIC_FACTS))
        sample_stats = {
            "log_weight": np.asarray(diagnostics.log_weights)[None],
            "raw_log_weight": np.asarray(diagnostics.raw_log_weights)[None],
        }
        for name, value in sample_stats.items():
            if value.shape[1:] != (*num,):
                raise ValueError(
                    f"diagnostics: {name} has shape {value.shape[1:]}, expected one per draw ({num.pop()},)"
                )
    observed = None
    if model is not None:
        observed = {name: np.asarray(value) for name, value in model.observed().items()} or None

    idata = az.from_dict(
        posterior=posterior,
        sample_stats=sample_stats,
        observed_data=observed,
        attrs=dict(attrs),  # arviz edits the dict it is given
        posterior_attrs=dict(attrs),
        sample_stats_attrs=dict(attrs),
    )
    elbo = np.asarray(result.elbo)
    steps = attrs.get("num_steps")
    if steps is not None and steps < elbo.shape[0]:  # a fit stopped early under jit pads with nan
        elbo = elbo[:steps]
    trace = xarray.Dataset({"elbo": ("step", elbo)}, coords={"step": np.arange(elbo.shape[0])}, attrs=attrs)
    idata.add_groups({TRACE_GROUP: trace})
    return idata
