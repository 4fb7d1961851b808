"""Fit a NumPyro model directly: its log-joint over unconstrained latents, and draws back by site name.

`from_numpyro(model, *args, **kwargs)` traces the model once to find its latent sample sites and
their supports, and builds, once, the log-joint bbvi fits: numpyro's own potential energy (negated)
at unconstrained values, which pushes each value through `biject_to(site support)` and adds the
log-Jacobian, as NUTS and AutoGuides do. Nothing here re-derives a density or a Jacobian.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from numpyro import handlers
from numpyro.distributions.transforms import biject_to
from numpyro.infer.util import constrain_fn, potential_energy

from bbvi.families import FullRankGaussian, MeanFieldGaussian, tree

_NOTE = "(raised while bbvi.from_numpyro traced the model once with a fixed seed to find its latent sites)"


def _trace(model, args, kwargs):
    """One seeded run of the model, every site recorded; a failure says where it came from."""
    try:
        return handlers.trace(handlers.seed(model, rng_seed=0)).get_trace(*args, **kwargs)
    except Exception as err:
        err.add_note(_NOTE)
        raise


def _is_discrete(fn) -> bool:
    try:
        return bool(fn.is_discrete)
    except NotImplementedError:  # a `dependent` support cannot say; biject_to rejects it below
        return False


def _latent_sites(model_trace) -> dict[str, Any]:
    """The unobserved sample sites in execution order; a clear error for what bbvi cannot fit."""
    params = [name for name, site in model_trace.items() if site["type"] == "param"]
    if params:
        raise ValueError(
            f"the model has numpyro.param sites {params}: a model fitted by bbvi declares its unknowns "
            "as numpyro.sample sites with a prior (use an improper flat prior, e.g. "
            "dist.ImproperUniform, for a parameter you want as a point estimate)"
        )
    subsampled = [
        name
        for name, site in model_trace.items()
        if site["type"] == "plate" and site["args"][1] is not None and site["args"][1] != site["args"][0]
    ]
    if subsampled:
        raise ValueError(
            f"the model subsamples in plate(s) {subsampled} (numpyro.plate(..., subsample_size=...)): "
            "from_numpyro fits the full-data log-joint; drop subsample_size, or write the model as a "
            "bbvi.Subsampled log-prior and per-datum likelihood and fit with data=..., batch_size=..."
        )
    latent = {
        name: site
        for name, site in model_trace.items()
        if site["type"] == "sample" and not site["is_observed"]
    }
    if not latent:
        raise ValueError(
            "the model has no latent sample sites (every numpyro.sample site is observed): there is "
            "nothing to infer"
        )
    discrete = {name: type(site["fn"]).__name__ for name, site in latent.items() if _is_discrete(site["fn"])}
    if discrete:
        raise ValueError(
            f"the model has discrete latent sites {discrete}: from_numpyro fits continuous latents "
            "only and does not enumerate numpyro's discrete sites; marginalise them out in the model "
            "(e.g. dist.MixtureSameFamily for a mixture's assignments), or write the log-joint as a "
            "function and give those latents a bbvi.Categorical / bbvi.Bernoulli family"
        )
    for name, site in latent.items():
        try:
            biject_to(site["fn"].support)
        except NotImplementedError:
            raise ValueError(
                f"latent site {name!r} ({type(site['fn']).__name__}) has support {site['fn'].support}, "
                "which numpyro has no bijection (biject_to) onto; bbvi needs an unconstrained "
                "parameterisation of every latent site"
            ) from None
    return latent


def _unconstrained_shapes(model, args, kwargs) -> dict[str, tuple[int, ...]]:
    """`{site: unconstrained shape}` of the latent sites in execution order, from an abstract trace.

    Under `jax.eval_shape` nothing runs on device: a model run eagerly would compile every
    operation it performs, one at a time, which takes seconds.
    """
    shapes = {}

    def run():
        for name, site in _latent_sites(_trace(model, args, kwargs)).items():
            shapes[name] = tuple(jnp.shape(biject_to(site["fn"].support).inv(site["value"])))

    jax.eval_shape(run)
    return shapes


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class NumpyroModel:
    """A NumPyro model with its arguments, as a log-joint over unconstrained latents (`from_numpyro`).

    Hashed by identity (the arguments may hold arrays): `log_joint` is one function built at
    construction, so repeated `bbvi.fit(m.log_joint, ...)` calls reuse one compiled program. The
    model's arguments are closed over (constants of that program), so `log_joint` takes the
    latents only: fit it without `data=` (for minibatches, write a `bbvi.Subsampled` model).

    Attributes:
        model: the model function.
        model_args: its positional arguments.
        model_kwargs: its keyword arguments.
        latent_shapes: `{site: unconstrained shape}` of the latent sites, in execution order.
        log_joint: `z -> scalar`, the model's log-joint at unconstrained latents `z` (a dict by site
            name, or one flat vector of length `dim`), log-Jacobians included.
        family: the default variational family, a `MeanFieldGaussian` per latent site.
        dim: the number of unconstrained coordinates over all latent sites.
    """

    model: Callable
    model_args: tuple
    model_kwargs: Mapping[str, Any]
    latent_shapes: dict[str, tuple[int, ...]] = dataclasses.field(init=False)
    log_joint: Callable[[Any], jax.Array] = dataclasses.field(init=False)
    family: dict[str, MeanFieldGaussian] = dataclasses.field(init=False)
    dim: int = dataclasses.field(init=False)

    def __post_init__(self):
        if not callable(self.model):
            raise TypeError(f"from_numpyro: model must be a callable NumPyro model, got {self.model!r}")
        self._set("model_args", tuple(self.model_args))
        self._set("model_kwargs", dict(self.model_kwargs))
        shapes = _unconstrained_shapes(self.model, self.model_args, self.model_kwargs)
        self._set("latent_shapes", shapes)
        self._set("family", {name: MeanFieldGaussian(shape) for name, shape in shapes.items()})
        self._set("dim", sum(math.prod(shape) for shape in shapes.values()))

        model, args, kwargs = self.model, self.model_args, self.model_kwargs

        def log_joint(z):
            return -potential_energy(model, args, kwargs, self._sites(z, batch_ndims=0))

        def constrain(z, batch_ndims, deterministic):
            return constrain_fn(
                model, args, kwargs, z, return_deterministic=deterministic, batch_ndims=batch_ndims
            )

        def draw(family, params, key, n, data):
            leaves, treedef = family  # hashable, so that the program is reused for each family
            z = tree.sample(treedef.unflatten(leaves), params, key, (n,), data=data)
            return constrain(self._sites(z), 1, True)

        self._set("log_joint", log_joint)
        self._set("_draw", jax.jit(draw, static_argnums=(0, 3)))
        self._set("_constrain", jax.jit(constrain, static_argnums=(1, 2)))
        point = {name: jax.ShapeDtypeStruct(shape, jnp.result_type(float)) for name, shape in shapes.items()}
        value = jax.eval_shape(log_joint, point)  # traces the potential once: errors surface here
        if value.shape != ():
            raise ValueError(f"the model's log-joint has shape {value.shape}, expected a scalar")

    def _set(self, name, value):
        object.__setattr__(self, name, value)

    def __repr__(self):
        name = getattr(self.model, "__name__", repr(self.model))
        return f"NumpyroModel({name}, latent_shapes={self.latent_shapes})"

    def observed(self) -> dict[str, jax.Array]:
        """The observed sites' values by name (the data the model was given), from one compiled run."""
        model, args, kwargs = self.model, self.model_args, self.model_kwargs

        def run():
            # numpyro.factor sites are observed sites with an empty value: not data.
            return {
                name: site["value"]
                for name, site in _trace(model, args, kwargs).items()
                if site["type"] == "sample" and site["is_observed"] and jnp.size(site["value"]) > 0
            }

        return jax.jit(run)()

    def full_rank_family(self) -> FullRankGaussian:
        """A `FullRankGaussian` over all latent sites at once: `log_joint` takes its flat draws.

        The flat vector is the sites' unconstrained values, raveled in execution order (`ravel`,
        `unravel`).
        """
        return FullRankGaussian(self.dim)

    def _sites(self, z, batch_ndims=None) -> dict[str, jax.Array]:
        """`z` as a dict of unconstrained values by site (unravelling a flat vector); clear errors.

        With `batch_ndims=None`, the leading batch dimensions are whatever `z` has beyond one draw.
        """
        if isinstance(z, Mapping):
            if set(z) != set(self.latent_shapes):
                raise ValueError(
                    f"the latents are a dict with keys {sorted(z)}, expected the model's latent sites "
                    f"{sorted(self.latent_shapes)}"
                )
            batch_shapes = set()
            for name, shape in self.latent_shapes.items():
                got = jnp.shape(z[name])
                batch = len(got) - len(shape) if batch_ndims is None else batch_ndims
                if batch < 0 or got[batch:] != shape:
                    raise ValueError(
                        f"latent site {name!r} has shape {got}, expected the unconstrained shape {shape}"
                        + (" after any leading batch dimensions" if batch_ndims is None else "")
                    )
                batch_shapes.add(got[:batch])
            if len(batch_shapes) != 1:
                raise ValueError(f"the latent sites have different batch shapes {sorted(batch_shapes)}")
            return dict(z)
        z = jnp.asarray(z)
        if z.ndim < 1 or z.shape[-1] != self.dim or (batch_ndims is not None and z.ndim != batch_ndims + 1):
            raise ValueError(
                f"the latents are an array of shape {z.shape}, expected a dict by site name "
                f"(unconstrained shapes {self.latent_shapes}) or a flat vector of length {self.dim}"
                + ("" if batch_ndims is not None else " with leading batch dimensions")
            )
        return self.unravel(z)

    def ravel(self, z) -> jax.Array:
        """Unconstrained latents by site name as one flat vector (sites in execution order).

        Leading batch dimensions are kept: `(..., dim)`.
        """
        sites = self._sites(z)
        name, shape = next(iter(self.latent_shapes.items()))
        batch = jnp.shape(sites[name])[: jnp.ndim(sites[name]) - len(shape)]
        return jnp.concatenate(
            [jnp.reshape(sites[name], (*batch, -1)) for name in self.latent_shapes], axis=-1
        )

    def unravel(self, x) -> dict[str, jax.Array]:
        """A flat vector `(..., dim)` (as `full_rank_family` draws it) as latents by site name."""
        x = jnp.asarray(x)
        if x.ndim < 1 or x.shape[-1] != self.dim:
            raise ValueError(
                f"expected a flat vector of length {self.dim} (after any batch axes), got {x.shape}"
            )
        sites, start = {}, 0
        for name, shape in self.latent_shapes.items():
            size = math.prod(shape)
            sites[name] = jnp.reshape(x[..., start : start + size], (*x.shape[:-1], *shape))
            start += size
        return sites

    def constrain(self, z, *, deterministic: bool = False) -> dict[str, jax.Array]:
        """The latent sites on their supports, from unconstrained values.

        Args:
            z: unconstrained latents, a dict by site name or a flat vector (as `full_rank_family`
                draws them), with any number of leading batch dimensions.
            deterministic: also return the model's `numpyro.deterministic` sites.

        Returns:
            `{site name: constrained value}` with the same leading batch dimensions.
        """
        sites = self._sites(z)
        name = next(iter(self.latent_shapes))
        batch_ndims = jnp.ndim(sites[name]) - len(self.latent_shapes[name])
        return self._constrain(sites, batch_ndims, bool(deterministic))

    def sample(self, result, key: jax.Array, n: int, data=None) -> dict[str, jax.Array]:
        """`n` draws from a fit of this model, by site name, on the supports, deterministic sites too.

        Args:
            result: a `bbvi.FitResult` of `bbvi.fit(m.log_joint, family, ...)`, for `m.family`,
                `m.full_rank_family()` or any family over the same latents.
            key: a PRNG key.
            n: the number of draws.
            data: the data an amortised family conditions on, if any.

        Returns:
            `{site name: draws}`, each with a leading axis `n`: `result.sample(key, n, data)` (q's
            draws) mapped onto the supports, drawn and mapped in one compiled program.
        """
        if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
            raise ValueError(f"n must be a positive int, got {n!r}")
        leaves, treedef = tree.flatten(result.family)
        return self._draw((tuple(leaves), treedef), result.params, key, int(n), data)


def from_numpyro(model: Callable, *model_args, **model_kwargs) -> NumpyroModel:
    """A NumPyro model, with its arguments, as a log-joint bbvi can fit.

    The model is traced once, here, with a fixed seed: errors for what cannot be fitted (discrete
    or no latent sites, `numpyro.param` sites, subsampling plates, a model that fails to run) are
    raised now, before anything compiles.

    Args:
        model: a function containing NumPyro primitives; observed sites carry their `obs`.
        *model_args: its positional arguments (data, sizes, ...).
        **model_kwargs: its keyword arguments.

    Returns:
        A `NumpyroModel` with `log_joint`, the default `family`, `full_rank_family()`,
        `constrain(z)` and `sample(result, key, n)`.

    Raises:
        ValueError: for discrete latent sites, no latent sites, `numpyro.param` sites, a plate with
            `subsample_size`, a latent support numpyro cannot unconstrain.

    Example:
        >>> import jax, numpyro, numpyro.distributions as dist, bbvi
        >>> from bbvi.interop import from_numpyro
        >>> def model(y):
        ...     mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
        ...     sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
        ...     numpyro.sample("y", dist.Normal(mu, sigma), obs=y)
        >>> m = from_numpyro(model, jax.numpy.array([0.3, -0.2, 0.5]))
        >>> result = bbvi.fit(m.log_joint, m.family, key=jax.random.key(0), num_steps=200,
        ...                   progress_bar=False)
        >>> draws = m.sample(result, jax.random.key(1), 100)
        >>> draws["sigma"].shape, bool((draws["sigma"] > 0).all())
        ((100,), True)
    """
    return NumpyroModel(model, model_args, model_kwargs)
