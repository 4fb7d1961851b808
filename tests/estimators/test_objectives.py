"""The objectives (ELBO, IWAE, Renyi) and the relaxed estimator, against exact or hand-made values.

- Each objective's reduction of log-weights and masses, and its DReG coefficients, by hand in float64.
- The importance-weighted bound increases with K towards the exact log evidence of a conjugate
  model and never passes it; every Renyi bound with alpha in (0, 1) lies between the ELBO and the
  IWAE bound draw by draw; at K = 1 the IWAE bound is the ELBO.
- The relaxed (concrete) estimator is biased by design: it is unbiased for the relaxed objective
  (computed exactly by quadrature), and its bias for the ELBO gradient shrinks as the temperature
  falls while its variance grows.
- Options that cannot work together fail with a clear error before the log-joint is traced.

Tolerances are standard errors over independent keys (fixed, so each run is deterministic).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
import scipy.integrate
import scipy.special
import scipy.stats

import bbvi
from bbvi.models import linear_regression

from ..families._helpers import assert_mc_close
from ._helpers import monte_carlo_many, total_variance

# --- the reductions by hand ------------------------------------------------------------------------


def _hand_made_points(seed: int):
    """Log-weights and log-masses of 3 samples x 2 points (a two-component mixture's draws)."""
    rng = np.random.default_rng(seed)
    log_w = rng.normal(size=(3, 2)) * 2.0 - 1.0
    weights = np.array([0.3, 0.7])
    return log_w, np.log(np.broadcast_to(weights / 3, (3, 2)))


@pytest.mark.parametrize("alpha", [0.0, 0.25, 0.5, -1.0, 2.0])
def test_renyi_reduction_and_dreg_coefficients_by_hand(alpha):
    log_w, log_mass = _hand_made_points(0)
    mass = np.exp(log_mass)
    objective = bbvi.IWAE() if alpha == 0 else bbvi.Renyi(alpha)
    expected = np.log(np.sum(mass * np.exp((1 - alpha) * log_w))) / (1 - alpha)
    value = objective(jnp.asarray(log_w, jnp.float32), jnp.asarray(log_mass, jnp.float32))
    np.testing.assert_allclose(value, expected, rtol=1e-5)
    # DReG (Tucker et al. 2019): alpha v + (1 - alpha) v^2, v the normalised (tempered) weights.
    v = mass * np.exp((1 - alpha) * log_w)
    v /= v.sum()
    coefficients = objective.dreg_weights(jnp.asarray(log_w, jnp.float32), jnp.asarray(log_mass, jnp.float32))
    np.testing.assert_allclose(coefficients, alpha * v + (1 - alpha) * v**2, rtol=1e-5, atol=1e-7)


def test_elbo_reduction_and_dreg_coefficients_by_hand():
    log_w, log_mass = _hand_made_points(1)
    value = bbvi.ELBO()(jnp.asarray(log_w), jnp.asarray(log_mass))
    np.testing.assert_allclose(value, np.sum(np.exp(log_mass) * log_w), rtol=1e-5)
    # The ELBO's path derivative weights each point by its mass (sticking the landing).
    np.testing.assert_allclose(bbvi.ELBO().dreg_weights(log_w, log_mass), np.exp(log_mass), rtol=1e-6)


def test_iwae_is_renyi_at_zero_and_renyi_tends_to_the_elbo():
    log_w, log_mass = (jnp.asarray(x, jnp.float32) for x in _hand_made_points(2))
    np.testing.assert_allclose(bbvi.IWAE()(log_w, log_mass), bbvi.Renyi(0.0)(log_w, log_mass), rtol=1e-6)
    assert bbvi.IWAE().linear is False and bbvi.ELBO().linear is True
    # Renyi(alpha) = ELBO + (1 - alpha) / 2 * Var_mass(w) + O((1 - alpha)^2): at 1 - alpha = 1e-3
    # the gap is below 1e-3 * Var, and on the right side.
    mass, w = np.exp(np.asarray(log_mass, np.float64)), np.asarray(log_w, np.float64)
    variance = np.sum(mass * (w - np.sum(mass * w)) ** 2)
    elbo = float(bbvi.ELBO()(log_w, log_mass))
    near = float(bbvi.Renyi(0.999)(log_w, log_mass))
    assert elbo <= near <= elbo + 1e-3 * variance + 1e-4


# --- the bounds on a conjugate model with a known evidence -----------------------------------------

REGRESSION = linear_regression.simulate(seed=1, num_data=20, dim=2)
LOG_EVIDENCE = float(linear_regression.log_evidence(REGRESSION))
BOUND_KEYS = 20_000


def _mean_field_optimum():
    """The mean-field optimum: the posterior mean, sds 1 / sqrt(diag(precision)), and its KL gap."""
    mean, cov = (np.asarray(x, np.float64) for x in linear_regression.exact_posterior(REGRESSION))
    sd = 1.0 / np.sqrt(np.diag(np.linalg.inv(cov)))
    # KL(q || posterior) for Gaussians with equal means: (tr(S^-1 Q) - d + log det S - log det Q) / 2.
    kl = 0.5 * (
        np.trace(np.linalg.solve(cov, np.diag(sd**2))) - 2 + np.linalg.slogdet(cov)[1] - 2 * np.log(sd).sum()
    )
    params = {"loc": jnp.asarray(mean, jnp.float32), "log_scale": jnp.log(jnp.asarray(sd, jnp.float32))}
    return params, kl


def _bounds(specs, num_keys: int, same_key: bool = False, key: int = 0) -> list[np.ndarray]:
    """Monte Carlo draws `(num_keys, 1 + D)` of (objective, num_samples, entropy) estimators at the
    mean-field optimum, compiled as one program."""
    params, _ = _mean_field_optimum()
    value_and_grads = [
        bbvi.elbo_value_and_grad(
            linear_regression.log_joint_fn(REGRESSION),
            bbvi.MeanFieldGaussian((2,)),
            estimator=bbvi.Estimator("reparam", entropy),
            objective=objective,
            num_samples=num_samples,
        )
        for objective, num_samples, entropy in specs
    ]
    return monte_carlo_many(value_and_grads, params, jax.random.key(key), num_keys, same_key)


@pytest.mark.slow
def test_iwae_bound_increases_with_k_towards_the_log_evidence():
    _, kl = _mean_field_optimum()
    ks = (1, 2, 8, 32)
    values = [draws[:, 0] for draws in _bounds([("iwae", k, "mc") for k in ks], BOUND_KEYS)]
    means = {k: v.mean() for k, v in zip(ks, values)}
    ses = {k: v.std(ddof=1) / np.sqrt(v.size) for k, v in zip(ks, values)}
    gaps = {k: LOG_EVIDENCE - means[k] for k in means}
    # At K = 1 it is the ELBO of the mean-field optimum: log p(y) - KL(q || posterior), here 0.13.
    assert abs(gaps[1] - kl) < 5 * ses[1], (gaps[1], kl, ses[1])
    # Each step up in K raises the bound by more than 5 standard errors of the difference (measured
    # steps 0.05, 0.05, 0.02 nats against standard errors of 0.004 or less; independent keys).
    for small, large in [(1, 2), (2, 8), (8, 32)]:
        assert means[large] - means[small] > 5 * np.hypot(ses[small], ses[large]), (small, large, gaps)
    # Always below the evidence (the gap at K = 32, 0.008, is 8 standard errors), and approaching it:
    # the K = 32 gap is under a quarter of the ELBO's (measured 0.06 of it).
    for k in means:
        assert gaps[k] > 5 * ses[k], (k, gaps)
    assert gaps[32] + 5 * ses[32] < 0.25 * (gaps[1] - 5 * ses[1]), gaps


def test_renyi_lies_between_elbo_and_iwae_draw_by_draw():
    # The same key gives the same draws whatever the objective, so the bounds compare per draw:
    # the power mean M_t(e^w)^(1/t) increases with t = 1 - alpha, from the geometric mean (ELBO).
    objectives = ["elbo", bbvi.Renyi(0.75), bbvi.Renyi(0.5), bbvi.Renyi(0.25), "iwae"]
    values = [draws[:, 0] for draws in _bounds([(o, 8, "mc") for o in objectives], 500, same_key=True)]
    rounding = 1e-5 * np.abs(values[0]).max()
    for lower, upper in zip(values, values[1:]):
        assert np.all(lower <= upper + rounding)
    assert np.all(values[-1] - values[0] > 1e-3)  # strictly apart: the sandwich is not vacuous


def test_iwae_with_one_sample_is_the_elbo():
    specs = [("elbo", 1, "mc"), (bbvi.IWAE(), 1, "mc"), ("elbo", 1, "analytic")]
    elbo, iwae, analytic = _bounds(specs, 4000, same_key=True)
    # Draw by draw with a Monte Carlo entropy: the same integrand, the same gradient.
    np.testing.assert_allclose(iwae, elbo, rtol=1e-5, atol=1e-5)
    # With the closed-form entropy the value differs draw by draw (the entropy replaces -log q) but
    # not in expectation, paired over the same draws. (For a location-scale q the reparameterised
    # gradient of -log q is the entropy's gradient draw by draw, so the gradients agree exactly.)
    np.testing.assert_allclose(analytic[:, 1:], iwae[:, 1:], rtol=1e-4, atol=1e-5)
    assert np.std(analytic[:, 0] - iwae[:, 0]) > 0.1
    assert_mc_close(analytic[:, :1] - iwae[:, :1], np.zeros(1), "ELBO (analytic entropy) - IWAE at K = 1")


# --- the relaxed estimator -------------------------------------------------------------------------

RELAXED_A = np.array([1.5, -2.0, 0.8])
RELAXED_B = 2.5
RELAXED_LOGITS = np.array([0.5, -1.0, 1.2])
TEMPERATURES = (1.0, 0.5, 0.1)
RELAXED_KEYS = 50_000


def _multilinear(z):
    """log p(z) = a.z + b z_0 z_1 - 1: defined on [0, 1]^3, so it accepts relaxed draws."""
    return jnp.asarray(RELAXED_A, jnp.float32) @ z + RELAXED_B * z[0] * z[1] - 1.0


def _relaxed_moments(temperature: float) -> tuple[np.ndarray, np.ndarray]:
    """m = E[sigmoid((l + L) / t)] over logistic L, and dm/dl, by adaptive quadrature in float64."""
    density = scipy.stats.logistic.pdf
    means, slopes = [], []
    for logit in RELAXED_LOGITS:

        def relaxed(x, logit=logit):
            return scipy.special.expit((logit + x) / temperature)

        means.append(
            scipy.integrate.quad(lambda x: relaxed(x) * density(x), -np.inf, np.inf, epsabs=1e-13)[0]
        )
        slope = scipy.integrate.quad(
            lambda x: relaxed(x) * (1 - relaxed(x)) / temperature * density(x), -np.inf, np.inf, epsabs=1e-13
        )[0]
        slopes.append(slope)
    return np.array(means), np.array(slopes)


def _value_and_gradient(means, slopes) -> np.ndarray:
    """E[log p] + H[q] at independent means m (multilinear: E[z_0 z_1] = m_0 m_1), and its gradient
    in the logits given dm/dl; H is the Bernoulli q's entropy, whose gradient is -l p (1 - p)."""
    p = scipy.special.expit(RELAXED_LOGITS)
    entropy = -np.sum(p * np.log(p) + (1 - p) * np.log1p(-p))
    value = RELAXED_A @ means + RELAXED_B * means[0] * means[1] - 1.0 + entropy
    grad = RELAXED_A * slopes - RELAXED_LOGITS * p * (1 - p)
    grad[0] += RELAXED_B * means[1] * slopes[0]
    grad[1] += RELAXED_B * means[0] * slopes[1]
    return np.concatenate([[value], grad])


@pytest.mark.slow
def test_relaxed_bias_shrinks_and_variance_grows_as_the_temperature_falls():
    p = scipy.special.expit(RELAXED_LOGITS)
    exact = _value_and_gradient(p, p * (1 - p))  # the ELBO and its gradient for the discrete q
    family = bbvi.Bernoulli((3,))
    params = {"logits": jnp.asarray(RELAXED_LOGITS, jnp.float32)}
    value_and_grads = [
        bbvi.elbo_value_and_grad(
            _multilinear, family, estimator=bbvi.Estimator("relaxed", temperature=t), num_samples=1
        )
        for t in TEMPERATURES
    ]
    draws = dict(
        zip(TEMPERATURES, monte_carlo_many(value_and_grads, params, jax.random.key(7), RELAXED_KEYS))
    )
    relaxed = {t: _value_and_gradient(*_relaxed_moments(t)) for t in TEMPERATURES}
    for t in TEMPERATURES:
        # Unbiased for the relaxed objective (its documented bias and nothing else).
        assert_mc_close(draws[t], relaxed[t], f"relaxed estimator at temperature {t}")

    # The exact bias of the gradient (0.13, 0.05, 0.003 in norm) shrinks with the temperature.
    bias = {t: np.linalg.norm(relaxed[t][1:] - exact[1:]) for t in TEMPERATURES}
    assert bias[1.0] > bias[0.5] > bias[0.1], bias
    # So does the measured bias, each step by more than 5 standard errors: the estimates projected
    # on a fixed direction (the exact bias at temperature 1), against the exact gradient.
    direction = (relaxed[1.0][1:] - exact[1:]) / bias[1.0]
    projected = {t: draws[t][:, 1:] @ direction - exact[1:] @ direction for t in TEMPERATURES}
    for high, low in zip(TEMPERATURES, TEMPERATURES[1:]):
        se = np.hypot(*(projected[t].std(ddof=1) / np.sqrt(RELAXED_KEYS) for t in (high, low)))
        assert projected[high].mean() - projected[low].mean() > 5 * se, (high, low, se)
    # The variance grows as the temperature falls (measured 0.07, 0.29, 2.6: each step over 4x; from
    # 50,000 draws with kurtosis below 30 each total variance is known to within about 3%).
    variances = [total_variance(draws[t][:, 1:]) for t in TEMPERATURES]
    assert variances[1] > 2 * variances[0] and variances[2] > 2 * variances[1], variances


# --- options that cannot work together --------------------------------------------------------------


def _calls_recorded():
    calls = []

    def log_joint(z):
        calls.append(z)
        return jnp.sum(jnp.asarray(jax.tree.leaves(z)[0], jnp.float32))

    return calls, log_joint


GAUSSIAN, BERNOULLI = bbvi.MeanFieldGaussian((2,)), bbvi.Bernoulli((2,))


@pytest.mark.parametrize(
    ("family", "options", "match"),
    [
        (GAUSSIAN, {"estimator": bbvi.Estimator("reparam", "stl"), "objective": "iwae"}, "stl.*dreg"),
        (GAUSSIAN, {"estimator": bbvi.Estimator("reparam", "stl"), "objective": bbvi.Renyi(0.5)}, "stl"),
        (BERNOULLI, {"estimator": "score", "control_variate": "optimal", "objective": "iwae"}, "optimal"),
        (BERNOULLI, {"estimator": "score", "control_variate": "rao_blackwell", "objective": "iwae"}, "rao"),
        (BERNOULLI, {"estimator": "relaxed", "objective": bbvi.Renyi(0.5)}, "relaxed"),
        (BERNOULLI, {"estimator": "score", "objective": "iwae", "num_samples": 1}, "num_samples >= 2"),
        (BERNOULLI, {"objective": "IWAE"}, "unknown objective"),
        (BERNOULLI, {"objective": "renyi"}, "unknown objective"),
        (
            bbvi.GaussianMixture(2, 2),
            {"estimator": bbvi.Estimator("reparam", "dreg"), "objective": "iwae"},
            "dreg",
        ),
        (bbvi.Categorical((2,), 3), {"estimator": "relaxed"}, "relaxation"),
        (BERNOULLI, {"control_variate": bbvi.MovingAverage()}, "gradient_estimator"),
        ({"w": GAUSSIAN}, {"prior": {"v": dist.Normal()}}, "prior must match"),
    ],
    ids=[
        "stl-iwae",
        "stl-renyi",
        "optimal-iwae",
        "rao_blackwell-iwae",
        "relaxed-renyi",
        "score-iwae-one-sample",
        "objective-IWAE",
        "objective-renyi",
        "dreg-mixture",
        "relaxed-categorical",
        "moving-average-stateless",
        "prior-structure",
    ],
)
def test_incompatible_options_fail_before_tracing(family, options, match):
    calls, log_joint = _calls_recorded()
    options = {"num_samples": 4, **options}
    with pytest.raises(ValueError, match=match):
        bbvi.elbo_value_and_grad(log_joint, family, **options)
    assert calls == []


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda: bbvi.Renyi(1), ValueError, "alpha"),
        (lambda: bbvi.Renyi(1.0), ValueError, "alpha"),
        (lambda: bbvi.Renyi("0.5"), ValueError, "alpha"),
        (lambda: bbvi.IWAE(0.5), ValueError, "Renyi"),
        (lambda: bbvi.Estimator("relaxed", "mc"), ValueError, "analytic"),
        (lambda: bbvi.Estimator("reparam", temperature=0.5), ValueError, "temperature"),
        (lambda: bbvi.Estimator("relaxed", temperature=0.0), ValueError, "temperature"),
        (lambda: bbvi.MovingAverage(decay=1.0), ValueError, "decay"),
        (lambda: bbvi.elbo_value_and_grad(_multilinear, BERNOULLI, objective=3), TypeError, "objective"),
        (lambda: bbvi.elbo_value_and_grad(_multilinear, GAUSSIAN, prior=3.0), TypeError, "prior"),
    ],
    ids=[
        "renyi-1",
        "renyi-1.0",
        "renyi-str",
        "iwae-alpha",
        "relaxed-mc",
        "temperature-reparam",
        "temperature-zero",
        "decay-1",
        "objective-type",
        "prior-type",
    ],
)
def test_bad_objective_and_estimator_arguments(make, error, match):
    with pytest.raises(error, match=match):
        make()
