"""Variational families: hashable descriptions with parameters in a separate pytree."""

from bbvi.families.amortized import Amortized, Batched
from bbvi.families.base import DistributionFamily, Family, is_family
from bbvi.families.constrained import Constrained
from bbvi.families.discrete import Bernoulli, Categorical, OneHotCategorical
from bbvi.families.flows import InverseAutoregressiveFlow
from bbvi.families.gaussian import FullRankGaussian, LowRankGaussian, MeanFieldGaussian
from bbvi.families.markov import MarkovChains
from bbvi.families.mixture import GaussianMixture
from bbvi.families.numpyro_family import NumpyroFamily
from bbvi.families.point_mass import PointMass
from bbvi.families.tree import condition, entropy, init, log_prob, sample

__all__ = [
    "Amortized",
    "Batched",
    "MarkovChains",
    "NumpyroFamily",
    "Bernoulli",
    "Categorical",
    "Constrained",
    "DistributionFamily",
    "Family",
    "FullRankGaussian",
    "GaussianMixture",
    "InverseAutoregressiveFlow",
    "LowRankGaussian",
    "MeanFieldGaussian",
    "OneHotCategorical",
    "PointMass",
    "condition",
    "entropy",
    "init",
    "is_family",
    "log_prob",
    "sample",
]
