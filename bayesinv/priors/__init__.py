"""Image priors: latent pushforwards (Gaussian, normalizing flows) and patch energies."""

from .base import EnergyPrior, LatentPrior, Prior, standard_normal_log_prob
from .flow import FlowPrior
from .gaussian import GaussianPrior
from .patches import extract_patches, random_patches
from .patchnr import PatchNRPrior, reference_settings
from .wpp import WassersteinPatchPrior, wasserstein_patch_distance

__all__ = ["Prior", "LatentPrior", "EnergyPrior", "GaussianPrior", "FlowPrior", "extract_patches", "random_patches",
           "PatchNRPrior", "reference_settings", "WassersteinPatchPrior",
           "wasserstein_patch_distance", "standard_normal_log_prob"]
