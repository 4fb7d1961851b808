"""Registry cases and float64 oracles for the inverse autoregressive flow (see test_contract.py).

A flow has no closed-form density or moments, so the oracles re-implement its documented
parameterisation in numpy, float64, without numpyro or jax: the MADE masks from the degree rule
(Germain et al., 2015, with numpyro's evenly spread hidden degrees), the ELU network, the clipped
affine layers and the reversals between them. The log-density inverts each layer coordinate by
coordinate (a different scheme from numpyro's all-coordinates fixed point) and adds the base's
scipy log-density to the layers' log-determinants; the moments push a large numpy sample of the
base through the forward map. A flow whose network, layer order, clipping, base or inverse
differed from the documented one would disagree with them.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import scipy.stats

from bbvi.families.flows import InverseAutoregressiveFlow

from ._helpers import Case, draw_dtype, param_shapes, reference_log_prob, reference_statistics

# One well-conditioned case. The registry's random parameters move every network weight by
# N(0, 0.75^2), which makes deeper or wider flows so steep that a float32 z pins down its base point
# only loosely: for a 3-D one-layer flow the exact log-density moved by 2e-2 when one coordinate of
# z moved by one float32 ulp, and three-layer flows reached O(1e3) errors. No float32 inverse can
# meet the registry's 1e-4 there, so deeper flows are checked against these oracles in float64 (and
# their moments in float32) in test_flows.py. For this case a one-ulp move of z changes the exact
# log-density by up to 9e-5 and the float32 inverse is off by under 4 such moves (5.6e-5); the
# tolerance allows 10 (1e-3), while a wrong mask, order, clip or Jacobian term is off by O(1).
CASES = [Case("iaf_2_one_layer", lambda: InverseAutoregressiveFlow(2, num_flows=1), log_prob_atol=1e-3)]

LOG_SCALE_CLIP = (-5.0, 3.0)  # numpyro's InverseAutoregressiveTransform default
# Reference sample for the moments: 50 times the registry's 20,000 draws, so the reference's own
# Monte Carlo error widens the z-scores' spread by sqrt(1 + 1/50): 1%, a negligible change in the
# false-alarm rate of the 4-sd checks.
NUM_REFERENCE = 1_000_000
CHUNK = 250_000


def _f64(x) -> np.ndarray:
    return np.asarray(x, np.float64)


def made_masks(dim: int, hidden_dims) -> list[np.ndarray]:
    """The 0/1 masks (inputs x outputs) of a MADE network in the identity order.

    Input i has degree i + 1; hidden units get degrees spread evenly over 1..dim-1 (rounded half
    to even, as jnp.round does); a hidden unit sees units of lower or equal degree, an output of
    coordinate i (shift outputs first, then log-scale outputs) sees hidden units of degree < i + 1.
    """
    inputs = np.arange(1, dim + 1)
    hidden = [np.round(np.linspace(1, dim - 1, h)) for h in hidden_dims]
    outputs = np.tile(inputs, 2)
    masks = [hidden[0][None, :] >= inputs[:, None]]
    masks += [b[None, :] >= a[:, None] for a, b in zip(hidden, hidden[1:])]
    masks.append(outputs[None, :] > hidden[-1][:, None])
    return [m.astype(np.float64) for m in masks]


def shift_and_log_scale(family, layer, x) -> tuple[np.ndarray, np.ndarray]:
    """(m(x), clip(s(x))), each (n, dim): one flow layer's network on a batch `x` (n, dim)."""
    dense = [(_f64(w), _f64(b)) for w, b in (p for p in layer if len(p))]  # ELU layers hold no params
    masks = made_masks(family.dim, family.hidden_dims)
    h = x
    for i, ((w, b), mask) in enumerate(zip(dense, masks, strict=True)):
        h = h @ (w * mask) + b
        if i < len(masks) - 1:
            h = np.where(h > 0, h, np.expm1(np.minimum(h, 0)))  # ELU
    return h[:, : family.dim], np.clip(h[:, family.dim :], *LOG_SCALE_CLIP)


def forward(family, params, x) -> np.ndarray:
    """The flow's map from base draws `x` (n, dim) to latents."""
    h = x
    for i, layer in enumerate(params["flows"]):
        h = h if i == 0 else h[:, ::-1]
        shift, log_scale = shift_and_log_scale(family, layer, h)
        h = np.exp(log_scale) * h + shift
    return h[:, ::-1] if family.num_flows % 2 == 0 else h


def inverse_and_log_det(family, params, z) -> tuple[np.ndarray, np.ndarray]:
    """The base point of each latent in `z` (n, dim), and log|det dz/dx| there."""
    h = z[:, ::-1] if family.num_flows % 2 == 0 else z
    log_det = np.zeros(len(z))
    for i in reversed(range(family.num_flows)):
        layer, y = params["flows"][i], h
        # Coordinate j's shift and scale depend on coordinates < j only, so solving for them in
        # order, each from the ones already solved, inverts the layer exactly in `dim` passes.
        x = np.zeros_like(y)
        for j in range(family.dim):
            shift, log_scale = shift_and_log_scale(family, layer, x)
            x[:, j] = (y[:, j] - shift[:, j]) * np.exp(-log_scale[:, j])
        log_det += shift_and_log_scale(family, layer, x)[1].sum(axis=1)
        h = x if i == 0 else x[:, ::-1]
    return h, log_det


@param_shapes.register
def _(family: InverseAutoregressiveFlow):
    widths = (family.dim, *family.hidden_dims, 2 * family.dim)
    dense = [((a, b), (b,)) for a, b in zip(widths, widths[1:])]
    # stax.serial: dense, ELU (no params), dense, ..., dense.
    layer = tuple(x for d in dense for x in (d, ()))[:-1]
    return {"base": {"loc": (family.dim,), "log_scale": (family.dim,)}, "flows": [layer] * family.num_flows}


@draw_dtype.register
def _(family: InverseAutoregressiveFlow):
    return jnp.dtype(jnp.float32)


@reference_log_prob.register
def _(family: InverseAutoregressiveFlow, params, z):
    x, log_det = inverse_and_log_det(family, params, _f64(z).reshape(-1, family.dim))
    loc, scale = _f64(params["base"]["loc"]), np.exp(_f64(params["base"]["log_scale"]))
    return scipy.stats.norm.logpdf(x, loc, scale).sum(axis=1) - log_det


@reference_statistics.register
def _(family: InverseAutoregressiveFlow, params):
    loc, scale = _f64(params["base"]["loc"]), np.exp(_f64(params["base"]["log_scale"]))
    rng = np.random.default_rng(0)
    sample = np.concatenate(
        [
            forward(family, params, loc + scale * rng.standard_normal((CHUNK, family.dim)))
            for _ in range(NUM_REFERENCE // CHUNK)
        ]
    )
    mean = sample.mean(axis=0)
    rows, cols = np.tril_indices(family.dim)
    centred = sample - mean
    covariance = (centred[:, rows] * centred[:, cols]).mean(axis=0)

    def stats(z):  # E z and E (z - mean)(z - mean)^T (lower triangle): the dependence a flow adds
        centred = _f64(z).reshape(-1, family.dim) - mean
        return np.concatenate([centred + mean, centred[:, rows] * centred[:, cols]], axis=1)

    return stats, np.concatenate([mean, covariance])
