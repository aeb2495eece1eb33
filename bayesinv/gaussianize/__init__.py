"""Differentiable Gaussianization layers (Li et al. 2023): FastICA, Yeo–Johnson, Lambert W × F."""

from .ica import ICAResult, amari_index, fast_ica, whiten
from .lambert_w import (
    igmm,
    kurtosis,
    lambert_w0,
    lambert_w_fit,
    lambert_w_forward,
    lambert_w_gaussianize,
    lambert_w_inverse,
)
from .layer import GaussianizationLayer
from .yeo_johnson import (
    fit_lambda,
    yeo_johnson,
    yeo_johnson_fit_transform,
    yeo_johnson_lambda,
    yeo_johnson_llf,
)

__all__ = [
    "GaussianizationLayer",
    "ICAResult",
    "amari_index",
    "fast_ica",
    "fit_lambda",
    "igmm",
    "kurtosis",
    "lambert_w0",
    "lambert_w_fit",
    "lambert_w_forward",
    "lambert_w_gaussianize",
    "lambert_w_inverse",
    "whiten",
    "yeo_johnson",
    "yeo_johnson_fit_transform",
    "yeo_johnson_lambda",
    "yeo_johnson_llf",
]
