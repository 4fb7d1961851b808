"""Variational objectives: how the per-sample log-weights `log p(z_s) - log q(z_s)` combine.

Every objective is a reduction of the points' log-weights `w_j` and their probability masses
`m_j` (which sum to one: `1/S` per sample, times a mixture family's component weights when it
draws one point per component). All are lower bounds on the log evidence `log p(x)`:

- `ELBO()`: `sum_j m_j w_j`, linear in the log-weights;
- `IWAE()`: the importance-weighted bound `log sum_j m_j exp(w_j)` (Burda et al. 2016), which
  tightens as the number of samples grows;
- `Renyi(alpha)`: the variational Renyi bound `log(sum_j m_j exp((1 - alpha) w_j)) / (1 - alpha)`
  (Li and Turner 2016): the ELBO as alpha -> 1, the IWAE bound at alpha = 0.

Any objective combines with any estimator: pathwise leaves differentiate through it, score-function
leaves get a learning signal from it, and `"loo"` becomes VIMCO's leave-one-out signal for the
non-linear ones.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax.scipy.special import logsumexp


class Objective:
    """A reduction of log-weights and log-masses to a scalar bound."""

    #: Linear in the log-weights (the ELBO): then closed-form entropies, per-sample control
    #: variates and Rao-Blackwellisation apply.
    linear: bool = False

    def __call__(self, log_w: jax.Array, log_mass: jax.Array) -> jax.Array:
        raise NotImplementedError

    def dreg_weights(self, log_w: jax.Array, log_mass: jax.Array) -> jax.Array:
        """Per-point coefficients of the doubly-reparameterised gradient (Tucker et al. 2019)."""
        raise NotImplementedError(f"{self} has no doubly-reparameterised gradient")


@dataclasses.dataclass(frozen=True)
class ELBO(Objective):
    """The evidence lower bound `E_q[log p(z) - log q(z)]`.

    Example:
        >>> import jax.numpy as jnp, bbvi
        >>> float(bbvi.ELBO()(jnp.array([1.0, 3.0]), jnp.log(jnp.array([0.5, 0.5]))))
        2.0
    """

    linear = True

    def __call__(self, log_w, log_mass):
        return jnp.sum(jnp.exp(log_mass) * log_w)

    def dreg_weights(self, log_w, log_mass):
        return jnp.exp(log_mass)  # the path derivative (sticking the landing)


@dataclasses.dataclass(frozen=True)
class Renyi(Objective):
    """The variational Renyi bound of order `alpha` (alpha != 1; alpha = 0 is the IWAE bound).

    For `alpha` in [0, 1) it is a lower bound on `log p(x)` between the ELBO and the IWAE bound,
    for alpha < 0 it can exceed `log p(x)` (a mass-covering objective, not a bound).
    """

    alpha: float

    def __post_init__(self):
        if not isinstance(self.alpha, (int, float)) or self.alpha == 1:
            raise ValueError(
                f"Renyi: alpha must be a float other than 1 (that is the ELBO), got {self.alpha!r}"
            )

    def __call__(self, log_w, log_mass):
        return logsumexp((1 - self.alpha) * log_w + log_mass) / (1 - self.alpha)

    def dreg_weights(self, log_w, log_mass):
        # d objective / d w_j is the normalised weight v_j; replacing the score part of each
        # point's gradient by its reparameterised twin turns v_j into alpha v_j + (1 - alpha) v_j^2.
        scaled = (1 - self.alpha) * log_w + log_mass
        v = jax.nn.softmax(scaled.ravel()).reshape(scaled.shape)
        return self.alpha * v + (1 - self.alpha) * v**2


@dataclasses.dataclass(frozen=True)
class IWAE(Renyi):
    """The importance-weighted bound `E[log mean_s exp(w_s)]` (Burda, Grosse and Salakhutdinov 2016).

    With `num_samples=K` it increases with K towards `log p(x)`. Pair it with
    `bbvi.Estimator("reparam", entropy="dreg")` for doubly-reparameterised gradients, whose
    signal-to-noise ratio does not decay as K grows.
    """

    alpha: float = 0.0

    def __post_init__(self):
        if self.alpha != 0:
            raise ValueError("IWAE is the Renyi bound with alpha = 0; use bbvi.Renyi(alpha) for others")


_BY_NAME = {"elbo": ELBO(), "iwae": IWAE()}


def resolve(objective) -> Objective:
    """An objective from a name (`"elbo"`, `"iwae"`) or an `Objective`."""
    if isinstance(objective, str):
        if objective not in _BY_NAME:
            raise ValueError(
                f"unknown objective {objective!r}; expected one of {sorted(_BY_NAME)} or an Objective"
            )
        return _BY_NAME[objective]
    if not isinstance(objective, Objective):
        raise TypeError(f"objective must be 'elbo', 'iwae' or an Objective, got {objective!r}")
    return objective
