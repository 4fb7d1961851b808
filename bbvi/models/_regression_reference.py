"""Reference posteriors for regressions without conjugacy: Laplace, then importance sampling.

`laplace` finds the mode of a log-density on R^d by Newton's method and takes the inverse negative
Hessian there as a covariance. `importance_sampling` corrects that Gaussian picture: self-normalised
importance sampling with a multivariate Student-t proposal centred on the mode, scaled by the Laplace
covariance, estimates the posterior means, sds and the log evidence, asymptotically exactly.

Why this is sound for a Gaussian prior times a likelihood bounded by one (logistic and softmax
regression): the log posterior is strictly concave, so Newton's method converges to the unique mode;
the posterior's tails are at most Gaussian, and the Student-t's are polynomial, so the importance
weights are bounded and the estimates have finite variance. Their Monte Carlo error is reported: a
mean's is about sd / sqrt(ess), log Z's standard error comes from the delta method.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpyro.distributions as dist


class ImportanceEstimate(NamedTuple):
    """Self-normalised importance-sampling estimates over R^d, with their Monte Carlo error."""

    mean: jax.Array  # (d,)
    sd: jax.Array  # (d,)
    log_evidence: jax.Array
    log_evidence_se: jax.Array  # sqrt((num_draws / ess - 1) / num_draws)
    ess: jax.Array  # effective sample size (sum w)^2 / sum w^2
    mode: jax.Array  # (d,): the proposal's centre, the posterior mode (the MAP estimate)


def laplace(log_density, dim: int, num_newton_steps: int = 30) -> tuple[jax.Array, jax.Array]:
    """The mode of a strictly concave `log_density` on R^dim and the inverse negative Hessian there.

    Damped Newton's method: each step is the first of the full Newton step and its halvings (1, 1/2,
    1/4, 1/8) that does not lower the density (beyond float32 rounding), else no step. Far from the mode
    that stops a full step from overshooting; near it full steps are taken and converge quadratically:
    for the regressions here 30 steps reach the mode to rounding. It starts from 1e-3 in every
    coordinate rather than from zero, where a logistic regression's logits are exactly 0: numpyro writes
    the Bernoulli-logit density with a kink at 0 (clip and abs), whose gradient there JAX gets wrong.
    """
    if not isinstance(num_newton_steps, int) or num_newton_steps < 1:
        raise ValueError(f"laplace: num_newton_steps must be a positive int, got {num_newton_steps!r}")
    grad, hessian = jax.grad(log_density), jax.hessian(log_density)
    fractions = jnp.array([1.0, 0.5, 0.25, 0.125, 0.0])

    def newton(_, z):
        current = log_density(z)
        candidates = z - fractions[:, None] * jnp.linalg.solve(hessian(z), grad(z))
        values = jax.vmap(log_density)(candidates)
        slack = 1e-6 * (1.0 + jnp.abs(current))  # float32 rounding of a sum of many terms
        acceptable = (values >= current - slack) | (fractions == 0)  # NaN compares False: rejected
        return candidates[jnp.argmax(acceptable)]  # the first acceptable, the longest step

    mode = jax.lax.fori_loop(0, num_newton_steps, newton, jnp.full(dim, 1e-3))
    cov = jnp.linalg.inv(-hessian(mode))
    return mode, 0.5 * (cov + cov.T)


def importance_sampling(
    log_density,
    mode: jax.Array,
    cov: jax.Array,
    key: jax.Array,
    num_draws: int = 20_000,
    df: int = 5,
    batch_size: int = 5_000,
) -> ImportanceEstimate:
    """Posterior moments and log evidence of the unnormalised `log_density` by importance sampling.

    The proposal is a multivariate Student-t with `df` (an int >= 3) degrees of freedom, location
    `mode` and scale matrix `cov`. The density is evaluated in batches of `batch_size` draws, to bound
    memory (every draw at once would hold num_draws x N logits).
    """
    if not isinstance(num_draws, int) or num_draws < 2:
        raise ValueError(f"importance_sampling: num_draws must be an int >= 2, got {num_draws!r}")
    if not isinstance(df, int) or df < 3:  # >= 3: the proposal has a covariance, and heavy tails
        raise ValueError(f"importance_sampling: df must be an int >= 3, got {df!r}")
    dim = jnp.shape(mode)[0]
    scale_tril = jnp.linalg.cholesky(cov)
    proposal = dist.MultivariateStudentT(df, mode, scale_tril)
    # Student-t draws as mode + L eps sqrt(df / chi2_df), the chi-square a sum of df squared normals:
    # exact for an integer df, and it avoids jax's gamma sampler, which is slow to compile.
    key_eps, key_chi2 = jax.random.split(key)
    eps = jax.random.normal(key_eps, (num_draws, dim))
    chi2 = jnp.sum(jax.random.normal(key_chi2, (num_draws, df)) ** 2, axis=1)
    draws = mode + (eps @ scale_tril.T) * jnp.sqrt(df / chi2)[:, None]
    log_w = jax.lax.map(log_density, draws, batch_size=min(batch_size, num_draws)) - proposal.log_prob(draws)
    w = jax.nn.softmax(log_w)
    mean = w @ draws
    ess = 1.0 / jnp.sum(w**2)
    return ImportanceEstimate(
        mean=mean,
        sd=jnp.sqrt(w @ (draws - mean) ** 2),
        log_evidence=jax.nn.logsumexp(log_w) - jnp.log(num_draws),
        log_evidence_se=jnp.sqrt(jnp.maximum(num_draws / ess - 1.0, 0.0) / num_draws),
        ess=ess,
        mode=mode,
    )
