"""bbvi: functional black-box variational inference in JAX.

Bring a log-density `log_joint(z) -> scalar` and a variational family; get pure, jit- and
vmap-compatible ELBO gradient estimators and a compiled `fit` driven by any optax optimiser.
"""

from bbvi.control_variates import ControlVariate, MovingAverage
from bbvi.estimators import Estimator, GradientEstimator, elbo_value_and_grad, gradient_estimator
from bbvi.families import (
    Amortized,
    Batched,
    Bernoulli,
    Categorical,
    Constrained,
    DistributionFamily,
    Family,
    FullRankGaussian,
    GaussianMixture,
    InverseAutoregressiveFlow,
    LowRankGaussian,
    MarkovChains,
    MeanFieldGaussian,
    NumpyroFamily,
    OneHotCategorical,
    PointMass,
    entropy,
    init,
    log_prob,
    sample,
)
from bbvi.fisher import natural_gradient
from bbvi.fit import FitResult, fit
from bbvi.objectives import ELBO, IWAE, Objective, Renyi
from bbvi.subsampled import Subsampled

__version__ = "0.1.0"

__all__ = [
    "Amortized",
    "Batched",
    "MarkovChains",
    "NumpyroFamily",
    "ELBO",
    "IWAE",
    "Bernoulli",
    "Categorical",
    "Constrained",
    "ControlVariate",
    "DistributionFamily",
    "Estimator",
    "Family",
    "FitResult",
    "FullRankGaussian",
    "GaussianMixture",
    "InverseAutoregressiveFlow",
    "GradientEstimator",
    "LowRankGaussian",
    "MeanFieldGaussian",
    "MovingAverage",
    "Objective",
    "OneHotCategorical",
    "PointMass",
    "Renyi",
    "Subsampled",
    "elbo_value_and_grad",
    "gradient_estimator",
    "entropy",
    "fit",
    "init",
    "log_prob",
    "natural_gradient",
    "sample",
]
