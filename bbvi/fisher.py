"""Natural-gradient preconditioning: the ELBO gradient times the inverse Fisher information of q.

`natural_gradient(family)` is an optax transformation, so natural-gradient VI is one optimiser choice
away: `optax.chain(natural_gradient(family), optax.sgd(0.1))`. `fit` hands optax the negated ELBO
gradient; the preconditioner is linear, so it commutes with the negation.

The Fisher information is taken in closed form, in the unconstrained parameterisation each family
uses. A new family type joins by registering `inverse_fisher_product` for its type; a numpyro
exponential family wrapped by `NumpyroFamily` joins with an entry in `_EXPONENTIAL_FAMILIES`.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpyro.distributions as dist
import optax
from jax.flatten_util import ravel_pytree

from bbvi.families import tree
from bbvi.families.constrained import Constrained
from bbvi.families.discrete import Bernoulli, Categorical
from bbvi.families.gaussian import FullRankGaussian, LowRankGaussian, MeanFieldGaussian
from bbvi.families.numpyro_family import NumpyroFamily

# Eigenvalues below this many (parameters x machine epsilon) of the largest count as zero in the
# undamped dense solve: numpy's and JAX's `pinv` convention.
_PINV_RTOL_PER_PARAM = 10.0


@functools.singledispatch
def inverse_fisher_product(family, params, grad, damping: float = 0.0):
    """`(F(params) + damping * I)^{-1} grad` for one family, where F is the Fisher information of q.

    Dispatches on the family type: a new family joins with `@inverse_fisher_product.register`.

    Args:
        family: a single family (not a pytree of them).
        params: its unconstrained parameters.
        grad: a pytree with the structure of `params` (e.g. an ELBO gradient).
        damping: Tikhonov damping `>= 0`.

    Returns:
        A pytree with the structure of `params`.

    Example:
        >>> import jax.numpy as jnp, bbvi
        >>> from bbvi.fisher import inverse_fisher_product
        >>> params = {"logits": jnp.zeros(2)}  # p = 1/2: Fisher p (1 - p) = 1/4
        >>> inverse_fisher_product(bbvi.Bernoulli((2,)), params, {"logits": jnp.ones(2)})["logits"]
        Array([4., 4.], dtype=float32)
    """
    supported = sorted(t.__name__ for t in inverse_fisher_product.registry if t is not object)
    raise TypeError(
        f"natural_gradient: no closed-form Fisher information for {type(family).__name__}; "
        f"supported families: {', '.join(supported)}"
    )


@inverse_fisher_product.register
def _(family: MeanFieldGaussian, params, grad, damping=0.0):
    # Diagonal Fisher: 1 / sigma^2 for loc, 2 for log_scale (Var[eps^2 - 1] with eps ~ N(0, 1)).
    var = jnp.exp(2.0 * params["log_scale"])
    return {
        "loc": grad["loc"] * var / (1.0 + damping * var),
        "log_scale": grad["log_scale"] / (2.0 + damping),
    }


@inverse_fisher_product.register
def _(family: Bernoulli, params, grad, damping=0.0):
    logits = params["logits"]
    # p (1 - p) as sigmoid(x) sigmoid(-x): no cancellation for saturated logits.
    fisher = jax.nn.sigmoid(logits) * jax.nn.sigmoid(-logits)
    return {"logits": grad["logits"] / _positive(fisher + damping)}


def _positive(x):
    """`x`, with zeros raised to the smallest normal number.

    Past |logit| ~ 88 (float32) a probability underflows to zero, and so does every gradient term,
    each a multiple of it: the undamped quotient would be 0 / 0 = NaN. Raised, it is a zero step.
    """
    return jnp.maximum(x, jnp.finfo(x.dtype).tiny)


@inverse_fisher_product.register
def _(family: Categorical, params, grad, damping=0.0):
    # F = diag(p) - p p^T is singular: softmax ignores a shift of all logits (F 1 = 0). We drop the
    # shift component of the gradient (an exact ELBO gradient has none) and solve on the rest, which
    # F + damping * I maps to itself: Sherman-Morrison with sum(h) = 0 and sum(p) = 1 reduces to
    # x = h w - p w * sum(h w) / sum(p w), w = 1 / (p + damping). Undamped this is h / p centred:
    # the minimum-norm solution, i.e. the pseudo-inverse F^+ g.
    p = jax.nn.softmax(params["logits"], axis=-1)
    g = grad["logits"]
    h = g - jnp.mean(g, axis=-1, keepdims=True)
    w = 1.0 / _positive(p + damping)
    hw, pw = h * w, p * w
    shift = jnp.sum(hw, axis=-1, keepdims=True) / jnp.sum(pw, axis=-1, keepdims=True)
    return {"logits": hw - pw * shift}


@inverse_fisher_product.register(FullRankGaussian)
@inverse_fisher_product.register(LowRankGaussian)
def _(family, params, grad, damping=0.0):
    # The Gaussian Fisher is block diagonal: Sigma^{-1} for loc, and for the covariance parameters
    # theta, F_ij = 1/2 tr(Sigma^{-1} dSigma/dtheta_i Sigma^{-1} dSigma/dtheta_j), with dSigma/dtheta
    # from jacfwd through numpyro's covariance. The dense solve costs O(P^3) in the P covariance
    # parameters (P = dim (dim + 1) / 2 full rank, dim (rank + 1) low rank): fine for moderate dims.
    dist = family.distribution(params)
    cov, tril = dist.covariance_matrix, dist.scale_tril
    dim = cov.shape[-1]

    # loc: (Sigma^{-1} + damping I)^{-1} g = (I + damping Sigma)^{-1} Sigma g, with no inverse of Sigma.
    loc = cov @ grad["loc"]
    if damping > 0:
        loc = jnp.linalg.solve(jnp.eye(dim, dtype=cov.dtype) + damping * cov, loc)

    cov_params = {k: v for k, v in params.items() if k != "loc"}
    theta, unravel = ravel_pytree(cov_params)
    g_theta, _ = ravel_pytree({k: v for k, v in grad.items() if k != "loc"})

    def covariance(theta):
        return family.distribution({"loc": params["loc"], **unravel(theta)}).covariance_matrix

    jac = jnp.moveaxis(jax.jacfwd(covariance)(theta), -1, 0)  # (P, dim, dim)

    def whiten(d_cov):  # L^{-1} dSigma L^{-T}: then tr(Sigma^{-1} A Sigma^{-1} B) is a dot product
        half = jax.scipy.linalg.solve_triangular(tril, d_cov, lower=True)
        return jax.scipy.linalg.solve_triangular(tril, half.T, lower=True)

    whitened = jax.vmap(whiten)(jac).reshape(len(theta), -1)
    fisher = 0.5 * whitened @ whitened.T  # a Gram matrix: symmetric positive semi-definite
    return {"loc": loc, **unravel(_solve_psd(fisher, g_theta, damping))}


def _solve_psd(fisher, g, damping):
    """`(fisher + damping I)^{-1} g`; undamped, the pseudo-inverse (minimum-norm) solution.

    Low-rank covariance factors are identified only up to a rotation, so their Fisher is singular
    along it; an exact ELBO gradient has no component there, and the pseudo-inverse leaves none.
    """
    eigvals, eigvecs = jnp.linalg.eigh(fisher)
    eigvals = jnp.maximum(eigvals, 0.0)  # rounding can push the null eigenvalues below zero
    if damping > 0:
        inverse = 1.0 / (eigvals + damping)
    else:
        cutoff = _PINV_RTOL_PER_PARAM * len(g) * jnp.finfo(eigvals.dtype).eps * eigvals[-1]
        kept = eigvals > cutoff
        inverse = jnp.where(kept, 1.0 / jnp.where(kept, eigvals, 1.0), 0.0)
    return eigvecs @ (inverse * (eigvecs.T @ g))


@inverse_fisher_product.register
def _(family: Constrained, params, grad, damping=0.0):
    # q is the base pushed through a fixed bijection; z <-> u does not depend on the parameters,
    # so the scores, and hence the Fisher information, are the base's.
    return inverse_fisher_product(family.base, params, grad, damping)


_trigamma = functools.partial(jax.scipy.special.polygamma, 1)


# Fisher informations of one draw in the constructor arguments (in the order named), as -E[Hessian]
# of the log-density. For Gamma, Beta, Dirichlet and Exponential the natural parameters are linear in
# the arguments, so the Hessian is free of x and is minus that of the log-normaliser.
def _normal_fisher(loc, scale):
    # Scores (x - loc) / s^2 and ((x - loc)^2 - s^2) / s^3: variances 1 / s^2 and 2 / s^2, uncorrelated.
    precision = 1.0 / scale**2
    return jnp.array([[precision, 0.0], [0.0, 2.0 * precision]])


def _gamma_fisher(concentration, rate):
    a, b = concentration, rate  # log p = a log b - lgamma(a) + (a - 1) log x - b x
    return jnp.array([[_trigamma(a), -1.0 / b], [-1.0 / b, a / b**2]])


def _beta_fisher(concentration1, concentration0):
    both = _trigamma(concentration1 + concentration0)  # from the log Beta function's lgamma(c1 + c0)
    return jnp.array([[_trigamma(concentration1) - both, -both], [-both, _trigamma(concentration0) - both]])


def _dirichlet_fisher(concentration):
    return jnp.diag(_trigamma(concentration)) - _trigamma(jnp.sum(concentration))


def _exponential_fisher(rate):
    return jnp.reshape(1.0 / rate**2, (1, 1))  # log p = log r - r x


# Exact types, not subclasses: a subclass (Chi2 is a Gamma) has its own arguments.
_EXPONENTIAL_FAMILIES = {
    dist.Normal: (("loc", "scale"), _normal_fisher),
    # log x ~ Normal(loc, scale), and a map of x that does not involve the arguments keeps the scores.
    dist.LogNormal: (("loc", "scale"), _normal_fisher),
    dist.Gamma: (("concentration", "rate"), _gamma_fisher),
    dist.Beta: (("concentration1", "concentration0"), _beta_fisher),
    dist.Dirichlet: (("concentration",), _dirichlet_fisher),
    dist.Exponential: (("rate",), _exponential_fisher),
}


@inverse_fisher_product.register
def _(family: NumpyroFamily, params, grad, damping=0.0):
    # The copies indexed by `shape` are independent, so F is block diagonal: one P x P block per copy
    # over its own arguments (K x K for a Dirichlet). Each block is the closed-form F_c in the
    # constrained arguments pulled back to the stored unconstrained ones, F_u = J^T F_c J, with J the
    # Jacobian of numpyro's `biject_to` maps (exp for positive arguments), and solved on its own.
    if family.dist_type not in _EXPONENTIAL_FAMILIES:
        supported = ", ".join(sorted(t.__name__ for t in _EXPONENTIAL_FAMILIES))
        raise TypeError(
            f"natural_gradient: no closed-form Fisher information for "
            f"NumpyroFamily({family.dist_type.__name__}); supported NumpyroFamily distributions "
            f"(exponential families): {supported}"
        )
    names, fisher = _EXPONENTIAL_FAMILIES[family.dist_type]
    batch = len(family.shape)

    def solve_block(p, g):  # p, g: one copy's parameters and gradient
        u, unravel = ravel_pytree(p)

        def constrained(u):
            values = family.constrained_params(unravel(u))
            return jnp.concatenate([jnp.ravel(values[name]) for name in names])

        values = family.constrained_params(p)
        jac = jax.jacfwd(constrained)(u)
        f_u = jac.T @ fisher(*(values[name] for name in names)) @ jac
        eye = jnp.eye(len(u), dtype=f_u.dtype)
        return unravel(jnp.linalg.solve(f_u + damping * eye, ravel_pytree(g)[0]))

    def copies(tree):  # the `shape` axes flattened into one, to vmap over
        return jax.tree.map(lambda x: jnp.reshape(x, (-1, *jnp.shape(x)[batch:])), tree)

    solved = jax.vmap(solve_block)(copies(params), copies(grad))
    return jax.tree.map(lambda x, p: jnp.reshape(x, jnp.shape(p)), solved, params)


def natural_gradient(family, damping: float = 0.0) -> optax.GradientTransformation:
    """An optax transformation that preconditions gradients by the inverse Fisher information of q.

    `update(updates, state, params)` returns `(F(params) + damping * I)^{-1} updates` for each leaf
    family, with F in closed form: diagonal for `MeanFieldGaussian` (`1 / sigma^2` for `loc`, 2 for
    `log_scale`) and `Bernoulli` (`p (1 - p)`); `diag(p) - p p^T` for `Categorical`, which is
    singular along the shift of all logits, so the minimum-norm (pseudo-inverse) solution is used
    (`g / p`, centred; an exact ELBO gradient has no shift component); the exact Gaussian Fisher for
    `FullRankGaussian` and `LowRankGaussian`, by a dense O(P^3) solve in the P covariance
    parameters; a `Constrained` family's base; for a `NumpyroFamily` over `Normal`, `LogNormal`,
    `Gamma`, `Beta`, `Dirichlet` or `Exponential`, the closed-form Fisher information of each
    independent copy in its constructor arguments, pulled back to the unconstrained parameters by
    the Jacobian of `biject_to`, one small solve per copy. It is stateless and needs `params`.

    Natural gradients rescale by `1 / p` or `sigma^2`: where probabilities saturate or a low-rank
    factor is near zero the undamped step is large, and a small `damping` tames it. With
    score-function gradients a rarely drawn outcome's step is divided by its small probability (a
    Bernoulli at p = 0.999 drawn 0 moves its logit by about `lr * |f(0) - f(1)| / (S (1 - p))`),
    so undamped steps can throw a logit far out, where p (1 - p) underflows and the factor freezes
    (a zero step, not NaN). On the latent factor model, `optax.sgd(0.3)` needed `damping` of
    0.01 to 0.1 to converge; 0.1 steps converged undamped. Monte Carlo entropy
    (`bbvi.Estimator("score", entropy="mc")`), whose integrand `log p - log q` pulls a rare
    category back rather than further down, also helps.

    Args:
        family: a family or a dict / tuple / list of families.
        damping: Tikhonov damping `>= 0` added to the Fisher information.

    Returns:
        An `optax.GradientTransformation` whose state is `optax.EmptyState()`.

    Raises:
        TypeError: if a leaf family has no closed-form Fisher information (naming the supported ones).
        ValueError: for a negative or non-finite `damping`; from `update`, if `params` is None.

    Example:
        >>> import jax, jax.numpy as jnp, optax, bbvi
        >>> from bbvi.fisher import natural_gradient
        >>> family = bbvi.MeanFieldGaussian((2,))
        >>> log_joint = lambda z: -0.5 * jnp.sum((z - 3.0) ** 2 / 4.0)
        >>> optimizer = optax.chain(natural_gradient(family), optax.sgd(0.1))
        >>> result = bbvi.fit(log_joint, family, key=jax.random.key(0), num_steps=500,
        ...                   optimizer=optimizer, progress_bar=False)
        >>> bool(jnp.allclose(result.params["loc"], 3.0, atol=0.3))
        True
    """
    leaves, treedef = tree.flatten(family)
    try:
        damping = float(damping)
    except (TypeError, ValueError):
        raise TypeError(f"natural_gradient: damping must be a float, got {damping!r}") from None
    if not (math.isfinite(damping) and damping >= 0):
        raise ValueError(f"natural_gradient: damping must be finite and >= 0, got {damping}")
    for leaf, spec in zip(leaves, treedef.flatten_up_to(tree.param_spec(family))):
        # Trace once now, so an unsupported family fails here rather than inside a compiled fit.
        jax.eval_shape(functools.partial(inverse_fisher_product, leaf, damping=damping), spec, spec)

    def init(params):
        del params
        return optax.EmptyState()

    def update(updates, state, params=None):
        if params is None:
            raise ValueError(
                "natural_gradient: update needs params (the Fisher information depends on them); "
                "call update(updates, state, params)"
            )
        leaf_params = tree.split_params(family, params)
        leaf_updates = tree.split_params(family, updates)
        preconditioned = [
            jax.tree.map(
                lambda x, g: x.astype(g.dtype), inverse_fisher_product(leaf, p, g, damping=damping), g
            )
            for leaf, p, g in zip(leaves, leaf_params, leaf_updates)
        ]
        return treedef.unflatten(preconditioned), state

    return optax.GradientTransformation(init, update)
