"""Bayesian logistic regression: w ~ N(0, I), y_n ~ Bernoulli(sigmoid(x_n . w)).

The special case K = 2 of softmax regression (`softmax_regression`) with the class-0 weights pinned at
zero. As there, the Gaussian prior is not conjugate: a Gaussian q is an assumption, good with
plenty of data. `german_credit` loads the classic benchmark (UCI Statlog German credit, N = 1000,
D = 25 with the bias) and `german_credit_reference` its reference posterior moments and log evidence.
"""

from __future__ import annotations

import json
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist

import bbvi
from bbvi.models._data import data_file
from bbvi.models._regression_reference import ImportanceEstimate, importance_sampling, laplace

GERMAN_CREDIT_FILE = "german_credit_numeric.txt"
GERMAN_CREDIT_REFERENCE_FILE = "german_credit_reference.json"


class Data(NamedTuple):
    x: jax.Array
    y: jax.Array


class Reference(NamedTuple):
    """Reference posterior moments of the weights (bias last) and the log evidence, with its MC error."""

    mean: np.ndarray
    sd: np.ndarray
    log_evidence: float
    log_evidence_se: float


def simulate(seed: int = 0, num_data: int = 10_000, dim: int = 100) -> Data:
    """Standard-normal features and weights scaled so the logits are of order one."""
    kx, kw, ky = jax.random.split(jax.random.key(seed), 3)
    x = jax.random.normal(kx, (num_data, dim))
    w = jax.random.normal(kw, (dim,)) / jnp.sqrt(dim)
    y = jax.random.bernoulli(ky, jax.nn.sigmoid(x @ w)).astype(jnp.float32)
    return Data(x, y)


def log_joint_fn(data: Data):
    """`w -> log p(y, w)`."""

    def log_joint(w):
        prior = dist.Normal(0.0, 1.0).log_prob(w).sum()
        return prior + dist.Bernoulli(logits=data.x @ w).log_prob(data.y).sum()

    return log_joint


def mean_field_family(dim: int) -> bbvi.MeanFieldGaussian:
    """Independent Normals over the weights."""
    return bbvi.MeanFieldGaussian((dim,))


def full_rank_family(dim: int) -> bbvi.FullRankGaussian:
    """A dense Gaussian over the weights: it can hold their posterior correlations."""
    return bbvi.FullRankGaussian(dim)


def laplace_approximation(data: Data, num_newton_steps: int = 30) -> tuple[jax.Array, jax.Array]:
    """The posterior mode of w and the inverse of the negative Hessian there (Newton's method)."""
    return laplace(log_joint_fn(data), data.x.shape[1], num_newton_steps)


def importance_reference(
    data: Data, key: jax.Array, num_draws: int = 20_000, df: int = 5, batch_size: int = 5_000
) -> ImportanceEstimate:
    """Posterior means and sds of w and log p(y), by self-normalised importance sampling with a
    Student-t proposal centred on the Laplace approximation (see `bbvi.models._regression_reference`).
    """
    log_joint = log_joint_fn(data)
    mode, cov = laplace(log_joint, data.x.shape[1])
    return importance_sampling(log_joint, mode, cov, key, num_draws, df, batch_size)


def german_credit(path=None) -> Data:
    """The German credit data as the reference defines them (N = 1000, D = 25).

    The 24 numeric features are standardised with the population sd (ddof = 0), a bias column of
    ones is appended last, and y = 1 marks bad credit (label 2 in the file's last column).

    Args:
        path: the folder holding `german_credit_numeric.txt` (default: `$BBVI_DATA`, else
            `../shared/data`; see `bbvi.models._data`).

    Raises:
        DataNotFoundError: the file is not there (a `FileNotFoundError`, naming where it looked).
    """
    table = np.loadtxt(data_file(GERMAN_CREDIT_FILE, path), skiprows=1)  # the first row names columns
    features, labels = table[:, :-1], table[:, -1]
    if features.shape[1] != 24 or not np.isin(labels, (1, 2)).all():
        raise ValueError(
            f"{GERMAN_CREDIT_FILE}: expected 24 features and labels in {{1, 2}}, got {features.shape[1]} "
            f"features and labels {np.unique(labels)}"
        )
    standardised = (features - features.mean(0)) / features.std(0)  # float64, then one cast
    x = np.concatenate([standardised, np.ones((len(table), 1))], axis=1)
    return Data(jnp.asarray(x, jnp.float32), jnp.asarray(labels == 2, jnp.float32))


def german_credit_reference(path=None) -> Reference:
    """The reference posterior of `german_credit` under `log_joint_fn`: 25 means and sds, log Z.

    From `german_credit_reference.json` (importance sampling; log Z = -529.18, standard error 0.003).
    """
    with open(data_file(GERMAN_CREDIT_REFERENCE_FILE, path)) as f:
        ref = json.load(f)["german_credit_numeric"]
    return Reference(np.asarray(ref["mean"]), np.asarray(ref["sd"]), ref["log_Z"], ref["log_Z_se"])
