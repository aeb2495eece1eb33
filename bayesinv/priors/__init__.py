"""Image priors: latent pushforwards (Gaussian, normalizing flows) and patch energies."""

from .base import EnergyPrior, LatentPrior, Prior, standard_normal_log_prob
from .flow import FlowPrior
from .gaussian import GaussianPrior
from .patches import extract_patches, random_patches

__all__ = ["Prior", "LatentPrior", "EnergyPrior", "GaussianPrior", "FlowPrior", "extract_patches", "random_patches", "standard_normal_log_prob"]
