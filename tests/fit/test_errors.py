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


def test_integer_log_joint():
    with pytest.raises(TypeError, match="must return a float"):
        fit(lambda z: jnp.sum(z["a"] > 0))


def test_latents_that_do_not_match_the_family():
    with pytest.raises(KeyError, match=r"log_joint failed on latents .*'a': 'float32\[2\]'"):
        fit(lambda z: -(z["missing"] ** 2))
    with pytest.raises(TypeError, match="log_joint failed on latents"):
        fit(lambda z: jnp.dot(z["a"], jnp.ones(5)))


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
    with pytest.raises(ValueError, match="parameters do not match the family's structure"):
        fit(init_params={"a": params["a"]})


def test_errors_leave_the_inputs_untouched():
    params = bbvi.init(FAMILY, jax.random.key(0))
    before = jax.tree.map(lambda x: x.copy(), params)
    with pytest.raises(ValueError):
        fit(lambda z: jnp.log(z["b"]) + jnp.sum(z["a"]), init_params=params, optimizer=optax.adam(0.1))
    for x, y in zip(jax.tree.leaves(params), jax.tree.leaves(before)):
        assert bool(jnp.all(x == y))
