"""Registry cases and float64 oracles for `OneHotCategorical` (categorical draws as one-hot vectors).

Registered apart from `Categorical`'s oracles, which the subclass would otherwise inherit: its draws
carry a trailing axis of categories.
"""

from __future__ import annotations

import itertools
import math

import jax.numpy as jnp
import numpy as np
from scipy.special import log_softmax, softmax

import bbvi

from ._helpers import Case, draw_dtype, param_shapes, reference_log_prob, reference_statistics, support_points

CASES = [
    Case("one_hot_3_k4", lambda: bbvi.OneHotCategorical((3,), 4)),
    Case("one_hot_tree", lambda: {"c": bbvi.OneHotCategorical((), 3), "b": bbvi.Bernoulli((2,))}),
]


@param_shapes.register
def _(family: bbvi.OneHotCategorical):
    return {"logits": family.shape + (family.num_categories,)}


@draw_dtype.register
def _(family: bbvi.OneHotCategorical):
    return jnp.dtype(jnp.int32)


def _one_hot_batch(family, z) -> np.ndarray:
    z = np.asarray(z, np.float64).reshape((-1,) + family.shape + (family.num_categories,))
    # A draw must be one-hot: exactly one 1 per categorical latent.
    assert np.all((z == 0) | (z == 1)) and np.all(z.sum(-1) == 1), "draws are not one-hot"
    return z


@reference_log_prob.register
def _(family: bbvi.OneHotCategorical, params, z):
    z = _one_hot_batch(family, z)
    log_p = log_softmax(np.asarray(params["logits"], np.float64), axis=-1)
    return (z * log_p).reshape(len(z), -1).sum(axis=1)


@reference_statistics.register
def _(family: bbvi.OneHotCategorical, params):
    def stats(z):  # category frequencies per coordinate: the mean of the one-hot vectors
        return _one_hot_batch(family, z).reshape(len(np.asarray(z)), -1)

    return stats, softmax(np.asarray(params["logits"], np.float64), axis=-1).ravel()


@support_points.register
def _(family: bbvi.OneHotCategorical):
    k, size = family.num_categories, math.prod(family.shape)
    indices = np.array(list(itertools.product(range(k), repeat=size)), np.int64).reshape((-1,) + family.shape)
    return np.eye(k, dtype=np.int32)[indices]
