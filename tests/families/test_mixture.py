"""The Gaussian mixture: stratified draws, gradients exact in the weights and pathwise inside, errors, fit.

The shared contract (density against scipy, normalisation, moments of `sample`, jit/vmap) is checked on
the registry's mixture cases (cases_mixture.py). Here: expectations and their gradients from the
stratified draws and from the plain draws, against closed forms, within Monte Carlo standard errors.
"""

from __future__ import annotations

import functools
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.scipy.special import logsumexp
from jax.scipy.stats import norm
from scipy.special import log_softmax

import bbvi
from bbvi.families.mixture import GaussianMixture

from ._helpers import assert_mc_close, fast_jit
from .cases_mixture import mixture_parts

FAMILY = GaussianMixture(2, 3)
# Unequal weights, separated components of unequal, anisotropic scales: nothing cancels by symmetry.
PARAMS = {
    "logits": np.array([0.5, -0.3, 0.0], np.float32),
    "loc": np.array([[-1.5, 0.5], [1.0, -1.0], [0.3, 1.2]], np.float32),
    "log_scale": np.log(np.array([[0.5, 0.8], [0.3, 0.6], [1.0, 0.4]], np.float32)),
}
NUM_KEYS = 8192
KEYS = jax.random.split(jax.random.key(20240611), NUM_KEYS)


def _test_functions(z):
    """f(z) for the functions whose expectations are checked: sum z, sum z^2, sin(sum z)."""
    return jnp.stack([jnp.sum(z), jnp.sum(z**2), jnp.sin(jnp.sum(z))])


def _closed_form_expectations(weights, loc, scale, xp=np):
    """E_q of `_test_functions`: per component, sum z ~ N(sum mu, sum s^2) and E sin(x) = sin(m) e^{-v/2}."""
    m, v = loc.sum(axis=1), (scale**2).sum(axis=1)
    per_component = [m, (loc**2 + scale**2).sum(axis=1), xp.sin(m) * xp.exp(-v / 2)]
    return xp.stack([weights @ f for f in per_component])


def _closed_form_objective(params):
    """E_q[sum z^2 + sin(sum z)] in closed form (jnp), the target of the gradient checks."""
    weights = jax.nn.softmax(params["logits"])
    expectations = _closed_form_expectations(weights, params["loc"], jnp.exp(params["log_scale"]), jnp)
    return expectations[1] + expectations[2]


def _objective(z):
    return _test_functions(z)[1] + _test_functions(z)[2]


def _flat(grads) -> jax.Array:
    """A gradient pytree as one vector per key (keys on the leading axis)."""
    return jnp.concatenate([g.reshape(g.shape[0], -1) for g in jax.tree.leaves(grads)], axis=1)


@functools.cache
def _stratified_over_keys():
    """Stratified draws, the stratified estimates of E f and their gradients, for every key: one program."""

    def estimate(params, key, f):
        z, log_weights = FAMILY.stratified_sample(params, key)
        return jnp.exp(log_weights) @ jax.vmap(f)(z)

    def one(key):
        z, log_weights = FAMILY.stratified_sample(PARAMS, key)
        return (
            z,
            log_weights,
            estimate(PARAMS, key, _test_functions),
            jax.grad(estimate)(PARAMS, key, _objective),
        )

    return jax.tree.map(np.asarray, fast_jit(jax.vmap(one))(KEYS))


def test_stratified_sample_is_one_draw_per_component_with_the_mixture_weights():
    z, log_weights, _, _ = _stratified_over_keys()
    k, d = FAMILY.num_components, FAMILY.dim
    assert z.shape == (NUM_KEYS, k, d) and log_weights.shape == (NUM_KEYS, k)
    weights, loc, scale = mixture_parts(PARAMS)
    # The weights are the mixture's, whatever the key (float32 log-softmax of O(1) logits: ~1e-7).
    np.testing.assert_allclose(
        log_weights, np.broadcast_to(log_softmax(PARAMS["logits"]), (NUM_KEYS, k)), atol=1e-6
    )
    np.testing.assert_allclose(np.exp(log_weights).sum(axis=1), 1.0, atol=1e-6)
    # Draw k comes from component k: its mean and variance per coordinate, all 2*K*dim at once.
    flat = z.reshape(NUM_KEYS, -1)
    stats = np.concatenate([flat, (flat - loc.ravel()) ** 2], axis=1)
    assert_mc_close(stats, np.concatenate([loc.ravel(), scale.ravel() ** 2]), "per-component draws")


def test_stratified_estimate_is_unbiased():
    _, _, estimates, _ = _stratified_over_keys()
    assert_mc_close(estimates, _closed_form_expectations(*mixture_parts(PARAMS)), "stratified E_q[f]")


def test_stratified_gradient_matches_the_closed_form_gradient():
    # d/d logits is exact given the draws (the weights multiply), d/d loc and log_scale pathwise:
    # averaged over keys, the gradient of the closed-form expectation, in every parameter.
    grads = _stratified_over_keys()[3]
    expected = _flat(jax.tree.map(lambda g: g[None], jax.grad(_closed_form_objective)(PARAMS)))[0]
    assert_mc_close(_flat(grads), expected, "stratified gradient of E_q[sum z^2 + sin(sum z)]")


def test_sample_gradient_matches_the_closed_form_gradient():
    # Plain draws are ancestral; their implicit-reparameterisation gradient is unbiased in every
    # parameter, the logits included (the component choice is discrete).
    def estimate(params, key):
        return _objective(FAMILY.sample(params, key))

    grads = fast_jit(jax.vmap(jax.grad(estimate), (None, 0)))(PARAMS, KEYS)
    assert all(bool(jnp.any(g != 0)) for g in jax.tree.leaves(grads))
    expected = _flat(jax.tree.map(lambda g: g[None], jax.grad(_closed_form_objective)(PARAMS)))[0]
    assert_mc_close(_flat(grads), expected, "sample gradient of E_q[sum z^2 + sin(sum z)]")


def test_sample_values_are_the_ancestral_draws():
    # The implicit gradient leaves the value alone: the draw is numpyro's ancestral draw (up to float32
    # rounding, as the two programs compile differently).
    keys = KEYS[:64]
    draws = fast_jit(jax.vmap(FAMILY.sample, (None, 0)))(PARAMS, keys)
    ancestral = fast_jit(jax.vmap(lambda k: FAMILY.distribution(PARAMS).sample(k)))(keys)
    np.testing.assert_allclose(draws, ancestral, rtol=1e-6, atol=1e-7)


def test_family_flags_and_shapes():
    family = GaussianMixture(3, 4)
    assert family == GaussianMixture(3, 4) and hash(family) == hash(GaussianMixture(3, 4))
    assert family.event_shape == (3,) and family.reparameterized and not family.has_entropy
    assert family.factor_dims is None
    params = family.init(jax.random.key(0))
    assert not np.any(np.asarray(params["logits"]))  # equal weights
    loc = np.asarray(params["loc"])
    assert np.all(np.abs(loc) <= family.init_radius) and len(np.unique(loc[:, 0])) == 4  # spread apart
    with pytest.raises(NotImplementedError, match="no closed-form entropy"):
        family.entropy(params)


BAD_CONSTRUCTIONS = [
    ("dim_0", lambda: GaussianMixture(0, 2), "dim must be a positive int"),
    ("dim_float", lambda: GaussianMixture(2.0, 2), "dim must be a positive int"),
    ("k_0", lambda: GaussianMixture(2, 0), "num_components must be a positive int"),
    ("k_float", lambda: GaussianMixture(2, 2.0), "num_components must be a positive int"),
    ("k_bool", lambda: GaussianMixture(2, True), "num_components must be a positive int"),
    ("zero_init_scale", lambda: GaussianMixture(2, 2, init_scale=0.0), "init_scale must be positive"),
    ("negative_init_radius", lambda: GaussianMixture(2, 2, init_radius=-1.0), "init_radius must be positive"),
    ("inf_init_radius", lambda: GaussianMixture(2, 2, init_radius=math.inf), "init_radius must be positive"),
]


@pytest.mark.parametrize(
    ("build", "match"), [b[1:] for b in BAD_CONSTRUCTIONS], ids=[b[0] for b in BAD_CONSTRUCTIONS]
)
def test_bad_constructor_arguments_raise_clear_errors(build, match):
    with pytest.raises(ValueError, match=re.escape(match)):
        build()


# --------------------------------------------------------------------------------------------------
# Fitting a bimodal target: what a mixture is for.

TARGET_WEIGHTS = np.array([0.25, 0.75])  # unequal, so that recovering them needs the logits' gradient
TARGET_LOCS = np.array([-3.0, 3.0])
TARGET_SCALE = 0.5  # 12 sd apart: the modes do not overlap, and the target is itself in the family
NUM_STEPS = 2000


def bimodal_log_joint(z):
    """A normalised density (log Z = 0): 0.25 N(-3, 0.5^2) + 0.75 N(3, 0.5^2)."""
    return logsumexp(jnp.log(TARGET_WEIGHTS) + norm.logpdf(z[0], TARGET_LOCS, TARGET_SCALE))


def _fit(family, init_params=None):
    optimizer = optax.adam(optax.exponential_decay(3e-2, NUM_STEPS, 1e-3 / 3e-2))
    return bbvi.fit(
        bimodal_log_joint,
        family,
        key=jax.random.key(0),
        num_steps=NUM_STEPS,
        optimizer=optimizer,
        estimator="reparam",
        init_params=init_params,
        progress_bar=False,
    )


def _late_elbo(result):
    late = np.asarray(result.elbo[-500:], np.float64)
    return late.mean(), 4 * late.std() / math.sqrt(late.size)


@pytest.mark.slow
def test_fit_finds_both_modes_where_a_gaussian_finds_one():
    # Components that start on the same side of zero both climb the same mode (a local optimum of
    # KL(q || p), which no gradient estimator escapes): start them apart, and test the gradients.
    family = GaussianMixture(1, 2)
    init = {
        "logits": np.zeros(2, np.float32),
        "loc": np.array([[-0.5], [0.5]], np.float32),
        "log_scale": np.full((2, 1), math.log(0.1), np.float32),
    }
    result = _fit(family, init)
    weights, loc, scale = mixture_parts(result.params)
    order = np.argsort(loc[:, 0])
    # Stated in target sd (0.5): locations within 0.1 sd, scales within 5%, weights within 0.02.
    np.testing.assert_allclose(loc[order, 0], TARGET_LOCS, atol=0.05)
    np.testing.assert_allclose(scale[order, 0], TARGET_SCALE, rtol=0.05)
    np.testing.assert_allclose(weights[order], TARGET_WEIGHTS, atol=0.02)
    # The target is in the family, so the ELBO reaches log Z = 0 (within MC error and 0.01 nats of KL).
    mixture_elbo, mixture_tolerance = _late_elbo(result)
    assert abs(mixture_elbo) < mixture_tolerance + 0.01, mixture_elbo

    # A single Gaussian can cover one mode at best: KL >= -log 0.75 nats, whichever it picks.
    gaussian_elbo, gaussian_tolerance = _late_elbo(_fit(bbvi.MeanFieldGaussian((1,))))
    assert gaussian_elbo < math.log(TARGET_WEIGHTS.max()) + gaussian_tolerance, gaussian_elbo
