"""Gradient estimators for variational objectives: pathwise, score-function, or both in one estimate.

One mechanism serves every estimator: each leaf family is either *pathwise* (its draws are a
differentiable function of its parameters; a relaxed discrete leaf is drawn from its relaxation) or
*score-function* (its draws are held fixed and its gradient comes from `grad log q`, centred by a
control variate). `"reparam"`, `"score"`, `"auto"` and `"relaxed"` only choose which leaves are which.

Each of the `S` samples gives one or more *points* (a mixture family gives one per component) with
log-weights `w = log p(z) - log q(z)` and probability masses; the objective (ELBO, IWAE, Renyi)
reduces them. The gradient comes from one surrogate whose value is unchanged and whose gradient
is the estimate:

    objective(stop(w), mass)                      the exact gradient in the masses (mixture weights)
    + sum_j stop(c_j) * w_j                       the pathwise part, c = d objective / d w
                                                  (or the DReG coefficients)
    + sum_s stop(signal_s - baseline_s) * (log q_s - stop(log q_s))    score-function leaves
    + closed-form entropies and KL terms
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from bbvi import control_variates, objectives
from bbvi.estimators import checks, choice, prior_terms
from bbvi.estimators.draws import Layout, is_stratified, sample_keys
from bbvi.families import tree
from bbvi.subsampled import Subsampled, num_rows

stop = jax.lax.stop_gradient


class GradientEstimator(NamedTuple):
    """A stateful gradient estimator, like an optax transformation: a pair of pure functions.

    `init(params) -> state` and `estimate(params, state, key, data=None) -> (value, grad, state)`,
    where `value` is the Monte Carlo objective, `grad` its gradient (ascent direction) and `state`
    the control variate's (empty unless it keeps one, e.g. `bbvi.MovingAverage`).
    """

    init: Callable
    estimate: Callable


def _weighted(weight, x):
    """`weight * x`, leaving `x` untouched (no multiply in the program) when the weight is 1."""
    return x if weight == 1.0 else weight * x


def _noise_draw(family, params, eps, fixed: bool):
    """A noise-drawn leaf's draw and log q there, with q's parameters held fixed if `fixed` (STL, DReG).

    A family may compute log q from the noise (`from_noise_and_log_prob`, e.g. `FullRankGaussian`),
    which is exact where evaluating log q at the rounded draw is not.
    """
    own = getattr(family, "from_noise_and_log_prob", None)
    if own is not None:
        return own(params, eps, fixed)
    x = family.from_noise(params, eps)
    return x, family.log_prob(stop(params) if fixed else params, x)


def gradient_estimator(
    log_joint: Callable,
    family,
    *,
    estimator: str | choice.Estimator = "auto",
    objective: str | objectives.Objective = "elbo",
    num_samples: int = 8,
    control_variate="auto",
    prior=None,
    sample_chunk_size: int | None = None,
) -> GradientEstimator:
    """A `GradientEstimator(init, estimate)` for a variational objective; see `elbo_value_and_grad`.

    Use this form for stateful control variates (`bbvi.MovingAverage`); `fit` uses it always.
    """
    estimator = choice.resolve(estimator)
    objective = objectives.resolve(objective)
    num_samples = checks.check_num_samples(num_samples)
    cv = control_variates.resolve(control_variate, num_samples)
    chunk = checks.check_sample_chunk_size(sample_chunk_size)
    model = log_joint if isinstance(log_joint, Subsampled) else None
    if model is not None:
        checks.check_subsampled(model, prior)
    elif not callable(log_joint):
        raise TypeError(f"log_joint must be callable, got {log_joint!r}")

    leaves, treedef = tree.flatten(family)
    paths = tree.leaf_paths(family)
    relaxed = estimator.relaxed(leaves)
    pathwise = estimator.pathwise(leaves, paths)
    local = [leaf.needs_data for leaf in leaves]  # amortised leaves: one latent per data point
    needs_data = any(local)
    static_bases, _ = tree.unconstrained(leaves)
    checks.check_options(estimator, objective, cv, num_samples, static_bases, paths, pathwise)
    priors = prior_terms.PriorTerms(prior, treedef, leaves, paths, estimator, objective)
    # Leaves whose log q enters in closed form, not by Monte Carlo: through their entropy (of the
    # unconstrained base, for a Constrained leaf), or with their prior through a closed-form KL.
    entropic = estimator.analytic_entropy(static_bases, pathwise, objective.linear)
    analytic = [an or kl for an, kl in zip(entropic, priors.analytic)]
    entropic = [an and not kl for an, kl in zip(entropic, priors.analytic)]
    has_score = not all(pathwise)
    num_leaves = len(leaves)
    log_s = math.log(num_samples)
    layout = Layout(static_bases, pathwise, relaxed)
    slots, num_slots = layout.slots, layout.num_slots

    def estimate(params, state, key, data=None):
        checks.check_key(key)
        if needs_data and data is None:
            raise ValueError("the family is amortised (it needs data): pass data (fit(..., data=...))")
        if model is not None and data is None:
            raise ValueError("a Subsampled model needs data: pass data (fit(..., data=...))")
        extra = () if data is None else (data,)
        # Stochastic VI: every per-datum term of a minibatch (likelihood, local log q) scaled by N / B.
        scale = 1.0 if model is None else model.num_data / num_rows(data)
        if scale != 1.0 and not objective.linear:
            raise ValueError(
                f"a subsampled likelihood gives an unbiased estimate of the ELBO only, not of {objective}"
            )
        weights = [scale if is_local else 1.0 for is_local in local]
        leaf_params = tree.split_params(family, params)

        def condition(leaf_params):
            # Amortised leaves map the data to their base family's parameters (differentiably).
            conditioned, leaf_params = tree.condition_leaves(leaves, leaf_params, data)
            bases, transforms = tree.unconstrained(conditioned)
            return conditioned, bases, transforms, leaf_params

        _, bases, transforms, _ = condition(leaf_params)

        def log_model(z):
            if model is None:
                return checks.call_log_joint(log_joint, z, *extra)
            likelihood = functools.partial(model.batch_log_likelihood, local=treedef.unflatten(local))
            return checks.call_log_joint(model.log_prior, z, name="log_prior") + _weighted(
                scale, checks.call_log_joint(likelihood, z, data, name="log_likelihood")
            )

        def log_density(u_leaves):
            # The log-joint pulled back to unconstrained space (the objective is invariant under it).
            z_leaves, log_det = tree.to_constrained(transforms, u_leaves, weights)
            z = treedef.unflatten(z_leaves)
            return log_model(z) + log_det + priors.log_prob(z_leaves)

        def draw_score_leaves(lp, keys):
            """The score-function leaves' draws, held fixed: their gradients come from the score."""
            return [
                None if pw else stop(b.sample(stop(p), keys[i]))
                for b, p, i, pw in zip(bases, lp, slots, pathwise)
            ]

        def score_log_q(lp, fixed):
            return sum(b.log_prob(p, x) for b, p, x, pw in zip(bases, lp, fixed, pathwise) if not pw)

        def points(lp, keys, fixed):
            """One sample's points: each leaf's draws (a leading point axis), log-masses and log q."""
            draws, masses, log_q_path = [], [], []
            noise = layout.noise(keys[0])
            for b, p, i, x, pw, an, rl, w, eps in zip(
                bases, lp, slots, fixed, pathwise, analytic, relaxed, weights, noise
            ):
                q = stop(p) if estimator.path_derivative else p
                k = keys[i]
                if rl:
                    x, lq, m = b.relaxed_sample(p, k, estimator.temperature)[None], jnp.zeros(1), jnp.zeros(1)
                elif pw and is_stratified(b):
                    x, m = b.stratified_sample(p, k)
                    lq = jnp.zeros_like(m) if an else jax.vmap(b.log_prob, (None, 0))(q, x)
                elif pw and an:
                    x = b.sample(p, k) if eps is None else b.from_noise(p, eps)
                    x, lq, m = x[None], jnp.zeros(1), jnp.zeros(1)
                elif pw and eps is not None:
                    x, lq = _noise_draw(b, p, eps, estimator.path_derivative)
                    x, lq, m = x[None], lq[None], jnp.zeros(1)
                elif pw and estimator.path_derivative:
                    x = b.sample(p, k)
                    x, lq, m = x[None], b.log_prob(q, x)[None], jnp.zeros(1)
                elif pw:
                    x, lq = b.sample_and_log_prob(p, k)
                    x, lq, m = x[None], lq[None], jnp.zeros(1)
                else:
                    x, lq, m = x[None], jnp.zeros(1), jnp.zeros(1)
                draws.append(x)
                masses.append(m)
                log_q_path.append(_weighted(w, lq))
            counts = tuple(m.shape[0] for m in masses)
            if max(counts) > 1:  # the product of the leaves' points (a leaf is stratified)
                grid = np.indices(counts).reshape(num_leaves, -1)
                draws = [jax.tree.map(lambda a, g=g: a[g], x) for x, g in zip(draws, grid)]
                masses = [m[g] for m, g in zip(masses, grid)]
                log_q_path = [lq[g] for lq, g in zip(log_q_path, grid)]
            return draws, sum(masses), sum(log_q_path)

        def score_part(lp, fixed):
            """`-log q` of the score leaves (Monte Carlo entropy); live for non-linear objectives."""
            terms = [
                _weighted(w, b.log_prob(p, x))
                for b, p, x, pw, an, w in zip(bases, lp, fixed, pathwise, analytic, weights)
                if not (pw or an)
            ]
            value = -sum(terms) if terms else 0.0
            return value if not objective.linear else stop(value)

        def sample_terms(lp, keys, fixed):
            draws, log_mass, log_q_path = points(lp, keys, fixed)
            path_part = jax.vmap(log_density)(draws) - log_q_path
            return path_part, log_mass, score_part(lp, fixed), score_log_q(lp, fixed)

        def surrogate(leaf_params, keys, fixed, state):
            conditioned, _, _, lp = condition(leaf_params)
            path_part, log_mass, s_part, log_q = over_samples(sample_terms, lp, keys[:, :num_slots], fixed)
            log_mass = log_mass - log_s
            log_w = path_part + s_part[:, None]
            closed_form = priors.closed_form(conditioned, lp)
            closed_form += sum(
                _weighted(w, b.entropy(p)) for b, p, an, w in zip(bases, lp, entropic, weights) if an
            )
            value = objective(log_w, log_mass) + closed_form
            coef = jax.grad(objective)(stop(log_w), stop(log_mass))
            path_coef = (
                objective.dreg_weights(stop(log_w), stop(log_mass)) if estimator.entropy == "dreg" else coef
            )
            out = objective(stop(log_w), log_mass) + jnp.sum(stop(path_coef) * path_part)
            out += jnp.sum(stop(coef) * s_part[:, None]) + closed_form
            # Per-sample values of the integrand (the ELBO's), for control variates and reporting.
            values = jnp.sum(jnp.exp(log_mass + log_s) * log_w, axis=1)
            signal = jnp.mean(values) if objective.linear else value
            if has_score and not cv.needs_scores:
                out += score_surrogate(lp, values, value, log_w, log_mass, log_q, fixed, keys, state)
            return out, (value, stop(values), stop(signal))

        def over_samples(fn, lp, keys, fixed):
            """`fn(lp, key, fixed)` for every sample: vectorised, or `chunk` samples at a time.

            In chunks, each chunk's intermediates are recomputed in the backward pass
            (`jax.checkpoint`) rather than kept, so memory holds one chunk's, not all `S` samples'.
            """
            if chunk is None or chunk >= num_samples:
                return jax.vmap(fn, (None, 0, 0))(lp, keys, fixed)
            one = jax.checkpoint(lambda key_and_fixed: fn(lp, *key_and_fixed))
            return jax.lax.map(one, (keys, fixed), batch_size=chunk)

        def score_surrogate(lp, values, value, log_w, log_mass, log_q, fixed, keys, state):
            values = stop(values)
            if cv.per_factor:
                return rao_blackwell(lp, values, fixed, keys)
            if cv.stateful:
                baseline = cv.baseline_from_state(state)
            elif objective.linear:
                baseline = cv.baseline(values)
            elif cv is control_variates.LOO:
                baseline = vimco_baselines(stop(log_w), stop(log_mass))
            else:
                baseline = cv.baseline(jnp.broadcast_to(stop(value), values.shape))
            signal = values if objective.linear else stop(value)
            weight = 1 / num_samples if objective.linear else 1.0
            return weight * jnp.sum(stop(signal - baseline) * (log_q - stop(log_q)))

        def vimco_baselines(log_w, log_mass):
            """The objective with sample s's log-weights replaced by the mean of the others' (VIMCO)."""
            per_sample = jnp.sum(jnp.exp(log_mass + log_s) * log_w, axis=1)
            others = (jnp.sum(per_sample) - per_sample) / (num_samples - 1)

            def without(s):
                return objective(log_w.at[s].set(others[s]), log_mass)

            return jax.vmap(without)(jnp.arange(num_samples))

        def rao_blackwell(lp, values, fixed, keys):
            """Per factor of each mean-field score leaf, a baseline with that factor redrawn."""
            # The redraws take the second half of each sample's keys: independent of the draws.
            keys, redraw_keys = keys[:, :num_slots], keys[:, num_slots:]
            redrawn = jax.vmap(draw_score_leaves, (None, 0))(lp, redraw_keys)
            out = 0.0
            for i, (b, p, pw) in enumerate(zip(bases, lp, pathwise)):
                if pw:
                    continue
                if b.factor_dims is None:  # not mean-field: one factor, the leave-one-out baseline
                    log_q = jax.vmap(b.log_prob, (None, 0))(p, fixed[i])
                    adv = values - control_variates.leave_one_out(values) if num_samples > 1 else values
                    out += jnp.mean(stop(adv) * (log_q - stop(log_q)))
                    continue
                event = b.event_shape
                nf = int(np.prod(event[: b.factor_dims]))

                def baseline(key, fx, rx, i=i, event=event, nf=nf, b=b):
                    flat, new = fx[i].reshape((nf, -1)), rx[i].reshape((nf, -1))

                    def one(f):
                        swapped = list(fx)
                        swapped[i] = flat.at[f].set(new[f]).reshape(event)
                        path_part, log_mass, s_part, _ = sample_terms(stop(lp), key, swapped)
                        return jnp.sum(jnp.exp(log_mass) * (path_part + s_part))

                    return jax.vmap(one)(jnp.arange(nf)).reshape(event[: b.factor_dims])

                baselines = jax.vmap(baseline)(keys, fixed, redrawn)
                factor_log_q = jax.vmap(b.factor_log_prob, (None, 0))(p, fixed[i])
                adv = values.reshape((-1,) + (1,) * b.factor_dims) - baselines
                out += jnp.mean(
                    jnp.sum(stop(adv) * (factor_log_q - stop(factor_log_q)), axis=tuple(range(1, adv.ndim)))
                )
            return out

        # One key per sample and leaf; Rao-Blackwellisation redraws each leaf with a second one.
        keys = sample_keys(key, num_samples, num_slots * (2 if cv.per_factor else 1))
        # Every sample is drawn once; score-function leaves outside the differentiated function.
        _, _, _, lp0 = condition(leaf_params)
        fixed = jax.vmap(draw_score_leaves, in_axes=(None, 0))(lp0, keys[:, :num_slots])
        grad_fn = jax.value_and_grad(surrogate, has_aux=True)
        (_, (value, values, signal)), grads = grad_fn(leaf_params, keys, fixed, state)
        if has_score and cv.needs_scores:

            def lq(leaf_params, fixed):
                return score_log_q(condition(leaf_params)[3], fixed)

            scores = jax.vmap(jax.grad(lq), in_axes=(None, 0))(leaf_params, fixed)
            grads = jax.tree.map(jnp.add, grads, cv.scaled(values, scores))
        return value, treedef.unflatten(grads), cv.update_state(state, signal)

    def init(params=None):
        return cv.init_state()

    return GradientEstimator(init, estimate)


def elbo_value_and_grad(
    log_joint: Callable,
    family,
    *,
    estimator: str | choice.Estimator = "auto",
    objective: str | objectives.Objective = "elbo",
    num_samples: int = 8,
    control_variate="auto",
    prior=None,
    sample_chunk_size: int | None = None,
) -> Callable:
    """A pure function `(params, key[, data]) -> (value, grad)`: a Monte Carlo objective and its gradient.

    The gradient is an unbiased estimate of the gradient of the objective (the ascent direction)
    with respect to `params`, the first argument, as with `jax.value_and_grad`. The function is
    pure (same key, same answer) and works under `jax.jit` and `jax.vmap`.

    Args:
        log_joint: `z -> scalar`, the model's log-density (data closed over), `z` a pytree of
            latents matching `family`, each leaf on its family's support. When data are passed
            to the returned function, `log_joint(z, data)`. With `prior` given, the
            log-likelihood only. A `bbvi.Subsampled` model (log-prior plus likelihood, with its
            `num_data` set) gives the minibatch estimate with per-datum terms scaled by N / B.
        family: a family or a dict / tuple / list of families.
        estimator: `"reparam"`, `"score"`, `"auto"`, `"relaxed"` or an `Estimator` (e.g.
            `bbvi.Estimator("reparam", entropy="stl")` for sticking the landing).
        objective: `"elbo"` (default), `"iwae"`, or an objective such as `bbvi.Renyi(0.5)`.
        num_samples: Monte Carlo samples per estimate, drawn once and shared by all leaves (the
            K of the importance-weighted bound).
        control_variate: for score-function leaves: `None`, `"loo"` (leave-one-out baseline;
            VIMCO's for multi-sample objectives), `"optimal"` (per-coordinate optimally scaled
            score), `"rao_blackwell"` (per factor of a mean-field leaf), or `"auto"` (`"loo"` when
            `num_samples >= 2`, otherwise none). Stateful ones (`bbvi.MovingAverage`) need
            `gradient_estimator` or `fit`.
        prior: the model's prior as numpyro distributions, a pytree matching the family (or
            `None`): then `log_joint` is the log-likelihood, and the KL from q to the prior is
            taken in closed form (numpyro's `kl_divergence`) where one exists and the entropy
            mode is `"analytic"`, by Monte Carlo otherwise.
        sample_chunk_size: evaluate the samples this many at a time (`jax.lax.map`), recomputing
            each chunk in the backward pass, so memory holds one chunk's intermediates rather than
            all `num_samples`'; default all at once (`jax.vmap`, fastest). The estimate is the same.

    Example:
        >>> import jax, jax.numpy as jnp, bbvi
        >>> family = bbvi.MeanFieldGaussian((2,))
        >>> vg = bbvi.elbo_value_and_grad(lambda z: -0.5 * jnp.sum(z**2), family, num_samples=4)
        >>> elbo, grad = vg(bbvi.init(family, jax.random.key(0)), jax.random.key(1))
        >>> grad["loc"].shape
        (2,)
    """
    cv = control_variates.resolve(control_variate, checks.check_num_samples(num_samples))
    if cv.stateful:
        raise ValueError(
            f"control_variate={cv.name!r} keeps state between steps; use bbvi.gradient_estimator "
            "(init, estimate) or bbvi.fit, which threads it"
        )
    inner = gradient_estimator(
        log_joint,
        family,
        estimator=estimator,
        objective=objective,
        num_samples=num_samples,
        control_variate=cv,
        prior=prior,
        sample_chunk_size=sample_chunk_size,
    )

    def value_and_grad(params, key, data=None) -> tuple[jax.Array, Any]:
        value, grad, _ = inner.estimate(params, (), key, data)
        return value, grad

    return value_and_grad
