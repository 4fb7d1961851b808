"""The inverse autoregressive flow: its two log q paths, its start, its density and what a fit gains.

The shared contract (shapes, jit/vmap, keys, a float64 reference density and moments) runs on the
registry case in cases_flows.py; this module checks deeper flows against the same numpy oracles, in
float64 where the question is correctness rather than float32 conditioning.
"""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy.integrate import trapezoid

import bbvi
from bbvi.families.flows import InverseAutoregressiveFlow as IAF

from . import cases_flows
from ._helpers import assert_mc_close, fast_jit, random_params, reference_log_prob, reference_statistics

# Both parities of the layer count (an even count ends with a reversal), one and two hidden layers.
DEEP = {
    "d2_two_layers": lambda: IAF(2),
    "d3_three_layers_two_hidden": lambda: IAF(3, num_flows=3, hidden_dims=(6, 6)),
}
NUM = 512


def deep_cases():
    return pytest.mark.parametrize("make", list(DEEP.values()), ids=list(DEEP))


def params_for(family, seed: int, spread: float):
    """One set of random parameters: init moved by N(0, spread^2) in every coordinate."""
    return jax.tree.map(lambda x: x[0], random_params(family, jax.random.key(seed), 1, spread))


def draw(family, params, key, num=NUM):
    """`num` draws with their log q from the forward pass, and the same draws' log q by inversion."""

    @fast_jit
    def run(params, key):
        z, log_q = jax.vmap(family.sample_and_log_prob, (None, 0))(params, jax.random.split(key, num))
        inverse = jax.vmap(family.log_prob, (None, 0))(params, z)
        return z, log_q, inverse, jax.vmap(family.sample, (None, 0))(params, jax.random.split(key, num))

    z, forward, inverse, sampled = run(params, key)
    return np.asarray(z), np.asarray(forward), np.asarray(inverse), np.asarray(sampled)


@deep_cases()
def test_both_log_q_paths_match_the_oracle_in_float64(make):
    # At the registry's parameter spread, where float32 cannot pin the base point down (see
    # cases_flows.py), float64 shows what is exact: the forward pass's log q, the inverse's, and the
    # oracle's coordinate-by-coordinate numpy inverse agree. Float64 keeps 29 more bits than float32,
    # so the conditioning that costs float32 1.4e-2 at these parameters costs float64 ~1.4e-2 * 2^-29
    # ~ 3e-11 (measured 2e-11); the tolerance leaves 300 times that, a wrong term is off by O(1).
    family = make()
    params = params_for(family, 1, spread=0.75)
    with jax.enable_x64(True):
        params64 = jax.tree.map(lambda x: jnp.asarray(np.asarray(x, np.float64)), params)
        z, forward, inverse, sampled = draw(family, params64, jax.random.key(2))
        assert z.dtype == np.float64
    np.testing.assert_array_equal(z, sampled)  # sample_and_log_prob draws what sample draws
    reference = reference_log_prob(family, params64, z)
    np.testing.assert_allclose(forward, reference, rtol=0, atol=1e-8)
    np.testing.assert_allclose(inverse, reference, rtol=0, atol=1e-8)


def test_sample_and_log_prob_matches_log_prob_in_float32():
    # A moderate spread (what a fit reaches from its identity start) keeps the flow well conditioned,
    # so the forward pass, the inverse and the oracle agree to float32 precision: the registry's
    # tolerance for a handful of O(10) terms each rounded at ~1e-7 (measured: under 1e-5).
    family = DEEP["d3_three_layers_two_hidden"]()
    params = params_for(family, 3, spread=0.25)
    z, forward, inverse, sampled = draw(family, params, jax.random.key(4))
    np.testing.assert_array_equal(z, sampled)
    np.testing.assert_allclose(forward, inverse, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(forward, reference_log_prob(family, params, z), rtol=1e-5, atol=1e-4)


def test_at_init_q_is_the_base_gaussian():
    # Zero output layers make every flow layer the identity, and the final reversal undoes the one
    # between the layers: the draws, not only their distribution, are the base Gaussian's (the same
    # key, the same draws). An odd layer count, without the final reversal, is checked against the
    # oracle above.
    family, base = IAF(3, num_flows=2), bbvi.MeanFieldGaussian((3,))
    params = fast_jit(family.init)(jax.random.key(5))
    key = jax.random.key(6)
    z, forward, inverse, _ = draw(family, params, key, num=64)

    @fast_jit
    def base_draws(params, key):
        z = jax.vmap(base.sample, (None, 0))(params, jax.random.split(key, 64))
        return z, jax.vmap(base.log_prob, (None, 0))(params, z)

    expected_z, expected = base_draws(params["base"], key)
    # float32 log-densities of O(1): a few roundings apart at most.
    np.testing.assert_allclose(z, expected_z, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(forward, expected, rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(inverse, expected, rtol=1e-6, atol=1e-5)


def test_density_integrates_to_one_in_two_dimensions():
    # Independent of the oracles: only the family's own log_prob, on a grid. The box is the range of
    # 20,000 draws widened by half of it on every side: the mass beyond a sample's extremes is about
    # 1/n per side and coordinate (2e-4 in all), beyond the box far less. The trapezoid rule has
    # converged at this spacing (measured: 7e-8 off, the same at half and double the spacing),
    # while a missing Jacobian term or constant is off by O(1).
    family = IAF(2)
    params = params_for(family, 7, spread=0.25)
    z = np.asarray(fast_jit(lambda p, k: bbvi.sample(family, p, k, (20_000,)))(params, jax.random.key(8)))
    lo, hi = z.min(axis=0), z.max(axis=0)
    centre, half = (lo + hi) / 2, (hi - lo)
    axes = [np.linspace(c - h, c + h, 401) for c, h in zip(centre, half)]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 2)
    log_q = fast_jit(jax.vmap(family.log_prob, (None, 0)))(params, jnp.asarray(grid, jnp.float32))
    density = np.exp(np.asarray(log_q, np.float64)).reshape(401, 401)
    integral = trapezoid(trapezoid(density, axes[1], axis=1), axes[0])
    assert abs(integral - 1) < 1e-3, integral


@pytest.mark.slow
def test_moments_of_a_deep_flow_match_the_oracle():
    # The registry's moment check, on a three-layer flow at the registry's spread: sampling needs no
    # inverse, so float32 is accurate here. The oracle pushes a numpy base sample 50 times larger
    # through its own forward map (see cases_flows.reference_statistics).
    family = DEEP["d3_three_layers_two_hidden"]()
    params = params_for(family, 9, spread=0.75)
    z = fast_jit(lambda p, k: bbvi.sample(family, p, k, (20_000,)))(params, jax.random.key(10))
    stats, expected = reference_statistics(family, params)
    assert_mc_close(stats(np.asarray(z)), expected, "deep flow moments")


def test_pathwise_gradient_matches_finite_differences():
    # d/dt of a draw's functional along a random direction in parameter space, by autodiff and by
    # central differences in float64. Their truncation error falls as step^2 (measured 1e-5, 1e-7,
    # 1e-9 relative at steps 1e-3, 1e-4, 1e-5), so at 1e-5 the tolerance 1e-7 leaves a factor 100.
    # At this spread the log-scales stay inside numpyro's clip (measured within [-0.2, 0.35]), whose
    # straight-through gradient is not the derivative where it is active. The functional includes
    # log q of the draw, the ELBO's term.
    family = IAF(3, num_flows=2)
    with jax.enable_x64(True):
        params = jax.tree.map(lambda x: jnp.asarray(np.asarray(x, np.float64)), params_for(family, 11, 0.25))
        rng = np.random.default_rng(12)
        direction = jax.tree.map(lambda x: jnp.asarray(rng.standard_normal(x.shape)), params)
        weights = jnp.asarray(rng.standard_normal(3))
        keys = jax.random.split(jax.random.key(13), 8)

        def functional(t):
            p = jax.tree.map(lambda x, d: x + t * d, params, direction)
            z, log_q = jax.vmap(family.sample_and_log_prob, (None, 0))(p, keys)
            return jnp.sum(jnp.sin(z) @ weights) + jnp.sum(log_q)

        autodiff = float(fast_jit(jax.grad(functional))(0.0))
        step = 1e-5
        f_plus, f_minus = fast_jit(jax.vmap(functional))(jnp.array([step, -step]))
        numeric = (float(f_plus) - float(f_minus)) / (2 * step)
    assert abs(autodiff) > 1e-3  # the parameters do move the draws
    np.testing.assert_allclose(autodiff, numeric, rtol=1e-7)


# A banana: z1 ~ N(0, 1), z2 | z1 ~ N(z1^2 - 1, 0.5^2). Normalised, so the ELBO is -KL(q || p).
def banana_log_joint(z):
    return jax.scipy.stats.norm.logpdf(z[0]) + jax.scipy.stats.norm.logpdf(z[1], z[0] ** 2 - 1, 0.5)


@pytest.mark.slow
def test_fit_beats_mean_field_on_a_banana():
    last = 500
    traces = {}
    # One layer in the identity order is the banana's own structure (z2's shift and scale functions
    # of z1); it fits in 2000 steps from any of 8 keys tried (ELBO -0.16 to -0.29, mean field -0.55
    # to -0.58), where two layers, the second conditioning the other way, need about twice as many.
    flow = IAF(2, num_flows=1)
    for name, family in [("flow", flow), ("mean_field", bbvi.MeanFieldGaussian((2,)))]:
        result = bbvi.fit(
            banana_log_joint, family, key=jax.random.key(14), num_steps=2000, progress_bar=False
        )
        traces[name] = np.asarray(result.elbo[-last:], np.float64)
    # Per-step ELBO estimates are independent draws around a slowly moving mean: 4 standard errors of
    # the difference of the two averages. (Standard errors measured ~0.02.)
    se = np.hypot(*(t.std(ddof=1) / np.sqrt(last) for t in traces.values()))
    margin = traces["flow"].mean() - traces["mean_field"].mean()
    assert margin > 4 * se, (margin, se)
    assert traces["flow"].mean() < 4 * traces["flow"].std(ddof=1) / np.sqrt(last)  # an ELBO: <= log Z = 0


@pytest.mark.slow
def test_fit_recovers_a_correlated_gaussian():
    mean = np.array([1.0, -2.0])
    cov = np.array([[1.0, 0.4], [0.4, 0.25]])  # correlation 0.8: mean field would report 0 and 0.36

    def log_joint(z):
        return jax.scipy.stats.multivariate_normal.logpdf(z, mean, cov)

    num_steps = 2000
    optimizer = optax.adam(optax.cosine_decay_schedule(1e-2, num_steps))  # settle, do not jitter
    result = bbvi.fit(
        log_joint,
        IAF(2),
        key=jax.random.key(15),
        num_steps=num_steps,
        optimizer=optimizer,
        progress_bar=False,
    )
    n = 2000
    z = np.asarray(result.sample(jax.random.key(16), n), np.float64)
    rows, cols = np.tril_indices(2)
    centred = z - mean
    # Tolerance from the sample size: about 4.4 standard errors (0.1 on the first mean at n = 2000), well
    # above the fit's own error (measured ~0.02 with 200,000 draws) and well below mean field's
    # misses (0.4 on the covariance, 0.64 on the first variance).
    stats = np.concatenate([z, centred[:, rows] * centred[:, cols]], axis=1)
    assert_mc_close(stats, np.concatenate([mean, cov[rows, cols]]), "fitted flow vs target")


def test_flags_shapes_and_parameter_structure():
    family = IAF(4, num_flows=3, hidden_dims=[8, 12])
    assert family.event_shape == (4,) and family.reparameterized and not family.has_entropy
    assert family.factor_dims is None and family.hidden_dims == (8, 12)
    params = jax.eval_shape(family.init, jax.random.key(0))
    assert [jax.tree.map(lambda x: x.shape, layer) for layer in params["flows"]] == [
        (((4, 8), (8,)), (), ((8, 12), (12,)), (), ((12, 8), (8,)))
    ] * 3
    with pytest.raises(NotImplementedError, match="no closed-form entropy"):
        family.entropy(params)


def test_default_hidden_dims_and_spellings_are_one_family():
    assert IAF(2).hidden_dims == (8,) and IAF(6).hidden_dims == (12,)
    assert IAF(3) == IAF(3, hidden_dims=(8,)) == IAF(3, hidden_dims=[8])
    assert hash(IAF(3)) == hash(IAF(3, hidden_dims=[8]))
    assert IAF(3) != IAF(3, num_flows=3) and IAF(3) != IAF(3, hidden_dims=(9,))


BAD = [
    ("dim_1", lambda: IAF(1), ValueError, "dim must be >= 2"),
    ("dim_0", lambda: IAF(0), ValueError, "dim must be >= 2"),
    ("dim_float", lambda: IAF(2.0), TypeError, "dim must be an int"),
    ("dim_bool", lambda: IAF(True), TypeError, "dim must be an int"),
    ("num_flows_0", lambda: IAF(2, num_flows=0), ValueError, "num_flows must be >= 1"),
    ("num_flows_str", lambda: IAF(2, num_flows="2"), TypeError, "num_flows must be an int"),
    ("hidden_too_narrow", lambda: IAF(3, hidden_dims=(8, 2)), ValueError, "hidden_dims must be a non-empty"),
    ("hidden_empty", lambda: IAF(3, hidden_dims=()), ValueError, "hidden_dims must be a non-empty"),
    ("hidden_int", lambda: IAF(3, hidden_dims=8), TypeError, "hidden_dims must be a non-empty"),
    ("hidden_float", lambda: IAF(3, hidden_dims=(8.0,)), TypeError, "hidden_dims must be a non-empty"),
    ("init_scale_0", lambda: IAF(2, init_scale=0.0), ValueError, "init_scale must be positive"),
]


@pytest.mark.parametrize(("build", "error", "match"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_constructor_arguments_raise_clear_errors(build, error, match):
    with pytest.raises(error, match=re.escape(f"InverseAutoregressiveFlow: {match}")):
        build()


def test_oracle_masks_are_autoregressive():
    # The oracle's own masks: output i (shift and log-scale) reaches input j only for j < i.
    for dim, hidden in [(2, (8,)), (3, (6, 6)), (5, (5, 7, 9))]:
        reach = functools.reduce(np.matmul, cases_flows.made_masks(dim, hidden))
        for half in (reach[:, :dim], reach[:, dim:]):
            assert np.all((half > 0) == np.triu(np.ones((dim, dim)), k=1).astype(bool))
