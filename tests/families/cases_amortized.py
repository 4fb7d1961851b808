"""Registry cases for `Batched` (data-free), and its oracles: the base's oracles, copy by copy.

`Amortized` needs data, so it is not in the registry; conditioning it gives a `Batched` family, whose
contract (shapes, density, moments, entropy, jit/vmap, ...) these cases check. Enumeration over the
support is not registered: `support_points` dispatches on the type, so registering it for `Batched`
would claim it for continuous bases too; test_amortized.py enumerates a batch of Bernoullis itself.
"""

from __future__ import annotations

import jax
import numpy as np
from numpyro.distributions import constraints

import bbvi
from bbvi.families.amortized import Batched

from ._helpers import Case, draw_dtype, param_shapes, reference_log_prob, reference_statistics

MFG = bbvi.MeanFieldGaussian

CASES = [
    Case("batched_mfg_3x2", lambda: Batched(MFG((2,)), 3)),
    Case("batched_bernoulli", lambda: Batched(bbvi.Bernoulli((2,)), 2)),
    Case("batched_positive", lambda: Batched(bbvi.Constrained(MFG(()), constraints.positive), 2)),
]


def _copy(params, b: int):
    """The parameters of copy `b` (params are the base's with a leading batch axis)."""
    return jax.tree.map(lambda x: np.asarray(x)[b], params)


def _copies(family: Batched, z) -> np.ndarray:
    """A batch of draws (n,) + event_shape, as an array (n, batch_size, ...) to index copy by copy."""
    return np.asarray(z).reshape((-1,) + tuple(family.event_shape))


@param_shapes.register
def _(family: Batched):
    def batched(shape):
        return (family.batch_size,) + tuple(shape)

    return jax.tree.map(batched, param_shapes(family.base), is_leaf=lambda x: isinstance(x, tuple))


@draw_dtype.register
def _(family: Batched):
    return draw_dtype(family.base)


@reference_log_prob.register
def _(family: Batched, params, z):
    z = _copies(family, z)  # independent copies: log q is the sum of the copies' log-densities
    return sum(reference_log_prob(family.base, _copy(params, b), z[:, b]) for b in range(family.batch_size))


@reference_statistics.register
def _(family: Batched, params):
    pairs = [reference_statistics(family.base, _copy(params, b)) for b in range(family.batch_size)]

    def stats(z):
        z = _copies(family, z)
        return np.concatenate([g(z[:, b]) for b, (g, _) in enumerate(pairs)], axis=1)

    return stats, np.concatenate([expected for _, expected in pairs])
