"""A mixture of diagonal Gaussians: the literature's universal approximator of densities."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpyro.distributions as dist

from bbvi.families.base import DistributionFamily, Family
from bbvi.families.gaussian import (
    _DEFAULT_INIT_RADIUS,
    _DEFAULT_INIT_SCALE,
    _check_dim,
    _check_init_scale,
    _init_loc,
    _init_log_scale,
)

stop = jax.lax.stop_gradient

# exp(80) is finite in float32 (exp(89) is not): a cap on 1 / density that keeps the zero-valued
# implicit-gradient correction from becoming 0 * inf = nan, should a conditional density underflow.
_MAX_LOG_INVERSE_DENSITY = 80.0


@dataclasses.dataclass(frozen=True)
class GaussianMixture(DistributionFamily):
    """A mixture of `num_components` diagonal Gaussians over a vector of `dim` latents.

    q(z) = sum_k w_k N(z; loc_k, diag(scale_k^2)) with w = softmax(logits), wrapping numpyro's
    `MixtureSameFamily`. Parameters are `{"logits": (K,), "loc": (K, dim), "log_scale": (K, dim)}`:
    equal weights at init, each component's location drawn independently from
    U(-init_radius, init_radius) (identical components would receive identical gradients and never
    separate), every scale `init_scale`.

    Two ways to draw, both differentiable in every parameter:

    - `stratified_sample(params, key)` returns one reparameterised draw from *each* component with
      log-weights `log w_k`. `sum_k w_k f(z_k)` is an unbiased estimate of `E_q[f]` whose gradient
      is exact in the weights (they multiply, no sampling of the component) and pathwise inside each
      component; estimators average the integrand over these points with these weights. This is
      the low-variance gradient this family is meant to be fitted with.
    - `sample(params, key)` is an ordinary draw from q (ancestral: a component, then a draw from
      it), used for `FitResult.sample`. The choice of component is discrete, so its gradient comes
      from implicit reparameterisation (Graves 2016, "Stochastic backpropagation through mixture
      density distributions"; Figurnov et al. 2018): each coordinate solves
      `F_d(z_d | z_<d) = u_d` for a fixed uniform `u_d`, with `F_d` the conditional CDF (itself a
      mixture, with the components' posterior weights given `z_<d`), so
      `dz_d = -dF_d / q(z_d | z_<d)`. The value is the ancestral draw; first derivatives are
      exact in expectation, higher derivatives are not provided.

    There is no closed-form entropy (`has_entropy = False`), and q does not factorise.

    Example:
        >>> import jax
        >>> from bbvi.families.mixture import GaussianMixture
        >>> family = GaussianMixture(dim=2, num_components=3)
        >>> params = family.init(jax.random.key(0))
        >>> z, log_weights = family.stratified_sample(params, jax.random.key(1))
        >>> z.shape, log_weights.shape, family.sample(params, jax.random.key(2)).shape
        ((3, 2), (3,), (2,))
    """

    dim: int
    num_components: int
    init_scale: float = _DEFAULT_INIT_SCALE
    init_radius: float = _DEFAULT_INIT_RADIUS

    reparameterized = True
    has_entropy = False

    def __post_init__(self):
        _check_dim("GaussianMixture", self.dim)
        k = self.num_components
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"GaussianMixture: num_components must be a positive int, got {k!r}")
        _check_init_scale("GaussianMixture", self.init_scale)
        if not (math.isfinite(self.init_radius) and self.init_radius > 0):
            raise ValueError(
                "GaussianMixture: init_radius must be positive and finite (it spreads the initial "
                f"component locations apart), got {self.init_radius}"
            )

    @property
    def event_shape(self):
        return (self.dim,)

    def init(self, key):
        shape = (self.num_components, self.dim)
        return {
            "logits": jnp.zeros((self.num_components,)),
            "loc": _init_loc(key, shape, self.init_radius),
            "log_scale": _init_log_scale(shape, self.init_scale),
        }

    @staticmethod
    def components(params) -> dist.Distribution:
        """The components as one numpyro distribution: batch shape (K,), event shape (dim,)."""
        return dist.Normal(params["loc"], jnp.exp(params["log_scale"])).to_event(1)

    def distribution(self, params):
        return dist.MixtureSameFamily(dist.Categorical(logits=params["logits"]), self.components(params))

    def entropy(self, params):
        return Family.entropy(self, params)  # the clear "no closed-form entropy" error

    def stratified_sample(self, params, key):
        """One reparameterised draw per component, shape (K, dim), and log-weights log w_k, shape (K,).

        `sum_k exp(log_weights[k]) * f(z[k])` is unbiased for `E_q[f]`; its gradient is exact in the
        mixture weights and pathwise within each component.
        """
        return self.components(params).sample(key), jax.nn.log_softmax(params["logits"])

    def sample(self, params, key):
        draw = self.distribution(stop(params)).sample(key)  # the value: an ancestral draw
        return _with_implicit_gradient(params, draw)


def _with_implicit_gradient(params, z):
    """`z` unchanged in value, with the implicit-reparameterisation gradient (see `GaussianMixture`).

    Coordinate by coordinate, the surrogate `z_d - (F_d - stop(F_d)) / stop(q_d)` has the value `z_d`
    and the derivative `-dF_d / q_d`, where `F_d` and `q_d` are the conditional CDF and density at
    the fixed `z_d`; they depend on the earlier coordinates through the posterior component weights,
    which are computed from the earlier surrogates, so the chain rule carries `dz_<d` along.
    """

    def coordinate(log_w, xs):
        loc, scale, z_d = xs
        per_component = dist.Normal(loc, scale)
        conditional = dist.MixtureSameFamily(dist.Categorical(logits=log_w), per_component)
        cdf = conditional.cdf(z_d)
        log_inverse_density = jnp.minimum(-conditional.log_prob(z_d), _MAX_LOG_INVERSE_DENSITY)
        z_d = z_d - (cdf - stop(cdf)) * stop(jnp.exp(log_inverse_density))
        # The components' posterior weights given the coordinates so far.
        return jax.nn.log_softmax(log_w + per_component.log_prob(z_d)), z_d

    log_w = jax.nn.log_softmax(params["logits"])
    columns = (params["loc"].T, jnp.exp(params["log_scale"]).T, stop(z))  # scan over coordinates
    return jax.lax.scan(coordinate, log_w, columns)[1]
