"""Linear forward operators: exact adjoints, batching, dtypes, gradients, closed forms, errors.

Every operator is checked against the same contract (adjoint identity in float64, batch and
leading axes, ``.to(float64)``, autograd gradient = ``A*A x``, closed-form ``pinv`` = CG), and
each one against known values: scipy's Gaussian filter and wrap-mode convolution, scipy's DCT,
torch's FFT, exact sampling counts and Monte-Carlo isometry in expectation.
"""

from __future__ import annotations

import contextlib
import json
import math

import numpy as np
import pytest
import scipy.fft
import scipy.ndimage
import torch

from bayesinv.operators.base import LinearOperator, adjointness_error
from bayesinv.operators.blur import Blur, SuperResolution, gaussian_kernel, motion_kernel
from bayesinv.operators.compressed_sensing import CompressedSensing, dct_ortho, idct_ortho
from bayesinv.operators.denoise import Identity
from bayesinv.operators.mask import Inpainting
from bayesinv.operators.matrix import MatrixOperator, random_gaussian_matrix
from bayesinv.operators.mri import MRI

SHAPE = (2, 8, 12)  # non-square and multi-channel, to catch H/W and channel mix-ups

FACTORIES = {
    "identity": lambda: Identity(SHAPE),
    "inpainting_fraction": lambda: Inpainting(SHAPE, fraction=0.4, seed=3),
    "inpainting_mask": lambda: Inpainting(SHAPE, mask=torch.rand(8, 12, generator=torch.Generator().manual_seed(0)) > 0.5),
    "cs_gaussian": lambda: CompressedSensing(SHAPE, 50, kind="gaussian", seed=1),
    "cs_structured": lambda: CompressedSensing(SHAPE, 50, kind="structured", seed=1),
    "blur_gaussian": lambda: Blur(SHAPE, "gaussian", width=1.2),
    "blur_motion": lambda: Blur(SHAPE, "motion", length=4.5, angle=30.0),
    "blur_tensor": lambda: Blur(SHAPE, torch.rand(3, 5, generator=torch.Generator().manual_seed(2))),
    "sr2": lambda: SuperResolution(SHAPE, 2),
    "sr4": lambda: SuperResolution((1, 16, 16), 4, width=1.5, size=7),
    "mri_random": lambda: MRI(SHAPE, 2, "random", center_fraction=0.25),
    "mri_cartesian": lambda: MRI(SHAPE, 2, "cartesian", center_fraction=0.2),
    "mri_radial": lambda: MRI(SHAPE, 3, "radial"),
    "mri_full": lambda: MRI(SHAPE, 1),
}
NAMES = sorted(FACTORIES)


@contextlib.contextmanager
def _default_dtype(dtype):
    """Build an operator's fixed data (kernels, spectra) in ``dtype``."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def _randn(shape, seed=0, dtype=torch.float64):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.fixture(params=NAMES)
def op(request) -> LinearOperator:
    return FACTORIES[request.param]()


# -- the shared contract -------------------------------------------------------------------------
def test_adjoint_is_exact_in_float64(op):
    err = adjointness_error(op, n_trials=3, batch=2)
    assert err < 1e-10, f"{type(op).__name__}: <Ax,y> - <x,A*y> relative error {err:.2e}"


def test_batch_and_leading_axes(op):
    op = op.to(torch.float64)
    x = _randn((2, 3, *op.in_shape))
    y = op(x)
    assert y.shape == (2, 3, *op.out_shape)
    single = torch.stack([op(x[i, j]) for i in range(2) for j in range(3)]).reshape(y.shape)
    assert torch.allclose(y, single, atol=1e-12)
    assert op(x[0, 0]).shape == tuple(op.out_shape)  # unbatched in -> unbatched out
    v = _randn((3, *op.out_shape), seed=1)
    assert op.adjoint(v).shape == (3, *op.in_shape)
    assert op.adjoint(v[None]).shape == (1, 3, *op.in_shape)
    assert op.init_estimate(v).shape == (3, *op.in_shape)
    assert op.pinv(v).shape == (3, *op.in_shape)


def test_dtype_follows_to_and_float32_is_kept(op):
    x32 = _randn((3, *op.in_shape), dtype=torch.float32)
    y32 = op(x32)
    assert y32.dtype == torch.float32 and op.adjoint(y32).dtype == torch.float32
    op64 = op.to(torch.float64)
    if any(b.is_floating_point() for b in op64.buffers()):
        assert op64.dtype == torch.float64
        assert all(b.dtype == torch.float64 for b in op64.buffers() if b.is_floating_point())
    y64 = op64(x32.double())
    assert y64.dtype == torch.float64
    assert torch.allclose(y64.float(), y32, atol=1e-5, rtol=1e-4)


def test_gradient_through_forward_is_the_normal_operator(op):
    op = op.to(torch.float64)
    x = _randn((2, *op.in_shape)).requires_grad_(True)
    (0.5 * op(x).pow(2).sum()).backward()
    assert torch.allclose(x.grad, op.normal(x.detach()), atol=1e-10)


def test_gradcheck_of_forward_and_adjoint():
    for name in ("blur_motion", "sr2", "mri_radial", "cs_structured", "inpainting_fraction"):
        op = FACTORIES[name]().to(torch.float64)
        x = _randn((1, *op.in_shape)).requires_grad_(True)
        y = _randn((1, *op.out_shape)).requires_grad_(True)
        assert torch.autograd.gradcheck(op, (x,), fast_mode=True)
        assert torch.autograd.gradcheck(op.adjoint, (y,), fast_mode=True)


def test_closed_form_pinv_matches_conjugate_gradient(op):
    op = op.to(torch.float64)
    y = op(_randn((2, *op.in_shape), seed=4)) + 0.1 * _randn((2, *op.out_shape), seed=5)
    if isinstance(op, MRI):
        y = op.forward(op.adjoint(y))  # keep y in the range of the (masked) operator
    direct = op.pinv(y, eps=1e-2)
    cg = LinearOperator.pinv(op, y, eps=1e-2, max_iter=3000, tol=1e-13)
    assert torch.allclose(direct, cg, atol=1e-6 * float(cg.abs().max()) + 1e-9)


def test_describe_is_json_serialisable(op):
    d = op.describe()
    assert json.loads(json.dumps(d)) == d and d["name"] == type(op).__name__
    assert d["in_shape"] == list(op.in_shape) and d["out_shape"] == list(op.out_shape)


@pytest.mark.parametrize("device", ["cpu", pytest.param(
    "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"))])
def test_device_move_gives_the_same_result(op, device):
    x = _randn((2, *op.in_shape), dtype=torch.float32)
    ref = op(x)
    moved = op.to(device)
    out = moved(x.to(device))
    assert out.device.type == device
    assert torch.allclose(out.cpu(), ref, atol=1e-5)
    back = moved.adjoint(out)
    assert back.device.type == device and moved.init_estimate(out).device.type == device


def test_wrong_shapes_name_the_argument(op):
    bad_x = torch.zeros(2, op.in_shape[0], op.in_shape[1] + 1, op.in_shape[2])
    with pytest.raises(ValueError, match=r"^x: "):
        op(bad_x)
    with pytest.raises(ValueError, match=r"^y: "):
        op.adjoint(torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"^y: "):
        op.init_estimate(torch.zeros(2, 3))
    with pytest.raises(TypeError, match=r"^x: "):
        op(np.zeros(op.in_shape))
    with pytest.raises(ValueError, match=r"^eps: "):
        op.pinv(torch.zeros(op.out_shape), eps=-1.0)


# -- Identity --------------------------------------------------------------------------------------
def test_identity_values():
    op = Identity(SHAPE)
    x = _randn((3, *SHAPE))
    assert torch.equal(op(x), x) and torch.equal(op.adjoint(x), x)
    assert torch.allclose(op.pinv(x, eps=0.25), x / 1.25)
    assert torch.equal(op.init_estimate(x), x)
    assert op.operator_norm() == pytest.approx(1.0)


# -- Inpainting ------------------------------------------------------------------------------------
def test_inpainting_random_mask_is_exact_seeded_and_shared_over_channels():
    op = Inpainting((3, 10, 10), fraction=0.3, seed=7)
    assert int(op.mask[0].sum()) == 30 and op.observed_fraction == pytest.approx(0.3)
    assert torch.equal(op.mask[0], op.mask[1]) and torch.equal(op.mask[0], op.mask[2])
    assert torch.equal(op.mask, Inpainting((3, 10, 10), fraction=0.3, seed=7).mask)
    assert not torch.equal(op.mask, Inpainting((3, 10, 10), fraction=0.3, seed=8).mask)
    assert int(Inpainting((1, 10, 10), fraction=1e-6).mask.sum()) == 1  # at least one pixel
    assert bool(Inpainting((1, 4, 4), fraction=1.0).mask.all())


def test_inpainting_values_and_fill():
    mask = np.zeros((2, 3, 4), dtype=bool)
    mask[0, 0, :2] = True
    mask[1, 2, 3] = True
    op = Inpainting((2, 3, 4), mask=mask)
    x = _randn((1, 2, 3, 4)).float()
    y = op(x)
    assert torch.equal(y, x * torch.from_numpy(mask).float())
    assert torch.equal(op.adjoint(y), y)  # A* = A and A A = A (orthogonal projection)
    assert torch.allclose(op.pinv(y, eps=0.0), y)
    est = op.init_estimate(y)
    assert torch.allclose(est[0, 0, 1:], x[0, 0, 0, :2].mean().expand(2, 4))
    assert torch.allclose(est[0, 1, 0], x[0, 1, 2, 3].expand(4))
    assert torch.equal(est[0, 0, 0, :2], x[0, 0, 0, :2])
    # an (H, W) mask broadcasts over channels
    op2 = Inpainting((2, 3, 4), mask=torch.tensor(mask[0], dtype=torch.float32))
    assert torch.equal(op2.mask[0], op2.mask[1])


@pytest.mark.parametrize("kwargs, exc, name", [
    ({"fraction": 0.0}, ValueError, "fraction"),
    ({"fraction": 1.5}, ValueError, "fraction"),
    ({"fraction": -0.2}, ValueError, "fraction"),
    ({"fraction": "half"}, TypeError, "fraction"),
    ({}, ValueError, "mask/fraction"),
    ({"mask": torch.ones(4, 4), "fraction": 0.5}, ValueError, "mask/fraction"),
    ({"mask": torch.zeros(4, 4)}, ValueError, "mask"),
    ({"mask": torch.ones(4, 5)}, ValueError, "mask"),
    ({"mask": torch.ones(3, 4, 4)}, ValueError, "mask"),
    ({"mask": torch.full((4, 4), 0.5)}, ValueError, "mask"),
    ({"mask": [[1, 0], [0, 1]]}, TypeError, "mask"),
    ({"fraction": 0.5, "seed": -1}, ValueError, "seed"),
])
def test_inpainting_bad_inputs(kwargs, exc, name):
    with pytest.raises(exc, match=rf"^{name}: "):
        Inpainting((2, 4, 4), **kwargs)


# -- Compressed sensing ----------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 2, 7, 16, 33])
def test_dct_matches_scipy_and_inverts(n):
    x = _randn((3, n))
    assert np.allclose(dct_ortho(x).numpy(), scipy.fft.dct(x.numpy(), norm="ortho", axis=-1), atol=1e-13)
    assert np.allclose(idct_ortho(x).numpy(), scipy.fft.idct(x.numpy(), norm="ortho", axis=-1), atol=1e-13)
    assert torch.allclose(idct_ortho(dct_ortho(x)), x, atol=1e-13)


def test_gaussian_cs_is_the_seeded_gaussian_matrix():
    op = CompressedSensing(SHAPE, 20, kind="gaussian", seed=4)
    ref = MatrixOperator(random_gaussian_matrix(20, math.prod(SHAPE), seed=4), SHAPE)
    x = _randn((2, *SHAPE)).float()
    assert torch.equal(op(x), ref(x))


@pytest.mark.parametrize("kind", ["gaussian", "structured"])
def test_cs_is_an_isometry_in_expectation(kind):
    # E over the random operator of ||Ax||^2 / ||x||^2 equals 1 because E[A^T A] = I.
    shape = (1, 6, 8)
    x = torch.linspace(0, 1, 48, dtype=torch.float64).reshape(1, *shape) ** 2 + 0.1  # smooth, not sparse
    ratios = torch.tensor([float(CompressedSensing(shape, 12, kind=kind, seed=s).to(torch.float64)(x)
                                 .pow(2).sum() / x.pow(2).sum()) for s in range(300)])
    se = float(ratios.std()) / math.sqrt(len(ratios))
    assert abs(float(ratios.mean()) - 1.0) < max(4 * se, 1e-3), (float(ratios.mean()), se)
    assert float(ratios.std()) > 0.01  # genuinely random operators


def test_structured_cs_full_is_orthogonal_and_rows_are_scaled_orthonormal():
    d = math.prod(SHAPE)
    full = CompressedSensing(SHAPE, d, kind="structured", seed=2).to(torch.float64)
    x = _randn((3, *SHAPE))
    assert torch.allclose(full(x).norm(dim=-1), x.flatten(1).norm(dim=-1), rtol=1e-12)
    assert torch.allclose(full.adjoint(full(x)), x, atol=1e-12)
    sub = CompressedSensing(SHAPE, 30, kind="structured", seed=2).to(torch.float64)
    y = _randn((3, 30))
    assert torch.allclose(sub(sub.adjoint(y)), (d / 30) * y, atol=1e-11)  # A A^T = (D/m) I
    assert torch.allclose(sub(sub.pinv(y, eps=0.0)), y, atol=1e-11)


def test_gaussian_cs_pinv_is_a_right_inverse():
    op = CompressedSensing(SHAPE, 40, kind="gaussian", seed=0).to(torch.float64)
    y = _randn((2, 40))
    assert torch.allclose(op(op.pinv(y, eps=0.0)), y, atol=1e-9)


@pytest.mark.parametrize("kwargs, exc, name", [
    ({"m": 0}, ValueError, "m"),
    ({"m": math.prod(SHAPE) + 1}, ValueError, "m"),
    ({"m": 2.5}, TypeError, "m"),
    ({"m": 10, "kind": "bernoulli"}, ValueError, "kind"),
    ({"m": 10, "seed": -3}, ValueError, "seed"),
])
def test_cs_bad_inputs(kwargs, exc, name):
    with pytest.raises(exc, match=rf"^{name}: "):
        CompressedSensing(SHAPE, **kwargs)


# -- Blur ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sigma", [0.7, 1.3, 2.0])
def test_gaussian_blur_matches_scipy_gaussian_filter(sigma):
    radius = int(4.0 * sigma + 0.5)  # scipy's default truncate=4
    img = np.zeros((23, 24))
    img[3, 20] = 1.0  # an impulse near the border exercises the wrap-around
    img[12, 5] = -0.5
    ref = scipy.ndimage.gaussian_filter(img, sigma, mode="wrap")
    op32 = Blur((1, 23, 24), width=sigma, size=2 * radius + 1)  # float32 kernel
    out32 = op32(torch.from_numpy(img).float()[None])[0].numpy()
    assert np.abs(out32 - ref).max() < 1e-6
    with _default_dtype(torch.float64):
        op = Blur((1, 23, 24), width=sigma, size=2 * radius + 1)
    out = op(torch.from_numpy(img)[None])[0].numpy()
    assert np.abs(out - ref).max() < 1e-12
    k = gaussian_kernel(2 * radius + 1, sigma, dtype=torch.float64)
    assert float(k.sum()) == pytest.approx(1.0, abs=1e-14) and torch.equal(k, k.T)


def test_tensor_kernel_blur_matches_scipy_wrap_convolution():
    gen = torch.Generator().manual_seed(3)
    kernel = torch.rand(3, 5, generator=gen, dtype=torch.float64)  # asymmetric: orientation matters
    img = torch.rand(2, 9, 11, generator=gen, dtype=torch.float64)
    with _default_dtype(torch.float64):
        op = Blur((2, 9, 11), kernel)
    kn = (kernel / kernel.sum()).numpy()
    ref = np.stack([scipy.ndimage.convolve(img[c].numpy(), kn, mode="wrap") for c in range(2)])
    assert np.abs(op(img).numpy() - ref).max() < 1e-12
    ref_adj = np.stack([scipy.ndimage.correlate(img[c].numpy(), kn, mode="wrap") for c in range(2)])
    assert np.abs(op.adjoint(img).numpy() - ref_adj).max() < 1e-12


def test_per_channel_kernels_blur_each_channel_with_its_own_kernel():
    kernels = torch.stack([gaussian_kernel(5, 1.0), motion_kernel(5, 4, 20.0)])
    op = Blur((2, 8, 12), kernels * 3.0)  # normalised to sum 1 per channel
    x = _randn((2, 2, 8, 12)).float()
    for c in range(2):
        assert torch.allclose(op(x)[:, c], Blur((1, 8, 12), kernels[c])(x[:, c:c + 1])[:, 0], atol=1e-6)


@pytest.mark.parametrize("kernel", ["gaussian", "motion", "tensor"])
def test_blur_of_a_constant_is_constant(kernel):
    k = torch.rand(5, 3, generator=torch.Generator().manual_seed(1)) if kernel == "tensor" else kernel
    op = Blur(SHAPE, k, width=1.5, length=5, angle=70)
    x = torch.full((1, *SHAPE), 0.37)
    assert torch.allclose(op(x), x, atol=1e-6) and torch.allclose(op.adjoint(x), x, atol=1e-6)


def test_motion_kernel_geometry():
    k = motion_kernel(5, 3, 0.0, dtype=torch.float64)
    expected = torch.zeros(5, 5, dtype=torch.float64)
    expected[2, 1:4] = 1 / 3
    assert torch.allclose(k, expected, atol=1e-15)
    assert torch.allclose(motion_kernel(5, 4, 0.0, dtype=torch.float64)[2],
                          torch.tensor([0.5, 1, 1, 1, 0.5], dtype=torch.float64) / 4)
    assert torch.allclose(motion_kernel(7, 5, 90.0), motion_kernel(7, 5, 0.0).T, atol=1e-7)
    k30 = motion_kernel(9, 6.5, 30.0, dtype=torch.float64)
    assert float(k30.sum()) == pytest.approx(1.0) and torch.allclose(k30, k30.flip(0, 1))  # point-symmetric
    k45 = motion_kernel(7, 5, 45.0)
    assert float(k45[1, 5]) > 0 and float(k45[5, 5]) == 0  # counter-clockwise: up and to the right
    assert torch.equal(motion_kernel(3, 0.0), torch.eye(3)[1:2].T @ torch.eye(3)[1:2])


def test_blur_pinv_inverts_a_well_conditioned_blur():
    op = Blur(SHAPE, "gaussian", width=0.5, size=3).to(torch.float64)
    x = _randn((2, *SHAPE))
    assert torch.allclose(op.pinv(op(x), eps=0.0), x, atol=1e-8)
    assert torch.equal(op.init_estimate(op(x)), op(x))


@pytest.mark.parametrize("kwargs, exc, name", [
    ({"width": -1.0}, ValueError, "width"),
    ({"width": 0.0}, ValueError, "width"),
    ({"kernel": "box"}, ValueError, "kernel"),
    ({"kernel": 3}, TypeError, "kernel"),
    ({"size": 4}, ValueError, "size"),
    ({"size": 0}, ValueError, "size"),
    ({"size": 15}, ValueError, "size"),
    ({"kernel": "motion", "length": 9, "size": 7}, ValueError, "length"),
    ({"kernel": "motion", "length": -1}, ValueError, "length"),
    ({"kernel": "motion", "angle": "up"}, TypeError, "angle"),
    ({"kernel": torch.zeros(3, 3)}, ValueError, "kernel"),
    ({"kernel": torch.ones(3, 3, 3)}, ValueError, "kernel"),
    ({"kernel": torch.ones(9, 3)}, ValueError, "size"),
])
def test_blur_bad_inputs(kwargs, exc, name):
    with pytest.raises(exc, match=rf"^{name}: "):
        Blur(SHAPE, **kwargs)


# -- Super-resolution ------------------------------------------------------------------------------
def test_sr_shapes_constant_and_block_centred_geometry():
    op = SuperResolution((1, 24, 24), 3).to(torch.float64)
    assert op.out_shape == (1, 8, 8)
    x = torch.full((1, 1, 24, 24), 0.6, dtype=torch.float64)
    assert torch.allclose(op(x), torch.full((1, 1, 8, 8), 0.6, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(op.init_estimate(op(x)), x, atol=1e-12)
    # A cosine is blurred into a scaled cosine sampled at the block centres f*i + (f-1)/2.
    for f, n in [(2, 16), (3, 24), (4, 32)]:
        with _default_dtype(torch.float64):
            op = SuperResolution((1, n, n), f)
        t = torch.arange(n, dtype=torch.float64)
        w = 2 * math.pi * 2 / n
        x = torch.cos(w * t)[:, None] * torch.ones(n, dtype=torch.float64)
        y = op(x[None])[0, :, 0]
        c = torch.cos(w * (f * torch.arange(n // f, dtype=torch.float64) + (f - 1) / 2))
        a = float(y @ c / (c @ c))
        assert 0.5 < a < 1 and float((y - a * c).norm()) < 1e-12 * float(y.norm())


def _psnr(a, b):
    return float(10 * torch.log10(1.0 / (a - b).pow(2).mean()))


def test_bicubic_baseline_beats_naive_upsampling_on_a_smooth_image():
    n = 32
    t = torch.arange(n, dtype=torch.float32) / n
    x = (0.5 + 0.25 * torch.sin(2 * math.pi * t)[:, None] * torch.cos(4 * math.pi * t)[None, :]
         + 0.15 * torch.cos(2 * math.pi * (t[:, None] + t[None, :])))[None, None]
    op = SuperResolution((1, n, n), 2, width=0.5, size=3)
    y = op(x)
    bic = op.bicubic(y)
    zero_fill = op.upsample_zero(y) * 4
    nearest = torch.nn.functional.interpolate(y, scale_factor=2, mode="nearest")
    p_bic, p_zero, p_near = _psnr(bic, x), _psnr(zero_fill, x), _psnr(nearest, x)
    # measured: bicubic 44.5 dB, nearest 30.2 dB, zero fill 0.8 dB
    assert p_bic > 41 and p_bic > p_near + 10 and p_bic > p_zero + 35
    assert torch.equal(op.init_estimate(y), bic.clamp(0, 1))
    assert op.bicubic(y[0]).shape == (1, n, n)


@pytest.mark.parametrize("kwargs, exc, name", [
    ({"factor": 5}, ValueError, "factor"),
    ({"factor": 0}, ValueError, "factor"),
    ({"factor": 2.0}, TypeError, "factor"),
    ({"factor": 2, "width": -1.0}, ValueError, "width"),
    ({"factor": 2, "size": 6}, ValueError, "size"),
    ({"factor": 2, "size": 11}, ValueError, "size"),
])
def test_sr_bad_inputs(kwargs, exc, name):
    with pytest.raises(exc, match=rf"^{name}: "):
        SuperResolution(SHAPE, **kwargs)


# -- MRI ---------------------------------------------------------------------------------------------
def test_mri_forward_is_the_masked_orthonormal_fft():
    op = MRI(SHAPE, 2, "random", seed=5).to(torch.float64)
    x = _randn((2, *SHAPE))
    expected = torch.view_as_real(torch.fft.fft2(x, norm="ortho") * op.mask)
    assert torch.allclose(op(x), expected, atol=1e-13)
    assert op.out_shape == (*SHAPE, 2)
    assert torch.equal(op.init_estimate(op(x)), op.adjoint(op(x)))


def test_mri_full_mask_is_orthonormal():
    op = MRI((1, 16, 20), 1, "cartesian").to(torch.float64)
    assert op.sampled_fraction == 1.0
    x = _randn((3, 1, 16, 20))
    assert torch.allclose(op(x).flatten(1).norm(dim=1), x.flatten(1).norm(dim=1), rtol=1e-12)
    assert torch.allclose(op.adjoint(op(x)), x, atol=1e-12)
    assert torch.allclose(op.pinv(op(x), eps=0.0), x, atol=1e-12)
    assert op.operator_norm() == pytest.approx(1.0, rel=1e-6)


@pytest.mark.parametrize("kind", ["random", "cartesian", "radial"])
@pytest.mark.parametrize("acceleration", [2, 4, 8])
def test_mri_masks_reach_the_acceleration_and_are_seeded(kind, acceleration):
    op = MRI((1, 64, 64), acceleration, kind, seed=3)
    tol = 0.08 if kind == "radial" else 0.02
    assert op.sampled_fraction * acceleration == pytest.approx(1.0, abs=tol)
    centred = op.mask_centered[0]
    assert float(centred[32, 32]) == 1.0  # DC is always sampled
    same = MRI((1, 64, 64), acceleration, kind, seed=3).mask
    other = MRI((1, 64, 64), acceleration, kind, seed=4).mask
    assert torch.equal(op.mask, same) and not torch.equal(op.mask, other)
    if kind == "cartesian":
        cols = centred.bool()
        assert bool((cols.all(dim=0) | ~cols.any(dim=0)).all())  # whole phase-encode lines
        n_low = round(0.08 * 64)
        start = (64 - n_low + 1) // 2
        assert bool(cols[:, start:start + n_low].all())  # fully sampled centre band
    if kind == "random":
        assert bool(centred[30:35, 30:35].all())  # centre square of side round(0.08 * 64) = 5
        inner = float(centred[16:48, 16:48].mean())
        assert inner > 1.5 * float(op.sampled_fraction)  # variable density: denser centre
    if kind == "radial":
        # spokes through the centre: the mask is point-symmetric about DC
        assert torch.equal(centred[1:, 1:], centred[1:, 1:].flip(0, 1))


def test_mri_tensor_mask_and_hermitian_pinv():
    mask = torch.zeros(8, 12, dtype=torch.bool)
    mask[0, 0] = mask[1, 2] = mask[3, 5] = True  # no mirror partners: A*A = F^-1 Q F with Q = 1/2
    op = MRI(SHAPE, mask=mask).to(torch.float64)
    assert op.mask_kind == "tensor" and op.sampled_fraction == pytest.approx(3 / 96)
    x = _randn((1, *SHAPE))
    y = op(x)
    p = op.pinv(y, eps=0.0)
    assert torch.allclose(op(p), y, atol=1e-12)  # exact data consistency
    assert torch.allclose(op.pinv(op(p), eps=0.0), p, atol=1e-12)  # p is in the row space


def test_mri_per_channel_mask():
    mask = torch.zeros(2, 8, 12)
    mask[0, :, :3] = 1
    mask[1, :2] = 1
    op = MRI(SHAPE, mask=mask)
    x = _randn((1, *SHAPE)).float()
    k = torch.fft.fft2(x, norm="ortho")
    assert torch.allclose(op(x), torch.view_as_real(k * mask), atol=1e-6)
    assert adjointness_error(op) < 1e-10


@pytest.mark.parametrize("kwargs, exc, name", [
    ({"acceleration": 0.5}, ValueError, "acceleration"),
    ({"acceleration": -2}, ValueError, "acceleration"),
    ({"acceleration": "fast"}, TypeError, "acceleration"),
    ({"mask": "spiral"}, ValueError, "mask"),
    ({"mask": torch.zeros(8, 12)}, ValueError, "mask"),
    ({"mask": torch.ones(12, 8)}, ValueError, "mask"),
    ({"mask": torch.full((8, 12), 2.0)}, ValueError, "mask"),
    ({"center_fraction": 1.5}, ValueError, "center_fraction"),
    ({"center_fraction": -0.1}, ValueError, "center_fraction"),
    ({"acceleration": 16, "mask": "cartesian", "center_fraction": 0.5}, ValueError, "center_fraction"),
    ({"acceleration": 16, "mask": "random", "center_fraction": 0.5}, ValueError, "center_fraction"),
    ({"seed": 1.5}, TypeError, "seed"),
])
def test_mri_bad_inputs(kwargs, exc, name):
    with pytest.raises(exc, match=rf"^{name}: "):
        MRI(SHAPE, **kwargs)
