"""Normalizing flows: invertible layers, Glow, the patchNR patch flow, conditional Glow, I/O.

Convention: every transform maps latent → data (``x = G(z)``, Pyro's direction); ``encode``
returns the latent and :math:`\\log|\\det\\nabla G^{-1}(x)|`.
"""

from .conditional import ConditionalFlow, ConditionalGlow, ConditionedGlow, StandardNormalBase
from .glow import Glow
from .io import flow_classes, load_flow, save_flow
from .layers import (
    ActNorm,
    AffineCoupling,
    FlowLayer,
    Invertible1x1Conv,
    Permutation,
    Squeeze,
    actnorm,
    affine_coupling,
    glow_step,
    invertible_1x1_conv,
    permutation,
    squeeze,
)
from .patch import PatchFlow

__all__ = [
    "ActNorm", "AffineCoupling", "ConditionalFlow", "ConditionalGlow", "ConditionedGlow",
    "FlowLayer", "Glow", "Invertible1x1Conv", "PatchFlow", "Permutation", "Squeeze",
    "StandardNormalBase", "actnorm", "affine_coupling", "flow_classes", "glow_step",
    "invertible_1x1_conv", "load_flow", "permutation", "save_flow", "squeeze",
]
