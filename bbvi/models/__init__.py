"""Models of the variational-inference literature, each with a log-joint, a data simulator or
dataset, its recommended family, and an exact or reference answer where one exists."""

from bbvi.models import (
    eight_schools,
    factorial_hmm,
    gaussian_mixture,
    inference_gym,
    latent_factor,
    linear_regression,
    logistic_regression,
    normal_gamma,
    posteriordb,
    softmax_regression,
    vae,
)

__all__ = [
    "eight_schools",
    "factorial_hmm",
    "gaussian_mixture",
    "inference_gym",
    "latent_factor",
    "linear_regression",
    "logistic_regression",
    "normal_gamma",
    "posteriordb",
    "softmax_regression",
    "vae",
]
