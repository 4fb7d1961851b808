"""Gradient estimators: factories returning pure `(params, key) -> (value, grad)` functions."""

from bbvi.estimators.choice import Estimator
from bbvi.estimators.elbo import GradientEstimator, elbo_value_and_grad, gradient_estimator

__all__ = ["Estimator", "GradientEstimator", "elbo_value_and_grad", "gradient_estimator"]
