"""Fits in double precision, where the user enables it.

`jax_enable_x64` is process-wide and read at start-up, so the check runs in a fresh process rather
than switching it inside the test session (tests share worker processes).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, numpy as np, optax
    import bbvi
    from bbvi.models import linear_regression

    assert jax.config.jax_enable_x64
    data = linear_regression.simulate(seed=0, num_data=40, dim=3)
    data = data._replace(x=jnp.asarray(data.x, jnp.float64), y=jnp.asarray(data.y, jnp.float64))
    family = {"w": bbvi.MeanFieldGaussian((3,)), "c": bbvi.Bernoulli(())}  # pathwise and score leaves
    log_joint = lambda z: linear_regression.log_joint_fn(data)(z["w"]) - 0.1 * z["c"]
    optimizer = optax.adam(optax.cosine_decay_schedule(0.05, 3000))  # settles at the optimum
    result = bbvi.fit(log_joint, family, key=jax.random.key(0), num_steps=3000, optimizer=optimizer,
                      progress_bar=False)
    dtypes = {str(x.dtype) for x in jax.tree.leaves((result.params, result.opt_state, result.elbo))}
    assert dtypes <= {"float64", "int32", "int64"}, dtypes
    assert result.params["w"]["loc"].dtype == jnp.float64 and result.elbo.dtype == jnp.float64
    assert result.sample(jax.random.key(1), 5)["w"].dtype == jnp.float64
    # Mean field on a Gaussian posterior has the exact mean at its optimum. A coarse check (measured
    # 0.03 sd; the fit's accuracy is tested in float32 elsewhere): a broken float64 path is far off.
    mean, cov = linear_regression.exact_posterior(data)
    err = np.abs(np.asarray(result.params["w"]["loc"]) - np.asarray(mean)) / np.sqrt(np.diag(cov))
    assert err.max() < 0.1, err
    print("ok")
    """
)


def test_a_fit_runs_in_float64_when_enabled():
    env = {**os.environ, "JAX_ENABLE_X64": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.strip().endswith("ok"), proc.stdout
