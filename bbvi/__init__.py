"""bbvi: functional black-box variational inference in JAX.

Bring a log-density `log_joint(z) -> scalar` and a variational family; get pure, jit- and
vmap-compatible ELBO gradient estimators and a compiled `fit` driven by any optax optimiser.
"""

from bbvi.control_variates import ControlVariate
from bbvi.estimators import Estimator, elbo_value_and_grad
from bbvi.families import (
    Bernoulli,
    Categorical,
    Constrained,
    DistributionFamily,
    Family,
    FullRankGaussian,
    LowRankGaussian,
    MeanFieldGaussian,
    entropy,
    init,
    log_prob,
    sample,
)
from bbvi.fit import FitResult, fit

__version__ = "0.1.0"

__all__ = [
    "Bernoulli",
    "Categorical",
    "Constrained",
    "ControlVariate",
    "DistributionFamily",
    "Estimator",
    "Family",
    "FitResult",
    "FullRankGaussian",
    "LowRankGaussian",
    "MeanFieldGaussian",
    "elbo_value_and_grad",
    "entropy",
    "fit",
    "init",
    "log_prob",
    "sample",
]
