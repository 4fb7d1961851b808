"""Diagnostics of a variational approximation and of its gradient estimator.

- `psis`: Pareto-smoothed importance weights and the Pareto k-hat (is q good enough to trust?).
- `diagnose`: importance-sample p with q at any parameters: k-hat, PSIS-reweighted draws and
  expectations, the ELBO and the log evidence with their Monte Carlo standard errors.
- `gradient_snr` / `compare_gradients`: per-parameter mean, variance and signal-to-noise ratio of
  the gradient estimator, to see why a fit is slow and which control variate helps.
"""

from bbvi.diagnostics.evidence import Diagnostics, diagnose
from bbvi.diagnostics.gradients import GradientComparison, GradientStats, compare_gradients, gradient_snr
from bbvi.diagnostics.psis import khat_threshold, psis, tail_length

__all__ = [
    "Diagnostics",
    "GradientComparison",
    "GradientStats",
    "compare_gradients",
    "diagnose",
    "gradient_snr",
    "khat_threshold",
    "psis",
    "tail_length",
]
