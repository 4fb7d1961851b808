"""Variational families: hashable descriptions with parameters in a separate pytree."""

from bbvi.families.base import DistributionFamily, Family, is_family
from bbvi.families.constrained import Constrained
from bbvi.families.discrete import Bernoulli, Categorical
from bbvi.families.gaussian import FullRankGaussian, LowRankGaussian, MeanFieldGaussian
from bbvi.families.tree import entropy, init, log_prob, sample

__all__ = [
    "Bernoulli",
    "Categorical",
    "Constrained",
    "DistributionFamily",
    "Family",
    "FullRankGaussian",
    "LowRankGaussian",
    "MeanFieldGaussian",
    "entropy",
    "init",
    "is_family",
    "log_prob",
    "sample",
]
