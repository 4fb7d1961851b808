"""`from_numpyro`: the log-joint against hand-computed densities and Jacobians, a conjugate fit
against its exact posterior, draws by site name on the supports, and the errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

import bbvi
from bbvi.interop.numpyro_model import NumpyroModel, from_numpyro

Y = np.array([0.8, 1.9, 0.4])


def expit(x):
    return 1.0 / (1.0 + np.exp(-x))


def mixed_supports(y):
    """A positive, a unit-interval and an interval-bounded site."""
    s = numpyro.sample("s", dist.HalfNormal(2.0))
    p = numpyro.sample("p", dist.Beta(2.0, 3.0))
    u = numpyro.sample("u", dist.Uniform(-1.0, 3.0))
    numpyro.sample("y", dist.Normal(2.0 * p + u, s), obs=y)


def hand_log_joint(a, b, c):
    """log p(s, p, u, y) + log|d(s, p, u)/d(a, b, c)| in float64, written out by hand.

    s = exp(a); p = sigmoid(b); u = -1 + 4 sigmoid(c).
    """
    s, p, u = np.exp(a), expit(b), -1.0 + 4.0 * expit(c)
    log_half_normal = 0.5 * np.log(2.0 / np.pi) - np.log(2.0) - s**2 / 8.0
    log_beta = np.log(12.0) + np.log(p) + 2.0 * np.log1p(-p)  # Gamma(5) / (Gamma(2) Gamma(3)) = 12
    log_uniform = -np.log(4.0)
    loc = 2.0 * p + u
    log_lik = np.sum(-0.5 * np.log(2.0 * np.pi) - np.log(s) - 0.5 * ((Y - loc) / s) ** 2)
    log_jac = a + (np.log(expit(b)) + np.log(expit(-b)))
    log_jac += np.log(4.0) + np.log(expit(c)) + np.log(expit(-c))
    return log_half_normal + log_beta + log_uniform + log_lik + log_jac


POINTS = np.array([(0.0, 0.0, 0.0), (0.7, -1.3, 2.1), (-1.5, 2.4, -0.6)], np.float32)


def test_log_joint_is_density_plus_log_jacobian():
    m = from_numpyro(mixed_supports, jnp.asarray(Y))
    z = {"s": POINTS[:, 0], "p": POINTS[:, 1], "u": POINTS[:, 2]}
    expected = [hand_log_joint(*point) for point in POINTS.astype(np.float64)]
    # float32 evaluation of a sum of O(10) terms of size O(1-10): a few ulps of 10 each.
    np.testing.assert_allclose(jax.jit(jax.vmap(m.log_joint))(z), expected, rtol=2e-6, atol=1e-5)
    flat = m.ravel(z)  # the flat vectors a full-rank family draws: sites in execution order
    np.testing.assert_array_equal(flat, POINTS)
    np.testing.assert_allclose(jax.jit(jax.vmap(m.log_joint))(flat), expected, rtol=2e-6, atol=1e-5)


def test_model_facts():
    m = from_numpyro(mixed_supports, y=jnp.asarray(Y))
    assert isinstance(m, NumpyroModel)
    assert m.latent_shapes == {"s": (), "p": (), "u": ()}
    assert list(m.family) == ["s", "p", "u"]  # execution order
    assert m.family == {name: bbvi.MeanFieldGaussian(()) for name in ("s", "p", "u")}
    assert m.full_rank_family() == bbvi.FullRankGaussian(3)
    np.testing.assert_array_equal(m.observed()["y"], Y.astype(np.float32))
    assert hash(m) == hash(m) and m.log_joint is m.log_joint  # one function: fits share a program


# --- a conjugate fit against the exact posterior -------------------------------------------------

PRIOR_LOC, PRIOR_SCALE, NOISE = 1.0, 2.0, 1.0
DATA = np.random.default_rng(0).normal([0.5, -1.5], NOISE, size=(10, 2)).astype(np.float32)
POST_PRECISION = 1 / PRIOR_SCALE**2 + DATA.shape[0] / NOISE**2
POST_MEAN = (PRIOR_LOC / PRIOR_SCALE**2 + DATA.sum(0) / NOISE**2) / POST_PRECISION
POST_SD = np.full(2, POST_PRECISION**-0.5)


def normal_normal(y):
    mu = numpyro.sample("mu", dist.Normal(PRIOR_LOC, PRIOR_SCALE).expand([2]).to_event(1))
    with numpyro.plate("n", y.shape[0]):
        numpyro.sample("y", dist.Normal(mu, NOISE).to_event(1), obs=y)


NUM_FITS, NUM_STEPS, NUM_DRAWS = 8, 1000, 4000


@pytest.fixture(scope="module")
def conjugate():
    m = from_numpyro(normal_normal, jnp.asarray(DATA))
    fits = jax.vmap(
        lambda key: bbvi.fit(m.log_joint, m.family, key=key, num_steps=NUM_STEPS, progress_bar=False)
    )(jax.random.split(jax.random.key(0), NUM_FITS))
    return m, fits


@pytest.mark.slow
def test_conjugate_fit_recovers_exact_posterior(conjugate):
    m, fits = conjugate
    # A mean-field Gaussian contains this posterior (independent Normals), so the ELBO's optimum is
    # exact and what remains is the fit's noise: its sd is measured across NUM_FITS fits with
    # independent keys, and their mean must be within 5 standard errors of the exact answer.
    loc = np.asarray(fits.params["mu"]["loc"])
    scale = np.exp(np.asarray(fits.params["mu"]["log_scale"]))
    for fitted, exact in ((loc, POST_MEAN), (scale, POST_SD)):
        se = fitted.std(0, ddof=1) / np.sqrt(NUM_FITS)
        assert np.all(np.abs(fitted.mean(0) - exact) < 5 * se + 1e-6), (fitted, exact)

    # One fit's draws, by site name: their mean and sd err by that fit's deviation (sd measured
    # above) plus the Monte Carlo error of NUM_DRAWS draws (sd / sqrt(n) for the mean,
    # sd / sqrt(2 n) for the sd of a Normal sample); 5 of those combined standard errors.
    first = jax.tree.map(lambda x: x[0], fits)
    draws = m.sample(first, jax.random.key(1), NUM_DRAWS)
    assert set(draws) == {"mu"} and draws["mu"].shape == (NUM_DRAWS, 2)
    mu = np.asarray(draws["mu"], np.float64)
    tol_mean = 5 * np.sqrt(loc.std(0, ddof=1) ** 2 + POST_SD**2 / NUM_DRAWS)
    tol_sd = 5 * np.sqrt(scale.std(0, ddof=1) ** 2 + POST_SD**2 / (2 * NUM_DRAWS))
    assert np.all(np.abs(mu.mean(0) - POST_MEAN) < tol_mean), (mu.mean(0), POST_MEAN, tol_mean)
    assert np.all(np.abs(mu.std(0, ddof=1) - POST_SD) < tol_sd), (mu.std(0), POST_SD, tol_sd)


# --- draws by site name, on the supports ---------------------------------------------------------


def vector_sites(y):
    s = numpyro.sample("s", dist.Exponential(1.0).expand([3]).to_event(1))  # positive, (3,)
    p = numpyro.sample("p", dist.Beta(2.0, 2.0))  # (0, 1)
    w = numpyro.sample("w", dist.Dirichlet(jnp.ones(3)))  # simplex: 2 unconstrained coordinates
    u = numpyro.sample("u", dist.Uniform(-1.0, 3.0))
    total = numpyro.deterministic("total", s.sum())
    numpyro.sample("y", dist.Normal(total + p + u + w[0], 1.0), obs=y)


class _Fitted:
    """What `NumpyroModel.sample` reads of a `FitResult`: the family and its parameters."""

    def __init__(self, family, params):
        self.family, self.params = family, params


def test_draws_by_site_on_supports():
    m = from_numpyro(vector_sites, jnp.float32(2.0))
    assert m.latent_shapes == {"s": (3,), "p": (), "w": (2,), "u": ()}
    assert m.dim == 7
    # Spread-out q, so the draws reach towards the edges of each support.
    params = {
        name: {"loc": jnp.full(shape, 0.3), "log_scale": jnp.full(shape, 0.5)}
        for name, shape in m.latent_shapes.items()
    }
    n = 200
    draws = m.sample(_Fitted(m.family, params), jax.random.key(1), n)
    assert set(draws) == {"s", "p", "w", "u", "total"}
    shapes = {name: value.shape for name, value in draws.items()}
    assert shapes == {"s": (n, 3), "p": (n,), "w": (n, 3), "u": (n,), "total": (n,)}
    assert np.all(draws["s"] > 0)
    assert np.all((draws["p"] > 0) & (draws["p"] < 1))
    assert np.all(draws["w"] > 0)
    np.testing.assert_allclose(draws["w"].sum(-1), 1.0, rtol=1e-6)
    assert np.all((draws["u"] > -1) & (draws["u"] < 3))
    np.testing.assert_allclose(draws["total"], draws["s"].sum(-1), rtol=1e-6)


def test_constrain_maps_each_site_through_its_bijection():
    m = from_numpyro(vector_sites, jnp.float32(2.0))
    rng = np.random.default_rng(1)
    z = {name: rng.normal(size=(2, 3, *shape)).astype(np.float32) for name, shape in m.latent_shapes.items()}
    grid = m.constrain(z, deterministic=True)  # any leading batch shape: here (2, 3)
    assert {name: value.shape for name, value in grid.items()} == {
        "s": (2, 3, 3),
        "p": (2, 3),
        "w": (2, 3, 3),
        "u": (2, 3),
        "total": (2, 3),
    }
    np.testing.assert_allclose(grid["s"], np.exp(z["s"]), rtol=1e-6)
    np.testing.assert_allclose(grid["p"], expit(z["p"]), rtol=1e-6)
    np.testing.assert_allclose(grid["u"], -1 + 4 * expit(z["u"]), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(grid["w"].sum(-1), 1.0, rtol=1e-6)
    # The flat layout (what a full-rank family draws) round-trips and constrains alike.
    flat = m.ravel(z)
    assert flat.shape == (2, 3, 7)
    np.testing.assert_array_equal(flat[..., :3], z["s"])  # sites in execution order: s, p, w, u
    for name in z:
        np.testing.assert_array_equal(m.unravel(flat)[name], z[name])
    np.testing.assert_allclose(m.constrain(flat)["w"], grid["w"], rtol=1e-6)


@pytest.mark.slow
def test_full_rank_fit_and_refit_without_recompiling():
    m = from_numpyro(mixed_supports, jnp.asarray(Y))
    run = lambda seed: bbvi.fit(
        m.log_joint, m.full_rank_family(), key=jax.random.key(seed), num_steps=5, progress_bar=False
    )
    result = run(0)
    draws = m.sample(result, jax.random.key(1), 10)
    assert {name: value.shape for name, value in draws.items()} == {"s": (10,), "p": (10,), "u": (10,)}
    assert np.all(draws["s"] > 0) and np.all((draws["p"] > 0) & (draws["p"] < 1))
    # They are q's draws for the same key, mapped onto the supports.
    z = jax.jit(result.sample, static_argnums=1)(jax.random.key(1), 10)
    np.testing.assert_allclose(draws["s"], np.exp(z[:, 0]), rtol=1e-6)

    # m.log_joint is one function: a second fit (and draw) reuses the compiled programs.
    compiles = []
    listener = lambda event, duration, **kwargs: compiles.append(event)
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        m.sample(run(1), jax.random.key(2), 10)
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert "/jax/core/compile/backend_compile_duration" not in compiles


# --- errors, before anything compiles --------------------------------------------------------------


def discrete(y):
    c = numpyro.sample("c", dist.Bernoulli(0.5))
    numpyro.sample("y", dist.Normal(c, 1.0), obs=y)


def all_observed(y):
    numpyro.sample("y", dist.Normal(0.0, 1.0), obs=y)


def subsampled(y):
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    with numpyro.plate("n", 100, subsample_size=10):
        numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)


def with_param(y):
    scale = numpyro.param("scale", 1.0)
    mu = numpyro.sample("mu", dist.Normal(0.0, scale))
    numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)


def broken(y):
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    numpyro.sample("y", dist.Normal(mu, 1.0), obs=y @ jnp.ones(5))  # y is a scalar


@pytest.mark.parametrize(
    "model, error, match",
    [
        (discrete, ValueError, r"discrete latent sites \{'c': 'BernoulliProbs'\}.*marginalise"),
        (all_observed, ValueError, "no latent sample sites"),
        (subsampled, ValueError, r"subsamples in plate\(s\) \['n'\].*Subsampled"),
        (with_param, ValueError, r"numpyro.param sites \['scale'\]"),
        ("not a model", TypeError, "model must be a callable"),
    ],
    ids=["discrete", "no-latents", "subsample", "param", "not-callable"],
)
def test_clear_errors(model, error, match):
    with pytest.raises(error, match=match):
        from_numpyro(model, jnp.float32(0.5))


def test_model_that_fails_to_trace_says_so():
    with pytest.raises(ValueError, match="matmul") as info:
        from_numpyro(broken, jnp.float32(0.5))
    assert any("from_numpyro traced the model" in note for note in info.value.__notes__)


def test_latents_that_do_not_match_the_model():
    m = from_numpyro(mixed_supports, jnp.asarray(Y))
    with pytest.raises(ValueError, match=r"keys \['p', 's'\], expected .*\['p', 's', 'u'\]"):
        m.log_joint({"s": 0.0, "p": 0.0})
    with pytest.raises(ValueError, match=r"'u' has shape \(2,\), expected the unconstrained shape \(\)"):
        m.log_joint({"s": 0.0, "p": 0.0, "u": jnp.zeros(2)})
    with pytest.raises(ValueError, match="flat vector of length 3"):
        m.log_joint(jnp.zeros(4))
    with pytest.raises(ValueError, match=r"latents .* match|fails|shape"):
        bbvi.fit(
            m.log_joint, bbvi.MeanFieldGaussian((4,)), key=jax.random.key(0), num_steps=1, progress_bar=False
        )
