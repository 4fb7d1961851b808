"""`to_inference_data`: groups, names, dims and values of the exported fit; the missing-arviz error."""

from __future__ import annotations

import importlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.distributions import constraints

import bbvi
from bbvi.diagnostics import Diagnostics, diagnose
from bbvi.families import tree
from bbvi.interop import arviz as export
from bbvi.interop.numpyro_model import from_numpyro

NUM_DRAWS = 50
FAMILY = {
    "mu": bbvi.MeanFieldGaussian((2,)),
    "scales": {"sigma": bbvi.Constrained(bbvi.MeanFieldGaussian(()), constraints.positive)},
    "pair": (bbvi.MeanFieldGaussian(()), bbvi.MeanFieldGaussian((3,))),
}


def log_joint(z):
    return (
        dist.Normal(1.0, 1.0).log_prob(z["mu"]).sum()
        + dist.HalfNormal(1.0).log_prob(z["scales"]["sigma"])
        + dist.Normal(0.0, 1.0).log_prob(z["pair"][0])
        + dist.Normal(0.0, 1.0).log_prob(z["pair"][1]).sum()
    )


@pytest.fixture(scope="module")
def az():
    return pytest.importorskip("arviz")


def test_posterior_and_trace(az):
    fitted = _Result(FAMILY, _params(FAMILY))
    key = jax.random.key(1)
    idata = export.to_inference_data(fitted, key, NUM_DRAWS)
    assert set(idata.groups()) == {"posterior", export.TRACE_GROUP}
    post = idata.posterior
    assert set(post.data_vars) == {"mu", "scales.sigma", "pair[0]", "pair[1]"}
    assert dict(post.sizes) == {"chain": 1, "draw": NUM_DRAWS, "mu_dim_0": 2, "pair[1]_dim_0": 3}
    assert post["mu"].dims == ("chain", "draw", "mu_dim_0") and post["scales.sigma"].dims == ("chain", "draw")
    # The draws are FitResult.sample's for the same key (compiled there, so equal up to rounding).
    draws = jax.jit(lambda params, key: bbvi.sample(FAMILY, params, key, (NUM_DRAWS,)))(fitted.params, key)
    np.testing.assert_allclose(post["mu"].values[0], draws["mu"], rtol=1e-6)
    np.testing.assert_allclose(post["scales.sigma"].values[0], draws["scales"]["sigma"], rtol=1e-6)
    np.testing.assert_allclose(post["pair[1]"].values[0], draws["pair"][1], rtol=1e-6)
    assert np.all(post["scales.sigma"].values > 0)

    trace = idata[export.TRACE_GROUP]
    assert trace["elbo"].dims == ("step",)
    np.testing.assert_array_equal(trace["elbo"].values, np.asarray(fitted.elbo))
    np.testing.assert_array_equal(trace["step"].values, np.arange(fitted.elbo.shape[0]))
    assert idata.attrs["inference_library"] == "bbvi"

    # ArviZ reads it: its summary of the draws is their sample mean and sd.
    summary = az.summary(idata, round_to="none")
    assert list(summary.index)[:2] == ["mu[0]", "mu[1]"]
    np.testing.assert_allclose(summary.loc["mu[1]", "mean"], draws["mu"][:, 1].mean(), rtol=1e-5)
    np.testing.assert_allclose(
        summary.loc["scales.sigma", "sd"], draws["scales"]["sigma"].std(ddof=1), rtol=1e-4
    )


def test_bare_array_is_named_z(az):
    result = _Result(bbvi.MeanFieldGaussian((2,)), {"loc": jnp.ones(2), "log_scale": jnp.zeros(2)})
    idata = export.to_inference_data(result, jax.random.key(0), 10)
    assert list(idata.posterior.data_vars) == ["z"] and idata.posterior["z"].shape == (1, 10, 2)


def _params(family):
    """Parameters for the family, made on the host (eager jax would compile op by op)."""
    rng = np.random.default_rng(0)
    return jax.tree.map(lambda spec: rng.normal(size=spec.shape).astype(spec.dtype), tree.param_spec(family))


class _Result:
    """A fit's result as `to_inference_data` reads it, with the facts the lead's `FitResult` adds."""

    def __init__(self, family, params, elbo=None, **facts):
        self.family, self.params = family, params
        self.elbo = jnp.arange(6.0) if elbo is None else elbo
        self.__dict__.update(facts)


def model(y):
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    sigma = numpyro.sample("sigma", dist.HalfNormal(1.0).expand([2]).to_event(1))
    numpyro.deterministic("spread", sigma.sum())
    numpyro.sample("y", dist.Normal(mu, sigma[0]), obs=y)


def test_numpyro_model_with_diagnostics_and_fit_facts(az, tmp_path):
    m = from_numpyro(model, jnp.array([0.5, -0.1, 0.9]))
    rng = np.random.default_rng(0)
    n = 40
    draws = {"mu": rng.normal(size=n).astype(np.float32), "sigma": rng.normal(size=(n, 2)).astype(np.float32)}
    raw = rng.normal(size=n).astype(np.float32)
    diagnostics = Diagnostics(  # made by hand: known values, no fit to compile
        draws=draws,
        log_weights=raw - np.logaddexp.reduce(raw),
        raw_log_weights=raw,
        khat=jnp.float32(0.31),
        elbo=jnp.float32(-4.5),
        elbo_se=jnp.float32(0.05),
        log_evidence=jnp.float32(-4.2),
        log_evidence_se=jnp.float32(0.02),
        ess=jnp.float32(35.0),
    )
    elbo = jnp.array([-9.0, -6.0, -5.0, -4.5, jnp.nan, jnp.nan])  # a fit stopped early under jit
    result = _Result(
        m.family, None, elbo, num_steps=jnp.int32(4), num_skipped=jnp.int32(1), converged=jnp.bool_(True)
    )
    idata = export.to_inference_data(result, None, model=m, diagnostics=diagnostics)
    assert set(idata.groups()) == {"posterior", "sample_stats", "observed_data", export.TRACE_GROUP}

    post = idata.posterior
    assert set(post.data_vars) == {"mu", "sigma", "spread"}  # by site name, deterministic too
    assert post["sigma"].shape == (1, n, 2)
    np.testing.assert_allclose(post["sigma"].values[0], np.exp(draws["sigma"]), rtol=1e-6)  # on the support
    np.testing.assert_allclose(post["spread"].values[0], np.exp(draws["sigma"]).sum(-1), rtol=1e-6)
    np.testing.assert_array_equal(post["mu"].values[0], draws["mu"])

    stats = idata.sample_stats
    assert stats["log_weight"].dims == ("chain", "draw")
    np.testing.assert_allclose(stats["log_weight"].values[0], diagnostics.log_weights, rtol=1e-6)
    np.testing.assert_array_equal(stats["raw_log_weight"].values[0], raw)
    np.testing.assert_array_equal(idata.observed_data["y"].values, np.float32([0.5, -0.1, 0.9]))

    expected = {
        "inference_library": "bbvi",
        "num_steps": 4,
        "num_skipped": 1,
        "converged": 1,
        "khat": 0.31,
        "elbo": -4.5,
        "elbo_se": 0.05,
        "log_evidence": -4.2,
        "log_evidence_se": 0.02,
        "ess": 35.0,
    }
    for attrs in (idata.attrs, post.attrs, stats.attrs, idata[export.TRACE_GROUP].attrs):
        assert {name: attrs[name] for name in expected} == pytest.approx(expected)
    np.testing.assert_array_equal(idata[export.TRACE_GROUP]["elbo"].values, [-9.0, -6.0, -5.0, -4.5])

    # The attributes are plain numbers: the data survives a round trip through netCDF.
    path = tmp_path / "fit.nc"
    idata.to_netcdf(str(path))
    loaded = az.from_netcdf(str(path))
    assert loaded.posterior.attrs["khat"] == pytest.approx(0.31)
    np.testing.assert_array_equal(loaded[export.TRACE_GROUP]["elbo"].values, [-9.0, -6.0, -5.0, -4.5])


def test_with_bbvi_diagnostics(az):
    m = from_numpyro(model, jnp.array([0.5, -0.1, 0.9]))
    params = _params(m.family)
    d = diagnose(m.log_joint, m.family, params, jax.random.key(0), num_draws=64)
    idata = export.to_inference_data(_Result(m.family, params), None, model=m, diagnostics=d)
    on_supports = m.constrain(d.draws, deterministic=True)
    for name, value in on_supports.items():
        np.testing.assert_array_equal(idata.posterior[name].values[0], value)
    np.testing.assert_array_equal(idata.sample_stats["log_weight"].values[0], d.log_weights)
    np.testing.assert_array_equal(idata.sample_stats["raw_log_weight"].values[0], d.raw_log_weights)
    assert idata.posterior.attrs["khat"] == float(d.khat) and idata.attrs["verdict"] == d.verdict
    assert idata.attrs["log_evidence"] == float(d.log_evidence) and idata.attrs["ess"] == float(d.ess)


def test_numpyro_model_draws_by_site(az):
    m = from_numpyro(model, jnp.array([0.5, -0.1, 0.9]))
    params = _params(m.family)
    idata = export.to_inference_data(_Result(m.family, params), jax.random.key(1), 30, model=m)
    expected = m.sample(_Result(m.family, params), jax.random.key(1), 30)
    assert set(idata.posterior.data_vars) == set(expected) == {"mu", "sigma", "spread"}
    for name, value in expected.items():
        np.testing.assert_array_equal(idata.posterior[name].values[0], value)


def test_bad_arguments(az):
    result = _Result(bbvi.MeanFieldGaussian(()), None)
    with pytest.raises(ValueError, match="num_draws must be a positive int"):
        export.to_inference_data(result, jax.random.key(0), 0)
    with pytest.raises(ValueError, match="needs a key"):
        export.to_inference_data(result, None)


def test_without_arviz_a_clear_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "arviz", None)  # `import arviz` now raises ImportError
    # The module imports without arviz (so `import bbvi` never needs it) ...
    importlib.reload(export)
    # ... and the export says how to get it.
    with pytest.raises(ImportError, match=r"pip install 'bbvi\[arviz\]'"):
        export.to_inference_data(None, jax.random.key(0))
