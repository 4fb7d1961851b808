"""Data-parallel fits: data sharded over a mesh of devices give the same fit as on one device.

XLA fixes the number of CPU devices when the backend starts, so the check runs in a fresh process
with `--xla_force_host_platform_device_count=4`: four CPU devices stand in for four accelerators.
Nothing in `fit` is specific to sharding: `jax.jit` propagates the data's sharding, so the per-datum
log-likelihood is computed where its rows live and XLA inserts the reduction.
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
    import jax, numpy as np, numpyro.distributions as dist
    from jax.sharding import Mesh, NamedSharding, PartitionSpec
    import bbvi
    from bbvi.models import logistic_regression

    assert jax.device_count() == 4, jax.devices()
    data = logistic_regression.simulate(seed=0, num_data=4000, dim=10)
    full = (data.x, data.y)

    def log_joint(w, batch):
        x, y = batch
        return dist.Normal(0, 1).log_prob(w).sum() + dist.Bernoulli(logits=x @ w).log_prob(y).sum()

    mesh = Mesh(np.array(jax.devices()), ("data",))
    sharded = jax.device_put(full, NamedSharding(mesh, PartitionSpec("data")))
    shards = sharded[0].addressable_shards
    assert len(shards) == 4 and shards[0].data.shape == (1000, 10)  # a quarter of the rows each

    family = bbvi.MeanFieldGaussian((10,))
    for batch_size in (None, 400):  # every row each step; minibatches drawn across the shards
        fits = [
            bbvi.fit(log_joint, family, key=jax.random.key(0), num_steps=300, data=d,
                     batch_size=batch_size, progress_bar=False)
            for d in (full, sharded)
        ]
        one, many = (np.asarray(f.elbo) for f in fits)
        # The same arithmetic up to the order of float32 sums across shards (~1e-7 relative).
        scale = np.abs(one).max()
        assert np.abs(one - many).max() <= 1e-5 * scale, (batch_size, np.abs(one - many).max(), scale)
        for a, b in zip(jax.tree.leaves(fits[0].params), jax.tree.leaves(fits[1].params)):
            np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-4)
        print("ok", batch_size, np.abs(one - many).max() / scale)
    """
)


def test_fit_on_data_sharded_over_four_devices_matches_one_device():
    env = {
        **os.environ,
        "XLA_FLAGS": os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4",
    }
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.count("ok") == 2, proc.stdout
