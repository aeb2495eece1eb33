r"""Image-quality metrics: PSNR, SSIM and the error–uncertainty correlation.

* PSNR: :math:`10\log_{10}(R^2 / \mathrm{MSE})` with data range :math:`R` (1 for images in
  :math:`[0, 1]`).
* SSIM: Wang et al. 2004, "Image quality assessment: from error visibility to structural
  similarity", computed by :func:`skimage.metrics.structural_similarity` (Gaussian window,
  σ = 1.5, as in the paper).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from ._checks import as_tensor, check_finite, check_positive


def _pair(estimate: object, truth: object, name: str = "estimate") -> tuple[Tensor, Tensor]:
    """Both images as float64 CPU tensors of one shape, finite (a NaN would give a NaN metric)."""
    est = check_finite(as_tensor(estimate, name).detach().to(torch.float64).cpu(), name)
    ref = check_finite(as_tensor(truth, "truth").detach().to(torch.float64).cpu(), "truth")
    if est.shape != ref.shape:
        raise ValueError(f"{name}/truth: shapes differ: {tuple(est.shape)} vs {tuple(ref.shape)}")
    return est, ref


def psnr(estimate: object, truth: object, data_range: float = 1.0) -> float:
    r"""Peak signal-to-noise ratio in dB, :math:`10\log_{10}(R^2/\mathrm{MSE})`.

    Returns ``inf`` for a perfect reconstruction.
    """
    data_range = check_positive(data_range, "data_range")
    est, ref = _pair(estimate, truth)
    mse = float((est - ref).pow(2).mean())
    return math.inf if mse == 0 else 10.0 * math.log10(data_range**2 / mse)


def ssim(estimate: object, truth: object, data_range: float = 1.0) -> float:
    """Structural similarity (Wang et al. 2004), mean over channels, for ``(…, H, W)`` images."""
    from skimage.metrics import structural_similarity

    data_range = check_positive(data_range, "data_range")
    est, ref = _pair(estimate, truth)
    if est.dim() < 2 or min(est.shape[-2:]) < 7:
        raise ValueError(f"estimate: SSIM needs images of at least 7×7 pixels, got {tuple(est.shape)}")
    e = est.reshape(-1, *est.shape[-2:]).numpy()
    r = ref.reshape(-1, *ref.shape[-2:]).numpy()
    vals = [structural_similarity(a, b, data_range=data_range, gaussian_weights=True, sigma=1.5,
                                  use_sample_covariance=False) for a, b in zip(e, r, strict=True)]
    return float(np.mean(vals))


def error_std_correlation(mean: object, std: object, truth: object) -> float:
    r"""Pearson correlation between the absolute error :math:`|\hat x - x|` and the posterior std.

    A positive value means the uncertainty map points to where the reconstruction is wrong.
    """
    est, ref = _pair(mean, truth, "mean")
    s = check_finite(as_tensor(std, "std").detach().to(torch.float64).cpu(), "std")
    if s.shape != est.shape:
        raise ValueError(f"std: expected shape {tuple(est.shape)}, got {tuple(s.shape)}")
    if bool((s < 0).any()):
        raise ValueError(f"std: standard deviations must be >= 0, got a minimum of {float(s.min()):.3g}")
    err = (est - ref).abs().flatten()
    s = s.flatten()
    if float(err.std()) == 0 or float(s.std()) == 0:
        return 0.0
    return float(torch.corrcoef(torch.stack([err, s]))[0, 1])
