"""The estimator contract registry: every estimator is unbiased for the ELBO and its gradient.

Each case is (target, family, estimator, control variate, num_samples). Its targets have an exact
ELBO (closed-form Gaussian expectations, or enumeration of a small discrete family), whose
gradient is `jax.grad` of that closed form, never a sampled estimate. The mean of the estimates
over many independent keys must match it within K standard errors in every coordinate, and the
same criterion must be sharp enough to reject a small bias, so no case passes vacuously.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpyro.distributions import constraints
from numpyro.distributions.transforms import biject_to
from scipy.special import gammaln

import bbvi

from ._helpers import (
    Enumeration,
    GammaTarget,
    GaussianTarget,
    MixedTarget,
    Summary,
    TableTarget,
    coordinate_names,
    exact_values,
    flat,
    monte_carlo,
    random_params,
)

# 178 coordinates (ELBO plus gradient) are tested across the registry. A two-sided normal tail
# beyond 5 standard errors has probability 5.7e-7, so by Bonferroni the chance that any unbiased
# coordinate fails is about 1e-4, with room for the mild non-normality of a mean of
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

    def value_and_grad(self):
        return bbvi.elbo_value_and_grad(
            self.log_joint,
            self.family,
            estimator=self.estimator,
            num_samples=self.num_samples,
            control_variate=self.control_variate,
        )


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
    unconstrained = biject_to(constraints.lower_cholesky).inv(jnp.asarray(tril, jnp.float32))
    return {"loc": jnp.asarray(rng.normal(size=d), jnp.float32), "scale_tril": unconstrained}


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


CASES = _continuous_cases() + _discrete_cases() + _mixed_cases() + _constrained_cases()
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
        "score-none",
        "score-loo",
        "score-optimal",
    ):
        assert any(i.startswith(needed) for i in ids), needed
    for target in ("mf", "fullrank", "bernoulli", "categorical", "mixed", "tuple", "constrained", "S1"):
        assert any(target in i for i in ids), target


# --- the exact references themselves ----------------------------------------------------------


def test_gaussian_reference_elbo_is_the_log_normaliser_at_the_posterior():
    # With q = p / Z the ELBO is log Z = constant + 1/2 log det(2 pi Sigma).
    target = GaussianTarget.random(seed=5, dim=3)
    cov = np.linalg.inv(target.precision)
    tril = jnp.asarray(np.linalg.cholesky(cov), jnp.float32)
    params = {
        "loc": jnp.asarray(target.mean, jnp.float32),
        "scale_tril": biject_to(constraints.lower_cholesky).inv(tril),
    }
    log_z = target.constant + 0.5 * np.linalg.slogdet(2 * np.pi * cov)[1]
    np.testing.assert_allclose(target.exact_elbo(bbvi.FullRankGaussian(3))(params), log_z, rtol=1e-5)


@pytest.mark.parametrize(
    "family", [bbvi.Bernoulli((4,)), bbvi.Categorical((2,), 3)], ids=["bernoulli", "categorical"]
)
def test_enumeration_covers_every_configuration_once(family):
    enumeration = Enumeration(family)
    configs = enumeration.configs
    assert len({tuple(np.ravel(c)) for c in configs}) == enumeration.count
    assert [int(enumeration.index(c)) for c in configs] == list(range(enumeration.count))
    params = discrete_params(family, 0)
    log_q = enumeration.log_q(params)
    np.testing.assert_allclose(jnp.sum(jnp.exp(log_q)), 1.0, rtol=1e-5)
    np.testing.assert_allclose(
        log_q, bbvi.log_prob(family, params, jnp.asarray(configs)), rtol=1e-5, atol=1e-6
    )


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
