"""Amortised families: conditioning on data, batches of base families, gradients, errors, inference.

The shared contract of `Batched` (density, moments, entropy, jit/vmap) runs on the registry cases of
cases_amortized.py; this module checks what is specific to batching and to the encoder, and that an
encoder trained on a conjugate model maps held-out data to the exact posterior.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re

import jax
import jax.numpy as jnp
import jax.scipy.stats.norm as norm
import numpy as np
import optax
import pytest
from numpyro.distributions import constraints
from numpyro.distributions.transforms import ExpTransform, StickBreakingTransform
from scipy.special import logsumexp

import bbvi
from bbvi.families.amortized import Amortized, Batched

from ._helpers import assert_mc_close, fast_jit, perturb

MFG = bbvi.MeanFieldGaussian
POSITIVE = bbvi.Constrained(MFG(()), constraints.positive)
SIMPLEX = bbvi.Constrained(MFG((2,)), constraints.simplex)

BASES = {
    "mf_gaussian": MFG((2,)),
    "full_rank": bbvi.FullRankGaussian(2),
    "categorical": bbvi.Categorical((2,), 3),
    "positive": POSITIVE,
    "simplex": SIMPLEX,
}


def bases():
    return pytest.mark.parametrize("base", list(BASES.values()), ids=list(BASES))


def _rows(tree, b):
    return jax.tree.map(lambda x: x[b], tree)


def _conditioned_params(family, params, data):
    """The per-datum parameters of `family.condition`, by one jitted program (the family is static)."""
    return fast_jit(lambda params, data: family.condition(params, data)[1])(params, data)


def _data(seed, shape):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# Amortized.condition: per-datum parameters from the encoder.


@bases()
def test_condition_gives_per_datum_params_starting_at_the_base_init(base):
    family = Amortized(base, data_shape=(2, 3), batch_size=5)
    key, data = jax.random.key(3), 2 * _data(0, (5, 2, 3))
    conditioned = []

    @fast_jit  # one program: compilation dominates
    def run(key, data):
        q, q_params = family.condition(family.init(key), data)
        conditioned.append(q)  # the static family, recorded while tracing
        return q_params, base.init(jax.random.split(key)[0])

    q_params, reference = run(key, data)
    (q,) = conditioned
    assert q == Batched(base, 5) and q.event_shape == family.event_shape == (5,) + base.event_shape
    expected = jax.tree.map(lambda s: (5,) + s.shape, jax.eval_shape(base.init, key))
    assert jax.tree.map(jnp.shape, q_params) == expected
    # Each datum's parameters differ from every other datum's (the encoder reads its input).
    flat = np.concatenate([np.asarray(x).reshape(5, -1) for x in jax.tree.leaves(q_params)], axis=1)
    assert all(not np.allclose(flat[i], flat[j]) for i in range(5) for j in range(i + 1, 5))
    # Documented: the last layer's bias starts at base.init(split(key)[0]) and its weights at 0.01 x
    # Glorot (sd sqrt(2 / (64 + P)) for P outputs) over 64 tanh units bounded by 1: each output moves
    # by at most ~0.01 * sqrt(64 * 2 / (64 + P)) < 0.015 (one sd), so 0.1 is beyond 6 sd of it, while
    # a wrong unravelling (loc <-> log_scale, say) is off by O(1).
    for b in range(5):
        for got, want in zip(jax.tree.leaves(_rows(q_params, b)), jax.tree.leaves(reference)):
            np.testing.assert_allclose(got, want, atol=0.1)


def test_condition_accepts_integer_data_and_scalar_data():
    family = Amortized(bbvi.Bernoulli((3,)), data_shape=(), batch_size=4, hidden_sizes=())
    params = fast_jit(family.init)(jax.random.key(0))
    from_ints = _conditioned_params(family, params, np.arange(4))
    from_floats = _conditioned_params(family, params, np.arange(4.0))
    np.testing.assert_allclose(from_ints["logits"], from_floats["logits"], rtol=1e-6)


def test_unconstrained_view_keeps_the_encoder():
    family = Amortized(POSITIVE, data_shape=(2,), batch_size=3, hidden_sizes=(8,), activation="relu")
    base, transform = family.unconstrained()
    assert base == dataclasses.replace(family, base=MFG(())) and isinstance(transform, ExpTransform)
    specs = [jax.eval_shape(f.init, jax.random.key(0)) for f in (base, family)]
    assert jax.tree.structure(specs[0]) == jax.tree.structure(specs[1])
    plain = Amortized(MFG(()), data_shape=(2,), batch_size=3)
    assert plain.unconstrained() == (plain, None)


def test_equal_constructions_are_equal_and_hashable():
    a = Amortized(MFG((2,)), data_shape=[3], batch_size=4, hidden_sizes=[8, 8])
    b = Amortized(MFG((2,)), data_shape=(3,), batch_size=4, hidden_sizes=(8, 8))
    assert a == b and hash(a) == hash(b) and a.hidden_sizes == (8, 8)
    assert a != dataclasses.replace(b, activation="relu") and a != dataclasses.replace(b, batch_size=5)
    assert Batched(MFG(()), 2) == Batched(MFG(()), 2) and Batched(MFG(()), 2) != Batched(MFG(()), 3)
    assert hash(Batched(POSITIVE, 2)) == hash(Batched(bbvi.Constrained(MFG(()), constraints.positive), 2))


# --------------------------------------------------------------------------------------------------
# Batched: B independent copies of the base, element by element.


@bases()
def test_batched_density_entropy_and_factors_are_over_copies(base):
    family = Batched(base, 3)
    params = perturb(fast_jit(family.init)(jax.random.key(0)), seed=1)
    # One value per copy, or per copy and base factor where the base factorises.
    factor_shape = (3,) + tuple(base.event_shape[: base.factor_dims or 0])
    assert family.factor_dims == len(factor_shape)

    @fast_jit  # one program: op-by-op numpyro calls cost seconds each on CPU
    def compare(params, key):
        z = family.sample(params, key)
        copies = [_rows(params, b) for b in range(3)]
        log_prob = family.log_prob(params, z)
        out = {"log_prob": (log_prob, sum(base.log_prob(p, z[b]) for b, p in enumerate(copies)))}
        if base.has_entropy:
            out["entropy"] = (family.entropy(params), sum(base.entropy(p) for p in copies))
        out["sample_and_log_prob"] = (family.sample_and_log_prob(params, key), (z, log_prob))
        factors = family.factor_log_prob(params, z)
        out["factor_log_prob"] = (jnp.sum(factors), log_prob)
        return z, factors, out

    z, factors, out = compare(params, jax.random.key(2))
    assert z.shape == family.event_shape and factors.shape == factor_shape
    assert ("entropy" in out) == base.has_entropy
    for name, (got, want) in out.items():
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5, err_msg=name)
    assert family.has_entropy == base.has_entropy and family.reparameterized == base.reparameterized


def test_batched_copies_are_independent():
    # The marginals of each copy are the contract's business; this checks the joint: with copies
    # drawn from one key (a bug the per-copy moments cannot see) every pair would be perfectly correlated.
    family = Batched(MFG(()), 3)
    params = perturb(fast_jit(family.init)(jax.random.key(0)), seed=5)
    keys = jax.random.split(jax.random.key(1), 4000)
    z = np.asarray(fast_jit(jax.vmap(family.sample, (None, 0)))(params, keys), np.float64)
    standard = (z - np.asarray(params["loc"])) / np.exp(np.asarray(params["log_scale"]))
    pairs = np.stack([standard[:, i] * standard[:, j] for i, j in [(0, 1), (0, 2), (1, 2)]], axis=1)
    assert_mc_close(pairs, np.zeros(3), "correlation between copies")


def test_batched_bernoulli_is_normalised_by_enumeration():
    family = Batched(bbvi.Bernoulli((2,)), 2)
    params = perturb(fast_jit(family.init)(jax.random.key(0)), seed=3)
    grid = np.array(np.meshgrid(*[[0, 1]] * 4, indexing="ij"), np.int32).reshape(4, -1).T.reshape(-1, 2, 2)
    log_probs = fast_jit(jax.vmap(family.log_prob, (None, 0)))(params, grid)
    assert abs(logsumexp(np.asarray(log_probs, np.float64))) < 1e-5


def test_stratified_sample_is_one_batched_draw():
    family = Batched(MFG((2,)), 3)
    params = fast_jit(family.init)(jax.random.key(0))
    points, log_w = fast_jit(family.stratified_sample)(params, jax.random.key(1))
    assert points.shape == (1, 3, 2) and log_w.shape == (1,) and float(log_w[0]) == 0.0
    np.testing.assert_array_equal(points[0], fast_jit(family.sample)(params, jax.random.key(1)))


@dataclasses.dataclass(frozen=True)
class _TwoPoints(MFG):
    """A stand-in for a mixture: stratifies into two points per draw."""

    def stratified_sample(self, params, key):
        z = self.sample(params, key)
        return jnp.stack([z, -z]), jnp.log(jnp.array([0.5, 0.5]))


def test_stratified_sample_of_a_batch_of_mixtures_is_a_clear_error():
    family = Batched(_TwoPoints((2,)), 3)
    with pytest.raises(NotImplementedError, match="_TwoPoints stratifies into 2 points"):
        # Raised while tracing (the number of points is static), so no need to run anything.
        jax.eval_shape(
            family.stratified_sample, jax.eval_shape(family.init, jax.random.key(0)), jax.random.key(1)
        )


@pytest.mark.parametrize(
    ("base", "transform_type"),
    [(POSITIVE, ExpTransform), (SIMPLEX, StickBreakingTransform)],
    ids=["positive", "simplex"],
)
def test_unconstrained_batch_maps_through_the_base_bijection(base, transform_type):
    family = Batched(base, 4)
    unconstrained, transform = family.unconstrained()
    assert unconstrained == Batched(base.base, 4) and isinstance(transform, transform_type)
    params = perturb(fast_jit(family.init)(jax.random.key(0)), seed=4)

    @fast_jit
    def run(params, key):
        u = unconstrained.sample(params, key)
        z = transform(u)  # one call on the whole batch (B,) + shape: numpyro acts on the trailing dims
        per_copy = jnp.stack([base.transform(u[b]) for b in range(4)])
        # The change of variables on the batch against the batched family's own density.
        pulled_back = unconstrained.log_prob(params, u) - jnp.sum(transform.log_abs_det_jacobian(u, z))
        return z, per_copy, pulled_back, family.log_prob(params, z)

    z, per_copy, pulled_back, log_prob = run(params, jax.random.key(1))
    assert z.shape == family.event_shape
    np.testing.assert_allclose(z, per_copy, rtol=1e-6)
    np.testing.assert_allclose(pulled_back, log_prob, rtol=1e-5, atol=1e-5)
    assert Batched(MFG(()), 2).unconstrained() == (Batched(MFG(()), 2), None)


# --------------------------------------------------------------------------------------------------
# Gradients, jit and vmap through condition + sample.


@pytest.mark.parametrize("base", [MFG((2,)), POSITIVE], ids=["mf_gaussian", "positive"])
def test_gradients_flow_to_every_encoder_weight_through_a_pathwise_draw(base):
    family = Amortized(base, data_shape=(3,), batch_size=4, hidden_sizes=(8, 8))
    params = fast_jit(family.init)(jax.random.key(0))
    data = _data(5, (4, 3))

    def total_of_one_draw(params):
        q, q_params = family.condition(params, data)
        return jnp.sum(q.sample(q_params, jax.random.key(1)))

    grads = fast_jit(jax.grad(total_of_one_draw))(params)
    assert jax.tree.structure(grads) == jax.tree.structure(params)
    for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]:
        name = jax.tree_util.keystr(path)
        assert bool(jnp.all(jnp.isfinite(g))), name
        assert bool(jnp.any(g != 0)), name


def _condition_and_sample(family, params, data, key):
    q, q_params = family.condition(params, data)
    z = q.sample(q_params, key)
    return z, q.log_prob(q_params, z)


def test_condition_and_sample_under_jit_and_vmap():
    family = Amortized(MFG((2,)), data_shape=(3,), batch_size=4, hidden_sizes=(8,))
    params = fast_jit(family.init)(jax.random.key(0))
    data = _data(6, (5, 4, 3))  # five minibatches
    keys = jax.random.split(jax.random.key(1), 5)
    run = functools.partial(_condition_and_sample, family, params)

    @fast_jit
    def both(data, keys):
        return jax.vmap(run)(data, keys), jax.lax.map(lambda args: run(*args), (data, keys))

    (z, log_q), (z_loop, log_q_loop) = both(data, keys)
    assert z.shape == (5, 4, 2) and log_q.shape == (5,)
    np.testing.assert_allclose(z, z_loop, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(log_q, log_q_loop, rtol=1e-5, atol=1e-5)
    # Over keys with the data fixed, and the jitted program against an eager call.
    z_keys, _ = fast_jit(jax.vmap(run, (None, 0)))(data[0], keys)
    z_eager, log_q_eager = run(data[0], keys[0])
    np.testing.assert_allclose(z_keys[0], z_eager, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fast_jit(run)(data[0], keys[0])[1], log_q_eager, rtol=1e-5)


# --------------------------------------------------------------------------------------------------
# Clear errors.


def test_wrong_data_shape_names_both_shapes():
    family = Amortized(MFG((2,)), data_shape=(3,), batch_size=4)
    params = fast_jit(family.init)(jax.random.key(0))
    for data in [np.zeros((5, 3)), np.zeros((4, 2)), np.zeros(3)]:
        with pytest.raises(ValueError, match=re.escape(f"= (4, 3), got {data.shape}")):
            family.condition(params, data)


NEEDS_DATA_CALLS = {
    "sample": lambda family, params, z, key: family.sample(params, key),
    "log_prob": lambda family, params, z, key: family.log_prob(params, z),
    "entropy": lambda family, params, z, key: family.entropy(params),
    "sample_and_log_prob": lambda family, params, z, key: family.sample_and_log_prob(params, key),
    "stratified_sample": lambda family, params, z, key: family.stratified_sample(params, key),
    "factor_log_prob": lambda family, params, z, key: family.factor_log_prob(params, z),
}


@pytest.mark.parametrize("call", list(NEEDS_DATA_CALLS.values()), ids=list(NEEDS_DATA_CALLS))
def test_amortized_without_data_is_a_clear_error(call):
    family = Amortized(MFG((2,)), data_shape=(3,), batch_size=4)
    params = fast_jit(family.init)(jax.random.key(0))
    with pytest.raises(ValueError, match=r"depends on the data; call `family.condition\(params, data\)`"):
        call(family, params, jnp.zeros(family.event_shape), jax.random.key(1))


AMORTIZED_ARGS = {"data_shape": (3,), "batch_size": 4}
BAD_CONSTRUCTIONS = [
    ("batched_base_not_family", lambda: Batched("gaussian", 2), TypeError, "base must be a bbvi family"),
    (
        "batched_base_needs_data",
        lambda: Batched(Amortized(MFG(()), **AMORTIZED_ARGS), 2),
        TypeError,
        "base must be a data-free family",
    ),
    ("batched_size_0", lambda: Batched(MFG(()), 0), ValueError, "batch_size must be a positive int"),
    ("batched_size_float", lambda: Batched(MFG(()), 2.0), ValueError, "batch_size must be a positive int"),
    ("batched_size_bool", lambda: Batched(MFG(()), True), ValueError, "batch_size must be a positive int"),
    (
        "amortized_base_not_family",
        lambda: Amortized(None, **AMORTIZED_ARGS),
        TypeError,
        "base must be a bbvi",
    ),
    (
        "amortized_base_needs_data",
        lambda: Amortized(Amortized(MFG(()), **AMORTIZED_ARGS), **AMORTIZED_ARGS),
        TypeError,
        "base must be a data-free family",
    ),
    ("data_shape_negative", lambda: Amortized(MFG(()), (3, -1), 4), ValueError, "non-negative"),
    ("data_shape_not_shape", lambda: Amortized(MFG(()), None, 4), TypeError, "data_shape: shape must be"),
    ("data_shape_empty", lambda: Amortized(MFG(()), (0, 3), 4), ValueError, "at least one element"),
    ("amortized_batch_0", lambda: Amortized(MFG(()), (3,), 0), ValueError, "batch_size must be a positive"),
    ("hidden_zero", lambda: Amortized(MFG(()), (3,), 4, (8, 0)), ValueError, "hidden_sizes must be positive"),
    (
        "hidden_not_ints",
        lambda: Amortized(MFG(()), (3,), 4, ("a",)),
        TypeError,
        "hidden_sizes must be a tuple",
    ),
    ("activation_unknown", lambda: Amortized(MFG(()), (3,), 4, activation="swish"), ValueError, "'swish'"),
]


@pytest.mark.parametrize(
    ("build", "error", "match"), [b[1:] for b in BAD_CONSTRUCTIONS], ids=[b[0] for b in BAD_CONSTRUCTIONS]
)
def test_bad_constructor_arguments_raise_clear_errors(build, error, match):
    with pytest.raises(error, match=re.escape(match)):
        build()


# --------------------------------------------------------------------------------------------------
# Amortised inference on a conjugate model: the encoder learns the exact posterior map.

NOISE_SD = 0.5  # x_i | z_i ~ N(z_i, s^2), z_i ~ N(0, 1): q*(z | x) = N(x / (1 + s^2), s^2 / (1 + s^2))
MINIBATCH = 64


def _train_encoder(family, steps, learning_rate, key):
    """Adam on a reparameterised, sticking-the-landing MC ELBO over fresh minibatches of simulated x."""
    optimizer = optax.adam(optax.cosine_decay_schedule(learning_rate, steps))

    def negative_elbo(params, x, key):
        q, q_params = family.condition(params, x)
        z = q.sample(q_params, key)  # pathwise in the encoder's weights
        # Sticking the landing: log q at stopped parameters, so at q = posterior, where
        # log p(x, z) - log q(z | x) = log p(x) for every z, each sample's gradient is exactly zero.
        log_q = q.log_prob(jax.lax.stop_gradient(q_params), z)
        log_joint = jnp.sum(norm.logpdf(z) + norm.logpdf(x, z, NOISE_SD))
        return (log_q - log_joint) / MINIBATCH

    def step(carry, key):
        params, state = carry
        key_x, key_z = jax.random.split(key)
        x = math.sqrt(1 + NOISE_SD**2) * jax.random.normal(key_x, (MINIBATCH,))  # x from its marginal
        updates, state = optimizer.update(jax.grad(negative_elbo)(params, x, key_z), state, params)
        return (optax.apply_updates(params, updates), state), None

    @fast_jit
    def train(key):
        init_key, steps_key = jax.random.split(key)
        params = family.init(init_key)
        carry, _ = jax.lax.scan(step, (params, optimizer.init(params)), jax.random.split(steps_key, steps))
        return params, carry[0]

    return train(key)


@pytest.mark.parametrize(
    ("hidden_sizes", "activation", "steps", "tolerance"),
    [
        # Linear: the exact map is in the family and the problem is convex in the weights; with no
        # noise floor (see below) Adam reaches it to float32 rounding (~1e-7 measured).
        ((), "tanh", 500, 1e-4),
        # ReLU: x / (1 + s^2) = a (relu(x) - relu(-x)) is exactly representable, so again there is no
        # noise floor, but the landscape is not convex: what is left is optimisation error (~1e-3
        # measured after 2000 steps), which 1e-2 bounds while any misfit of the map exceeds it:
        # the initial map is off by O(1) (checked below).
        ((16,), "relu", 2000, 1e-2),
    ],
    ids=["linear", "relu_mlp"],
)
def test_encoder_learns_the_exact_posterior_map(hidden_sizes, activation, steps, tolerance):
    # The exact posterior is in the family for every x and every datum's ELBO peaks at the same
    # weights, so the minibatch gradients vanish there (interpolation) and the STL per-sample gradients
    # vanish too: the error has no Monte Carlo or minibatch floor, only optimisation error.
    family = Amortized(
        MFG(()), data_shape=(), batch_size=MINIBATCH, hidden_sizes=hidden_sizes, activation=activation
    )
    initial, trained = _train_encoder(family, steps, 0.05, jax.random.key(0))
    held_out = np.linspace(-2.5, 2.5, MINIBATCH) * math.sqrt(1 + NOISE_SD**2)  # +-2.5 sd of the data
    exact_mean = held_out / (1 + NOISE_SD**2)
    exact_sd = math.sqrt(NOISE_SD**2 / (1 + NOISE_SD**2))

    def errors(params):
        q_params = _conditioned_params(family, params, held_out)
        mean, sd = (
            np.asarray(q_params["loc"], np.float64),
            np.exp(np.asarray(q_params["log_scale"], np.float64)),
        )
        return np.max(np.abs(mean - exact_mean)), np.max(np.abs(sd - exact_sd))

    assert min(errors(initial)) > 0.3  # the check can fail: the initial map is far off
    mean_error, sd_error = errors(trained)
    assert mean_error < tolerance and sd_error < tolerance, (mean_error, sd_error)
