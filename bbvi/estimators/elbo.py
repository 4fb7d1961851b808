"""ELBO value-and-gradient estimators: pathwise, score-function, or both in one estimate.

One mechanism serves every estimator: each leaf family is either *pathwise* (its draws are a
differentiable function of its parameters) or *score-function* (its draws are held fixed and
its gradient comes from `grad log q`, centred by a control variate). `"reparam"`, `"score"` and
`"auto"` only choose which leaves are which.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from bbvi import control_variates
from bbvi.estimators import choice
from bbvi.families import tree

stop = jax.lax.stop_gradient


def _describe(z) -> str:
    return str(jax.tree.map(lambda x: f"{jnp.result_type(x)}{list(jnp.shape(x))}", z))


def call_log_joint(log_joint: Callable, z) -> jax.Array:
    """`log_joint(z)`, with clear errors for a failing call or a non-scalar, non-float result."""
    try:
        value = log_joint(z)
    except Exception as err:
        # A note keeps the user's own exception, type and traceback, and says what it was given.
        err.add_note(
            f"bbvi: log_joint failed on latents {_describe(z)} (the structure, dtypes and shapes the "
            "family draws); check that the family matches what the log-joint reads"
        )
        raise
    if jnp.shape(value) != ():
        raise ValueError(
            f"log_joint must return a scalar, but returned shape {jnp.shape(value)} for latents "
            f"{_describe(z)}; sum the log-density over data points and latents"
        )
    if not jnp.issubdtype(jnp.result_type(value), jnp.floating):
        raise TypeError(f"log_joint must return a float, but returned {jnp.result_type(value)}")
    return value


def check_num_samples(num_samples) -> int:
    if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
    return int(num_samples)


def elbo_value_and_grad(
    log_joint: Callable,
    family,
    *,
    estimator: str | choice.Estimator = "auto",
    num_samples: int = 8,
    control_variate="auto",
) -> Callable:
    """A pure function `(params, key) -> (elbo, grad)`: a Monte Carlo ELBO and its gradient.

    The gradient is an unbiased estimate of the gradient of the ELBO (the ascent direction)
    with respect to `params`, the first argument, as with `jax.value_and_grad`. The function is
    pure (same key, same answer) and works under `jax.jit` and `jax.vmap`.

    Args:
        log_joint: `z -> scalar`, the model's log-density (data closed over), `z` a pytree of
            latents matching `family`, each leaf on its family's support.
        family: a family or a dict / tuple / list of families.
        estimator: `"reparam"`, `"score"`, `"auto"` or an `Estimator` (e.g.
            `bbvi.Estimator("reparam", entropy="stl")` for sticking the landing).
        num_samples: Monte Carlo samples per estimate, drawn once and shared by all leaves.
        control_variate: for score-function leaves: `None`, `"loo"` (leave-one-out baseline),
            `"optimal"` (per-coordinate optimally scaled score) or `"auto"` (`"loo"` when
            `num_samples >= 2`, otherwise none).

    Example:
        >>> import jax, jax.numpy as jnp, bbvi
        >>> family = bbvi.MeanFieldGaussian((2,))
        >>> vg = bbvi.elbo_value_and_grad(lambda z: -0.5 * jnp.sum(z**2), family, num_samples=4)
        >>> elbo, grad = vg(bbvi.init(family, jax.random.key(0)), jax.random.key(1))
        >>> grad["loc"].shape
        (2,)
    """
    estimator = choice.resolve(estimator)
    num_samples = check_num_samples(num_samples)
    cv = control_variates.resolve(control_variate, num_samples)
    if not callable(log_joint):
        raise TypeError(f"log_joint must be callable, got {log_joint!r}")

    _, treedef = tree.flatten(family)
    paths = tree.leaf_paths(family)
    bases, transforms = tree.unconstrained(family)
    pathwise = estimator.pathwise(bases, paths)
    analytic = estimator.analytic_entropy(bases, pathwise)
    stl = estimator.entropy == "stl"
    has_score = not all(pathwise)
    num_leaves = len(bases)

    def log_density(u_leaves):
        # The log-joint pulled back to unconstrained space: the ELBO is invariant under the bijection.
        z_leaves, log_det = tree.to_constrained(transforms, u_leaves)
        return call_log_joint(log_joint, treedef.unflatten(z_leaves)) + log_det

    def draw_score_leaves(leaf_params, key):
        """The score-function leaves' draws, held fixed: their gradients come from the score."""
        keys = jax.random.split(key, num_leaves)
        return [
            None if pw else stop(b.sample(stop(p), k))
            for b, p, k, pw in zip(bases, leaf_params, keys, pathwise)
        ]

    def score_log_q(leaf_params, fixed):
        return sum(b.log_prob(p, x) for b, p, x, pw in zip(bases, leaf_params, fixed, pathwise) if not pw)

    def particle(leaf_params, key, fixed):
        """One sample's ELBO integrand (pathwise-differentiable) and its score-leaf log q."""
        keys = jax.random.split(key, num_leaves)
        u_leaves, neg_log_q = [], 0.0
        for b, p, k, x, pw, an in zip(bases, leaf_params, keys, fixed, pathwise, analytic):
            if pw:
                x = b.sample(p, k)
                if not an:
                    neg_log_q -= b.log_prob(stop(p) if stl else p, x)
            elif not an:
                neg_log_q -= stop(b.log_prob(p, x))
            u_leaves.append(x)
        return log_density(u_leaves) + neg_log_q, score_log_q(leaf_params, fixed)

    def surrogate(leaf_params, keys, fixed):
        values, log_q = jax.vmap(particle, in_axes=(None, 0, 0))(leaf_params, keys, fixed)
        entropy = sum(b.entropy(p) for b, p, an in zip(bases, leaf_params, analytic) if an)
        elbo = jnp.mean(values) + entropy
        objective = elbo
        if has_score and not cv.needs_scores:
            # Value unchanged, gradient (f_s - b_s) * grad log q_s: the REINFORCE surrogate.
            advantage = stop(values - cv.baseline(stop(values)))
            objective = elbo + jnp.mean(advantage * (log_q - stop(log_q)))
        return objective, (elbo, stop(values))

    def value_and_grad(params, key):
        leaf_params = tree.split_params(family, params)
        keys = jax.random.split(key, num_samples)
        # Every sample is drawn once; score-function leaves outside the differentiated function.
        fixed = jax.vmap(draw_score_leaves, in_axes=(None, 0))(leaf_params, keys)
        (_, (elbo, values)), grads = jax.value_and_grad(surrogate, has_aux=True)(leaf_params, keys, fixed)
        if has_score and cv.needs_scores:
            scores = jax.vmap(jax.grad(score_log_q), in_axes=(None, 0))(leaf_params, fixed)
            grads = jax.tree.map(jnp.add, grads, cv.scaled(values, scores))
        return elbo, treedef.unflatten(grads)

    return value_and_grad
