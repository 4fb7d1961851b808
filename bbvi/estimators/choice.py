"""Which gradient each leaf of a family gets, and how the entropy term is estimated."""

from __future__ import annotations

import dataclasses

ENTROPY_MODES = ("analytic", "mc", "stl", "dreg")
GRADIENTS = ("reparam", "score", "auto", "relaxed")


@dataclasses.dataclass(frozen=True)
class Estimator:
    """An ELBO gradient estimator: pathwise, score-function, or each where it fits.

    Attributes:
        gradient: `"reparam"` (pathwise for every leaf; an error for a discrete one), `"score"`
            (score function for every leaf), `"auto"` (pathwise where the family is
            reparameterisable, score function with control variates for the rest), or
            `"relaxed"`: discrete leaves (Bernoulli, OneHotCategorical) drawn from their
            Gumbel-softmax / concrete relaxation at `temperature` (Jang et al. 2017, Maddison et
            al. 2017) and differentiated pathwise, the others as `"auto"`. The relaxed estimator
            is **biased**: the log-joint is evaluated at relaxed, non-discrete values (it must
            accept them: numpyro's Bernoulli / Categorical `log_prob` return -inf off {0, 1}, so
            write a discrete prior linearly in z, e.g. `z * log(p) + (1 - z) * log(1 - p)`), with
            the discrete q's closed-form entropy; the bias shrinks as the temperature falls while
            the variance grows.
        entropy: how `-E_q[log q]` enters: `"analytic"` (closed form where the family has one
            and the objective is the ELBO, Monte Carlo otherwise), `"mc"` (always Monte Carlo),
            `"stl"` (sticking the landing: the path derivative, Monte Carlo with the parameters
            held fixed inside `log q`, whose variance vanishes as q approaches the posterior;
            pathwise leaves, ELBO only), or `"dreg"` (doubly-reparameterised gradients for the
            IWAE and Renyi bounds, Tucker et al. 2019; the same as `"stl"` for the ELBO).
        temperature: the relaxation's temperature (`"relaxed"` only; default 0.5).
    """

    gradient: str = "auto"
    entropy: str = "analytic"
    temperature: float | None = None

    def __post_init__(self):
        if self.gradient not in GRADIENTS:
            raise ValueError(f"unknown estimator {self.gradient!r}; expected one of {GRADIENTS}")
        if self.entropy not in ENTROPY_MODES:
            raise ValueError(f"unknown entropy mode {self.entropy!r}; expected one of {ENTROPY_MODES}")
        if self.gradient == "relaxed":
            if self.temperature is None:
                object.__setattr__(self, "temperature", 0.5)
            if not (isinstance(self.temperature, (int, float)) and self.temperature > 0):
                raise ValueError(f"temperature must be a positive float, got {self.temperature!r}")
            if self.entropy != "analytic":
                raise ValueError(
                    "estimator 'relaxed' needs entropy='analytic': the relaxed draws have no density "
                    "under the discrete q, so its entropy enters in closed form"
                )
        elif self.temperature is not None:
            raise ValueError("temperature applies to estimator 'relaxed' only")

    @property
    def path_derivative(self) -> bool:
        """Whether pathwise leaves hold q's parameters fixed inside `log q` (STL, DReG)."""
        return self.entropy in ("stl", "dreg")

    def relaxed(self, families) -> list[bool]:
        """For each leaf family, whether it is drawn from its continuous relaxation."""
        return [self.gradient == "relaxed" and not f.reparameterized for f in families]

    def pathwise(self, families, paths) -> list[bool]:
        """For each leaf family, whether its gradient is pathwise (relaxed leaves included)."""
        if self.gradient == "score":
            points = [p for f, p in zip(families, paths) if f.point_mass]
            if points:
                raise ValueError(
                    f"estimator='score' cannot fit the point masses at {', '.join(points)}: their score "
                    "is zero, so they would never move; use estimator='auto' (pathwise for them)"
                )
            return [False] * len(families)
        if self.gradient == "relaxed":
            missing = [
                p
                for f, p in zip(families, paths)
                if not f.reparameterized and not hasattr(f, "relaxed_sample")
            ]
            if missing:
                raise ValueError(
                    f"estimator 'relaxed' needs families with a continuous relaxation (Bernoulli, "
                    f"OneHotCategorical), but the families at {missing} have none"
                )
            return [True] * len(families)
        if self.gradient == "reparam":
            discrete = [p for f, p in zip(families, paths) if not f.reparameterized]
            if discrete:
                raise ValueError(
                    f"estimator='reparam' needs reparameterisable families, but the families at "
                    f"{discrete} are not (discrete); use estimator='auto' or 'score'"
                )
        return [f.reparameterized for f in families]

    def analytic_entropy(self, families, pathwise, linear: bool = True) -> list[bool]:
        """For each leaf family, whether its entropy enters in closed form (ELBO only)."""
        return [
            f.has_entropy
            and linear
            and (self.entropy == "analytic" or (self.path_derivative and not pw))
            or rl
            for f, pw, rl in zip(families, pathwise, self.relaxed(families))
        ]


def resolve(estimator) -> Estimator:
    """An `Estimator` from a name or an `Estimator`."""
    if isinstance(estimator, Estimator):
        return estimator
    if isinstance(estimator, str):
        return Estimator(gradient=estimator)
    raise TypeError(f"estimator must be one of {GRADIENTS} or an Estimator, got {estimator!r}")
