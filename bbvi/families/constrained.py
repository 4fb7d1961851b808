"""Latents on a constrained support (positive, unit interval, simplex, ...), via numpyro's `biject_to`.

q lives in unconstrained space and is pushed through numpyro's bijection onto the support. The
ELBO is invariant under the change of variables, so estimators work in the unconstrained space
with the log-joint pulled back (`log p(T(u)) + log|det J_T(u)|`, as ADVI does); `log_prob` here is
the density of the pushed-forward q on the support itself.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.distributions.constraints import Constraint
from numpyro.distributions.transforms import biject_to

from bbvi.families.base import Family


def _constraint_key(support: Constraint):
    """A hashable identity for a numpyro constraint (they define `__eq__` but not `__hash__`)."""
    leaves, treedef = jax.tree_util.tree_flatten(support)
    try:
        values = tuple(np.asarray(leaf, dtype=np.float64).tolist() for leaf in leaves)
    except jax.errors.TracerArrayConversionError:
        raise TypeError("Constrained: the support's parameters must be concrete, not traced") from None
    return str(treedef), repr(values)


@dataclasses.dataclass(frozen=True, eq=False)
class Constrained(Family):
    """A continuous family pushed onto `support` by numpyro's `biject_to(support)`.

    `base` describes q in the unconstrained space, so its shape is the *unconstrained* shape:
    `K - 1` for a simplex over `K` categories, the same shape for elementwise supports.

    Example:
        >>> from numpyro.distributions import constraints
        >>> import bbvi
        >>> tau = bbvi.Constrained(bbvi.MeanFieldGaussian(()), constraints.positive)
        >>> weights = bbvi.Constrained(bbvi.MeanFieldGaussian((2,)), constraints.simplex)
        >>> weights.event_shape
        (3,)
    """

    base: Family
    support: Constraint

    # The pushed-forward entropy has no closed form. The ELBO does not need it: estimators work in
    # unconstrained space, with the base's entropy and the log-Jacobian in the log-density.
    has_entropy = False

    def __post_init__(self):
        if not isinstance(self.base, Family):
            raise TypeError(f"Constrained: base must be a bbvi family, got {self.base!r}")
        if isinstance(self.base, Constrained):
            raise TypeError("Constrained: base is already constrained; compose the supports instead")
        if self.base.point_mass:
            raise TypeError(
                "Constrained: a point mass has no density for the bijection's Jacobian to correct, and "
                "the Jacobian would bias its fit; fit an unconstrained PointMass and map it onto the "
                "support in the log-joint (e.g. exp of it for a positive parameter)"
            )
        if not self.base.reparameterized:
            raise TypeError(f"Constrained: base must be a continuous family, got {type(self.base).__name__}")
        if not isinstance(self.support, Constraint):
            raise TypeError(f"Constrained: support must be a numpyro constraint, got {self.support!r}")
        try:
            transform = biject_to(self.support)
        except NotImplementedError:
            raise ValueError(
                f"Constrained: numpyro has no bijection (biject_to) onto {self.support}"
            ) from None
        try:
            if len(self.base.event_shape) < transform.domain.event_dim:
                raise ValueError(f"it needs at least {transform.domain.event_dim} dimension(s)")
            transform.forward_shape(self.base.event_shape)
        except (ValueError, IndexError) as err:
            raise ValueError(
                f"Constrained: a base of shape {self.base.event_shape} does not fit the support "
                f"{self.support}: {err}"
            ) from None

    def __eq__(self, other):
        return (
            isinstance(other, Constrained)
            and self.base == other.base
            and _constraint_key(self.support) == _constraint_key(other.support)
        )

    def __hash__(self):
        return hash((Constrained, self.base, _constraint_key(self.support)))

    @property
    def reparameterized(self):
        return self.base.reparameterized

    @property
    def transform(self):
        """The numpyro bijection from unconstrained space onto the support."""
        return biject_to(self.support)

    @property
    def event_shape(self):
        return tuple(self.transform.forward_shape(self.base.event_shape))

    def init(self, key):
        return self.base.init(key)

    def sample(self, params, key):
        return self.transform(self.base.sample(params, key))

    def log_prob(self, params, z):
        u = self.transform.inv(z)
        log_det = self.transform.log_abs_det_jacobian(u, z)
        return self.base.log_prob(params, u) - jnp.sum(log_det)

    def unconstrained(self):
        return self.base, self.transform
