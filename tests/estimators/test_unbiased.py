"""The estimator contract registry: every estimator is unbiased for its objective and its gradient.

Each case is (target, family, estimator, control variate, num_samples, objective, prior). Its
targets have an exact objective (closed-form Gaussian, Gamma or Beta expectations, enumeration of a
small discrete family, Gauss-Hermite quadrature), whose gradient is `jax.grad` of that exact
expression, never a sampled estimate. For the multi-sample bounds (IWAE, Renyi) the estimate is
the K-sample bound and the exact value is its expectation over all K-tuples of draws. The mean of
the estimates over many independent keys must match it within K standard errors in every
coordinate, and the same criterion must be sharp enough to reject a small bias, so no case passes
vacuously. (The relaxed estimator is biased by design: tests/estimators/test_objectives.py checks it.)
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
import scipy.integrate
import scipy.special
import scipy.stats
from numpyro.distributions import constraints
from scipy.special import gammaln

import bbvi
from bbvi.families.numpyro_family import NumpyroFamily  # not yet exported from bbvi

from ._helpers import (
    BetaQTarget,
    Enumeration,
    GammaQTarget,
    GammaTarget,
    GaussianTarget,
    MixedTarget,
    Summary,
    TableTarget,
    coordinate_names,
    exact_bound,
    exact_values,
    fast_jit,
    flat,
    monte_carlo,
    random_params,
    warm_started,
)

# 484 coordinates (objective plus gradient) are tested across the registry. A two-sided normal tail
# beyond 5 standard errors has probability 5.7e-7, so by Bonferroni the chance that any unbiased
# coordinate fails is about 3e-4, with room for the mild non-normality of a mean of
# 50,000 heavy-tailed score-function draws. (Keys are fixed, so each run is deterministic.)
K = 5.0
# Power: in every coordinate, a bias of BIAS_FRACTION of the case's scale (the largest exact
# gradient component; for the ELBO, max(|ELBO|, 1) nats) must move the z-score by at least 2K, so
# a biased estimator could not pass as the unbiased one does. Plausible bugs are larger: a
# leave-one-out baseline that includes the sample itself shrinks the score gradient by 1/S (25%
# at S=4), a dropped entropy or log-det term shifts the ELBO by nats.
BIAS_FRACTION = 0.25
NUM_KEYS = 50_000  # one jit(vmap) over this many keys takes well under a second; compiling dominates


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    family: Any
    log_joint: Callable
    exact_elbo: Callable
    params: Any
    estimator: Any
    control_variate: Any = "auto"
    num_samples: int = 4
    marks: tuple = ()
    objective: Any = "elbo"
    prior: Any = None

    def value_and_grad(self):
        options = {
            "estimator": self.estimator,
            "num_samples": self.num_samples,
            "control_variate": self.control_variate,
            "objective": self.objective,
            "prior": self.prior,
        }
        if isinstance(self.control_variate, bbvi.MovingAverage):
            # A stateful baseline: its state comes from earlier estimates, as `fit` threads it.
            return warm_started(bbvi.gradient_estimator(self.log_joint, self.family, **options))
        return bbvi.elbo_value_and_grad(self.log_joint, self.family, **options)


def gaussian_params(family, seed: int):
    """A Gaussian q away from the target, with scales near 0.7 and, for full rank, correlations."""
    rng = np.random.default_rng(seed)
    if isinstance(family, bbvi.MeanFieldGaussian):
        return {
            "loc": jnp.asarray(rng.normal(size=family.shape), jnp.float32),
            "log_scale": jnp.asarray(np.log(0.7) + 0.3 * rng.normal(size=family.shape), jnp.float32),
        }
    if isinstance(family, bbvi.LowRankGaussian):
        return {
            "loc": jnp.asarray(rng.normal(size=family.dim), jnp.float32),
            "cov_factor": jnp.asarray(0.4 * rng.normal(size=(family.dim, family.rank)), jnp.float32),
            "log_diag_scale": jnp.asarray(np.log(0.6) + 0.3 * rng.normal(size=family.dim), jnp.float32),
        }
    d = family.dim
    tril = np.diag(0.7 * np.exp(0.3 * rng.normal(size=d))) + np.tril(0.3 * rng.normal(size=(d, d)), -1)
    return family.params_from_scale_tril(
        jnp.asarray(rng.normal(size=d), jnp.float32), jnp.asarray(tril, jnp.float32)
    )


def discrete_params(family, seed: int):
    return random_params(family, seed, scale=1.0)


def _continuous_cases():
    target = GaussianTarget.random(seed=0, dim=3)
    mf, fr, lr = bbvi.MeanFieldGaussian((3,)), bbvi.FullRankGaussian(3), bbvi.LowRankGaussian(3, 2)
    specs = [
        ("reparam-analytic-mf", mf, bbvi.Estimator("reparam", "analytic"), "auto", 4),
        ("reparam-stl-mf", mf, bbvi.Estimator("reparam", "stl"), "auto", 4),
        ("auto-analytic-mf-S1", mf, "auto", "auto", 1),
        ("reparam-analytic-fullrank", fr, bbvi.Estimator("reparam", "analytic"), "auto", 4),
        ("reparam-mc-fullrank", fr, bbvi.Estimator("reparam", "mc"), "auto", 4),
        ("reparam-stl-fullrank", fr, bbvi.Estimator("reparam", "stl"), "auto", 4),
        ("reparam-analytic-lowrank", lr, bbvi.Estimator("reparam", "analytic"), "auto", 4),
        ("reparam-stl-lowrank", lr, bbvi.Estimator("reparam", "stl"), "auto", 4),
        ("score-none-mf", mf, "score", None, 4),
        ("score-loo-mf", mf, "score", "loo", 4),
        ("score-optimal-mf", mf, "score", "optimal", 8),
        ("score-mc-loo-mf", mf, bbvi.Estimator("score", "mc"), "loo", 4),
        ("score-loo-fullrank", fr, "score", "loo", 8),
        ("reparam-dreg-mf", mf, bbvi.Estimator("reparam", "dreg"), "auto", 4),  # the ELBO's DReG is STL
    ]
    return [
        Case(name, f, target.log_joint, target.exact_elbo(f), gaussian_params(f, seed=i), e, cv, s)
        for i, (name, f, e, cv, s) in enumerate(specs)
    ]


def _discrete_cases():
    bern, cat = bbvi.Bernoulli((4,)), bbvi.Categorical((2,), 3)
    targets = {bern: TableTarget.random(1, bern), cat: TableTarget.random(2, cat)}
    specs = [
        ("auto-loo-bernoulli", bern, "auto", "auto", 4, ()),
        ("score-none-bernoulli", bern, "score", None, 4, ()),
        ("score-optimal-bernoulli", bern, "score", "optimal", 3, ()),
        ("auto-mc-loo-bernoulli", bern, bbvi.Estimator("auto", "mc"), "loo", 4, ()),
        ("auto-none-bernoulli-S1", bern, "auto", "auto", 1, ()),
        ("score-loo-categorical", cat, "score", "loo", 4, ()),
        ("score-optimal-categorical", cat, "score", "optimal", 3, ()),
        ("score-rb-bernoulli", bern, "score", "rao_blackwell", 4, ()),
        ("auto-rb-bernoulli-S1", bern, "auto", "rao_blackwell", 1, ()),
        ("score-rb-categorical", cat, "score", "rao_blackwell", 4, ()),
        ("score-ma-bernoulli-S1", bern, "score", bbvi.MovingAverage(0.9), 1, ()),
        ("score-ma-categorical", cat, "score", bbvi.MovingAverage(0.5), 4, ()),
    ]
    return [
        Case(name, f, targets[f].log_joint, targets[f].exact_elbo(f), discrete_params(f, 10 + i), e, cv, s, m)
        for i, (name, f, e, cv, s, m) in enumerate(specs)
    ]


def _mixed_cases():
    gaussian = bbvi.MeanFieldGaussian((2,))
    cat = MixedTarget.random(3, gaussian, bbvi.Categorical((2,), 3))
    bern = MixedTarget.random(4, gaussian, bbvi.Bernoulli((2,)), as_tuple=True)
    specs = [  # id, target, estimator, control variate, S, parameter seed, marks
        ("auto-mixed-gaussian+categorical", cat, "auto", "auto", 4, 20, ()),
        ("auto-stl-mixed-gaussian+categorical", cat, bbvi.Estimator("auto", "stl"), "loo", 4, 21, ()),
        ("score-loo-mixed-gaussian+categorical", cat, "score", "loo", 4, 22, ()),
        ("auto-optimal-mixed-gaussian+bernoulli-tuple", bern, "auto", "optimal", 3, 24, ()),
        ("auto-rb-mixed-gaussian+categorical", cat, "auto", "rao_blackwell", 4, 25, ()),
        ("auto-ma-mixed-gaussian+bernoulli-tuple-S1", bern, "auto", bbvi.MovingAverage(0.9), 1, 26, ()),
    ]
    cases = []
    for name, target, estimator, cv, s, seed, marks in specs:
        family = target.family(gaussian)
        mu, c = gaussian_params(gaussian, seed), discrete_params(target.enumeration.family, seed + 10)
        params = (mu, c) if target.as_tuple else {"mu": mu, "c": c}
        cases.append(
            Case(name, family, target.log_joint, target.exact_elbo(family), params, estimator, cv, s, marks)
        )
    return cases


def _constrained_cases():
    target = GammaTarget(np.array([2.0, 5.0]), np.array([1.0, 3.0]))
    family = bbvi.Constrained(bbvi.MeanFieldGaussian((2,)), constraints.positive)
    params = {"loc": jnp.array([0.3, -0.4]), "log_scale": jnp.log(jnp.array([0.5, 0.3]))}
    return [
        Case(name, family, target.log_joint, target.exact_elbo(family), params, estimator, cv)
        for name, estimator, cv in [
            ("reparam-constrained-positive", "reparam", "auto"),
            ("score-loo-constrained-positive", "score", "loo"),
        ]
    ]


IWAE, RENYI = bbvi.IWAE(), bbvi.Renyi(0.5)
# Gauss-Hermite nodes per dimension for the exact multi-sample bounds: the integrands are smooth
# (log-sum-exps of quadratics), and 40 nodes agree with 80 to float32 precision
# (test_exact_bounds_converge_and_reduce_to_the_elbo).
ORDER = 40


def _multi_sample_cases():
    """IWAE and Renyi(0.5), K = 2 or 3: exact by enumerating K-tuples of discrete configurations, or
    of the Gauss-Hermite atoms of a 1-D Gaussian q (and their product, for the mixed target)."""
    bern, cat = bbvi.Bernoulli((4,)), bbvi.Categorical((2,), 3)
    tables = {bern: TableTarget.random(31, bern), cat: TableTarget.random(32, cat)}
    gaussian = bbvi.MeanFieldGaussian((1,))
    line = GaussianTarget.diagonal([0.4], [1.2])
    mixed = MixedTarget.random(33, gaussian, bbvi.Bernoulli((2,)))
    reparam, dreg = bbvi.Estimator("reparam"), bbvi.Estimator("reparam", "dreg")
    specs = [  # id, family, estimator, control variate, K, objective
        ("score-loo-iwae-bernoulli-K3", bern, "score", "loo", 3, IWAE),  # VIMCO
        ("score-none-iwae-bernoulli-K2", bern, "score", None, 2, IWAE),
        ("auto-loo-renyi0.5-categorical-K3", cat, "auto", "loo", 3, RENYI),
        ("score-none-renyi0.5-categorical-K2", cat, "score", None, 2, RENYI),
        ("score-ma-iwae-bernoulli-K2", bern, "score", bbvi.MovingAverage(0.9), 2, IWAE),
        ("score-ma-renyi0.5-categorical-K2", cat, "score", bbvi.MovingAverage(0.9), 2, RENYI),
        ("reparam-analytic-iwae-gauss1d-K2", gaussian, reparam, "auto", 2, IWAE),
        ("reparam-mc-renyi0.5-gauss1d-K2", gaussian, bbvi.Estimator("reparam", "mc"), "auto", 2, RENYI),
        ("reparam-dreg-iwae-gauss1d-K2", gaussian, dreg, "auto", 2, IWAE),
        ("reparam-dreg-renyi0.5-gauss1d-K2", gaussian, dreg, "auto", 2, RENYI),
        ("score-loo-iwae-gauss1d-K2", gaussian, "score", "loo", 2, IWAE),
        ("auto-loo-iwae-mixed-gaussian1d+bernoulli-K2", "mixed", "auto", "loo", 2, IWAE),
        (
            "auto-dreg-loo-renyi0.5-mixed-gaussian1d+bernoulli-K2",
            "mixed",
            bbvi.Estimator("auto", "dreg"),
            "loo",
            2,
            RENYI,
        ),
    ]

    def setup(family, seed):
        """The family, parameters, log-joint and atoms of q (see `exact_bound`) for a target."""
        if family == "mixed":
            family = mixed.family(gaussian)
            params = {"mu": gaussian_params(gaussian, seed), "c": discrete_params(bbvi.Bernoulli((2,)), seed)}
            return family, params, mixed.log_joint, mixed.atoms(family, ORDER)
        if family is gaussian:
            return family, gaussian_params(family, seed), line.log_joint, line.atoms(family, ORDER)
        table = tables[family]
        return family, discrete_params(family, seed), table.log_joint, table.atoms(family)

    cases = []
    for i, (name, family, estimator, cv, k, objective) in enumerate(specs):
        family, params, log_joint, atoms = setup(family, 40 + i)
        exact = exact_bound(atoms, objective.alpha, k)
        cases.append(Case(name, family, log_joint, exact, params, estimator, cv, k, objective=objective))
    return cases


def _structured_discrete_cases():
    """MarkovChains and OneHotCategorical against tables over every configuration."""
    chains, onehot = bbvi.MarkovChains(2, 2, 2), bbvi.OneHotCategorical((2,), 3)
    tables = {chains: TableTarget.random(34, chains), onehot: TableTarget.random(35, onehot)}
    specs = [
        ("score-loo-markov", chains, "score", "loo", 4, "elbo"),
        ("score-mc-loo-markov", chains, bbvi.Estimator("score", "mc"), "loo", 4, "elbo"),
        ("score-rb-markov", chains, "score", "rao_blackwell", 4, "elbo"),
        ("score-loo-iwae-markov-K2", chains, "score", "loo", 2, IWAE),
        ("score-loo-onehot", onehot, "score", "loo", 4, "elbo"),
        ("auto-rb-onehot", onehot, "auto", "rao_blackwell", 4, "elbo"),
    ]
    cases = []
    for i, (name, family, estimator, cv, k, objective) in enumerate(specs):
        table = tables[family]
        exact = table.exact_elbo(family) if objective == "elbo" else exact_bound(table.atoms(family), 0.0, k)
        params = discrete_params(family, 50 + i)
        cases.append(
            Case(name, family, table.log_joint, exact, params, estimator, cv, k, objective=objective)
        )
    return cases


def _mixture_cases():
    """A two-component GaussianMixture over two latents; its entropy by Gauss-Hermite quadrature."""
    target = GaussianTarget.diagonal([0.5, -1.0], [0.8, 1.5])
    family = bbvi.GaussianMixture(2, 2)
    params = {
        "logits": jnp.array([0.3, -0.2]),
        "loc": jnp.array([[0.2, -0.5], [1.0, -1.5]]),
        "log_scale": jnp.log(jnp.array([[0.5, 0.9], [0.7, 1.1]])),
    }
    exact = target.mixture_elbo(order=30)
    return [
        Case(name, family, target.log_joint, exact, params, estimator, cv)
        for name, estimator, cv in [
            # No closed-form entropy: "analytic" falls back to Monte Carlo (the same program as "mc").
            ("reparam-analytic-mixture", bbvi.Estimator("reparam"), "auto"),
            ("reparam-stl-mixture", bbvi.Estimator("reparam", "stl"), "auto"),
            ("score-loo-mixture", "score", "loo"),
        ]
    ]


CATEGORICAL_PRIOR = np.array([[0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])


def categorical_prior_table(enumeration) -> TableTarget:
    """The prior's log-probability of every configuration, from its table of probabilities."""
    log_probs = np.log(CATEGORICAL_PRIOR)[np.arange(enumeration.size), enumeration.configs].sum(axis=1)
    return TableTarget(enumeration, log_probs)


def _prior_cases():
    """The log-likelihood with a separate numpyro prior: the KL in closed form ("analytic") where
    numpyro has it (Normal, Gamma), by Monte Carlo otherwise (a categorical prior, entropy "mc")."""
    cases = []
    mf = bbvi.MeanFieldGaussian((3,))
    gaussian_likelihood = GaussianTarget.random(seed=36, dim=3)
    normal = dist.Normal(jnp.zeros(3), jnp.full(3, 1.5)).to_event(1)
    normal_density = GaussianTarget.normal_prior(3, 1.5)

    def gaussian_exact(params):
        return gaussian_likelihood.exact_elbo(mf)(params) + normal_density.expected_log_joint(mf)(params)

    for i, entropy in enumerate(("analytic", "mc")):
        estimator = bbvi.Estimator("reparam", entropy)
        name = f"reparam-{entropy}-prior-mf"
        cases.append(
            Case(
                name,
                mf,
                gaussian_likelihood.log_joint,
                gaussian_exact,
                gaussian_params(mf, 60 + i),
                estimator,
                prior=normal,
            )
        )

    gaussian, cat = bbvi.MeanFieldGaussian((2,)), bbvi.Categorical((2,), 3)
    mixed = MixedTarget.random(37, gaussian, cat)
    family = mixed.family(gaussian)
    prior = {
        "mu": dist.Normal(jnp.zeros(2), jnp.full(2, 1.5)).to_event(1),
        "c": dist.Categorical(probs=jnp.asarray(CATEGORICAL_PRIOR)).to_event(1),
    }
    mu_prior = GaussianTarget.normal_prior(2, 1.5)
    c_prior = categorical_prior_table(Enumeration(cat))

    def mixed_exact(params):
        return (
            mixed.exact_elbo(family)(params)
            + mu_prior.expected_log_joint(gaussian)(params["mu"])
            + c_prior.expected_log_joint(cat)(params["c"])
        )

    for i, entropy in enumerate(("analytic", "mc")):
        params = {"mu": gaussian_params(gaussian, 62 + i), "c": discrete_params(cat, 62 + i)}
        name = f"auto-{entropy}-prior-mixed-gaussian+categorical"
        cases.append(
            Case(
                name,
                family,
                mixed.log_joint,
                mixed_exact,
                params,
                bbvi.Estimator("auto", entropy),
                prior=prior,
            )
        )

    # Poisson counts y with exposures n: z^y e^(-n z) is a Gamma(y + 1, n) density up to a constant.
    gamma = NumpyroFamily(dist.Gamma, (2,))
    poisson = GammaQTarget(np.array([4.0, 2.0]), np.array([3.0, 1.0]))
    gamma_density = GammaQTarget(np.array([2.0, 2.0]), np.array([1.5, 1.5]))
    prior = dist.Gamma(jnp.full(2, 2.0), jnp.full(2, 1.5)).to_event(1)

    def gamma_exact(params):
        return poisson.exact_elbo(gamma)(params) + gamma_density.expected_log_joint(gamma)(params)

    params = {"concentration": jnp.log(jnp.array([3.0, 2.5])), "rate": jnp.log(jnp.array([2.0, 3.0]))}
    for entropy in ("analytic", "mc"):
        cases.append(
            Case(
                f"reparam-{entropy}-prior-numpyro-gamma",
                gamma,
                poisson.log_joint,
                gamma_exact,
                params,
                bbvi.Estimator("reparam", entropy),
                prior=prior,
            )
        )
    return cases


GAMMA_Q = GammaQTarget(np.array([2.0, 5.0]), np.array([1.0, 3.0]))
GAMMA_PARAMS = {"concentration": jnp.log(jnp.array([3.0, 4.0])), "rate": jnp.log(jnp.array([2.0, 1.5]))}
BETA_Q = BetaQTarget(np.array([2.0, 3.0]), np.array([4.0, 1.5]))
BETA_PARAMS = {
    "concentration1": jnp.log(jnp.array([3.0, 2.0])),
    "concentration0": jnp.log(jnp.array([2.0, 2.5])),
}


def _numpyro_cases():
    """NumpyroFamily Gamma and Beta (pathwise by implicit reparameterisation), closed-form ELBOs."""
    laws = {
        "gamma": (NumpyroFamily(dist.Gamma, (2,)), GAMMA_Q, GAMMA_PARAMS),
        "beta": (NumpyroFamily(dist.Beta, (2,)), BETA_Q, BETA_PARAMS),
    }
    specs = [
        ("reparam-analytic-numpyro-gamma", "gamma", bbvi.Estimator("reparam"), "auto"),
        ("reparam-stl-numpyro-gamma", "gamma", bbvi.Estimator("reparam", "stl"), "auto"),
        ("score-loo-numpyro-gamma", "gamma", "score", "loo"),
        ("reparam-analytic-numpyro-beta", "beta", bbvi.Estimator("reparam"), "auto"),
    ]
    cases = []
    for name, law, estimator, cv in specs:
        family, target, params = laws[law]
        cases.append(Case(name, family, target.log_joint, target.exact_elbo(family), params, estimator, cv))
    return cases


CASES = (
    _continuous_cases()
    + _discrete_cases()
    + _mixed_cases()
    + _constrained_cases()
    + _multi_sample_cases()
    + _structured_discrete_cases()
    + _mixture_cases()
    + _prior_cases()
    + _numpyro_cases()
)
BY_ID = {case.id: case for case in CASES}
PARAMS = [pytest.param(case, id=case.id, marks=case.marks) for case in CASES]
DRAW_KEY = jax.random.key(2024)


@functools.cache
def summary_for(case_id: str) -> Summary:
    """The registry's Monte Carlo summary for a case, computed once and shared by its tests."""
    case = BY_ID[case_id]
    return Summary.of(monte_carlo(case.value_and_grad(), case.params, DRAW_KEY, NUM_KEYS))


def _report(names, z, estimate, exact, se, worst=4):
    order = np.argsort(-np.abs(z))[:worst]
    return "\n".join(
        f"  {names[i]}: mean {estimate[i]:.5g}, exact {exact[i]:.5g}, se {se[i]:.3g}, z {z[i]:+.2f}"
        for i in order
    )


@pytest.mark.parametrize("case", PARAMS)
def test_unbiased_for_elbo_and_gradient(case):
    summary = summary_for(case.id)
    exact = exact_values(case.exact_elbo, case.params)
    names = coordinate_names(case.params)
    assert summary.mean.shape == exact.shape == (len(names),)

    z = summary.z_scores(exact)
    se = summary.se
    assert np.all(np.abs(z) <= K), f"biased beyond {K} standard errors:\n" + _report(
        names, z, summary.mean, exact, se
    )

    # Power: the same criterion rejects the exact values shifted by a small bias in each coordinate.
    grad_scale = np.abs(exact[1:]).max()
    assert grad_scale > 0.1, "the exact gradient is nearly zero here: move the parameters off the optimum"
    bias = BIAS_FRACTION * np.concatenate([[max(abs(exact[0]), 1.0)], np.full(exact.size - 1, grad_scale)])
    assert np.all(2 * K * se <= bias), "too few keys to resolve a small bias:\n" + _report(
        names, bias / se, summary.mean, exact, se
    )
    assert np.all(np.abs(summary.z_scores(exact + bias)) > K)


@pytest.mark.parametrize("case", [pytest.param(case, id=case.id) for case in CASES])
def test_gradient_is_shaped_like_params(case):
    elbo, grad = jax.eval_shape(case.value_and_grad(), case.params, DRAW_KEY)
    assert elbo.shape == () and jnp.issubdtype(elbo.dtype, jnp.floating)
    assert jax.tree.structure(grad) == jax.tree.structure(case.params)
    for g, p in zip(jax.tree.leaves(grad), jax.tree.leaves(case.params)):
        assert (g.shape, g.dtype) == (jnp.shape(p), jnp.result_type(p))


def flat_row(elbo_and_grad) -> np.ndarray:
    """One `(elbo, grad)` as the float64 row the registry's summaries use."""
    elbo, grad = elbo_and_grad
    return np.concatenate([[float(elbo)], flat(jax.tree.map(lambda x: x[None], grad))[0]])


# Eager evaluation compiles op by op (seconds per new program), so it runs for one case per code
# path: pathwise and score leaves in a dict (baseline control variate), the scaled-score control
# variate, and a constrained leaf; every case's jit(vmap) program is exercised by the registry.
@pytest.mark.slow
@pytest.mark.parametrize(
    "case_id", ["auto-mixed-gaussian+categorical", "score-optimal-mf", "reparam-constrained-positive"]
)
def test_pure_and_the_same_under_jit_and_vmap(case_id):
    case = BY_ID[case_id]
    value_and_grad = case.value_and_grad()
    keys = jax.random.split(DRAW_KEY, NUM_KEYS)[:2]  # the registry's first two keys
    eager = [flat_row(value_and_grad(case.params, k)) for k in keys]

    # Same key, same answer, bit for bit; another key, another answer.
    np.testing.assert_array_equal(flat_row(value_and_grad(case.params, keys[0])), eager[0])
    assert not np.array_equal(eager[0], eager[1])

    # Compiled programs may fuse and reorder float32 arithmetic, hence a tolerance; a wrong key
    # or a dropped term would be off by order one.
    jitted = jax.jit(value_and_grad)
    registry = summary_for(case.id).head  # the registry's jit(vmap) rows for these keys
    for i, key in enumerate(keys):
        np.testing.assert_allclose(flat_row(jitted(case.params, key)), eager[i], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(registry[i], eager[i], rtol=1e-4, atol=1e-4)


def test_registry_ids_are_unique_and_cover_every_estimator():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))
    for needed in (
        "reparam-analytic",
        "reparam-mc",
        "reparam-stl",
        "reparam-dreg",
        "score-none",
        "score-loo",
        "score-optimal",
        "score-rb",
        "score-ma",
    ):
        assert any(i.startswith(needed) for i in ids), needed
    targets = ["mf", "fullrank", "bernoulli", "categorical", "mixed", "tuple", "constrained", "S1"]
    targets += ["iwae", "renyi", "prior", "markov", "onehot", "mixture"]
    targets += ["numpyro-gamma", "numpyro-beta"]
    for target in targets:
        assert any(target in i for i in ids), target
    # Every multi-sample objective meets every way of estimating its gradient.
    for objective in ("iwae", "renyi"):
        for estimator in ("reparam-", "-dreg-", "score-", "-loo-", "-none-", "-ma-"):
            assert any(estimator in f"-{i}" and objective in i for i in ids), (estimator, objective)


# --- the exact references themselves ----------------------------------------------------------


def test_gaussian_reference_elbo_is_the_log_normaliser_at_the_posterior():
    # With q = p / Z the ELBO is log Z = constant + 1/2 log det(2 pi Sigma).
    target = GaussianTarget.random(seed=5, dim=3)
    cov = np.linalg.inv(target.precision)
    tril = jnp.asarray(np.linalg.cholesky(cov), jnp.float32)
    params = bbvi.FullRankGaussian.params_from_scale_tril(jnp.asarray(target.mean, jnp.float32), tril)
    log_z = target.constant + 0.5 * np.linalg.slogdet(2 * np.pi * cov)[1]
    np.testing.assert_allclose(target.exact_elbo(bbvi.FullRankGaussian(3))(params), log_z, rtol=1e-5)


@pytest.mark.parametrize(
    "family",
    [
        bbvi.Bernoulli((4,)),
        bbvi.Categorical((2,), 3),
        bbvi.OneHotCategorical((2,), 3),
        bbvi.MarkovChains(2, 2, 2),
    ],
    ids=["bernoulli", "categorical", "onehot", "markov"],
)
def test_enumeration_covers_every_configuration_once(family):
    enumeration = Enumeration(family)
    draws = enumeration.draws
    assert len({tuple(np.ravel(c)) for c in draws}) == enumeration.count
    assert list(np.asarray(jax.vmap(enumeration.index)(jnp.asarray(draws)))) == list(range(enumeration.count))
    params = discrete_params(family, 0)
    log_q = enumeration.log_q(params)
    np.testing.assert_allclose(jnp.sum(jnp.exp(log_q)), 1.0, rtol=1e-5)
    log_prob = fast_jit(lambda p, z: bbvi.log_prob(family, p, z))  # one program, not op by op
    np.testing.assert_allclose(log_q, log_prob(params, jnp.asarray(draws)), rtol=1e-5, atol=1e-6)


def test_gamma_reference_elbo_matches_quadrature():
    # E_q[log p(exp(u)) + u] + H[q] by Gauss-Hermite quadrature, independently of the closed form.
    target = GammaTarget(np.array([2.0, 5.0]), np.array([1.0, 3.0]))
    params = {"loc": jnp.array([0.3, -0.4]), "log_scale": jnp.log(jnp.array([0.5, 0.3]))}
    nodes, weights = np.polynomial.hermite_e.hermegauss(60)
    weights = weights / weights.sum()
    total = 0.0
    for i, (a, b) in enumerate(zip(target.concentration, target.rate)):
        m, sd = float(params["loc"][i]), float(np.exp(params["log_scale"][i]))
        u = m + sd * nodes
        log_p = a * np.log(b) - gammaln(a) + (a - 1) * u - b * np.exp(u) + u
        total += weights @ log_p + 0.5 * np.log(2 * np.pi * np.e * sd**2)
    np.testing.assert_allclose(target.exact_elbo(None)(params), total, rtol=1e-5)


def test_exact_bounds_converge_and_reduce_to_the_elbo():
    line, gaussian = GaussianTarget.diagonal([0.4], [1.2]), bbvi.MeanFieldGaussian((1,))
    params = {"loc": jnp.array([0.9]), "log_scale": jnp.log(jnp.array([0.6]))}
    elbo = float(line.exact_elbo(gaussian)(params))
    # K = 1, or alpha = 1, is the ELBO, which the rule integrates exactly (a quadratic).
    for alpha, k in [(0.0, 1), (0.5, 1), (1.0, 2)]:
        np.testing.assert_allclose(
            fast_jit(exact_bound(line.atoms(gaussian, ORDER), alpha, k))(params), elbo, rtol=1e-5
        )
    # Doubling the nodes changes nothing at float32 precision.
    for alpha in (0.0, 0.5):
        coarse, fine = (
            fast_jit(exact_bound(line.atoms(gaussian, n), alpha, 2))(params) for n in (ORDER, 2 * ORDER)
        )
        np.testing.assert_allclose(coarse, fine, rtol=2e-6)
    # An independent float64 Monte Carlo estimate of E[IWAE_2] agrees within 5 standard errors.
    rng = np.random.default_rng(0)
    z = 0.9 + 0.6 * rng.normal(size=(1_000_000, 2))
    log_w = -0.5 * ((z - 0.4) / 1.2) ** 2 - 2.0 - scipy.stats.norm.logpdf(z, 0.9, 0.6)
    iwae = np.logaddexp(log_w[:, 0], log_w[:, 1]) - np.log(2)
    se = iwae.std() / np.sqrt(iwae.size)
    assert abs(iwae.mean() - fast_jit(exact_bound(line.atoms(gaussian, ORDER), 0.0, 2))(params)) < 5 * se


def test_mixed_atoms_reduce_to_the_mixed_elbo():
    gaussian = bbvi.MeanFieldGaussian((1,))
    mixed = MixedTarget.random(33, gaussian, bbvi.Bernoulli((2,)))
    family = mixed.family(gaussian)
    params = {"mu": gaussian_params(gaussian, 1), "c": discrete_params(bbvi.Bernoulli((2,)), 1)}
    atoms = mixed.atoms(family, ORDER)
    np.testing.assert_allclose(jnp.sum(jnp.exp(atoms(params)[0])), 1.0, rtol=1e-5)
    np.testing.assert_allclose(
        exact_bound(atoms, 1.0, 2)(params), mixed.exact_elbo(family)(params), rtol=1e-5
    )


def test_mixture_reference_elbo_matches_monte_carlo():
    target = GaussianTarget.diagonal([0.5, -1.0], [0.8, 1.5])
    case = BY_ID["reparam-analytic-mixture"]
    exact = float(fast_jit(case.exact_elbo)(case.params))
    np.testing.assert_allclose(fast_jit(target.mixture_elbo(order=60))(case.params), exact, rtol=1e-5)
    # Independently, in float64: ancestral draws from the mixture and scipy's densities.
    weights = scipy.special.softmax(np.asarray(case.params["logits"], np.float64))
    loc, scale = (
        np.asarray(case.params["loc"], np.float64),
        np.exp(np.asarray(case.params["log_scale"], np.float64)),
    )
    rng = np.random.default_rng(1)
    k = rng.choice(2, size=1_000_000, p=weights)
    z = loc[k] + scale[k] * rng.normal(size=(k.size, 2))
    log_q = scipy.special.logsumexp(
        [np.log(w) + scipy.stats.norm.logpdf(z, m, s).sum(axis=1) for w, m, s in zip(weights, loc, scale)],
        axis=0,
    )
    log_p = -0.5 * np.sum(((z - [0.5, -1.0]) / [0.8, 1.5]) ** 2, axis=1) - 2.0
    values = log_p - log_q
    assert abs(values.mean() - exact) < 5 * values.std() / np.sqrt(values.size)


@pytest.mark.parametrize("law", ["gamma", "beta"])
def test_gamma_and_beta_reference_elbos_match_scipy_quadrature(law):
    target, params = (GAMMA_Q, GAMMA_PARAMS) if law == "gamma" else (BETA_Q, BETA_PARAMS)
    first, second = (np.exp(np.asarray(x, np.float64)) for x in params.values())
    total = 0.0
    for i in range(2):
        if law == "gamma":  # params are (concentration, rate)
            q = scipy.stats.gamma(first[i], scale=1 / second[i])
            p = scipy.stats.gamma(target.concentration[i], scale=1 / target.rate[i])
        else:  # (concentration1, concentration0)
            q = scipy.stats.beta(first[i], second[i])
            p = scipy.stats.beta(target.concentration1[i], target.concentration0[i])
        total += scipy.integrate.quad(
            lambda z, p=p, q=q: q.pdf(z) * (p.logpdf(z) - q.logpdf(z)), *q.support()
        )[0]
    np.testing.assert_allclose(target.exact_elbo(None)(params), total, rtol=1e-5)


def test_prior_references_are_the_priors_log_densities():
    rng = np.random.default_rng(2)
    z = jnp.asarray(rng.normal(size=3), jnp.float32)
    normal = dist.Normal(jnp.zeros(3), jnp.full(3, 1.5)).to_event(1)
    np.testing.assert_allclose(
        GaussianTarget.normal_prior(3, 1.5).log_joint(z), normal.log_prob(z), rtol=1e-5
    )
    tau = jnp.array([0.7, 2.1])
    gamma = dist.Gamma(jnp.full(2, 2.0), jnp.full(2, 1.5)).to_event(1)
    reference = GammaQTarget(np.array([2.0, 2.0]), np.array([1.5, 1.5]))
    np.testing.assert_allclose(reference.log_joint(tau), gamma.log_prob(tau), rtol=1e-5)
    enumeration = Enumeration(bbvi.Categorical((2,), 3))
    table = categorical_prior_table(enumeration)
    categorical = dist.Categorical(probs=jnp.asarray(CATEGORICAL_PRIOR)).to_event(1)
    configs = jnp.asarray(enumeration.configs)
    np.testing.assert_allclose(jax.vmap(table.log_joint)(configs), categorical.log_prob(configs), rtol=1e-5)


# --- the estimator options: clear errors before anything is compiled -----------------------------


def _zero(z):
    return jnp.zeros(())


def test_reparam_with_a_discrete_leaf_names_the_leaf():
    family = {"w": bbvi.MeanFieldGaussian((2,)), "switch": bbvi.Bernoulli((3,))}
    with pytest.raises(ValueError, match=r"\['switch'\]") as info:
        bbvi.elbo_value_and_grad(_zero, family, estimator="reparam")
    assert "['w']" not in str(info.value)
    with pytest.raises(ValueError, match="reparam"):
        bbvi.elbo_value_and_grad(_zero, bbvi.Categorical((2,), 3), estimator=bbvi.Estimator("reparam", "stl"))


@pytest.mark.parametrize("estimator", ["pathwise", "REPARAM", ""])
def test_unknown_estimator_name(estimator):
    with pytest.raises(ValueError, match="reparam.*score.*auto"):
        bbvi.elbo_value_and_grad(_zero, bbvi.MeanFieldGaussian((2,)), estimator=estimator)


def test_estimator_of_the_wrong_type():
    with pytest.raises(TypeError, match="estimator"):
        bbvi.elbo_value_and_grad(_zero, bbvi.MeanFieldGaussian((2,)), estimator=3)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"gradient": "pathwise"}, "unknown estimator"), ({"entropy": "exact"}, "unknown entropy mode.*stl")],
)
def test_unknown_estimator_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        bbvi.Estimator(**kwargs)


@pytest.mark.parametrize("num_samples", [0, -1, 1.5, 2.0, True, "4", None])
def test_num_samples_must_be_a_positive_int(num_samples):
    with pytest.raises(ValueError, match="num_samples"):
        bbvi.elbo_value_and_grad(_zero, bbvi.MeanFieldGaussian((2,)), num_samples=num_samples)


@pytest.mark.parametrize(("cv", "num_samples"), [("loo", 1), ("optimal", 2), ("optimal", 1)])
def test_control_variate_needs_enough_samples(cv, num_samples):
    with pytest.raises(ValueError, match="num_samples"):
        bbvi.elbo_value_and_grad(
            _zero, bbvi.Bernoulli((2,)), estimator="score", num_samples=num_samples, control_variate=cv
        )


def test_errors_are_raised_before_the_log_joint_is_traced():
    calls = []

    def log_joint(z):
        calls.append(z)
        return jnp.sum(z)

    for bad in ({"estimator": "nope"}, {"num_samples": 0}, {"control_variate": "nope"}):
        with pytest.raises(ValueError):
            bbvi.elbo_value_and_grad(log_joint, bbvi.MeanFieldGaussian((2,)), **bad)
    assert calls == []
