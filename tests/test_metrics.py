"""PSNR and SSIM against scikit-image's reference implementations."""

import math

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from bayesinv.data import load_image
from bayesinv.metrics import error_std_correlation, psnr, ssim


def test_psnr_matches_skimage_and_formula():
    x = load_image("camera", 64, dtype=torch.float64)
    noisy = x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0), dtype=x.dtype)
    ours = psnr(noisy, x)
    ref = peak_signal_noise_ratio(x.numpy(), noisy.numpy(), data_range=1.0)
    assert abs(ours - ref) < 1e-10
    assert abs(ours - 10 * math.log10(1 / float((noisy - x).pow(2).mean()))) < 1e-10
    assert psnr(x, x) == math.inf


def test_ssim_matches_skimage_gaussian_window():
    x = load_image("camera", 64, dtype=torch.float64)
    blurred = torch.nn.functional.avg_pool2d(x[None], 3, 1, 1)[0]
    ref = structural_similarity(x[0].numpy(), blurred[0].numpy(), data_range=1.0,
                                gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    assert abs(ssim(blurred, x) - ref) < 1e-12
    assert ssim(x, x) == pytest.approx(1.0)


def test_error_std_correlation_sign():
    truth = torch.zeros(1, 16, 16)
    err = torch.linspace(0, 1, 256).reshape(1, 16, 16)
    assert error_std_correlation(truth + err, err, truth) == pytest.approx(1.0)
    assert error_std_correlation(truth + err, 1 - err, truth) == pytest.approx(-1.0)


def test_bad_inputs():
    with pytest.raises(ValueError, match="estimate/truth"):
        psnr(torch.zeros(4, 4), torch.zeros(5, 5))
    with pytest.raises(ValueError, match="data_range"):
        psnr(torch.zeros(4, 4), torch.zeros(4, 4), data_range=-1)
    with pytest.raises(TypeError, match="estimate"):
        psnr([1.0], np.zeros(1))
    with pytest.raises(ValueError, match="7"):
        ssim(torch.zeros(4, 4), torch.zeros(4, 4))
