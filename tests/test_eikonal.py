"""Eikonal traveltime operator: closed-form traveltimes, convergence order, adjoint-state
gradients vs finite differences, batching, shapes and input validation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from bayesinv.operators.eikonal import Eikonal, _node_equations

F64 = torch.float64


def _grid(H: int, W: int, h: float) -> tuple[torch.Tensor, torch.Tensor]:
    z = torch.arange(H, dtype=F64) * h
    x = torch.arange(W, dtype=F64) * h
    return torch.meshgrid(z, x, indexing="ij")


def _smooth_velocity(H: int, W: int, h: float) -> torch.Tensor:
    """A smooth heterogeneous model: linear trend plus a Gaussian fast anomaly."""
    zz, xx = _grid(H, W, h)
    Lz, Lx = (H - 1) * h, (W - 1) * h
    bump = torch.exp(-((zz - 0.5 * Lz) ** 2 + (xx - 0.55 * Lx) ** 2) / (0.08 * Lz * Lx))
    return (2.0 + 0.8 * bump + zz / Lz)[None, None]


def _distances(op: Eikonal) -> np.ndarray:
    src = op.sources.numpy().astype(float) * op.spacing
    rec = op.receivers.numpy().astype(float) * op.spacing
    return np.linalg.norm(src[:, None] - rec[None], axis=-1)


# -- closed-form traveltimes ----------------------------------------------------------------------
@pytest.mark.parametrize("geometry", ["crosswell", "surface"])
def test_constant_velocity_straight_rays(geometry):
    """T = |x_r - x_s| / v: the factored scheme is exact for a constant velocity."""
    op = Eikonal((1, 24, 30), spacing=0.1, geometry=geometry, n_sources=5, n_receivers=7,
                 tol=1e-12).to(F64)
    v = 2.5
    T = op(torch.full((1, 1, 24, 30), v, dtype=F64))[0].numpy()
    np.testing.assert_allclose(T, _distances(op) / v, rtol=0, atol=1e-12)


def test_constant_velocity_interior_sources_float32_default():
    src = [[5, 7], [12, 3], [0, 19]]
    rec = [[19, 0], [10, 10], [3, 15], [19, 19]]
    op = Eikonal((1, 20, 20), spacing=0.5, sources=src, receivers=rec)
    T = op(torch.full((1, 1, 20, 20), 4.0))
    assert T.dtype == torch.float32 and T.shape == (1, 3, 4)
    np.testing.assert_allclose(T[0].numpy(), _distances(op) / 4.0, rtol=1e-5, atol=1e-6)


def _linear_gradient_error(n: int, v0: float = 2.0, g: float = 1.5) -> float:
    """Max relative error vs T = arccosh(1 + g^2 r^2 / (2 v_s v_r)) / g for v = v0 + g z on
    [0, 1]^2 with ``n + 1`` nodes per side (sources/receivers at nested node positions)."""
    H = n + 1
    h = 1.0 / n
    src = np.array([[n // 4, 0], [n // 2, 0], [3 * n // 4, 0]])
    rec = np.stack([np.arange(0, n + 1, n // 8), np.full(9, n)], axis=1)
    op = Eikonal((1, H, H), spacing=h, sources=src, receivers=rec, tol=1e-10).to(F64)
    zz, _ = _grid(H, H, h)
    T = op((v0 + g * zz)[None, None])[0].numpy()
    ps, pr = src * h, rec * h
    r2 = ((ps[:, None] - pr[None]) ** 2).sum(-1)
    vs, vr = v0 + g * ps[:, 0], v0 + g * pr[:, 0]
    T_exact = np.arccosh(1.0 + g * g * r2 / (2.0 * vs[:, None] * vr[None])) / g
    return float(np.abs(T - T_exact).max() / T_exact.max())


def test_linear_gradient_closed_form_and_first_order_convergence():
    """Measured (n = 32, 64, 128): rel. errors 1.37e-3, 6.84e-4, 3.42e-4 -> order 1.00, 1.00.
    First order, without the O(h log h) source singularity of the unfactored scheme."""
    errs = [_linear_gradient_error(n) for n in (32, 64, 128)]
    orders = [math.log2(errs[i] / errs[i + 1]) for i in range(2)]
    assert errs[-1] < 5e-4
    assert min(orders) > 0.9, (errs, orders)


@pytest.mark.slow
def test_linear_gradient_refinement_to_256():
    """Measured: rel. errors 1.37e-3, 6.84e-4, 3.42e-4, 1.71e-4 -> orders 1.002, 1.001, 1.0005."""
    errs = [_linear_gradient_error(n) for n in (32, 64, 128, 256)]
    orders = [math.log2(errs[i] / errs[i + 1]) for i in range(3)]
    assert min(orders) > 0.95 and errs[-1] < 2.5e-4, (errs, orders)


# -- gradients ---------------------------------------------------------------------------------
@pytest.mark.parametrize("geometry", ["crosswell", "surface"])
@pytest.mark.parametrize("parametrization", ["velocity", "slowness"])
def test_adjoint_gradient_matches_finite_differences(geometry, parametrization):
    H, W, h = 18, 22, 0.05
    op = Eikonal((1, H, W), spacing=h, geometry=geometry, n_sources=4, n_receivers=6,
                 parametrization=parametrization, tol=1e-13).to(F64)
    v = _smooth_velocity(H, W, h)
    x = (v if parametrization == "velocity" else 1.0 / v).clone().requires_grad_(True)
    gen = torch.Generator().manual_seed(3)
    weights = torch.randn(op.out_shape, dtype=F64, generator=gen)

    def loss(t: torch.Tensor) -> torch.Tensor:
        T = op(t)
        return (T * weights).sum() + 0.5 * (T**2).sum()

    (grad,) = torch.autograd.grad(loss(x), x)
    x = x.detach()
    eps = 1e-6 * float(x.mean())
    scale = float(grad.abs().max())
    # pixels: random ones plus a source pixel (its s_0 enters every equation of that source)
    pix = [(int(i), int(j)) for i, j in zip(torch.randint(0, H, (6,), generator=gen),
                                              torch.randint(0, W, (6,), generator=gen),
                                              strict=True)]
    pix.append(tuple(op.sources[1].tolist()))
    with torch.no_grad():
        for i, j in pix:
            e = torch.zeros_like(x)
            e[0, 0, i, j] = eps
            fd = float((loss(x + e) - loss(x - e)) / (2 * eps))
            err = abs(float(grad[0, 0, i, j]) - fd) / max(abs(fd), 1e-2 * scale)
            assert err < 1e-3, ((i, j), float(grad[0, 0, i, j]), fd)
        d = torch.randn(x.shape, dtype=F64, generator=gen) * float(x.mean())
        t = 1e-6
        fd = float((loss(x + t * d) - loss(x - t * d)) / (2 * t))
        ad = float((grad * d).sum())
        assert abs(ad - fd) / abs(fd) < 1e-3, (ad, fd)


def test_gradient_float32_is_finite_and_close_to_float64():
    H, W, h = 16, 16, 0.1
    op = Eikonal((1, H, W), spacing=h, n_sources=3, n_receivers=5)
    v = _smooth_velocity(H, W, h)
    x32 = v.float().requires_grad_(True)
    op(x32).sum().backward()
    x64 = v.clone().requires_grad_(True)
    op.to(F64)(x64).sum().backward()
    assert torch.isfinite(x32.grad).all()
    err = (x32.grad.double() - x64.grad).abs().max() / x64.grad.abs().max()
    assert err < 1e-4


# -- solver variants, batching, shapes --------------------------------------------------------
def test_parallel_and_alternating_sweeps_agree():
    H, W, h = 30, 26, 0.1
    zz, xx = _grid(H, W, h)
    v = (2.0 + 1.2 * torch.sin(4 * zz) * torch.cos(3 * xx))[None, None]  # curved rays
    kw = dict(spacing=h, geometry="surface", n_sources=4, n_receivers=9, tol=1e-12)
    a = Eikonal((1, H, W), sweeps="alternating", **kw).to(F64)
    p = Eikonal((1, H, W), sweeps="parallel", **kw).to(F64)
    Ta, Tp = a.traveltime(v), p.traveltime(v)
    assert a.last_n_sweeps > 2 and p.last_n_sweeps > 2  # heterogeneous: several iterations
    torch.testing.assert_close(Ta, Tp, rtol=0, atol=1e-11)
    # The converged factor satisfies its upwind equation at every node (what the adjoint uses).
    s = 1.0 / v[:, 0]
    tau = p._solve(s)
    src = p.sources.numpy()
    S = (s[:, None] / s[:, src[:, 0], src[:, 1]][:, :, None, None]).numpy()
    resid = _node_equations(tau.numpy(), S, p._geo)["resid"]
    resid[:, np.arange(len(src)), src[:, 0], src[:, 1]] = 0.0  # tau = 1 is pinned there
    assert np.abs(resid).max() < 1e-10


def test_batch_equals_separate_solves():
    H, W, h = 20, 20, 0.1
    op = Eikonal((1, H, W), spacing=h, n_sources=4, n_receivers=5, tol=1e-12).to(F64)
    v1 = _smooth_velocity(H, W, h)
    v2 = 1.0 + 3.0 * torch.rand((1, 1, H, W), dtype=F64, generator=torch.Generator().manual_seed(0))
    both = torch.cat([v1, v2]).requires_grad_(True)
    T = op(both)
    w = torch.randn(T.shape, dtype=F64, generator=torch.Generator().manual_seed(1))
    (T * w).sum().backward()
    for b, vb in enumerate((v1, v2)):
        vb = vb.clone().requires_grad_(True)
        Tb = op(vb)
        (Tb * w[b:b + 1]).sum().backward()
        torch.testing.assert_close(T[b:b + 1], Tb, rtol=0, atol=1e-11)
        torch.testing.assert_close(both.grad[b:b + 1], vb.grad, rtol=1e-9, atol=1e-12)


def test_shapes_geometry_and_description():
    op = Eikonal((1, 12, 10), spacing=2.0, n_sources=4)
    assert op.out_shape == (4, 4) and not op.is_linear
    np.testing.assert_array_equal(op.sources.numpy(), [[0, 0], [4, 0], [7, 0], [11, 0]])
    assert (op.receivers[:, 1] == 9).all()
    x = torch.full((2, 3, 1, 12, 10), 1.5)
    assert op(x).shape == (2, 3, 4, 4)
    assert op(torch.full((1, 12, 10), 1.5)).shape == (4, 4)
    assert op.traveltime(x[0]).shape == (3, 4, 12, 10)
    surf = Eikonal((1, 12, 10), geometry="surface", n_sources=3, n_receivers=10)
    assert surf.out_shape == (3, 10) and (surf.sources[:, 0] == 0).all()
    assert (surf.receivers[:, 0] == 0).all()
    desc = json.loads(json.dumps(surf.describe()))
    assert desc["name"] == "Eikonal" and desc["geometry"] == "surface"


def test_not_converged_warns():
    H, W = 30, 30
    zz, xx = _grid(H, W, 0.1)
    v = (2.0 + 1.5 * torch.sin(6 * zz) * torch.cos(5 * xx))[None, None].float()
    op = Eikonal((1, H, W), spacing=0.1, n_sources=2, max_sweeps=1, tol=0.0)
    with pytest.warns(RuntimeWarning, match="max_sweeps"):
        op(v)


# -- bad inputs -----------------------------------------------------------------------------------
def test_bad_inputs_name_the_argument():
    op = Eikonal((1, 8, 8), n_sources=2)
    good = torch.ones(1, 1, 8, 8)
    with pytest.raises(ValueError, match="x .velocity.*> 0"):
        op(good * 0)
    with pytest.raises(ValueError, match="x .velocity"):
        op(-good)
    with pytest.raises(ValueError, match="x .velocity"):
        op(good * float("nan"))
    with pytest.raises(ValueError, match="x .slowness"):
        Eikonal((1, 8, 8), n_sources=2, parametrization="slowness")(good * 0)
    with pytest.raises(ValueError, match="x: expected shape"):
        op(torch.ones(1, 1, 8, 9))
    with pytest.raises(ValueError, match="sources.*outside"):
        Eikonal((1, 8, 8), sources=[[0, 8]], receivers=[[1, 1]])
    with pytest.raises(ValueError, match="receivers.*outside"):
        Eikonal((1, 8, 8), sources=[[0, 0]], receivers=[[-1, 1]])
    with pytest.raises(ValueError, match="sources.*shape"):
        Eikonal((1, 8, 8), sources=[0, 1])
    with pytest.raises(TypeError, match="sources"):
        Eikonal((1, 8, 8), sources=[[0.5, 1.0]])
    with pytest.raises(ValueError, match="in_shape.*>= 3"):
        Eikonal((1, 2, 8))
    with pytest.raises(ValueError, match="in_shape.*>= 3"):
        Eikonal((1, 8, 2))
    with pytest.raises(ValueError, match="in_shape"):
        Eikonal((2, 8, 8))
    with pytest.raises(ValueError, match="n_sources"):
        Eikonal((1, 8, 8), n_sources=9)
    with pytest.raises(ValueError, match="n_receivers"):
        Eikonal((1, 8, 8), geometry="surface", n_sources=2, n_receivers=9)
    with pytest.raises(ValueError, match="spacing"):
        Eikonal((1, 8, 8), spacing=0.0)
    with pytest.raises(ValueError, match="geometry"):
        Eikonal((1, 8, 8), geometry="vsp")
    with pytest.raises(ValueError, match="parametrization"):
        Eikonal((1, 8, 8), parametrization="log")
    with pytest.raises(ValueError, match="sweeps"):
        Eikonal((1, 8, 8), sweeps="random")
    with pytest.raises(TypeError, match="max_sweeps"):
        Eikonal((1, 8, 8), max_sweeps=2.5)
