"""A prior given apart from the likelihood: the KL from q to it in closed form, or by Monte Carlo.

When the model is `log p(x | z) + log p(z)` with `p(z)` a pytree of numpyro distributions, the
ELBO is `E_q[log p(x | z)] - KL(q || p)`. numpyro's `kl_divergence` gives the KL in closed form
for many pairs (Normal-Normal, Independent, MultivariateNormal, Bernoulli, Categorical, Dirichlet,
Gamma, Beta, ...); that removes the prior's and the entropy's Monte Carlo noise from the estimate.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from numpyro.distributions import Distribution
from numpyro.distributions.kl import kl_divergence

from bbvi.families.constrained import Constrained


def _is_prior(x) -> bool:
    return x is None or isinstance(x, Distribution)


def _kl(family, params, prior) -> jax.Array:
    """KL(q || prior) for one leaf; NotImplementedError where there is no closed form."""
    if hasattr(family, "distribution"):
        return jnp.sum(kl_divergence(family.distribution(params), prior))
    if isinstance(family, Constrained):  # q on the support is a pushforward: no closed form
        raise NotImplementedError("no closed-form KL for a Constrained family")
    base = getattr(family, "base", None)
    if base is not None and hasattr(base, "distribution") and not family.needs_data:
        # A batch of base families (an amortised family, conditioned): one KL per datum.
        return jnp.sum(jax.vmap(lambda p: jnp.sum(kl_divergence(base.distribution(p), prior)))(params))
    raise NotImplementedError(f"no closed-form KL for {type(family).__name__}")


class PriorTerms:
    """Which leaves take their prior's KL in closed form, and the prior's terms for the rest."""

    def __init__(self, prior, treedef, leaves, paths, estimator, objective):
        self.given = prior is not None
        if not self.given:
            self.priors = [None] * len(leaves)
            self.analytic = [False] * len(leaves)
            return
        try:
            self.priors = treedef.flatten_up_to(prior)
        except (ValueError, TypeError) as err:
            raise ValueError(f"prior must match the family's structure {treedef}: {err}") from None
        for path, p in zip(paths, self.priors):
            if not _is_prior(p):
                raise TypeError(f"the prior at {path} must be a numpyro distribution or None, got {p!r}")
        closed_form = estimator.entropy == "analytic" and objective.linear
        self.analytic = [
            closed_form and p is not None and _has_kl(leaf, p) for leaf, p in zip(leaves, self.priors)
        ]

    def log_prob(self, z_leaves) -> jax.Array:
        """The Monte Carlo leaves' log prior at a draw (on the supports)."""
        terms = [
            jnp.sum(p.log_prob(z))
            for p, z, an in zip(self.priors, z_leaves, self.analytic)
            if p is not None and not an
        ]
        return sum(terms) if terms else 0.0

    def closed_form(self, conditioned, leaf_params) -> jax.Array:
        """`-KL(q || prior)` summed over the closed-form leaves."""
        terms = [
            -_kl(f, q, p) for f, q, p, an in zip(conditioned, leaf_params, self.priors, self.analytic) if an
        ]
        return sum(terms) if terms else 0.0


def _has_kl(leaf, prior) -> bool:
    family = leaf
    if leaf.needs_data:
        base = getattr(leaf, "base", None)
        if base is None:
            return False
        family = base
    try:
        spec = jax.eval_shape(family.init, jax.random.key(0))
        jax.eval_shape(lambda p: _kl(family, p, prior), spec)
    except (NotImplementedError, ValueError, TypeError):
        return False
    return True
