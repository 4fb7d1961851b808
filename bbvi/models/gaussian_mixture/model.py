"""The Gaussian mixture's data, its log-joints for black-box VI, their families, and label matching.

`log_joint_fn` is the full model over `{"mu": (K, D), "c": (N,) ints}`, fitted with the mean field
`family` (pathwise gradients for the means, score-function gradients for the assignments);
`collapsed_log_joint_fn` sums the assignments out,

    log p(x, mu) = sum_k log N(mu_k; 0, sigma^2 I) + sum_i log sum_k (1/K) N(x_i; mu_k, lambda^2 I),

and is fitted with `collapsed_family`, a Gaussian over the means alone.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist

import bbvi
from bbvi.models._data import data_file

OLD_FAITHFUL_FILE = "old_faithful.csv"


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["x", "prior_scale", "noise_scale", "means", "assignments"],
    meta_fields=["num_clusters"],
)
@dataclasses.dataclass(frozen=True)
class Data:
    """Observations and the model's known hyperparameters; a pytree, so it can be passed to `jit`.

    Attributes:
        x: the observations, shape `(N, D)`.
        num_clusters: `K`, static (it sets shapes).
        prior_scale: `sigma`, the prior sd of each cluster mean's coordinates.
        noise_scale: `lambda`, the sd of each observation's coordinates about its cluster mean.
        means: the true cluster means `(K, D)` where the data were simulated, else None.
        assignments: the true assignments `(N,)` where the data were simulated, else None.
    """

    x: jax.Array
    num_clusters: int
    prior_scale: float = 5.0
    noise_scale: float = 1.0
    means: jax.Array | None = None
    assignments: jax.Array | None = None


def check_data(data: Data) -> tuple[int, int, int]:
    """`(N, K, D)`, with clear errors for data the model cannot use (called outside any trace)."""
    if not isinstance(data, Data):
        raise TypeError(f"expected gaussian_mixture.Data, got {type(data).__name__}")
    if jnp.ndim(data.x) != 2:
        raise ValueError(f"Data.x must have shape (N, D), got {jnp.shape(data.x)}")
    k = data.num_clusters
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 2:
        raise ValueError(f"Data.num_clusters must be an int >= 2, got {k!r}")
    for name in ("prior_scale", "noise_scale"):
        value = getattr(data, name)
        try:
            concrete = np.asarray(value)
        except jax.errors.TracerArrayConversionError:  # traced: checked where the trace began
            continue
        if not np.all(concrete > 0):
            raise ValueError(f"Data.{name} must be positive, got {value!r}")
    n, d = data.x.shape
    if n < k:
        raise ValueError(f"{n} observations cannot fill {k} clusters")
    return n, int(k), d


def checked_jit(fn):
    """`jax.jit(fn)` for `fn(data, ...)`, with `check_data` run first, outside the trace (where the
    positivity of the scales can still be seen)."""
    jitted = jax.jit(fn)

    @functools.wraps(fn)
    def wrapper(data, *args, **kwargs):
        check_data(data)
        return jitted(data, *args, **kwargs)

    return wrapper


def simulate(
    seed: int = 0,
    num_data: int = 100,
    num_clusters: int = 3,
    dim: int = 2,
    prior_scale: float = 5.0,
    noise_scale: float = 1.0,
) -> Data:
    """Data drawn from the model itself: means from the prior, uniform assignments, Gaussian noise.

    With the defaults (prior sd 5, noise sd 1) the clusters are usually well separated; the truth is
    kept in `Data.means` and `Data.assignments`.
    """
    if num_data < num_clusters:
        raise ValueError(f"num_data ({num_data}) must be at least num_clusters ({num_clusters})")
    x, means, assignments = _draw(jax.random.key(seed), num_data, num_clusters, dim, prior_scale, noise_scale)
    return Data(x, num_clusters, prior_scale, noise_scale, means, assignments)


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _draw(key, num_data, num_clusters, dim, prior_scale, noise_scale):
    key_mu, key_c, key_x = jax.random.split(key, 3)
    means = prior_scale * jax.random.normal(key_mu, (num_clusters, dim))
    assignments = jax.random.randint(key_c, (num_data,), 0, num_clusters)
    x = means[assignments] + noise_scale * jax.random.normal(key_x, (num_data, dim))
    return x, means, assignments


def load_old_faithful(path=None) -> np.ndarray:
    """The Old Faithful geyser data in its own units, `(272, 2)`: eruption time (min), waiting time (min).

    Raises `bbvi.models._data.DataNotFoundError` (a `FileNotFoundError`) if the file is not found.
    """
    columns = np.loadtxt(data_file(OLD_FAITHFUL_FILE, path), delimiter=",", skiprows=1, usecols=(1, 2))
    return columns.astype(np.float32)


def old_faithful(
    num_clusters: int = 2, prior_scale: float = 2.0, noise_scale: float = 0.4, path=None
) -> Data:
    """Old Faithful with each column standardised (mean 0, sd 1), so one isotropic noise scale fits both.

    The two eruption types then have within-cluster sds of about 0.3 to 0.5 per coordinate, hence the
    default `noise_scale`; a prior sd of 2 covers every standardised mean.
    """
    raw = load_old_faithful(path)
    x = (raw - raw.mean(axis=0)) / raw.std(axis=0)
    return Data(jnp.asarray(x), num_clusters, prior_scale, noise_scale)


def log_joint_fn(data: Data):
    """`z -> log p(x, mu, c)` for latents `{"mu": (K, D) floats, "c": (N,) ints in 0..K-1}`."""
    _, k, _ = check_data(data)

    def log_joint(z):
        mu, c = z["mu"], z["c"]
        prior_mu = dist.Normal(0.0, data.prior_scale).log_prob(mu).sum()
        prior_c = dist.Categorical(logits=jnp.zeros(k)).log_prob(c).sum()
        return prior_mu + prior_c + dist.Normal(mu[c], data.noise_scale).log_prob(data.x).sum()

    return log_joint


def collapsed_log_joint_fn(data: Data):
    """`mu -> log p(x, mu)` for means `(K, D)`: the assignments summed out (a mixture likelihood)."""
    _, k, _ = check_data(data)

    def log_joint(mu):
        prior = dist.Normal(0.0, data.prior_scale).log_prob(mu).sum()
        mixture = dist.MixtureSameFamily(
            dist.Categorical(logits=jnp.zeros(k)), dist.Normal(mu, data.noise_scale).to_event(1)
        )
        return prior + mixture.log_prob(data.x).sum()

    return log_joint


def family(data: Data) -> dict:
    """The mean field `q(mu) q(c)` as a bbvi family.

    `{"mu": MeanFieldGaussian((K, D)), "c": Categorical((N,), K)}`.

    Its Gaussian has one sd per coordinate, a superset of the isotropic `s_k^2 I` of the closed-form
    updates; the optimum is isotropic all the same (every coordinate of mu_k has the same precision).
    """
    n, k, d = check_data(data)
    return {"mu": bbvi.MeanFieldGaussian((k, d)), "c": bbvi.Categorical((n,), k)}


def collapsed_family(data: Data) -> bbvi.MeanFieldGaussian:
    """q(mu) alone, for `collapsed_log_joint_fn`."""
    _, k, d = check_data(data)
    return bbvi.MeanFieldGaussian((k, d))


@checked_jit
def initial_means(data: Data, key: jax.Array) -> jax.Array:
    """K observations spread over the data (farthest-point traversal from a random first one), `(K, D)`.

    Each next mean is the observation farthest from those already chosen, so well-separated clusters
    each get one, where K random observations would often put two in one cluster: a local optimum that
    coordinate ascent and EM cannot leave.
    """
    n, k, _ = check_data(data)
    x = data.x
    chosen = [jax.random.randint(key, (), 0, n)]
    sq_dist = jnp.sum((x - x[chosen[0]]) ** 2, axis=-1)
    for _ in range(k - 1):
        chosen.append(jnp.argmax(sq_dist))
        sq_dist = jnp.minimum(sq_dist, jnp.sum((x - x[chosen[-1]]) ** 2, axis=-1))
    return x[jnp.stack(chosen)]


def init_bbvi_params(data: Data, key: jax.Array, collapsed: bool = False) -> dict:
    """Parameters for `family(data)` (or `collapsed_family`) starting from `initial_means`.

    The means start at spread-out observations with sd `noise_scale`, the assignments uniform: the
    start CAVI and EM get, so all algorithms are compared from the same place.
    """
    _, k, d = check_data(data)
    mu = {
        "loc": initial_means(data, key),
        "log_scale": jnp.full((k, d), jnp.log(data.noise_scale), dtype=data.x.dtype),
    }
    if collapsed:
        return mu
    return {"mu": mu, "c": bbvi.init(family(data)["c"], key)}


def match_labels(reference: jax.Array, means: jax.Array) -> np.ndarray:
    """The relabelling `perm` for which `means[perm]` is closest to `reference` (both `(K, D)`).

    Mixture posteriors are symmetric under permutations of the labels, so fits are compared after
    matching. Exhaustive over the K! permutations (K up to 8), on the host.
    """
    reference, means = np.asarray(reference), np.asarray(means)
    k = reference.shape[0]
    if means.shape != reference.shape:
        raise ValueError(f"shapes differ: reference {reference.shape}, means {means.shape}")
    if k > 8:
        raise ValueError(f"match_labels tries all K! relabellings; K = {k} is too many")
    cost = np.sum((reference[:, None, :] - means[None, :, :]) ** 2, axis=-1)  # (reference, fitted)
    best = min(itertools.permutations(range(k)), key=lambda perm: cost[np.arange(k), perm].sum())
    return np.asarray(best)
