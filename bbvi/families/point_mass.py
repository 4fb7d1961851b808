"""A point mass (Dirac delta): a latent fitted as a point estimate, next to distributions over others.

`fit` optimises variational parameters only. A model parameter that should be *learned* rather than
inferred (a VAE's decoder weights, a noise scale fitted by maximum likelihood) enters the log-joint
as a latent whose family is `PointMass`: q(theta) = delta(theta - loc). Its draw is `loc` itself
(pathwise: the gradient of the log-joint flows to `loc`), and its entropy is taken as 0, so the part
of the ELBO that depends on theta is `E_q(z)[log p(x, z, theta = loc)]`. Maximising it over `loc` is
MAP estimation (maximum likelihood under a flat prior) of theta, jointly with variational inference
for the other latents: variational EM, what Pyro and NumPyro call `AutoDelta`.

The "ELBO" is then a lower bound on `log p(x, theta = loc)` (on `log p(x | theta = loc)` under a
flat prior), not on the evidence `log p(x)`. (A Dirac measure has no density with respect to Lebesgue
measure, so the entropy is not a limit of Gaussian entropies, which go to -infinity; 0 is the
convention that makes the bound the MAP objective.) Compare such bounds between fits of the same
model, not with `log p(x)`.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import numpyro.distributions as dist

from bbvi.families.base import DistributionFamily, check_shape

# Like the Gaussians' locations: uniform in [-1, 1], unless the model asks for another radius.
_DEFAULT_INIT_RADIUS = 1.0


@dataclasses.dataclass(frozen=True)
class PointMass(DistributionFamily):
    """A point mass at `loc` over an array of shape `shape`: q(theta) = delta(theta - loc).

    Parameters are `{"loc": shape}`, started uniform in `[-init_radius, init_radius]` (`init_radius=0`
    starts at zero: a bias, say). The draw is `loc` whatever the key (so its gradient flows to `loc`),
    `log_prob` is numpyro's `Delta`: 0 at `loc` and `-inf` elsewhere, and the entropy is 0. In a fit,
    the ELBO over a `PointMass` leaf is the log-joint at `loc` (averaged over the other latents): its
    maximum is the MAP (maximum-likelihood, under a flat prior) estimate, and the bound is on
    `log p(x, theta = loc)`, not on `log p(x)`.

    Point masses take pathwise gradients (`estimator="auto"` or `"reparam"`): a score-function
    gradient of a Dirac is zero. They live on the real line: to learn a positive parameter, fit its
    logarithm and exponentiate it in the log-joint (maximum likelihood does not depend on the
    parameterisation, while `bbvi.Constrained` would add a log-Jacobian to the objective).

    Example:
        >>> import jax, jax.numpy as jnp, bbvi
        >>> x = jnp.array([0.5, 1.5, 2.5])
        >>> log_lik = lambda z: -0.5 * jnp.sum((x - z) ** 2)  # maximum likelihood: the mean, 1.5
        >>> result = bbvi.fit(log_lik, bbvi.PointMass(()), key=jax.random.key(0), num_steps=1000,
        ...                   progress_bar=False)
        >>> round(float(result.params["loc"]), 1)
        1.5
    """

    shape: tuple[int, ...]
    init_radius: float = _DEFAULT_INIT_RADIUS

    reparameterized = True
    has_entropy = True
    point_mass = True

    def __post_init__(self):
        object.__setattr__(self, "shape", check_shape(self.shape, "PointMass"))
        radius = self.init_radius
        if isinstance(radius, bool) or not isinstance(radius, (int, float)) or not math.isfinite(radius):
            raise ValueError(f"PointMass: init_radius must be a finite float >= 0, got {radius!r}")
        if radius < 0:
            raise ValueError(f"PointMass: init_radius must be a finite float >= 0, got {radius!r}")
        object.__setattr__(self, "init_radius", float(radius))

    @property
    def event_shape(self):
        return self.shape

    def init(self, key):
        # A strongly typed float32 array (uniform's), so the jitted step compiles once.
        return {"loc": jax.random.uniform(key, self.shape, minval=-self.init_radius, maxval=self.init_radius)}

    def distribution(self, params):
        # log_prob: 0 at loc, -inf elsewhere, summed over the event; entropy: -log_density = 0.
        return dist.Delta(params["loc"], event_dim=len(self.shape))
