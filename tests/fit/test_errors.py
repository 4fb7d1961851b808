"""Bad input gets a clear error naming what is wrong, raised before the fit runs."""

import jax
import jax.numpy as jnp
import optax
import pytest

import bbvi

FAMILY = {"a": bbvi.MeanFieldGaussian((2,)), "b": bbvi.MeanFieldGaussian(())}


def good(z):
    return -0.5 * (jnp.sum(z["a"] ** 2) + z["b"] ** 2)


def fit(log_joint=good, family=FAMILY, **options):
    options.setdefault("key", jax.random.key(0))
    options.setdefault("num_steps", 10)
    options.setdefault("progress_bar", False)
    return bbvi.fit(log_joint, family, **options)


def test_non_scalar_log_joint():
    with pytest.raises(ValueError, match=r"must return a scalar.*shape \(2,\)"):
        fit(lambda z: -0.5 * z["a"] ** 2)


def test_shape_one_log_joint():
    with pytest.raises(ValueError, match=r"must return a scalar.*shape \(1,\)"):
        fit(lambda z: jnp.reshape(good(z), (1,)))


@pytest.mark.parametrize(
    ("log_joint", "returned"),
    [
        (lambda z: jnp.sum(z["a"] > 0), "int32"),
        (lambda z: z["b"] > 0, "bool"),
        (lambda z: good(z) + 0j, "complex64; return the real log-density"),
    ],
    ids=["int", "bool", "complex"],
)
def test_non_float_log_joint(log_joint, returned):
    with pytest.raises(TypeError, match=f"must return a float, but returned {returned}"):
        fit(log_joint)


@pytest.mark.parametrize("value", [None, (1.0, 2.0), "0.0"], ids=["none", "tuple", "str"])
def test_log_joint_returning_no_array(value):
    with pytest.raises(
        TypeError, match=f"must return a scalar float array, but returned {type(value).__name__}"
    ):
        fit(lambda z: value)


def test_latents_that_do_not_match_the_family():
    # The user's own exception, with bbvi's note (pytest matches notes too) naming the latents.
    with pytest.raises(KeyError, match=r"log_joint\(z\) failed on latents z = .*'a': 'float32\[2\]'"):
        fit(lambda z: -(z["missing"] ** 2))
    with pytest.raises(TypeError, match=r"log_joint\(z\) failed on latents .*'a': 'float32\[2\]'"):
        fit(lambda z: jnp.dot(z["a"], jnp.ones(5)))  # the log-joint expects a latent of shape (5,)


def test_latents_of_the_wrong_dtype():
    # A log-joint indexing a table with a latent it believes discrete, fitted with a continuous family.
    table = jnp.log(jnp.array([0.2, 0.8]))
    with pytest.raises(
        TypeError, match=r"(?s)integer.*float32.*'c': 'float32\[\]'.*continuous families draw floats"
    ):
        fit(lambda z: good(z) + table[z["c"]], {**FAMILY, "c": bbvi.MeanFieldGaussian(())})
    # The matching discrete family draws ints, and the same log-joint is accepted (traced only).
    family = {**FAMILY, "c": bbvi.Bernoulli(())}
    vg = bbvi.elbo_value_and_grad(lambda z: good(z) + table[z["c"]], family)
    value, _ = jax.eval_shape(vg, bbvi.families.tree.param_spec(family), jax.random.key(0))
    assert value.shape == () and value.dtype == jnp.float32


def test_log_joint_called_with_data_it_does_not_take():
    with pytest.raises(
        TypeError, match=r"log_joint\(z, data\) failed on latents .* and data float32\[10, 2\]"
    ):
        fit(good, data=jnp.ones((10, 2)))


def test_non_finite_elbo_at_the_start():
    with pytest.raises(ValueError, match="ELBO at the initial parameters is nan"):
        fit(lambda z: jnp.log(z["b"]) + jnp.sum(z["a"]))  # log of a negative draw
    with pytest.raises(ValueError, match="ELBO at the initial parameters is -inf"):
        fit(lambda z: jnp.where(z["b"] > -5, -jnp.inf, 0.0) + jnp.sum(z["a"]))


def test_non_finite_gradient_at_the_start():
    # A finite value with a NaN slope: sqrt(|x - x|) is 0, its derivative 0 * inf.
    def log_joint(z):
        kink = jnp.sqrt(jnp.abs(z["a"] - jax.lax.stop_gradient(z["a"])))
        return good(z) + jnp.sum(kink)

    with pytest.raises(ValueError, match="gradient at the initial parameters is not finite"):
        fit(log_joint)


def test_leave_one_out_with_one_sample():
    with pytest.raises(ValueError, match=r"'loo' needs num_samples >= 2"):
        fit(control_variate="loo", num_samples=1)
    with pytest.raises(ValueError, match=r"'optimal' needs num_samples >= 3"):
        fit(control_variate="optimal", num_samples=2)


@pytest.mark.parametrize("num_steps", [0, -3, 2.5, True])
def test_num_steps_must_be_a_positive_int(num_steps):
    with pytest.raises(ValueError, match="num_steps must be a positive int"):
        fit(num_steps=num_steps)


@pytest.mark.parametrize("num_samples", [0, 1.0, "8"])
def test_num_samples_must_be_a_positive_int(num_samples):
    with pytest.raises(ValueError, match="num_samples must be a positive int"):
        fit(num_samples=num_samples)


def test_relaxed_on_continuous_families():
    calls = []
    with pytest.raises(
        ValueError, match=r"'relaxed' relaxes discrete leaves.*\['a'\].*\['b'\].*all continuous"
    ):
        fit(lambda z: calls.append(z) or good(z), estimator="relaxed")
    assert calls == []  # refused before the log-joint is traced


def test_importance_weighted_objectives_refuse_minibatches():
    def log_joint(z, batch):
        return good(z) - jnp.sum(batch)

    for objective in ("iwae", bbvi.Renyi(0.5)):
        with pytest.raises(ValueError, match=r"cannot be estimated from minibatches \(batch_size=5\)"):
            fit(log_joint, objective=objective, data=jnp.ones((10, 2)), batch_size=5)


def test_sample_chunks_larger_than_the_samples_mean_all_at_once():
    # Accepted: sample_chunk_size caps the samples evaluated together; a cap above num_samples is no cap.
    params, key = bbvi.init(FAMILY, jax.random.key(0)), jax.random.key(1)
    whole = jax.jit(bbvi.elbo_value_and_grad(good, FAMILY, num_samples=4))(params, key)
    capped = jax.jit(bbvi.elbo_value_and_grad(good, FAMILY, num_samples=4, sample_chunk_size=100))(
        params, key
    )
    for x, y in zip(jax.tree.leaves(whole), jax.tree.leaves(capped)):
        assert bool(jnp.all(x == y))


def test_reparam_on_a_discrete_leaf_names_it():
    family = {"a": bbvi.MeanFieldGaussian((2,)), "c": bbvi.Bernoulli((3,))}
    with pytest.raises(ValueError, match=r"\['c'\].*not.*reparameterisable|reparameterisable.*\['c'\]"):
        fit(lambda z: jnp.sum(z["a"]) + jnp.sum(z["c"]), family, estimator="reparam")


def test_unknown_options():
    with pytest.raises(ValueError, match="unknown estimator"):
        fit(estimator="pathwise")
    with pytest.raises(ValueError, match="unknown control_variate"):
        fit(control_variate="baseline")
    with pytest.raises(TypeError, match="optax GradientTransformation"):
        fit(optimizer=0.01)


def test_bad_key():
    with pytest.raises(TypeError, match="PRNG key"):
        fit(key=0)
    with pytest.raises(TypeError, match="PRNG key"):
        fit(key=jax.random.split(jax.random.key(0), 2))


@pytest.mark.parametrize(
    ("key", "got"),
    [(0, r"int32\[\]"), (jax.random.split(jax.random.key(0), 2), r"key<fry>\[2\]"), (None, r"NoneType\[\]")],
    ids=["int", "two-keys", "none"],
)
def test_bad_key_to_an_estimate(key, got):
    vg = bbvi.elbo_value_and_grad(good, FAMILY)
    with pytest.raises(
        TypeError, match=f"key must be a single PRNG key such as jax.random.key\\(0\\), got {got}"
    ):
        jax.eval_shape(vg, bbvi.families.tree.param_spec(FAMILY), key)


def test_not_a_family():
    with pytest.raises(TypeError, match=r"\['b'\] is 3, not a bbvi family"):
        fit(family={"a": bbvi.MeanFieldGaussian((2,)), "b": 3})


def test_init_params_that_do_not_match_the_family():
    params = bbvi.init(FAMILY, jax.random.key(0))
    wrong_shape = {**params, "a": {"loc": jnp.zeros(3), "log_scale": jnp.zeros(3)}}
    with pytest.raises(
        ValueError, match=r"parameters at \['a'\] do not match MeanFieldGaussian.*\(2,\).*\(3,\)"
    ):
        fit(init_params=wrong_shape)
    with pytest.raises(ValueError, match="init_params: parameters do not match the family's structure"):
        fit(init_params={"a": params["a"]})
    with pytest.raises(ValueError, match=r"parameters at \['a'\].*expected shapes.*'log_scale'"):
        fit(init_params={**params, "a": {"loc": params["a"]["loc"]}})


@pytest.mark.parametrize(
    ("value", "dtype"), [(1j, "complex"), (True, "bool"), ("0", "<U1")], ids=["complex", "bool", "str"]
)
def test_init_params_of_the_wrong_dtype(value, dtype):
    params = bbvi.init(FAMILY, jax.random.key(0))
    bad = {**params, "b": {**params["b"], "loc": value}}
    with pytest.raises(
        TypeError, match=rf"init_params\['b'\]\['loc'\] has dtype {dtype}.*expected real numbers"
    ):
        fit(init_params=bad)


def test_integer_init_params_are_cast_exactly():
    params = {"a": {"loc": jnp.array([1, -2]), "log_scale": jnp.zeros(2)}, "b": {"loc": 3, "log_scale": 0}}
    result = fit(init_params=params, optimizer=optax.sgd(0.0), num_steps=2)  # a zero step: nothing moves
    assert result.params["a"]["loc"].dtype == jnp.float32
    assert result.params["a"]["loc"].tolist() == [1.0, -2.0] and float(result.params["b"]["loc"]) == 3.0


@pytest.mark.parametrize("value", [jnp.nan, jnp.inf], ids=["nan", "inf"])
def test_non_finite_init_params(value):
    params = bbvi.init(FAMILY, jax.random.key(0))
    bad = {**params, "a": {**params["a"], "log_scale": params["a"]["log_scale"].at[1].set(value)}}
    with pytest.raises(ValueError, match=r"init_params\['a'\]\['log_scale'\] is not finite"):
        fit(init_params=bad)


def test_states_to_continue_from_must_match():
    params = bbvi.init(FAMILY, jax.random.key(0))
    with pytest.raises(ValueError, match=r"init_opt_state does not match.*expected the structure"):
        fit(optimizer=optax.adam(0.1), init_opt_state=optax.sgd(0.1).init(params))
    other = bbvi.init({"a": bbvi.MeanFieldGaussian((3,)), "b": bbvi.MeanFieldGaussian(())}, jax.random.key(0))
    with pytest.raises(
        ValueError, match=r"init_opt_state\[0\]\.mu\['a'\]\['loc'\] has shape \(3,\), expected \(2,\)"
    ):
        fit(optimizer=optax.adam(0.1), init_opt_state=optax.adam(0.1).init(other))
    with pytest.raises(ValueError, match=r"init_estimator_state does not match"):
        fit(init_estimator_state=(jnp.zeros(()),))


def test_errors_leave_the_inputs_untouched():
    params = bbvi.init(FAMILY, jax.random.key(0))
    before = jax.tree.map(lambda x: x.copy(), params)
    with pytest.raises(ValueError):
        fit(lambda z: jnp.log(z["b"]) + jnp.sum(z["a"]), init_params=params, optimizer=optax.adam(0.1))
    for x, y in zip(jax.tree.leaves(params), jax.tree.leaves(before)):
        assert bool(jnp.all(x == y))
