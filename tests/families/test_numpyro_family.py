"""`NumpyroFamily` beyond the registry: implicit-reparameterisation gradients, which gradient each
distribution gets, construction errors, factorised densities, and fits that recover a known target.

Shapes, densities against scipy, moments, entropy and jit/vmap are checked by the family registry
(`cases_numpyro.py` with `test_contract.py`).
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import optax
import pytest
import scipy.stats
from jax.scipy.special import gammaln as jax_gammaln
from scipy.special import expit, gammaln

import bbvi
from bbvi.families.numpyro_family import NumpyroFamily

from ._helpers import assert_mc_close, fast_jit
from .cases_numpyro import scipy_distribution

NF = NumpyroFamily

MUST_HAVE = [
    ("Normal", ()), ("LogNormal", ()), ("Gamma", ()), ("Beta", ()), ("Dirichlet", (3,)), ("Exponential", ()),
    ("Laplace", ()), ("StudentT", ()), ("Cauchy", ()), ("Logistic", ()), ("Gumbel", ()), ("Weibull", ()),
    ("Pareto", ()), ("Uniform", ()),
]  # fmt: skip


# --------------------------------------------------------------------------------------------------
# Implicit reparameterisation: pathwise gradients of moments match the closed-form derivatives.


def _gamma_moments(p):
    a, b = np.exp(p["concentration"]), np.exp(p["rate"])
    return np.array([a / b, a * (a + 1) / b**2])


def _beta_moments(p):
    a, b = np.exp(p["concentration1"]), np.exp(p["concentration0"])
    return np.array([a / (a + b), a * (a + 1) / ((a + b) * (a + b + 1))])


def _dirichlet_moments(p):
    alpha = np.exp(p["concentration"])
    total = alpha.sum()
    return np.concatenate([alpha / total, alpha * (alpha + 1) / (total * (total + 1))])


def _closed_form_gradient(moments, params) -> np.ndarray:
    """d moments / d params, (num_moments, num_params) in the order of `jax.tree.leaves(params)`.

    Central differences of the float64 closed form: truncation error ~1e-10, far below the
    Monte Carlo standard errors it is compared with.
    """
    params = {name: np.asarray(x, np.float64) for name, x in params.items()}
    columns, h = [], 1e-5
    for name in sorted(params):  # jax.tree.leaves orders dict keys so
        for i in np.ndindex(params[name].shape):
            up, down = ({k: v.copy() for k, v in params.items()} for _ in range(2))
            up[name][i] += h
            down[name][i] -= h
            columns.append((moments(up) - moments(down)) / (2 * h))
    return np.stack(columns, axis=1)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("family", "moments"),
    [
        # Concentrations below one: the hard case for the gamma sampler's implicit gradient.
        (NF(dist.Gamma, init={"concentration": 0.7, "rate": 2.0}), _gamma_moments),
        (NF(dist.Beta, init={"concentration1": 0.8, "concentration0": 2.5}), _beta_moments),
        (NF(dist.Dirichlet, event_shape=(3,), init={"concentration": 1.5}), _dirichlet_moments),
    ],
    ids=["gamma", "beta", "dirichlet"],
)
def test_implicit_reparameterisation_gradients_match_closed_form(family, moments):
    assert family.reparameterized
    params = family.init(None)
    if family.dist_type is dist.Dirichlet:  # unequal concentrations (0.9, 1.5, 3.6)
        params = {"concentration": params["concentration"] + jnp.array([-0.5, 0.0, 0.9])}
    num = 20_000

    def stats(z):  # z and z^2 for every coordinate
        return jnp.concatenate([jnp.ravel(z), jnp.ravel(z) ** 2])

    @fast_jit
    def per_draw_jacobians(params, keys):
        def one(key):
            jac = jax.jacobian(lambda p: stats(family.sample(p, key)))(params)
            return jnp.concatenate(
                [jac[name].reshape(jac[name].shape[0], -1) for name in sorted(jac)], axis=1
            )

        return jax.vmap(one)(keys)

    jacobians = np.asarray(per_draw_jacobians(params, jax.random.split(jax.random.key(11), num)), np.float64)
    expected = _closed_form_gradient(moments, params)
    assert jacobians.shape == (num,) + expected.shape
    # Each entry of the mean per-draw Jacobian is an unbiased estimate of d E[stat] / d param.
    assert_mc_close(jacobians.reshape(num, -1), expected.ravel(), f"{family.dist_type.__name__} gradients")


# --------------------------------------------------------------------------------------------------
# Which gradient each distribution gets, and which has a closed-form entropy.


@pytest.mark.parametrize(("name", "event_shape"), MUST_HAVE, ids=[m[0] for m in MUST_HAVE])
def test_must_have_distributions_are_reparameterised(name, event_shape):
    family = NF(getattr(dist, name), event_shape=event_shape)
    assert family.reparameterized is True
    z = jax.eval_shape(family.sample, family.init(None), jax.random.key(0))
    assert z.shape == event_shape and jnp.issubdtype(z.dtype, jnp.floating)


@pytest.mark.parametrize(
    "family",
    [NF(dist.Poisson), NF(dist.BernoulliProbs, (2,)), NF(dist.VonMises)],
    ids=["poisson", "bernoulli_probs", "von_mises_partly_reparameterised"],
)
def test_non_reparameterisable_distributions_get_score_function_gradients(family):
    # VonMises samples pathwise in loc but not in concentration: not reparameterised as a whole.
    assert family.reparameterized is False
    assert bbvi.Estimator("auto").pathwise([family], ["q"]) == [False]


def test_has_entropy_is_whether_numpyro_has_it():
    assert NF(dist.Gamma).has_entropy and NF(dist.Dirichlet, (2,), (3,)).has_entropy
    assert not NF(dist.Gumbel).has_entropy and not NF(dist.Poisson).has_entropy


# --------------------------------------------------------------------------------------------------
# Parameters: the documented unconstrained parameterisation, defaults and init values.


def test_default_init_is_zero_unconstrained_and_strongly_typed():
    params = NF(dist.Dirichlet, (2,), (3,)).init(jax.random.key(0))
    assert params["concentration"].shape == (2, 3) and not params["concentration"].weak_type
    np.testing.assert_array_equal(params["concentration"], 0.0)  # concentration 1: uniform on the simplex
    uniform = NF(dist.Uniform)
    arguments = uniform.constrained_params(uniform.init(None))
    assert float(arguments["low"]) == 0.0 and float(arguments["high"]) == 1.0


def test_init_values_are_the_initial_arguments():
    family = NF(dist.Gamma, (2,), init={"concentration": 3.0, "rate": 0.5})
    params = family.init(jax.random.key(0))
    np.testing.assert_allclose(np.exp(params["concentration"]), 3.0, rtol=1e-6)  # positive: exp(u)
    np.testing.assert_allclose(np.exp(params["rate"]), 0.5, rtol=1e-6)
    uniform = NF(dist.Uniform, init={"low": 2.0, "high": 5.0})
    params = uniform.init(None)
    np.testing.assert_allclose([params["low"], np.exp(params["high"])], [2.0, 3.0], rtol=1e-6)  # log width
    beta = NF(dist.BernoulliProbs, init={"probs": 0.25}).init(None)
    np.testing.assert_allclose(expit(beta["probs"]), 0.25, rtol=1e-6)  # unit interval: logit


def test_init_spellings_normalise_to_one_family():
    a = NF(dist.Gamma, init={"rate": 2, "concentration": 3})
    b = NF(dist.Gamma, init=(("concentration", 3.0), ("rate", 2.0)))
    assert a == b and hash(a) == hash(b) and a.init_values == (("concentration", 3.0), ("rate", 2.0))
    assert NF(dist.Gamma, [2]) == NF(dist.Gamma, (2,)) != NF(dist.Gamma, (2,), init={"rate": 2.0})
    assert NF(dist.Gamma) != NF(dist.Exponential)


def test_uniform_keeps_low_below_high_for_any_parameters():
    family = NF(dist.Uniform, (1000,))
    rng = np.random.default_rng(0)
    # Widths exp(u) down to ~e^-8, still far above float32's spacing near |low| ~ 6.
    params = {name: jnp.asarray(2 * rng.standard_normal(1000), jnp.float32) for name in ("low", "high")}
    arguments = family.constrained_params(params)
    assert bool(jnp.all(arguments["high"] > arguments["low"]))
    z = fast_jit(family.sample)(params, jax.random.key(1))
    assert bool(jnp.all((z >= arguments["low"]) & (z <= arguments["high"])))
    # The scalar Uniform (paired with an Exponential in the registry): log q and entropy against scipy.
    scalar = NF(dist.Uniform, init={"low": -1.0, "high": 2.0})
    np.testing.assert_allclose(
        scalar.log_prob(scalar.init(None), 0.3), scipy.stats.uniform(-1, 3).logpdf(0.3)
    )
    np.testing.assert_allclose(scalar.entropy(scalar.init(None)), np.log(3.0), rtol=1e-6)


@pytest.mark.parametrize(
    ("family", "z"),
    [
        (NF(dist.LogNormal), 1.7),
        (NF(dist.Pareto, (2, 2)), [[1.4, 2.0], [3.0, 9.0]]),  # above scale = exp(0.3) = 1.35
        (NF(dist.Dirichlet, (2,), (3,)), [[0.2, 0.3, 0.5], [0.6, 0.1, 0.3]]),
        (NF(dist.Poisson, (3,)), [0, 2, 5]),
    ],
    ids=["lognormal_scalar", "pareto_2x2", "dirichlet_2xk3", "poisson_3"],
)
def test_factor_log_prob_has_one_term_per_factor_and_sums_to_log_prob(family, z):
    # A scalar LogNormal is a TransformedDistribution with a `base_dist` of its own: the factors
    # must be its own density, not its base Normal's.
    params = jax.tree.map(lambda x: x + 0.3, family.init(None))
    factors, log_prob = fast_jit(lambda z: (family.factor_log_prob(params, z), family.log_prob(params, z)))(
        jnp.asarray(z)
    )
    assert factors.shape == family.shape and family.factor_dims == len(family.shape)
    np.testing.assert_allclose(jnp.sum(factors), log_prob, rtol=1e-6)
    # Each factor's own density, from the registry's scipy oracles (closed form for the Dirichlet).
    if family.dist_type is dist.Dirichlet:
        alpha = np.exp(np.asarray(params["concentration"], np.float64))
        expected = np.sum((alpha - 1) * np.log(z), -1) + gammaln(alpha.sum(-1)) - gammaln(alpha).sum(-1)
    else:
        marginal = scipy_distribution(family, params)
        expected = marginal.logpmf(z) if family.dist_type is dist.Poisson else marginal.logpdf(z)
    np.testing.assert_allclose(factors, expected, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------------
# Construction errors say what is wrong.

BAD_CONSTRUCTIONS = [
    ("instance", lambda: NF(dist.Gamma(1.0, 1.0)), TypeError, "the class, not an instance"),
    ("factory_function", lambda: NF(dist.Bernoulli), TypeError, "not the function Bernoulli"),
    ("not_a_distribution", lambda: NF(int), TypeError, "must be a numpyro distribution class"),
    ("negative_shape", lambda: NF(dist.Gamma, (-1,)), ValueError, "non-negative"),
    ("bad_event_shape", lambda: NF(dist.Gamma, event_shape=(2.5,)), TypeError, "tuple of ints"),
    ("dirichlet_without_event_shape", lambda: NF(dist.Dirichlet), ValueError, "event_shape=(K,)"),
    ("event_shape_on_univariate", lambda: NF(dist.Normal, (), (3,)), ValueError, "use shape for independent"),
    (
        "unknown_init_name",
        lambda: NF(dist.Gamma, init={"scale": 1.0}),
        ValueError,
        "['scale'], which are not",
    ),
    ("init_outside_support", lambda: NF(dist.Gamma, init={"rate": -1.0}), ValueError, "'rate' must lie in"),
    (
        "uniform_high_below_low",
        lambda: NF(dist.Uniform, init={"low": 2.0, "high": 1.0}),
        ValueError,
        "above low",
    ),
    ("init_not_a_number", lambda: NF(dist.Gamma, init={"rate": "2"}), TypeError, "(str, finite float)"),
    ("init_nan", lambda: NF(dist.Gamma, init={"rate": float("nan")}), TypeError, "(str, finite float)"),
    ("init_not_pairs", lambda: NF(dist.Gamma, init=3.0), TypeError, "dict or tuple of (name, value)"),
    ("init_twice", lambda: NF(dist.Gamma, init=(("rate", 1.0), ("rate", 2.0))), ValueError, "argument twice"),
    ("dependent_argument", lambda: NF(dist.Delta), ValueError, "argument 'v' has a constraint that depends"),
    ("integer_argument", lambda: NF(dist.BinomialProbs), ValueError, "argument 'total_count' has constraint"),
    ("unbuildable", lambda: NF(dist.MultivariateNormal, (), (2,)), ValueError, "numpyro cannot build it"),
]


@pytest.mark.parametrize(
    ("build", "error", "match"), [b[1:] for b in BAD_CONSTRUCTIONS], ids=[b[0] for b in BAD_CONSTRUCTIONS]
)
def test_bad_constructor_arguments_raise_clear_errors(build, error, match):
    with pytest.raises(error, match=re.escape(match)):
        build()


# --------------------------------------------------------------------------------------------------
# Fits: with the target in the family, the ELBO's optimum is q = p.


STICKING_THE_LANDING = bbvi.Estimator("reparam", entropy="stl")


def _fit(log_joint, family, estimator=STICKING_THE_LANDING, num_steps=1500):
    # Sticking the landing: at q = p the gradient of every sample vanishes, so the fit converges to
    # the target itself rather than jittering around it; what is left is optimisation error.
    return bbvi.fit(
        log_joint,
        family,
        key=jax.random.key(3),
        num_steps=num_steps,
        optimizer=optax.adam(optax.exponential_decay(5e-2, num_steps, 0.02)),
        estimator=estimator,
        num_samples=16,
        progress_bar=False,
    )


@pytest.mark.slow
def test_fit_recovers_a_gamma_target():
    concentration, rate = 3.0, 2.0

    def log_joint(z):  # unnormalised Gamma(3, 2) log-density
        return (concentration - 1) * jnp.log(z) - rate * z

    family = NF(dist.Gamma)
    fitted = family.constrained_params(_fit(log_joint, family).params)
    # With sticking the landing the fit reaches the target to ~1e-6; 1e-3 leaves room for the optimiser
    # while any bias in the (implicit) pathwise gradient would move the optimum by far more.
    np.testing.assert_allclose([fitted["concentration"], fitted["rate"]], [concentration, rate], rtol=1e-3)


@pytest.mark.slow
def test_fit_recovers_a_dirichlet_target():
    alpha = jnp.array([2.0, 5.0, 3.0])

    def log_joint(z):  # unnormalised Dirichlet(2, 5, 3) log-density on the simplex
        return jnp.sum((alpha - 1) * jnp.log(z))

    family = NF(dist.Dirichlet, event_shape=(3,))
    fitted = family.constrained_params(_fit(log_joint, family).params)
    np.testing.assert_allclose(fitted["concentration"], alpha, rtol=1e-3)  # as for the Gamma


@pytest.mark.slow
def test_fit_recovers_a_poisson_target_by_score_function_gradients():
    rate = jnp.array([4.0, 0.5])

    def log_joint(z):  # unnormalised Poisson log-probabilities
        return jnp.sum(z * jnp.log(rate) - jax_gammaln(z + 1.0))

    family = NF(dist.Poisson, (2,))
    assert not family.reparameterized  # "auto" gives it score-function gradients
    fitted = family.constrained_params(_fit(log_joint, family, estimator="auto").params)
    # At q = p every sample's log p - log q is the same constant, so the leave-one-out baseline
    # cancels the score-function noise exactly there: the fit converges as tightly as the pathwise ones.
    np.testing.assert_allclose(fitted["rate"], rate, rtol=1e-3)
