"""Inference: MAP, variational and MCMC, all returning a :class:`Posterior`."""

from .exact import exact_gaussian_posterior, gaussian_posterior_mean, gaussian_posterior_moments
from .posterior import Posterior

__all__ = ["Posterior", "exact_gaussian_posterior", "gaussian_posterior_mean",
           "gaussian_posterior_moments"]
