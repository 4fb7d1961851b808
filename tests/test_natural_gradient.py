"""Natural-gradient preconditioning: the Fisher information it inverts, and what that buys a fit.

The transformation is linear in the gradient, so it is checked as a matrix M (its action on basis
vectors) against Fisher informations computed here, independently of bbvi's code: by Monte Carlo
(E_q[score score^T], a standard-error tolerance), by enumeration (discrete families, exact) and by
float64 finite differences of the documented Gaussian parameterisations and of scipy's log-densities
for `NumpyroFamily`'s exponential families (exact up to float32 rounding).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import optax
import pytest
from jax.flatten_util import ravel_pytree
from numpyro.distributions import constraints
from scipy import stats
from scipy.special import digamma, expit, gammaln, softmax

import bbvi
from bbvi.fisher import inverse_fisher_product, natural_gradient

from .families._helpers import (
    assert_mc_close,
    fast_jit,
    gaussian_loc_and_tril,
    perturb,
    reference_log_prob,
    support_points,
)

MFG = bbvi.MeanFieldGaussian

FAMILIES = {
    "mean_field": lambda: MFG((2,)),
    "full_rank": lambda: bbvi.FullRankGaussian(3),
    "low_rank": lambda: bbvi.LowRankGaussian(3, 1),
    "bernoulli": lambda: bbvi.Bernoulli((2,)),
    "categorical": lambda: bbvi.Categorical((2,), 3),
    "positive": lambda: bbvi.Constrained(MFG((2,)), constraints.positive),
    "simplex": lambda: bbvi.Constrained(bbvi.FullRankGaussian(2), constraints.simplex),
    "numpyro_normal": lambda: bbvi.NumpyroFamily(dist.Normal, (2,)),
    "numpyro_lognormal": lambda: bbvi.NumpyroFamily(dist.LogNormal, (2,)),
    "numpyro_gamma": lambda: bbvi.NumpyroFamily(dist.Gamma, (2,)),
    "numpyro_beta": lambda: bbvi.NumpyroFamily(dist.Beta, (2,)),
    "numpyro_dirichlet": lambda: bbvi.NumpyroFamily(dist.Dirichlet, (2,), (3,)),
    "numpyro_exponential": lambda: bbvi.NumpyroFamily(dist.Exponential, (2,)),
}
GAUSSIANS = ["mean_field", "full_rank", "low_rank"]
NUMPYRO = [name for name in FAMILIES if name.startswith("numpyro_")]
DENSE = ["full_rank", "low_rank", "simplex"]
DAMPING = 0.3


def random_params(family, seed):
    """Init moved by noise: unequal scales, correlations and probabilities away from 1/2."""
    return perturb(bbvi.init(family, jax.random.key(seed)), seed, spread=0.5)


def preconditioner(family, params, damping=0.0) -> np.ndarray:
    """The transformation as a float64 matrix M over the flattened parameters: M[:, j] = M e_j."""
    flat, unravel = ravel_pytree(params)
    tx = natural_gradient(family, damping)

    def apply(v):
        return ravel_pytree(tx.update(unravel(v), tx.init(params), params)[0])[0]

    return np.asarray(fast_jit(jax.vmap(apply, out_axes=1))(jnp.eye(flat.size)), np.float64)


# --- the Fisher information ----------------------------------------------------------------------


# The dense Gaussians' score programs take several seconds to compile on CPU.
@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in DENSE else n for n in FAMILIES]
)
def test_fisher_matches_monte_carlo(name):
    """pinv(M) = E_q[s s^T] with s = grad_params log q(z), z ~ q: the Fisher information itself."""
    family = FAMILIES[name]()
    params = random_params(family, seed=1)
    flat, unravel = ravel_pytree(params)
    n = 40_000

    @fast_jit
    def score_products(key):
        z = bbvi.sample(family, params, key, (n,))
        scores = jax.vmap(jax.grad(lambda theta, z: family.log_prob(unravel(theta), z)), (None, 0))(flat, z)
        rows, cols = jnp.triu_indices(flat.size)
        return scores[:, rows] * scores[:, cols]

    values = np.asarray(score_products(jax.random.key(2)), np.float64)
    # Categorical: M is the pseudo-inverse of F, singular along each coordinate's shift of all logits
    # (the span of the projector `shift`); pinv(M) = inv(M + shift) - shift for a known null space.
    shift = 0.0
    if isinstance(family, bbvi.Categorical):
        k = family.num_categories
        shift = np.kron(np.eye(flat.size // k), np.full((k, k), 1.0 / k))
    fisher = np.linalg.inv(preconditioner(family, params) + shift) - shift
    rows, cols = np.triu_indices(flat.size)
    assert_mc_close(values, fisher[rows, cols], f"{name}: Fisher information")


def _flat_spec(params):
    leaves, treedef = jax.tree.flatten(params)
    sizes = [leaf.size for leaf in leaves]
    return treedef, [leaf.shape for leaf in leaves], np.cumsum([0, *sizes])


def gaussian_fisher_oracle(family, params) -> np.ndarray:
    """F_ij = dmu_i' S^-1 dmu_j + 1/2 tr(S^-1 dS_i S^-1 dS_j), by float64 central differences.

    (mu, S) come from the helpers' numpy reading of the documented parameterisations; the parameter
    order is `ravel_pytree`'s, so loc and the covariance parameters are not assumed to decouple.
    """
    treedef, shapes, offsets = _flat_spec(params)
    theta0 = np.concatenate([np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(params)])

    def moments(theta):
        leaves = [theta[a:b].reshape(s) for a, b, s in zip(offsets[:-1], offsets[1:], shapes)]
        loc, tril = gaussian_loc_and_tril(family, jax.tree.unflatten(treedef, leaves))
        return loc, tril @ tril.T

    h = 1e-5
    d_mu, d_cov = [], []
    for i in range(theta0.size):
        step = np.zeros_like(theta0)
        step[i] = h
        (mu_plus, cov_plus), (mu_minus, cov_minus) = moments(theta0 + step), moments(theta0 - step)
        d_mu.append((mu_plus - mu_minus) / (2 * h))
        d_cov.append((cov_plus - cov_minus) / (2 * h))
    precision = np.linalg.inv(moments(theta0)[1])
    d_mu, whitened = np.array(d_mu), np.array([precision @ d for d in d_cov])
    return d_mu @ precision @ d_mu.T + 0.5 * np.einsum("iab,jba->ij", whitened, whitened)


@pytest.mark.parametrize("damping", [0.0, DAMPING])
@pytest.mark.parametrize("name", GAUSSIANS + ["low_rank_r2"])
def test_gaussian_matches_exact_fisher(name, damping):
    """M = (F + damping I)^-1 (undamped and singular: the pseudo-inverse), F from finite differences."""
    family = bbvi.LowRankGaussian(3, 2) if name == "low_rank_r2" else FAMILIES[name]()
    params = random_params(family, seed=3)
    fisher = gaussian_fisher_oracle(family, params)
    eigvals = np.linalg.eigvalsh(fisher)
    null = eigvals < 1e-8 * eigvals[-1]  # finite differences leave ~1e-10 where F is exactly singular
    # Rank 2 in 3 dims: 9 covariance parameters for a 6-dimensional Sigma (W and W R agree), so the
    # pseudo-inverse path is exercised; the other cases are non-singular.
    assert null.sum() == (3 if name == "low_rank_r2" else 0)
    damped = fisher + damping * np.eye(len(fisher))
    expected = np.linalg.pinv(damped, rcond=1e-8, hermitian=True)
    # Each entry on its natural scale (|A_ij| <= sqrt(A_ii A_jj) for a PSD A), within float32 rounding
    # amplified by the condition number of the (damped) F on its range, with a factor 10 of slack.
    eigvals = np.linalg.eigvalsh(damped)
    conditioning = eigvals[-1] / eigvals[~null].min()
    error = np.abs(preconditioner(family, params, damping) - expected)
    scale = np.sqrt(np.outer(np.diag(expected), np.diag(expected)))
    assert np.max(error / scale) < 10 * np.finfo(np.float32).eps * conditioning


@pytest.mark.parametrize("damping", [0.0, DAMPING])
@pytest.mark.parametrize("name", ["bernoulli", "categorical"])
def test_discrete_matches_enumerated_fisher(name, damping):
    """Exact F = sum_z q(z) s(z) s(z)^T over the support; s = z - p or onehot(z) - p in the logits."""
    family = FAMILIES[name]()
    params = random_params(family, seed=4)
    logits = np.asarray(params["logits"], np.float64)
    z = support_points(family)
    q = np.exp(reference_log_prob(family, params, z))
    if name == "bernoulli":
        scores = z.reshape(len(z), -1) - expit(logits).ravel()
        centre = np.eye(logits.size)
    else:
        k = family.num_categories
        scores = (np.eye(k)[z] - softmax(logits, axis=-1)).reshape(len(z), -1)
        # M drops each coordinate's shift of all logits: the projection onto sum-zero blocks.
        centre = np.kron(np.eye(logits.size // k), np.eye(k) - 1.0 / k)
    assert abs(q.sum() - 1) < 1e-12
    fisher = scores.T @ (q[:, None] * scores)
    if damping > 0:
        expected = np.linalg.inv(fisher + damping * np.eye(len(fisher))) @ centre
    else:
        expected = np.linalg.pinv(fisher, rcond=1e-10, hermitian=True)  # F is singular for categorical
    np.testing.assert_allclose(preconditioner(family, params, damping), expected, rtol=1e-4, atol=1e-5)


def test_categorical_solves_fisher_system_with_minimum_norm():
    """For a sum-zero g (every ELBO gradient in logits), x = M g solves F x = g and sums to zero."""
    family = bbvi.Categorical((), 4)
    params = {"logits": jnp.array([2.0, -1.0, 0.5, -3.0])}
    p = softmax(np.asarray(params["logits"], np.float64))
    fisher = np.diag(p) - np.outer(p, p)
    g = np.array([0.3, -0.7, 0.1, 0.3])
    x = preconditioner(family, params) @ g
    np.testing.assert_allclose(fisher @ x, g, atol=1e-6)
    np.testing.assert_allclose(x, g / p - np.mean(g / p), rtol=1e-5)
    assert abs(x.sum()) < 1e-5


def test_constrained_uses_its_base(damping=DAMPING):
    base = bbvi.FullRankGaussian(2)
    params = random_params(base, seed=5)
    constrained = bbvi.Constrained(base, constraints.simplex)
    np.testing.assert_array_equal(
        preconditioner(constrained, params, damping), preconditioner(base, params, damping)
    )


# One copy of each NumpyroFamily exponential family: its arguments (numpyro's order), those stored as
# they are (real; the rest are positive, stored as log), scipy's log-density at x given the argument
# vector t, and points x whose average Hessian in t is E_q[Hessian]. Where the natural parameters are
# linear in t (Gamma, Beta, Dirichlet, Exponential) the Hessian is free of x, so any one x serves; for
# (Log)Normal it is quadratic in y = x - loc (log x - loc), so y = +-scale matches its expectation.
NUMPYRO_ORACLES = {
    "numpyro_normal": (
        ("loc", "scale"),
        {"loc"},
        lambda x, t: stats.norm.logpdf(x, t[0], t[1]),
        lambda t: [t[0] - t[1], t[0] + t[1]],
    ),
    "numpyro_lognormal": (
        ("loc", "scale"),
        {"loc"},
        lambda x, t: stats.lognorm.logpdf(x, t[1], scale=np.exp(t[0])),
        lambda t: [np.exp(t[0] - t[1]), np.exp(t[0] + t[1])],
    ),
    "numpyro_gamma": (
        ("concentration", "rate"),
        set(),
        lambda x, t: stats.gamma.logpdf(x, t[0], scale=1.0 / t[1]),
        lambda t: [1.3],
    ),
    "numpyro_beta": (
        ("concentration1", "concentration0"),
        set(),
        lambda x, t: stats.beta.logpdf(x, t[0], t[1]),
        lambda t: [0.3],
    ),
    "numpyro_dirichlet": (
        ("concentration",),
        set(),
        lambda x, t: stats.dirichlet.logpdf(x, t),
        lambda t: [np.array([0.2, 0.3, 0.5])],
    ),
    "numpyro_exponential": (
        ("rate",),
        set(),
        lambda x, t: stats.expon.logpdf(x, scale=1.0 / t[0]),
        lambda t: [0.7],
    ),
}


def expected_hessian(log_prob, t, xs, h=1e-4) -> np.ndarray:
    """Mean over `xs` of the Hessian of `log_prob(x, t)` in t, by float64 central differences."""
    steps = h * np.eye(len(t))

    def second_difference(x, a, b):
        f = [
            log_prob(x, t + sa * steps[a] + sb * steps[b]) for sa, sb in [(1, 1), (1, -1), (-1, 1), (-1, -1)]
        ]
        return (f[0] - f[1] - f[2] + f[3]) / (4 * h * h)

    return np.mean(
        [[[second_difference(x, a, b) for b in range(len(t))] for a in range(len(t))] for x in xs], 0
    )


def numpyro_fisher_oracle(name, family, params) -> np.ndarray:
    """F over the flattened params: per copy J^T F_t J with F_t = -E[Hessian] of scipy's log-density
    in the arguments t and J = dt/du, 1 for real arguments and t for positive ones (t = exp(u))."""
    names, real, log_prob, points = NUMPYRO_ORACLES[name]
    _, _, offsets = _flat_spec(params)
    offset = dict(zip(sorted(params), offsets))  # ravel_pytree's order: sorted keys, then row-major
    copies = int(np.prod(family.shape))
    fisher = np.zeros((offsets[-1], offsets[-1]))
    for i in range(copies):
        u = {k: np.asarray(params[k], np.float64).reshape(copies, -1)[i] for k in names}
        t = np.concatenate([u[k] if k in real else np.exp(u[k]) for k in names])
        jac = np.diag(np.concatenate([np.ones_like(u[k]) if k in real else np.exp(u[k]) for k in names]))
        index = np.concatenate([offset[k] + i * len(u[k]) + np.arange(len(u[k])) for k in names])
        fisher[np.ix_(index, index)] = -jac @ expected_hessian(log_prob, t, points(t)) @ jac
    return fisher


@pytest.mark.parametrize("name", NUMPYRO)
def test_numpyro_matches_exact_fisher(name):
    """M = (F + damping I)^-1, block diagonal over the copies, F from scipy's log-densities."""
    family = FAMILIES[name]()
    params = random_params(family, seed=3)
    fisher = numpyro_fisher_oracle(name, family, params)
    for damping in (0.0, DAMPING):
        damped = fisher + damping * np.eye(len(fisher))
        expected = np.linalg.inv(damped)
        # As for the Gaussians: each entry on its natural scale, within float32 rounding amplified by
        # the condition number, with a factor 10 of slack (the differences are good to ~1e-7).
        eigvals = np.linalg.eigvalsh(damped)
        error = np.abs(preconditioner(family, params, damping) - expected)
        scale = np.sqrt(np.outer(np.diag(expected), np.diag(expected)))
        assert np.max(error / scale) < 10 * np.finfo(np.float32).eps * eigvals[-1] / eigvals[0], name


# --- exact properties on a Gaussian target -------------------------------------------------------


def full_rank_vector(tril) -> np.ndarray:
    """The documented unconstrained vector of a Cholesky factor L = diag(d) (I + N): the strict lower
    triangle of N = L_ij / L_ii row by row, then log d."""
    d, diag = len(tril), np.diag(tril)
    relative = tril / diag[:, None]
    return np.concatenate([relative[np.tril_indices(d, -1)], np.log(diag)]).astype(np.float32)


def full_rank_tril(vec, d):
    diag = jnp.exp(vec[d * (d - 1) // 2 :])
    tril = jnp.zeros((d, d)).at[jnp.tril_indices(d, -1)].set(vec[: d * (d - 1) // 2])
    return diag[:, None] * tril + jnp.diag(diag)


MOMENTS = {  # (mu, Sigma) from params, written here from the documented parameterisations
    "mean_field": lambda p: (p["loc"], jnp.diag(jnp.exp(2 * p["log_scale"]))),
    "full_rank": lambda p: (p["loc"], (lambda t: t @ t.T)(full_rank_tril(p["scale_tril"], len(p["loc"])))),
}
TARGET_MEAN = np.array([1.0, -2.0, 0.5])
TARGET_PRECISION = np.array([[2.0, 0.8, 0.3], [0.8, 1.5, -0.4], [0.3, -0.4, 1.0]])


def exact_elbo(moments, precision, mean):
    """ELBO of q = N(mu, Sigma) for the target N(mean, precision^-1), up to a constant."""

    def elbo(params):
        mu, cov = moments(params)
        diff = mu - mean
        return (
            -0.5 * (diff @ precision @ diff + jnp.trace(precision @ cov)) + 0.5 * jnp.linalg.slogdet(cov)[1]
        )

    return elbo


@pytest.mark.parametrize("name", ["mean_field", "full_rank"])
def test_one_unit_step_lands_on_target_mean(name):
    """With Sigma = Lambda^-1 (q's optimal covariance) the loc natural gradient is a Newton step:
    one step of size 1 on the exact ELBO gradient lands on the target mean, from anywhere."""
    if name == "mean_field":  # mean field holds Lambda^-1 only for a diagonal precision: isotropic here
        precision = 2.5 * np.eye(3)
        family = MFG((3,))
        params = {
            "loc": jnp.array([4.0, 3.0, -5.0]),
            "log_scale": jnp.full(3, -0.5 * np.log(2.5), jnp.float32),
        }
    else:
        precision = TARGET_PRECISION
        family = bbvi.FullRankGaussian(3)
        tril = np.linalg.cholesky(np.linalg.inv(precision))
        params = {"loc": jnp.array([4.0, 3.0, -5.0]), "scale_tril": jnp.asarray(full_rank_vector(tril))}
    grad = jax.grad(exact_elbo(MOMENTS[name], precision, TARGET_MEAN))(params)
    optimizer = optax.chain(natural_gradient(family), optax.sgd(1.0))
    descent = jax.tree.map(jnp.negative, grad)
    updates, _ = fast_jit(optimizer.update)(descent, optimizer.init(params), params)
    np.testing.assert_allclose(optax.apply_updates(params, updates)["loc"], TARGET_MEAN, atol=1e-5)


@pytest.mark.parametrize("name", ["mean_field", "full_rank"])
def test_natural_gradient_is_invariant_to_the_parameterisation(name):
    """Pushed through (mu, Sigma)(params), the natural gradient is the one in (mu, Sigma) coordinates:
    (Sigma grad_mu, 2 Sigma grad_Sigma Sigma) = (-Sigma Lambda (mu - m), Sigma - Sigma Lambda Sigma)."""
    family = MFG((3,)) if name == "mean_field" else bbvi.FullRankGaussian(3)
    params = random_params(family, seed=6)
    # Mean field moves only the variances: the (mu, Sigma) natural gradient stays diagonal for a
    # diagonal precision, so the comparison holds there.
    precision = np.diag(np.diag(TARGET_PRECISION)) if name == "mean_field" else TARGET_PRECISION
    mean = TARGET_MEAN
    grad = jax.grad(exact_elbo(MOMENTS[name], precision, mean))(params)
    natural, _ = fast_jit(natural_gradient(family).update)(grad, optax.EmptyState(), params)
    (mu, cov), (d_mu, d_cov) = jax.jvp(MOMENTS[name], (params,), (natural,))
    mu, cov, d_mu, d_cov = (np.asarray(x, np.float64) for x in (mu, cov, d_mu, d_cov))
    np.testing.assert_allclose(d_mu, -cov @ precision @ (mu - mean), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(d_cov, cov - cov @ precision @ cov, rtol=1e-4, atol=1e-6)


# --- fits: natural gradient against plain sgd at the same step size ------------------------------


def gaussian_kl(mu, cov, mean, precision) -> float:
    """KL(N(mu, cov) || N(mean, precision^-1)): the ELBO gap when the target is that Gaussian."""
    diff = mu - mean
    return 0.5 * float(
        np.trace(precision @ cov) + diff @ precision @ diff - len(mu) - np.linalg.slogdet(precision @ cov)[1]
    )


def fit_gap(log_joint, family, optimizer, gap, num_steps, **kwargs) -> float:
    result = bbvi.fit(
        log_joint, family, key=jax.random.key(7), num_steps=num_steps, optimizer=optimizer,
        progress_bar=False, **kwargs,
    )  # fmt: skip
    return gap(result.params)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mean_field", "full_rank"])
def test_fit_converges_faster_on_gaussian_target(name):
    # A wide target far from the init: plain gradients move loc at rate lr * precision, natural
    # ones at rate lr * (Sigma Lambda -> 1). Sticking the landing: no gradient noise at the optimum.
    mean = np.array([8.0, -5.0])
    cov = np.array([[16.0, 0.0], [0.0, 4.0]]) if name == "mean_field" else np.array([[16.0, 6.0], [6.0, 4.0]])
    precision = np.linalg.inv(cov)
    family = FAMILIES[name]() if name == "mean_field" else bbvi.FullRankGaussian(2)

    def log_joint(z):
        diff = z - mean
        return -0.5 * diff @ precision @ diff

    def gap(params):
        loc, tril = gaussian_loc_and_tril(family, params)
        return gaussian_kl(loc, tril @ tril.T, mean, precision)

    lr, num_steps = 0.3, 100
    options = {"estimator": bbvi.Estimator("reparam", entropy="stl"), "num_samples": 4}
    natural = fit_gap(
        log_joint, family, optax.chain(natural_gradient(family), optax.sgd(lr)), gap, num_steps, **options
    )
    plain = fit_gap(log_joint, family, optax.sgd(lr), gap, num_steps, **options)
    plain = np.nan_to_num(plain, nan=np.inf)  # plain sgd can diverge at this step size (full rank)
    assert natural < 1e-6, natural  # nats: the exact optimum
    assert natural < plain / 10, (natural, plain)


def bernoulli_kl(logits, target_logits) -> float:
    p, r = expit(logits), expit(target_logits)
    return float(np.sum(p * np.log(p / r) + (1 - p) * np.log((1 - p) / (1 - r))))


@pytest.mark.slow
def test_fit_converges_faster_on_bernoulli_target():
    # Exact ELBO gradient p (1 - p) (a - x) in the logits x: plain steps stall where p saturates,
    # natural ones move x towards a at rate lr. With Monte Carlo entropy the score-function integrand
    # is log p - log q, constant at the optimum, so the leave-one-out estimate has no noise there.
    target = np.array([2.5, -3.0, 0.5, 4.0], np.float32)
    family = bbvi.Bernoulli((4,))

    def log_joint(z):
        return jnp.sum(z * target)

    def gap(params):
        return bernoulli_kl(np.asarray(params["logits"], np.float64), target)

    lr, num_steps = 0.1, 100
    estimator = bbvi.Estimator("score", entropy="mc")
    natural = fit_gap(
        log_joint,
        family,
        optax.chain(natural_gradient(family), optax.sgd(lr)),
        gap,
        num_steps,
        estimator=estimator,
    )
    plain = fit_gap(log_joint, family, optax.sgd(lr), gap, num_steps, estimator=estimator)
    assert natural < 1e-6, natural  # nats: the exact optimum
    assert natural < plain / 10, (natural, plain)


def gamma_kl(concentration, rate, target_concentration, target_rate) -> float:
    """KL(Gamma(a, b) || Gamma(a', b')), summed over independent copies."""
    a, b, a_t, b_t = concentration, rate, target_concentration, target_rate
    return float(
        np.sum((a - a_t) * digamma(a) - gammaln(a) + gammaln(a_t) + a_t * np.log(b / b_t) + a * (b_t - b) / b)
    )


def test_fit_converges_faster_on_gamma_target():  # about 5 s
    # The target is in the family, so the optimum is q = target (ELBO gap 0). In (log a, log b) the
    # Fisher at a = 5 has eigenvalues about 10 and 0.25: plain sgd must keep lr below ~0.2 and then
    # crawls along the flat direction; natural steps contract every direction at rate lr. Sticking
    # the landing (Gamma samples are reparameterised): no gradient noise at the optimum.
    target_concentration, target_rate = np.array([5.0, 0.5]), np.array([0.5, 2.0])
    family = bbvi.NumpyroFamily(dist.Gamma, (2,))

    def log_joint(z):
        return jnp.sum((target_concentration - 1.0) * jnp.log(z) - target_rate * z)

    def gap(params):  # the documented parameterisation: positive arguments stored as their log
        a, b = (np.exp(np.asarray(params[k], np.float64)) for k in ("concentration", "rate"))
        return gamma_kl(a, b, target_concentration, target_rate)

    lr, num_steps = 0.1, 100
    options = {"estimator": bbvi.Estimator("reparam", entropy="stl"), "num_samples": 4}
    natural = fit_gap(
        log_joint, family, optax.chain(natural_gradient(family), optax.sgd(lr)), gap, num_steps, **options
    )
    plain = fit_gap(log_joint, family, optax.sgd(lr), gap, num_steps, **options)
    assert natural < 1e-6, natural  # nats: the exact optimum (0.9^100 of the way left, squared)
    assert natural < plain / 10, (natural, plain)


@pytest.mark.slow
def test_fit_on_a_tree_of_gaussian_and_categorical():
    family = {"x": MFG((2,)), "c": bbvi.Categorical((), 3)}
    mean, scale, logits = np.array([3.0, -2.0]), np.array([2.0, 0.5]), np.log(np.array([0.6, 0.3, 0.1]))

    def log_joint(z):
        return -0.5 * jnp.sum(((z["x"] - mean) / scale) ** 2) + jnp.asarray(logits)[z["c"]]

    # A decaying step: the Gaussian leaf's gradient noise does not vanish at the optimum. Monte Carlo
    # entropy keeps the categorical's score-function steps self-correcting: a natural step divides by
    # p, and the integrand's -log q(z) pulls a rarely drawn category back up when it is drawn.
    optimizer = optax.chain(
        natural_gradient(family), optax.sgd(optax.exponential_decay(0.3, 200, 0.01 / 0.3))
    )
    result = bbvi.fit(
        log_joint,
        family,
        key=jax.random.key(8),
        num_steps=200,
        optimizer=optimizer,
        estimator=bbvi.Estimator("auto", entropy="mc"),
        progress_bar=False,
    )
    loc, tril = gaussian_loc_and_tril(family["x"], result.params["x"])
    q = softmax(np.asarray(result.params["c"]["logits"], np.float64))
    gap = gaussian_kl(loc, tril @ tril.T, mean, np.diag(scale**-2.0)) + float(
        np.sum(q * np.log(q / np.exp(logits)))
    )
    assert gap < 0.01, gap  # nats


# --- the optax transformation ------------------------------------------------------------------


def tree_case():
    family = {"g": bbvi.FullRankGaussian(2), "c": bbvi.Categorical((3,), 4), "b": (bbvi.Bernoulli((2,)),)}
    params = perturb(bbvi.init(family, jax.random.key(9)), 9)
    grad = perturb(jax.tree.map(jnp.zeros_like, params), 10, spread=1.0)
    return family, params, grad


def test_tree_of_families_is_leafwise_under_jit():
    family, params, grad = tree_case()
    tx = natural_gradient(family, DAMPING)
    assert tx.init(params) == optax.EmptyState()
    natural, state = jax.jit(tx.update)(grad, tx.init(params), params)
    assert state == optax.EmptyState()
    for path in [("g",), ("c",), ("b", 0)]:
        leaf, p, g, x = (
            functools.reduce(lambda t, k: t[k], path, tree) for tree in (family, params, grad, natural)
        )
        expected = fast_jit(functools.partial(inverse_fisher_product, leaf, damping=DAMPING))(p, g)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), x, expected)


def test_update_under_vmap():
    family, params, grad = tree_case()
    other_params, other_grad = perturb(params, 11), perturb(grad, 12)
    tx = jax.jit(natural_gradient(family).update)
    stacked = jax.tree.map(lambda a, b: jnp.stack([a, b]), (grad, params), (other_grad, other_params))
    batched = fast_jit(jax.vmap(lambda g, p: tx(g, optax.EmptyState(), p)[0]))(*stacked)
    for i, (g, p) in enumerate([(grad, params), (other_grad, other_params)]):
        expected = tx(g, optax.EmptyState(), p)[0]
        row = jax.tree.map(lambda a: a[i], batched)  # noqa: B023 (used at once)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), row, expected)


def test_large_damping_gives_gradient_over_damping():
    """(F + lambda I)^-1 g -> g / lambda as lambda grows (up to the categorical's dropped shift)."""
    family, params, grad = tree_case()
    natural, _ = fast_jit(natural_gradient(family, 1e6).update)(grad, optax.EmptyState(), params)
    scaled = jax.tree.map(lambda g: g / 1e6, grad)
    scaled["c"]["logits"] -= scaled["c"]["logits"].mean(-1, keepdims=True)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-2, atol=1e-8), natural, scaled)


@dataclasses.dataclass(frozen=True)
class LaplaceFamily(bbvi.DistributionFamily):
    """A family with no registered Fisher information."""

    reparameterized = True

    @property
    def event_shape(self):
        return ()

    def init(self, key):
        return {"loc": jnp.zeros(())}

    def distribution(self, params):
        return dist.Laplace(params["loc"], 1.0)


def test_errors():
    family = MFG((2,))
    params = bbvi.init(family, jax.random.key(0))
    tx = natural_gradient(family)
    with pytest.raises(ValueError, match="needs params"):
        tx.update(params, tx.init(params), None)
    with pytest.raises(ValueError, match="do not match"):
        tx.update(params, tx.init(params), {"loc": params["loc"]})
    with pytest.raises(
        TypeError, match=r"LaplaceFamily; supported families: .*Categorical.*MeanFieldGaussian"
    ):
        natural_gradient({"a": family, "b": LaplaceFamily()})
    with pytest.raises(TypeError, match="LaplaceFamily"):
        natural_gradient(bbvi.Constrained(LaplaceFamily(), constraints.positive))
    with pytest.raises(TypeError, match="not a bbvi family"):
        natural_gradient({"a": family, "b": "normal"})
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="damping must be finite and >= 0"):
            natural_gradient(family, bad)
    with pytest.raises(TypeError, match="damping must be a float"):
        natural_gradient(family, "big")


@pytest.mark.parametrize("distribution", [dist.Laplace, dist.StudentT, dist.Cauchy, dist.Chi2])
def test_numpyro_distribution_without_closed_form_is_refused(distribution):
    # Laplace, StudentT and Cauchy are not exponential families; Chi2 is a Gamma subclass with its
    # own argument (df), which the Gamma's Fisher information must not be applied to.
    supported = "Beta, Dirichlet, Exponential, Gamma, LogNormal, Normal"
    family = bbvi.NumpyroFamily(distribution, (2,))
    match = rf"NumpyroFamily\({distribution.__name__}\); supported NumpyroFamily .*: {supported}"
    with pytest.raises(TypeError, match=match):
        natural_gradient({"a": MFG((2,)), "b": family})
    with pytest.raises(TypeError, match=match):
        natural_gradient(bbvi.Constrained(family, constraints.positive))


# --- saturated probabilities (the latent factor model's NaN) ------------------------------------


def test_underflowed_probabilities_give_a_zero_step_not_nan():
    # Past |logit| ~ 88 a float32 probability underflows to 0, and so does every gradient term (a
    # multiple of it): the undamped quotient was 0 / 0. A zero gradient stays a zero step.
    bern = {"logits": jnp.array([-200.0, 150.0, 0.0])}
    natural = inverse_fisher_product(bbvi.Bernoulli((3,)), bern, {"logits": jnp.array([0.0, 0.0, 1.0])})
    np.testing.assert_array_equal(natural["logits"], [0.0, 0.0, 4.0])
    cat = {"logits": jnp.array([[-200.0, 0.0, 0.0]])}
    natural = inverse_fisher_product(
        bbvi.Categorical((1,), 3), cat, {"logits": jnp.array([[0.0, 1.0, -1.0]])}
    )
    # p = (0, 1/2, 1/2): F^+ g on the live categories is g / p, the dead one gets no step.
    np.testing.assert_allclose(natural["logits"], [[0.0, 2.0, -2.0]], atol=1e-6)


def test_bernoulli_entropy_natural_gradient_is_minus_the_logits():
    # H(p) has gradient -x p (1 - p) in the logit x, so its natural gradient is exactly -x. numpyro's
    # entropy lost every digit below x ~ -17 (value 0, gradient 0 or rounding noise of ~1e-6 under
    # jit), which the natural gradient divided by p (1 - p) ~ e^x: logit steps of 1e10 and then NaN
    # in the latent factor model.
    family = bbvi.Bernoulli((9,))
    params = {"logits": jnp.array([-80.0, -40.0, -17.0, -5.0, 0.5, 5.0, 17.0, 40.0, 80.0])}
    grad = fast_jit(jax.grad(family.entropy))(params)
    natural = fast_jit(natural_gradient(family).update)(grad, optax.EmptyState(), params)[0]
    np.testing.assert_allclose(natural["logits"], -params["logits"], rtol=1e-5)


@pytest.mark.slow
def test_latent_factor_fit_stays_finite():  # about 4 s
    # The reported fault: natural gradient and plain sgd on the latent factor model gave NaN (at
    # step 228 for this key with sgd(0.1), step 28-145 with sgd(0.3)).
    from bbvi.models import latent_factor

    data = latent_factor.simulate(0)
    family = latent_factor.family(data.num_factors)
    result = bbvi.fit(
        latent_factor.log_joint_fn(data),
        family,
        key=jax.random.key(0),
        num_steps=1000,
        optimizer=optax.chain(natural_gradient(family), optax.sgd(0.1)),
        estimator="score",
        progress_bar=False,
    )
    assert np.all(np.isfinite(result.elbo)) and np.all(np.isfinite(result.params["logits"]))
    elbo = float(latent_factor.mean_field_elbo(data, result.params["logits"]))
    best = float(latent_factor.best_cavi(data, jax.random.key(0)).elbo[-1])
    # Within a nat of the best CAVI fixed point: a constant step leaves score-function noise.
    assert elbo > best - 1.0, (elbo, best)
