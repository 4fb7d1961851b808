"""A binary latent factor model: K on/off causes, each adding its own pattern to a Gaussian output.

    z_j ~ Bernoulli(pi),  j = 1..K,        x ~ N(W z + b, sigma^2 I_N)

with the loadings W (N x K), the offset b, the noise scale sigma and the prior probability pi known.
With many data points x_i (rows of `data.x`), each has its own z_i and the joint is the product.

The posterior p(z | x) lives on 2^K states, so for small K it is computed exactly by enumeration
(`exact_posterior`): the state probabilities, the marginals p(z_j = 1 | x) and log p(x). Explaining
away couples the factors: two factors whose patterns overlap compete to explain the same output.

The mean field q(z) = prod_j Bernoulli(z_j; p_j) has a closed-form ELBO (`mean_field_elbo`). With
r = x - b and p the vector of probabilities,

    ELBO(p) = sum_j [p_j log pi + (1 - p_j) log(1 - pi) + H(p_j)]
              + log N(x; W p + b, sigma^2 I) - sum_j ||W_j||^2 p_j (1 - p_j) / (2 sigma^2),

(the last term is E||W z - W p||^2 / (2 sigma^2), the spread of W z under q) and the coordinate-ascent
(CAVI) update of one factor given the others is exact:

    logit p_j = logit pi + [W_j . (r - sum_{k != j} W_k p_k) - ||W_j||^2 / 2] / sigma^2.

The ELBO is strictly concave in each p_j alone and the update is its maximiser, so the ELBO never
decreases (`cavi` records it after every coordinate update). It can have several fixed points;
`best_cavi` keeps the best of a few random restarts.

Black-box VI fits the same mean field, `family(K)` = `bbvi.Bernoulli((K,))`, with score-function
gradients and a leave-one-out or Rao-Blackwellised (per factor) baseline. The amortised version,
`amortized_family`, maps each x_i through a network to its p_i, trained on minibatches of the rows
with `minibatch_log_joint_fn`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpyro.distributions as dist

import bbvi

#: The enumeration reference holds 2^K states per datum; past this it is the wrong tool.
MAX_ENUMERATED_FACTORS = 20


class Data(NamedTuple):
    """Observations and the known model constants.

    Attributes:
        x: the outputs, shape `(N,)` for one datum or `(num_data, N)` for many.
        weights: the loadings W, shape `(N, K)`: column j is factor j's pattern.
        bias: the offset b, shape `(N,)`.
        noise_scale: sigma, the output noise's standard deviation.
        prior_prob: pi, the prior probability that a factor is on.
    """

    x: jax.Array
    weights: jax.Array
    bias: jax.Array
    noise_scale: float
    prior_prob: float

    @property
    def num_factors(self) -> int:
        return self.weights.shape[1]

    @property
    def num_outputs(self) -> int:
        return self.weights.shape[0]


def _check(data: Data) -> None:
    if data.weights.ndim != 2:
        raise ValueError(f"latent_factor: weights must have shape (N, K), got {data.weights.shape}")
    n = data.weights.shape[0]
    if data.x.ndim not in (1, 2) or data.x.shape[-1] != n or data.bias.shape != (n,):
        raise ValueError(
            f"latent_factor: x must have shape (N,) or (num_data, N) and bias (N,) with N = {n} "
            f"(the rows of weights), got x {data.x.shape} and bias {data.bias.shape}"
        )
    if isinstance(data.prior_prob, jax.core.Tracer) or isinstance(data.noise_scale, jax.core.Tracer):
        return  # under jit: the values were checked, if at all, where the data were made
    if not 0.0 < float(data.prior_prob) < 1.0:
        raise ValueError(f"latent_factor: prior_prob must be in (0, 1), got {data.prior_prob!r}")
    if not float(data.noise_scale) > 0.0:
        raise ValueError(f"latent_factor: noise_scale must be positive, got {data.noise_scale!r}")


def simulate(
    seed: int = 0,
    num_factors: int = 6,
    num_outputs: int = 10,
    num_data: int | None = None,
    noise_scale: float = 1.5,
    prior_prob: float = 0.3,
    weight_scale: float = 1.0,
) -> Data:
    """Draw loadings W ~ N(0, weight_scale^2), an offset b ~ N(0, 1), and data from the model.

    `num_data=None` gives one datum, `x` of shape `(num_outputs,)`; an int gives that many rows.
    """
    for name, value in [("num_factors", num_factors), ("num_outputs", num_outputs)]:
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"latent_factor.simulate: {name} must be a positive int, got {value!r}")
    if num_data is not None and (not isinstance(num_data, int) or num_data < 1):
        raise ValueError(f"latent_factor.simulate: num_data must be None or a positive int, got {num_data!r}")
    batch = () if num_data is None else (num_data,)
    x, weights, bias = _simulate(
        jax.random.key(seed), num_outputs, num_factors, batch, noise_scale, prior_prob, weight_scale
    )
    data = Data(x, weights, bias, noise_scale, prior_prob)
    _check(data)
    return data


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _simulate(key, num_outputs, num_factors, batch, noise_scale, prior_prob, weight_scale):
    # One compiled program: drawing eagerly would compile each small operation separately.
    kw, kb, kz, kx = jax.random.split(key, 4)
    weights = weight_scale * jax.random.normal(kw, (num_outputs, num_factors))
    bias = jax.random.normal(kb, (num_outputs,))
    z = jax.random.bernoulli(kz, prior_prob, batch + (num_factors,))
    mean = z.astype(weights.dtype) @ weights.T + bias
    return mean + noise_scale * jax.random.normal(kx, mean.shape), weights, bias


def _log_joint(data: Data, z, x) -> jax.Array:
    """log p(x, z) summed over the data points: z has shape `x.shape[:-1] + (K,)` (0/1 values)."""
    prior = dist.Bernoulli(probs=data.prior_prob).log_prob(z).sum()
    mean = z.astype(data.weights.dtype) @ data.weights.T + data.bias
    return prior + dist.Normal(mean, data.noise_scale).log_prob(x).sum()


def log_joint_fn(data: Data):
    """`z -> log p(x, z)`, with z of shape `(K,)` for one datum or `(num_data, K)` for many."""
    _check(data)
    return lambda z: _log_joint(data, z, data.x)


def minibatch_log_joint_fn(data: Data):
    """`(z, batch) -> log p(batch, z)` for `fit(..., data=data.x, batch_size=B)` with an amortised family.

    `batch` holds B rows of `data.x` and z has shape `(B, K)`. It is *not* scaled by num_data / B:
    every latent here is local, so the minibatch objective is the sum of the B per-datum ELBOs, and
    bbvi adds q's entropy of those B latents unscaled. Scaling the log-joint alone would maximise
    (num_data / B) E[log p] + H(q), whose optimum over all q is the posterior to the power num_data / B
    (too sharp). The unscaled sum is the full-data ELBO times B / num_data in expectation, the same
    optimum; multiply the ELBO trace by num_data / B to read it on the full-data scale. (Scale the
    log-joint when there are global latents, whose one q is shared by all data.)
    """
    _check(data)
    if data.x.ndim != 2:
        raise ValueError(
            f"latent_factor: minibatches need many data points, x (num_data, N); got {data.x.shape}"
        )
    return lambda z, batch: _log_joint(data, z, batch)


def family(num_factors: int) -> bbvi.Bernoulli:
    """The mean field q(z) = prod_j Bernoulli(p_j) (parameters `{"logits"}`, p = sigmoid(logits))."""
    return bbvi.Bernoulli((num_factors,))


def amortized_family(
    num_outputs: int, num_factors: int, batch_size: int, hidden_sizes=(64,), activation: str = "tanh"
) -> bbvi.Amortized:
    """q(z_i | x_i) = prod_j Bernoulli(sigmoid(NN(x_i)_j)): an MLP from each datum to its K logits."""
    return bbvi.Amortized(
        family(num_factors),
        data_shape=(num_outputs,),
        batch_size=batch_size,
        hidden_sizes=hidden_sizes,
        activation=activation,
    )


def encoder_logits(amortized: bbvi.Amortized, params, x: jax.Array) -> jax.Array:
    """The amortised q's logits for every row of `x` (any number of rows), shape `(len(x), K)`."""
    whole = dataclasses.replace(amortized, batch_size=x.shape[0])  # the encoder does not depend on B
    _, per_datum = whole.condition(params, x)
    return per_datum["logits"]


# --- exact posterior by enumeration --------------------------------------------------------------


def states(num_factors: int) -> jax.Array:
    """All 2^K configurations, shape `(2^K, K)` int32, in `itertools.product([0, 1], repeat=K)` order."""
    if not isinstance(num_factors, int) or not 1 <= num_factors <= MAX_ENUMERATED_FACTORS:
        raise ValueError(
            f"latent_factor: enumeration needs 1 <= K <= {MAX_ENUMERATED_FACTORS} factors, "
            f"got {num_factors!r}"
        )
    shifts = jnp.arange(num_factors - 1, -1, -1)
    return (jnp.arange(2**num_factors)[:, None] >> shifts) & 1


class Posterior(NamedTuple):
    """The exact posterior; each field has the data's leading shape (none for one datum).

    Attributes:
        log_probs: log p(z = s | x) for each state s of `states(K)`, shape `(..., 2^K)`.
        marginals: p(z_j = 1 | x), shape `(..., K)`.
        log_evidence: log p(x), shape `(...)`.
    """

    log_probs: jax.Array
    marginals: jax.Array
    log_evidence: jax.Array


def exact_posterior(data: Data) -> Posterior:
    """The posterior over the 2^K states of z, per datum, by enumerating them."""
    _check(data)
    table = states(data.num_factors)
    prior = dist.Bernoulli(probs=data.prior_prob).log_prob(table).sum(-1)  # (2^K,)
    means = table.astype(data.weights.dtype) @ data.weights.T + data.bias  # (2^K, N)
    likelihood = dist.Normal(means, data.noise_scale).log_prob(data.x[..., None, :]).sum(-1)
    log_joint = prior + likelihood  # (..., 2^K)
    log_evidence = jax.nn.logsumexp(log_joint, axis=-1)
    log_probs = log_joint - log_evidence[..., None]
    return Posterior(log_probs, jnp.exp(log_probs) @ table.astype(log_probs.dtype), log_evidence)


def exact_kl(data: Data, logits: jax.Array) -> jax.Array:
    """KL(q || p(z | x)) of the mean field with these logits, by enumeration, per datum."""
    table = states(data.num_factors)
    log_q = dist.Bernoulli(logits=logits[..., None, :]).log_prob(table).sum(-1)  # (..., 2^K)
    return jnp.sum(jnp.exp(log_q) * (log_q - exact_posterior(data).log_probs), axis=-1)


# --- mean field: closed-form ELBO and coordinate ascent ------------------------------------------


def _elbo_one(data: Data, x: jax.Array, logits: jax.Array) -> jax.Array:
    p = jax.nn.sigmoid(logits)
    prior = dist.Bernoulli(probs=data.prior_prob)
    expected_prior = jnp.sum(p * prior.log_prob(1) + (1 - p) * prior.log_prob(0))
    # E log N(x; W z + b) = log N(x; W p + b) - E||W (z - p)||^2 / (2 sigma^2); Var(z_j) = p_j (1 - p_j).
    spread = jnp.sum(jnp.sum(data.weights**2, axis=0) * p * (1 - p))
    fit = dist.Normal(data.weights @ p + data.bias, data.noise_scale).log_prob(x).sum()
    expected_likelihood = fit - spread / (2 * data.noise_scale**2)
    return expected_prior + expected_likelihood + dist.Bernoulli(logits=logits).entropy().sum()


def _per_datum(fn, data: Data, *args):
    """`fn(data, x, *args)` for one datum, vmapped over the rows of `x` (and of `args`) for many."""
    if data.x.ndim == 1:
        return fn(data, data.x, *args)
    return jax.vmap(fn, (None, 0) + (0,) * len(args))(data, data.x, *args)


def mean_field_elbo(data: Data, logits: jax.Array) -> jax.Array:
    """The closed-form ELBO of q(z) = prod_j Bernoulli(sigmoid(logits_j)), per datum.

    `logits` has shape `(K,)` for one datum or `(num_data, K)` for many; the result `()` or `(num_data,)`.
    """
    _check(data)
    return _per_datum(_elbo_one, data, jnp.broadcast_to(logits, data.x.shape[:-1] + (data.num_factors,)))


def _cavi_update(data: Data, x: jax.Array, logits: jax.Array, j) -> jax.Array:
    p = jax.nn.sigmoid(logits)
    w_j = data.weights[:, j]
    # The residual with factor j's expected contribution removed: r - sum_{k != j} W_k p_k.
    residual = x - data.bias - data.weights @ p + w_j * p[j]
    prior_logit = jnp.log(data.prior_prob) - jnp.log1p(-data.prior_prob)
    new = prior_logit + (w_j @ residual - 0.5 * w_j @ w_j) / data.noise_scale**2
    return logits.at[j].set(new)


class CaviResult(NamedTuple):
    """Coordinate ascent's end point and its ELBO after every update.

    Attributes:
        logits: the mean field's logits at the end, shape `(..., K)`.
        elbo: the ELBO at the start and after each coordinate update, shape `(..., 1 + sweeps * K)`.
    """

    logits: jax.Array
    elbo: jax.Array


def _cavi_one(data: Data, x: jax.Array, logits: jax.Array, num_sweeps: int) -> CaviResult:
    def update(logits, j):
        logits = _cavi_update(data, x, logits, j)
        return logits, _elbo_one(data, x, logits)

    def sweep(logits, _):
        return jax.lax.scan(update, logits, jnp.arange(data.num_factors))

    final, trace = jax.lax.scan(sweep, logits, None, length=num_sweeps)
    return CaviResult(final, jnp.concatenate([_elbo_one(data, x, logits)[None], trace.reshape(-1)]))


def cavi(data: Data, init_logits: jax.Array | None = None, num_sweeps: int = 50) -> CaviResult:
    """Mean-field coordinate ascent, factor by factor, from `init_logits` (default 0: p = 1/2).

    Each update sets one factor's q to its exact optimum given the others, so `elbo` never
    decreases. Per datum when `data.x` holds many rows (`init_logits` then `(num_data, K)` or `(K,)`).
    """
    _check(data)
    if not isinstance(num_sweeps, int) or num_sweeps < 1:
        raise ValueError(f"latent_factor.cavi: num_sweeps must be a positive int, got {num_sweeps!r}")
    shape = data.x.shape[:-1] + (data.num_factors,)
    init = (
        jnp.zeros(shape) if init_logits is None else jnp.broadcast_to(jnp.asarray(init_logits, float), shape)
    )
    return _per_datum(lambda d, x, lg: _cavi_one(d, x, lg, num_sweeps), data, init)


def best_cavi(data: Data, key: jax.Array, num_restarts: int = 8, num_sweeps: int = 50) -> CaviResult:
    """The best (highest final ELBO), per datum, of CAVI from p = 1/2 and `num_restarts - 1` random starts.

    Random starts draw every logit from N(0, 2^2): probabilities spread over (0.02, 0.98).
    """
    if not isinstance(num_restarts, int) or num_restarts < 1:
        raise ValueError(
            f"latent_factor.best_cavi: num_restarts must be a positive int, got {num_restarts!r}"
        )
    shape = data.x.shape[:-1] + (data.num_factors,)
    starts = 2.0 * jax.random.normal(key, (num_restarts,) + shape)
    starts = starts.at[0].set(0.0)
    runs = jax.vmap(lambda init: cavi(data, init, num_sweeps))(starts)  # leading restart axis
    best = jnp.argmax(runs.elbo[..., -1], axis=0)  # per datum
    return jax.tree.map(lambda leaf: jnp.take_along_axis(leaf, best[None, ..., None], axis=0)[0], runs)
