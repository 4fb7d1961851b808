"""Which gradient each leaf of a family gets, and how the entropy term is estimated."""

from __future__ import annotations

import dataclasses

ENTROPY_MODES = ("analytic", "mc", "stl")


@dataclasses.dataclass(frozen=True)
class Estimator:
    """An ELBO gradient estimator: pathwise, score-function, or each where it fits.

    Attributes:
        gradient: `"reparam"` (pathwise for every leaf; an error for a discrete one), `"score"`
            (score function for every leaf), or `"auto"` (pathwise where the family is
            reparameterisable, score function with control variates for the rest).
        entropy: how `-E_q[log q]` enters: `"analytic"` (closed form where the family has one,
            Monte Carlo otherwise), `"mc"` (always Monte Carlo), or `"stl"` (sticking the landing:
            the path derivative, Monte Carlo with the parameters held fixed inside `log q`, whose
            variance vanishes as q approaches the posterior; pathwise leaves only).
    """

    gradient: str = "auto"
    entropy: str = "analytic"

    def __post_init__(self):
        if self.gradient not in ("reparam", "score", "auto"):
            raise ValueError(f"unknown estimator {self.gradient!r}; expected 'reparam', 'score' or 'auto'")
        if self.entropy not in ENTROPY_MODES:
            raise ValueError(f"unknown entropy mode {self.entropy!r}; expected one of {ENTROPY_MODES}")

    def pathwise(self, families, paths) -> list[bool]:
        """For each leaf family, whether its gradient is pathwise."""
        if self.gradient == "score":
            return [False] * len(families)
        if self.gradient == "reparam":
            discrete = [p for f, p in zip(families, paths) if not f.reparameterized]
            if discrete:
                raise ValueError(
                    f"estimator='reparam' needs reparameterisable families, but the families at "
                    f"{discrete} are not (discrete); use estimator='auto' or 'score'"
                )
        return [f.reparameterized for f in families]

    def analytic_entropy(self, families, pathwise) -> list[bool]:
        """For each leaf family, whether its entropy enters in closed form."""
        return [
            f.has_entropy and self.entropy != "mc" and not (self.entropy == "stl" and pw)
            for f, pw in zip(families, pathwise)
        ]


def resolve(estimator) -> Estimator:
    """An `Estimator` from a name or an `Estimator`."""
    if isinstance(estimator, Estimator):
        return estimator
    if isinstance(estimator, str):
        return Estimator(gradient=estimator)
    raise TypeError(f"estimator must be 'reparam', 'score', 'auto' or an Estimator, got {estimator!r}")
