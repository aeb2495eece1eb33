"""Inference: MAP, variational and MCMC, all returning a :class:`Posterior`."""

from .exact import exact_gaussian_posterior, gaussian_posterior_mean, gaussian_posterior_moments
from .map import map_estimate
from .posterior import Posterior

__all__ = ["Posterior", "map_estimate", "exact_gaussian_posterior", "gaussian_posterior_mean",
           "gaussian_posterior_moments"]
