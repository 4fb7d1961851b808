"""ELBO gradient estimators: factories returning pure `(params, key) -> (elbo, grad)` functions."""

from bbvi.estimators.choice import Estimator
from bbvi.estimators.elbo import elbo_value_and_grad

__all__ = ["Estimator", "elbo_value_and_grad"]
