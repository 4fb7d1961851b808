"""bbvi: functional black-box variational inference in JAX.

Bring a log-density `log_joint(z) -> scalar` and a variational family; get pure, jit- and
vmap-compatible ELBO gradient estimators and a compiled `fit` driven by any optax optimiser.
"""

from bbvi.control_variates import ControlVariate, MovingAverage
from bbvi.diagnostics import Diagnostics, GradientStats, compare_gradients, diagnose, gradient_snr, psis
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
from bbvi.fit import Convergence, FitError, FitResult, FitState, fit, load, save
from bbvi.interop import NumpyroModel, from_numpyro, to_inference_data
from bbvi.objectives import ELBO, IWAE, Objective, Renyi
from bbvi.subsampled import Subsampled

__version__ = "0.1.0"

__all__ = [
    "Diagnostics",
    "GradientStats",
    "NumpyroModel",
    "compare_gradients",
    "diagnose",
    "from_numpyro",
    "gradient_snr",
    "psis",
    "to_inference_data",
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
    "Convergence",
    "FitError",
    "FitResult",
    "FitState",
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
    "load",
    "log_prob",
    "natural_gradient",
    "sample",
    "save",
]
