"""Gaussianization layers (Li et al. 2023): Yeo–Johnson, Lambert W × F, FastICA and the layer."""

import math

import numpy as np
import pytest
import scipy.special
import scipy.stats
import torch

from bayesinv.gaussianize.ica import amari_index, fast_ica
from bayesinv.gaussianize.lambert_w import (
    _conditions,
    igmm,
    kurtosis,
    lambert_w0,
    lambert_w_fit,
    lambert_w_forward,
    lambert_w_gaussianize,
)
from bayesinv.gaussianize.layer import GaussianizationLayer
from bayesinv.gaussianize.yeo_johnson import (
    _llf_derivatives,
    fit_lambda,
    yeo_johnson,
    yeo_johnson_fit_transform,
    yeo_johnson_lambda,
    yeo_johnson_llf,
)

F64 = torch.float64


def _skew(x: torch.Tensor, dim: int = -2) -> torch.Tensor:
    c = x - x.mean(dim=dim, keepdim=True)
    return c.pow(3).mean(dim=dim) / c.pow(2).mean(dim=dim).pow(1.5)


def _skewed_samples(n: int = 400, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([rng.lognormal(0.0, 0.7, n),  # right skew, positive
                     rng.exponential(1.0, n) - 0.5,  # right skew, both signs
                     1.0 - rng.gamma(2.0, 1.0, n)], axis=1)  # negative skew, both signs


# --------------------------------------------------------------------------- Yeo–Johnson
def test_yeo_johnson_matches_scipy():
    data = _skewed_samples()
    x = torch.from_numpy(data)
    lam = fit_lambda(x)
    for j in range(data.shape[1]):
        ref_values, ref_lam = scipy.stats.yeojohnson(data[:, j])
        assert abs(float(lam[j]) - ref_lam) < 1e-4, (j, float(lam[j]), ref_lam)
        values = yeo_johnson(x[:, j], lam[j]).numpy()
        np.testing.assert_allclose(values, ref_values, atol=1e-6, rtol=0)
        for trial in (-1.5, 0.0, 0.7, 2.0):
            ours = float(yeo_johnson_llf(x[:, j:j + 1], torch.tensor([trial], dtype=F64)))
            assert ours == pytest.approx(float(scipy.stats.yeojohnson_llf(trial, data[:, j])), rel=1e-10)
    # negative skew needs lambda > 1, positive skew lambda < 1
    assert lam[0] < 1 and lam[1] < 1 and lam[2] > 1


def test_yeo_johnson_branches_stable_near_0_and_2():
    x = torch.tensor([-3.0, -0.5, 0.0, 0.5, 3.0], dtype=F64)
    exact0 = torch.where(x >= 0, torch.log1p(x.clamp(min=0)), -((1 - x) ** 2 - 1) / 2)
    exact2 = torch.where(x >= 0, ((x + 1) ** 2 - 1) / 2, -torch.log1p((-x).clamp(min=0)))
    torch.testing.assert_close(yeo_johnson(x, 0.0), exact0, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(yeo_johnson(x, 2.0), exact2, rtol=1e-14, atol=1e-14)
    for eps in (1e-12, 1e-9, 1e-7, 1e-5):  # continuous through the switch to the series
        for centre, exact in ((0.0, exact0), (2.0, exact2)):
            for sign in (-1, 1):
                torch.testing.assert_close(yeo_johnson(x, centre + sign * eps), exact,
                                           rtol=0, atol=20 * eps)
    # smooth in lambda across 0 and 2: the lambda-derivative matches a central difference
    for centre in (0.0, 2.0):
        lam = torch.tensor(centre, dtype=F64, requires_grad=True)
        (grad,) = torch.autograd.grad(yeo_johnson(x, lam).sum(), lam)
        h = 1e-5
        fd = (yeo_johnson(x, centre + h).sum() - yeo_johnson(x, centre - h).sum()) / (2 * h)
        assert float(grad) == pytest.approx(float(fd), rel=1e-7)


def test_yeo_johnson_lambda_implicit_gradient():
    x = torch.from_numpy(_skewed_samples(12, seed=3)[:, :2]).clone().requires_grad_(True)
    lam = fit_lambda(x.detach())
    g, h = _llf_derivatives(x.detach(), lam)
    assert float(g.abs().max()) < 1e-9 and bool((h < 0).all())  # a stationary maximum
    assert bool(((lam > -2) & (lam < 2)).all())  # interior, so the implicit rule applies
    assert torch.autograd.gradcheck(yeo_johnson_lambda, (x,), eps=1e-6, atol=1e-6)
    assert torch.autograd.gradcheck(lambda v: yeo_johnson_fit_transform(v)[0], (x,), eps=1e-6, atol=1e-6)


def test_yeo_johnson_lambda_on_bound_has_zero_gradient(generator):
    # strongly negatively skewed: the unconstrained optimum (scipy: 2.84) is beyond the bound 2
    x = -torch.exp(1.5 * torch.randn(50, 1, generator=generator, dtype=F64))
    assert scipy.stats.yeojohnson(x[:, 0].numpy())[1] > 2.0
    xx = x.clone().requires_grad_(True)
    lam = yeo_johnson_lambda(xx)
    assert float(lam.detach()) == 2.0
    lam.sum().backward()
    assert float(xx.grad.abs().max()) == 0.0  # the active bound pins lambda


# --------------------------------------------------------------------------- Lambert W
def test_lambert_w0_matches_scipy():
    z = torch.cat([torch.linspace(-math.exp(-1) + 1e-12, 0.0, 100, dtype=F64),
                   torch.logspace(-12, 12, 300, dtype=F64)])
    w = lambert_w0(z)
    ref = scipy.special.lambertw(z.numpy(), 0).real
    np.testing.assert_allclose(w.numpy(), ref, rtol=1e-13, atol=1e-15)
    zz = torch.tensor([0.0, 0.3, 2.0, 50.0], dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambert_w0, (zz,))
    assert torch.autograd.gradgradcheck(lambert_w0, (zz,))
    with pytest.raises(ValueError, match="z"):
        lambert_w0(torch.tensor([-0.5], dtype=F64))


def test_igmm_recovers_delta_and_zero_for_gaussian(generator):
    u = torch.randn(5000, 3, generator=generator, dtype=F64)
    delta_true = 0.2
    y = 1.0 + 2.0 * lambert_w_forward(u, delta_true)
    theta = igmm(y)
    # the standard error of delta-hat at N = 5000 is 0.0115 (simulated, 40 replicates; mean
    # 0.2008, unbiased); measured errors here 0.004, 0.024, 0.007; tolerance = 4 standard errors
    assert float((theta[:, 2] - delta_true).abs().max()) < 0.046, theta
    assert float((theta[:, 0] - 1.0).abs().max()) < 0.1 and float((theta[:, 1] - 2.0).abs().max()) < 0.15
    x, _ = lambert_w_gaussianize(y)
    torch.testing.assert_close(kurtosis(x), torch.full((3,), 3.0, dtype=F64), rtol=0, atol=1e-10)
    torch.testing.assert_close(x.mean(0), torch.zeros(3, dtype=F64), rtol=0, atol=1e-10)
    gauss = torch.randn(5000, 4, generator=generator, dtype=F64)
    theta0 = igmm(gauss)
    assert float(theta0[:, 2].max()) < 0.01, theta0
    # features with kurtosis <= 3 are left alone (delta = 0 exactly)
    light = torch.rand(500, 2, generator=generator, dtype=F64)
    assert bool((igmm(light)[:, 2] == 0).all())


def test_lambert_w_delta_implicit_gradient(generator):
    u = torch.randn(12, 2, generator=generator, dtype=F64)
    y = (0.5 + lambert_w_forward(u, 0.5)).requires_grad_(True)
    active = kurtosis(y.detach()) > 3
    # both branches are exercised: measured kurtosis (9.0, 1.5)
    assert bool(active[0]) and not bool(active[1]), kurtosis(y.detach())
    theta = lambert_w_fit(y.detach())
    assert float(_conditions(y.detach(), theta, active).abs().max()) < 1e-12  # exact fixed point
    assert float(theta[0, 2]) > 0 and float(theta[1, 2]) == 0
    assert torch.autograd.gradcheck(lambert_w_fit, (y,), eps=1e-6, atol=1e-6)
    assert torch.autograd.gradcheck(lambda v: lambert_w_gaussianize(v)[0], (y,), eps=1e-6, atol=1e-6,
                                    fast_mode=True)


# --------------------------------------------------------------------------- FastICA
def test_fast_ica_recovers_sources(generator):
    n = 2000
    sources = torch.stack([2 * torch.rand(n, generator=generator) - 1,  # sub-Gaussian
                           torch.log(torch.rand(n, generator=generator)) *
                           torch.sign(torch.randn(n, generator=generator)),  # Laplace
                           torch.rand(n, generator=generator) ** 3], dim=1).to(F64)
    mixing = torch.randn(3, 3, generator=generator, dtype=F64)
    x = sources @ mixing.T
    result = fast_ica(x, iters=20)
    assert amari_index(result.unmixing, mixing) < 0.05
    corr = torch.corrcoef(torch.cat([result.sources.T, sources.T]))[:3, 3:].abs()
    assert float(corr.max(dim=1).values.min()) > 0.95, corr
    torch.testing.assert_close(result.sources.T @ result.sources / n, torch.eye(3, dtype=F64),
                               rtol=0, atol=0.05)  # whitened, up to the 1e-3 shrinkage
    # a seeded random initial rotation separates too, deterministically
    seeded = fast_ica(x, iters=20, seed=3)
    assert amari_index(seeded.unmixing, mixing) < 0.05
    torch.testing.assert_close(fast_ica(x, iters=20, seed=3).sources, seeded.sources, rtol=0, atol=0)
    # differentiable through the unrolled loop
    xs = x[:40].clone().requires_grad_(True)
    fast_ica(xs, iters=10).sources.pow(4).sum().backward()
    assert xs.grad is not None and bool(torch.isfinite(xs.grad).all()) and float(xs.grad.abs().sum()) > 0
    assert torch.autograd.gradcheck(lambda v: fast_ica(v, iters=5).sources,
                                    (x[:12].clone().requires_grad_(True),))


# --------------------------------------------------------------------------- the layer
def _heavy_skewed_latent(shape, generator):
    t = torch.distributions.StudentT(4.0).sample(shape).to(F64)
    lognormal = torch.exp(0.8 * torch.randn(shape, generator=generator, dtype=F64))
    return torch.where(torch.rand(shape, generator=generator) < 0.5, t, lognormal)


@pytest.mark.parametrize("latent_shape,kwargs", [((2, 64, 64), {"patch_size": 2}),
                                                  ((4096,), {"group_size": 4})])
def test_layer_gaussianizes_heavy_skewed_latent(generator, latent_shape, kwargs):
    z = _heavy_skewed_latent((1, *latent_shape), generator)
    layer = GaussianizationLayer(latent_shape, **kwargs)
    pooled_in = z.reshape(-1, 1)
    assert float(_skew(pooled_in)) > 0.5 and float(kurtosis(pooled_in)) > 6.0
    out = layer(z)
    assert out.shape == z.shape and out.dtype == z.dtype and bool(torch.isfinite(out).all())
    s = layer.to_groups(out)[0]
    # measured: per-dimension |skew| <= 0.13 (sampling noise at N = 1024 is ~0.08),
    # pooled |skew| ~0.04, excess kurtosis 0 to 1e-12 (exact after the Lambert-W fit)
    assert float(_skew(s.reshape(-1, 1)).abs()) < 0.1
    assert float(_skew(s).abs().max()) < 0.2
    assert float((kurtosis(s) - 3).abs().max()) < 0.1
    assert float((kurtosis(s.reshape(-1, 1)) - 3).abs()) < 0.1
    torch.testing.assert_close(s.mean(0), torch.zeros(s.shape[1], dtype=F64), rtol=0, atol=1e-10)
    torch.testing.assert_close(s.var(0, correction=0), torch.ones(s.shape[1], dtype=F64), rtol=0, atol=1e-10)
    assert bool(layer.last_fit["active"].all())  # every dimension was heavy-tailed


def test_layer_gradcheck_tiny_latents():
    torch.manual_seed(1)
    z = torch.distributions.StudentT(2.5).sample((1, 24)).to(F64)
    layer = GaussianizationLayer((24,), group_size=2)
    layer(z)
    assert bool(layer.last_fit["active"].any())  # the Lambert-W branch is in the gradient
    assert torch.autograd.gradcheck(layer, (z.clone().requires_grad_(True),), fast_mode=True,
                                    eps=1e-6, atol=1e-5)
    image = torch.exp(0.5 * torch.randn(1, 1, 8, 8, dtype=F64))
    layer_img = GaussianizationLayer((1, 8, 8), patch_size=2)
    assert torch.autograd.gradcheck(layer_img, (image.requires_grad_(True),), fast_mode=True,
                                    eps=1e-6, atol=1e-5)


@pytest.mark.slow
def test_layer_gradcheck_full():
    torch.manual_seed(1)
    z = torch.distributions.StudentT(2.5).sample((1, 24)).to(F64)
    layer = GaussianizationLayer((24,), group_size=2)
    assert torch.autograd.gradcheck(layer, (z.requires_grad_(True),), eps=1e-6, atol=1e-5)


def test_layer_disabled_is_identity(generator):
    z = torch.randn(2, 1, 16, 16, generator=generator)
    layer = GaussianizationLayer((1, 16, 16), patch_size=2, enabled=False)
    assert layer(z) is z
    layer.enabled = True  # switchable per run
    out = layer(z)
    assert not torch.equal(out, z) and out.shape == z.shape


def test_layer_shapes_batches_and_dtype(generator):
    z = torch.randn(3, 3, 16, 16, generator=generator)  # float32 in, float32 out
    layer = GaussianizationLayer((3, 16, 16), patch_size=2)
    assert layer.group_size == 12 and layer.num_samples == 64
    out = layer(z)
    assert out.shape == z.shape and out.dtype == torch.float32
    # batch elements are Gaussianized independently
    torch.testing.assert_close(layer(z[1:2]), out[1:2], rtol=0, atol=1e-6)
    torch.testing.assert_close(layer(z[1]), out[1], rtol=0, atol=1e-6)  # unbatched input
    # grouping round trip
    torch.testing.assert_close(layer.from_groups(layer.to_groups(z)), z, rtol=0, atol=0)
    patches = layer.to_groups(z)
    torch.testing.assert_close(patches[0, 1], z[0, :, 0:2, 2:4].reshape(-1), rtol=0, atol=0)
    flat = GaussianizationLayer((64,), group_size=4)
    w = torch.randn(2, 64, generator=generator, dtype=F64)
    assert flat(w).shape == (2, 64) and flat(w).dtype == F64
    for kwargs in ({"ica": False}, {"yeo_johnson": False}, {"lambert_w": False},
                   {"ica": False, "yeo_johnson": False, "lambert_w": False}):
        s = GaussianizationLayer((64,), group_size=4, **kwargs).to_groups(
            GaussianizationLayer((64,), group_size=4, **kwargs)(w))
        torch.testing.assert_close(s.mean(1), torch.zeros(2, 4, dtype=F64), rtol=0, atol=1e-10)


def test_layer_bad_inputs():
    layer = GaussianizationLayer((1, 16, 16), patch_size=2)
    bad = torch.randn(1, 1, 16, 16)
    bad[0, 0, 3, 3] = float("nan")
    with pytest.raises(ValueError, match="latent"):
        layer(bad)
    with pytest.raises(ValueError, match="latent"):
        layer(torch.randn(1, 1, 8, 8))
    with pytest.raises(ValueError, match="latent"):
        layer(torch.zeros(1, 1, 16, 16))  # constant groups cannot be standardised
    with pytest.raises(TypeError, match="latent"):
        layer(np.zeros((1, 1, 16, 16)))
    with pytest.raises(ValueError, match="patch_size"):
        GaussianizationLayer((1, 16, 16), patch_size=3)
    with pytest.raises(ValueError, match="patch_size"):
        GaussianizationLayer((1, 8, 8), patch_size=4)  # 4 samples of 16 features
    with pytest.raises(ValueError, match="patch_size"):
        GaussianizationLayer((64,), patch_size=2)
    with pytest.raises(ValueError, match="group_size"):
        GaussianizationLayer((64,), group_size=5)
    with pytest.raises(ValueError, match="group_size"):
        GaussianizationLayer((24,), group_size=4)  # 6 samples < 8
    with pytest.raises(ValueError, match="latent_shape"):
        GaussianizationLayer((0, 4))
    with pytest.raises(ValueError, match="ica_iters"):
        GaussianizationLayer((64,), ica_iters=-1)
    with pytest.raises(ValueError, match="scale"):
        GaussianizationLayer((64,), scale=0.0)
    with pytest.raises(ValueError, match="scale"):
        GaussianizationLayer((64,), group_size=4, scale=[1.0, 2.0])
    with pytest.raises(ValueError, match="scale"):
        GaussianizationLayer((64,), group_size=2, scale=[1.0, -2.0])
    perm = torch.randperm(64)
    with pytest.raises(ValueError, match="layout"):
        GaussianizationLayer((64,), layout=((1, 4, 4), perm))  # 16 != 64 entries
    with pytest.raises(ValueError, match="layout"):
        GaussianizationLayer((64,), layout=((1, 8, 8), perm[:-1]))
    with pytest.raises(ValueError, match="layout"):
        GaussianizationLayer((64,), layout=((1, 8, 8), torch.zeros(64, dtype=torch.long)))
    with pytest.raises(ValueError, match="layout"):
        GaussianizationLayer((1, 8, 8), layout=((1, 8, 8), perm))
    with pytest.raises(TypeError, match="layout"):
        GaussianizationLayer((64,), layout=perm)


def test_glow_latent_layout_is_the_squeeze_split_bookkeeping():
    from bayesinv.flows.glow import Glow

    flow = Glow((1, 8, 8), levels=2, steps=1, hidden=8)
    shape, perm = flow.latent_layout()
    assert shape == (1, 8, 8) and torch.equal(torch.sort(perm).values, torch.arange(64))
    # level 1 moves the first 2 of the 4 sub-pixel channels of each 2x2 block to the latent:
    # the sub-pixels (0, 0) and (0, 1), i.e. even rows; level 2's latent covers the odd rows
    rows = perm // 8
    assert bool((rows[:32] % 2 == 0).all()) and bool((rows[32:] % 2 == 1).all())
    # the view is exact: an identity-weight flow would put latent k at pixel perm[k]
    img = torch.arange(64.0).reshape(1, 1, 8, 8)
    torch.testing.assert_close(img.flatten(1)[:, perm].float(), perm[None].float())


def test_layer_on_flow_layout_and_scale(generator):
    from bayesinv.flows.glow import Glow

    flow = Glow((1, 16, 16), levels=2, steps=1, hidden=8)
    z = _heavy_skewed_latent((2, 256), generator)
    layer = GaussianizationLayer.for_prior(flow, patch_size=2, scale=0.6)
    assert layer.group_size == 4 and layer.num_samples == 64
    out = layer(z)
    assert out.shape == z.shape and bool(torch.isfinite(out).all())
    # groups are patches of the image-shaped view; the round trip is exact
    torch.testing.assert_close(layer.from_groups(layer.to_groups(z)), z, rtol=0, atol=0)
    _, perm = flow.latent_layout()
    view = torch.empty_like(z)
    view[:, perm] = z
    view = view.reshape(2, 1, 16, 16)
    torch.testing.assert_close(layer.to_groups(z)[:, 1], view[:, 0, 0:2, 2:4].reshape(2, -1))
    # the samples of each group feature have mean 0 and std = scale
    s = layer.to_groups(out)
    torch.testing.assert_close(s.std(1, correction=0), torch.full((2, 4), 0.6, dtype=F64), rtol=0, atol=1e-10)
    # the same as the image-latent layer applied to the view, times the scale
    plain = GaussianizationLayer((1, 16, 16), patch_size=2)
    torch.testing.assert_close(layer.to_groups(out), 0.6 * plain.to_groups(plain(view)))
    # scale from example images: their latent RMS per patch feature
    x = torch.rand(4, 1, 16, 16, generator=generator)
    with torch.no_grad():
        zx = flow.encode(x)[0].double()
    from_images = GaussianizationLayer.for_prior(flow, images=x)
    view = torch.empty_like(zx)
    view[:, perm] = zx
    view = view.reshape(4, 16, 16)
    expect = torch.stack([view[:, a::2, b::2].pow(2).mean().sqrt() for a in (0, 1) for b in (0, 1)])
    torch.testing.assert_close(from_images.scale, expect)
    s2 = from_images.to_groups(from_images(z))
    torch.testing.assert_close(s2.std(1, correction=0), expect.expand(2, 4), rtol=0, atol=1e-10)
    with pytest.raises(ValueError, match="scale"):
        GaussianizationLayer.for_prior(flow, images=x, scale=0.5)
    with pytest.raises(TypeError, match="images"):
        GaussianizationLayer.for_prior(flow, images=x.numpy())
    # whitening only (ica_iters=0): uncorrelated unit-variance features, no rotation
    w = GaussianizationLayer.for_prior(flow, 2, ica_iters=0, yeo_johnson=False, lambert_w=False)
    g = w.to_groups(w(z))[0]
    torch.testing.assert_close(g.T @ g / g.shape[0], torch.eye(4, dtype=F64), rtol=0, atol=1e-3)


def test_layer_gradcheck_on_flow_layout():
    torch.manual_seed(2)
    perm = torch.randperm(32)
    z = torch.distributions.StudentT(3.0).sample((1, 32)).to(F64)
    layer = GaussianizationLayer((32,), patch_size=1, layout=((2, 4, 4), perm), scale=0.7)
    assert torch.autograd.gradcheck(layer, (z.requires_grad_(True),), fast_mode=True, eps=1e-6,
                                    atol=1e-5)
