"""Classical baselines: closed forms, optimality conditions, convergence and quality margins."""

import math

import pytest
import torch

from bayesinv.baselines import (
    dct2,
    gradient,
    gradient_adjoint,
    idct2,
    lasso_dct,
    select_weight,
    tikhonov,
    tikhonov_objective,
    total_variation,
    tv_objective,
)
from bayesinv.data.images import ellipse_phantoms
from bayesinv.metrics import psnr
from bayesinv.operators.base import Operator
from bayesinv.operators.blur import Blur
from bayesinv.operators.compressed_sensing import CompressedSensing
from bayesinv.operators.matrix import MatrixOperator, random_gaussian_matrix
from bayesinv.operators.tomography import Radon

F64 = torch.float64


def _noisy(op, x, sigma, seed=1):
    y = op(x)
    gen = torch.Generator().manual_seed(seed)
    return y + sigma * torch.randn(y.shape, generator=gen, dtype=y.dtype)


class SquarePlusLinear(Operator):
    r"""A small nonlinear operator :math:`x \mapsto (Mx)^{\odot 2} + Nx` (autograd only)."""

    def __init__(self, in_shape, m, seed=0):
        super().__init__(in_shape, (m,))
        d = math.prod(in_shape)
        self.register_buffer("m1", random_gaussian_matrix(m, d, seed=seed, dtype=F64))
        self.register_buffer("m2", random_gaussian_matrix(m, d, seed=seed + 1, dtype=F64))

    def _forward(self, x):
        v = x.flatten(1)
        return 0.3 * (v @ self.m1.T) ** 2 + v @ self.m2.T


# -- gradient / DCT helpers ---------------------------------------------------------------------
@pytest.mark.parametrize("boundary", ["neumann", "periodic"])
def test_gradient_adjoint_and_norm(boundary):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 1, 7, 9, generator=gen, dtype=F64)
    p = torch.randn(2, 1, 2, 7, 9, generator=gen, dtype=F64)
    lhs = (gradient(x, boundary) * p).sum()
    rhs = (x * gradient_adjoint(p, boundary)).sum()
    assert abs(float(lhs - rhs)) < 1e-12 * float(x.norm() * p.norm())
    # ||grad||^2 <= 8 (power iteration on grad* grad)
    v = x
    for _ in range(200):
        v = gradient_adjoint(gradient(v, boundary), boundary)
        lam = float(v.norm())
        v = v / lam
    assert lam <= 8.0 + 1e-9


def test_dct2_orthonormal():
    x = torch.randn(3, 1, 8, 6, generator=torch.Generator().manual_seed(0), dtype=F64)
    c = dct2(x)
    assert torch.allclose(idct2(c), x, atol=1e-12)
    assert abs(float(c.norm() - x.norm())) < 1e-10
    import scipy.fft

    ref = scipy.fft.dctn(x.numpy(), axes=(-2, -1), norm="ortho")
    assert torch.allclose(c, torch.from_numpy(ref), atol=1e-12)


# -- Tikhonov -----------------------------------------------------------------------------------
def test_tikhonov_identity_matches_closed_form():
    shape = (1, 4, 5)
    mat = random_gaussian_matrix(12, 20, seed=3, dtype=F64)
    op = MatrixOperator(mat, shape)
    y = torch.randn(3, 12, generator=torch.Generator().manual_seed(2), dtype=F64)
    w = 0.37
    x = tikhonov(op, y, w, tol=1e-14, max_iter=200)
    exact = torch.linalg.solve(mat.T @ mat + w * torch.eye(20, dtype=F64), mat.T @ y.T).T
    assert x.shape == (3, *shape)
    assert torch.allclose(x.flatten(1), exact, atol=1e-6, rtol=0)
    # with a reference: (A^T A + w I) x = A^T y + w x_ref
    ref = torch.rand(shape, generator=torch.Generator().manual_seed(5), dtype=F64)
    x_ref = tikhonov(op, y, w, reference=ref, tol=1e-14)
    exact_ref = torch.linalg.solve(mat.T @ mat + w * torch.eye(20, dtype=F64),
                                   mat.T @ y.T + w * ref.reshape(-1, 1)).T
    assert torch.allclose(x_ref.flatten(1), exact_ref, atol=1e-6, rtol=0)


@pytest.mark.parametrize("boundary", ["neumann", "periodic"])
def test_tikhonov_gradient_solves_normal_equations(boundary):
    x_true = ellipse_phantoms(2, 24, seed=10_001, dtype=F64)
    op = Blur((1, 24, 24), width=1.5).to(F64)
    y = _noisy(op, x_true, 0.01)
    w = 0.05
    x = tikhonov(op, y, w, kind="gradient", boundary=boundary, tol=1e-12, max_iter=1000)
    resid = op.normal(x) + w * gradient_adjoint(gradient(x, boundary), boundary) - op.adjoint(y)
    assert float(resid.norm() / op.adjoint(y).norm()) < 1e-9
    # and it is the minimiser: any perturbation increases the objective
    base = tikhonov_objective(op, x, y, w, kind="gradient", boundary=boundary)
    pert = torch.randn(x.shape, generator=torch.Generator().manual_seed(9), dtype=F64) * 1e-3
    assert bool((tikhonov_objective(op, x + pert, y, w, kind="gradient", boundary=boundary)
                 > base).all())


def test_tikhonov_lbfgs_matches_cg_on_linear_operator():
    x_true = ellipse_phantoms(1, 16, seed=10_002, dtype=F64)
    op = Blur((1, 16, 16), width=1.0).to(F64)
    y = _noisy(op, x_true, 0.01)
    x_cg = tikhonov(op, y, 0.02, kind="gradient", tol=1e-12, max_iter=1000)
    x_lb = tikhonov(op, y, 0.02, kind="gradient", solver="lbfgs", tol=1e-10, max_iter=500)
    assert float((x_cg - x_lb).abs().max()) < 1e-5


def test_tikhonov_nonlinear_reduces_objective_and_is_stationary():
    shape = (1, 4, 4)
    op = SquarePlusLinear(shape, m=24, seed=4)
    gen = torch.Generator().manual_seed(7)
    x_true = torch.rand((2, *shape), generator=gen, dtype=F64)
    y = op(x_true) + 0.01 * torch.randn(2, 24, generator=gen, dtype=F64)
    w = 0.01
    x0 = torch.zeros((2, *shape), dtype=F64)
    x = tikhonov(op, y, w, x0=x0, max_iter=300, tol=1e-10)
    start = tikhonov_objective(op, x0, y, w)
    end = tikhonov_objective(op, x, y, w)
    assert bool((end < 0.05 * start).all())  # measured ratio 0.014 / 0.009
    xg = x.clone().requires_grad_(True)
    tikhonov_objective(op, xg, y, w).sum().backward()
    assert float(xg.grad.abs().max()) < 1e-6
    assert float((x - x_true).abs().max()) < 0.1  # well-posed: close to the truth


# -- total variation ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def phantom():
    return ellipse_phantoms(2, 32, seed=10_010, dtype=F64)


@pytest.mark.parametrize("kind", ["blur", "radon"])
def test_tv_beats_tikhonov_on_piecewise_constant(phantom, kind):
    shape = (1, 32, 32)
    if kind == "blur":
        # weights: the best of a 10-point log grid for each method on these phantoms
        op, sigma, w_tv, w_tik, margin = Blur(shape, width=1.5).to(F64), 0.02, 0.003, 0.03, 1.0
    else:
        op = Radon.sparse_view(shape, n_angles=30, dtype=F64)
        sigma, w_tv, w_tik, margin = 0.3, 1.0, 10.0, 2.5
    y = _noisy(op, phantom, sigma)
    x_tik = tikhonov(op, y, w_tik, kind="gradient")
    x0 = op.init_estimate(y).clamp(0, 1)
    x_tv = total_variation(op, y, w_tv, max_iter=600, x0=x0)
    obj = lambda v: tv_objective(op, v, y, w_tv)  # noqa: E731
    assert bool((obj(x_tv) < obj(x0)).all())
    assert bool((obj(x_tv) < obj(x_tik)).all())
    assert bool((obj(x_tv) < obj(x_tik.clamp(0, 1))).all())
    gain = [psnr(a, t) - psnr(b, t) for a, b, t in zip(x_tv, x_tik, phantom, strict=True)]
    # measured: blur +2.6/+1.6 dB, radon sparse-view +4.3/+4.1 dB
    assert min(gain) > margin, gain


def test_tv_gap_and_objective_decrease(phantom):
    op = Blur((1, 32, 32), width=1.5).to(F64)
    y = _noisy(op, phantom, 0.02)
    for iso in (True, False):
        _, hist = total_variation(op, y, 0.01, max_iter=800, log_every=100, isotropic=iso,
                                  return_history=True)
        gaps = torch.tensor(hist.gap)  # (n_logs, B)
        objs = torch.tensor(hist.objective)
        assert hist.iterations[0] == 0 and hist.iterations[-1] == 800
        assert bool((gaps >= -1e-10).all())  # weak duality
        assert bool((gaps[-1] < 1e-2 * gaps[0]).all())  # measured ratio ~1e-3
        assert bool((gaps[2:] <= gaps[1:-1] * 1.05).all())  # monotone after the transient
        assert bool((objs[-1] < objs[0]).all())
        assert bool((objs[-1] <= objs[1:].min(dim=0).values + 1e-6 * objs[-1]).all())


def test_tv_tolerance_stops_early(phantom):
    op = Blur((1, 32, 32), width=1.5).to(F64)
    y = _noisy(op, phantom, 0.02)
    _, hist = total_variation(op, y, 0.01, max_iter=5000, tol=1e-2, log_every=50,
                              return_history=True)
    assert hist.iterations[-1] < 5000
    rel = torch.tensor(hist.gap[-1]) / torch.tensor(hist.objective[-1])
    assert bool((rel <= 1e-2).all())


# -- Lasso-DCT ----------------------------------------------------------------------------------
def test_lasso_dct_recovers_dct_sparse_signal():
    shape = (1, 16, 16)
    gen = torch.Generator().manual_seed(11)
    c = torch.zeros((2, *shape), dtype=F64)
    for b in range(2):
        idx = torch.randperm(256, generator=gen)[:10]
        c[b].view(-1)[idx] = torch.randn(10, generator=gen, dtype=F64) * 2 + 1
    x_true = idct2(c)
    op = CompressedSensing(shape, m=96, kind="gaussian", seed=3).to(F64)
    y = op(x_true) + 1e-4 * torch.randn(2, 96, generator=gen, dtype=F64)
    x = lasso_dct(op, y, 1e-3, max_iter=3000, tol=1e-10)
    rel = (x - x_true).flatten(1).norm(dim=1) / x_true.flatten(1).norm(dim=1)
    assert float(rel.max()) < 0.02, rel
    x_pinv = op.pinv(y)  # minimum-norm solution is far off (m = 96 < D = 256)
    rel_pinv = (x_pinv - x_true).flatten(1).norm(dim=1) / x_true.flatten(1).norm(dim=1)
    assert float(rel_pinv.min()) > 0.3


# -- weight selection ---------------------------------------------------------------------------
def test_select_weight_finds_interior_optimum(phantom):
    op = Blur((1, 32, 32), width=1.5).to(F64)
    y = _noisy(op, phantom, 0.02)
    sel = select_weight(tikhonov, op, y, phantom, [1e-4, 1e-2, 1.0], refine=2, kind="gradient")
    ws = [w for w, _ in sel.scores]
    assert len(ws) > 3 and ws[0] < sel.weight < ws[-1]
    assert sel.psnr == max(s for _, s in sel.scores)
    direct = sum(psnr(a, t) for a, t in zip(tikhonov(op, y, sel.weight, kind="gradient"),
                                            phantom, strict=True)) / 2
    assert abs(direct - sel.psnr) < 1e-9


# -- bad inputs ---------------------------------------------------------------------------------
def test_bad_inputs_name_the_argument(phantom):
    op = Blur((1, 32, 32), width=1.5).to(F64)
    y = op(phantom)
    with pytest.raises(ValueError, match="weight"):
        tikhonov(op, y, -1.0)
    with pytest.raises(ValueError, match="weight"):
        total_variation(op, y, -0.1)
    with pytest.raises(ValueError, match="weight"):
        lasso_dct(op, y, float("nan"))
    with pytest.raises(ValueError, match="y"):
        tikhonov(op, y[..., :-1], 0.1)
    with pytest.raises(ValueError, match="y"):
        total_variation(op, torch.zeros(2, 1, 31, 32, dtype=F64), 0.1)
    with pytest.raises(ValueError, match="y"):
        tikhonov(op, torch.full_like(y, float("nan")), 0.1)
    nonlinear = SquarePlusLinear((1, 4, 4), m=8)
    with pytest.raises(TypeError, match="operator"):
        total_variation(nonlinear, torch.zeros(1, 8, dtype=F64), 0.1)
    with pytest.raises(TypeError, match="operator"):
        lasso_dct(nonlinear, torch.zeros(1, 8, dtype=F64), 0.1)
    with pytest.raises(ValueError, match="solver"):
        tikhonov(nonlinear, torch.zeros(1, 8, dtype=F64), 0.1, solver="cg")
    with pytest.raises(TypeError, match="operator"):
        tikhonov("not an operator", y, 0.1)
    with pytest.raises(ValueError, match="kind"):
        tikhonov(op, y, 0.1, kind="laplacian")
    with pytest.raises(ValueError, match="box"):
        total_variation(op, y, 0.1, box=(1.0, 0.0))
    with pytest.raises(ValueError, match="x0"):
        total_variation(op, y, 0.1, x0=torch.zeros(3, 1, 32, 32, dtype=F64))
    with pytest.raises(ValueError, match="grid"):
        select_weight(tikhonov, op, y, phantom, [])
    with pytest.raises(ValueError, match="truth"):
        select_weight(tikhonov, op, y, phantom[..., :-1], [0.1])
