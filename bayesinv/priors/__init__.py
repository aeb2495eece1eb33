"""Image priors: latent pushforwards (Gaussian, normalizing flows) and patch energies."""

from .base import EnergyPrior, LatentPrior, Prior, standard_normal_log_prob
from .gaussian import GaussianPrior

__all__ = ["Prior", "LatentPrior", "EnergyPrior", "GaussianPrior", "standard_normal_log_prob"]
