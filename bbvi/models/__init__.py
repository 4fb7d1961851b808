"""Models of the variational-inference literature, each with a log-joint, a data simulator or
dataset, its recommended family, and an exact or reference answer where one exists."""

from bbvi.models import eight_schools, linear_regression, logistic_regression

__all__ = ["eight_schools", "linear_regression", "logistic_regression"]
