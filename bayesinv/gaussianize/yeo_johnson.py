r"""Yeo–Johnson power transform with a maximum-likelihood :math:`\lambda` and its implicit gradient.

The transform (Yeo & Johnson 2000, "A new family of power transformations to improve normality
or symmetry", Biometrika 87) is

.. math::

    \psi(x;\lambda) = \begin{cases}
      ((x+1)^\lambda - 1)/\lambda        & x \ge 0,\ \lambda \ne 0 \\
      \log(1+x)                          & x \ge 0,\ \lambda = 0 \\
      -((1-x)^{2-\lambda} - 1)/(2-\lambda) & x < 0,\ \lambda \ne 2 \\
      -\log(1-x)                         & x < 0,\ \lambda = 2,
    \end{cases}

evaluated as :math:`\mathrm{expm1}(a t)/a` with :math:`t = \log(1+|x|)` and a Taylor series for
:math:`|a| < 10^{-8}`, so that it is smooth (and its derivatives exact) across
:math:`\lambda = 0` and :math:`\lambda = 2`.

:math:`\lambda` is fitted per feature by maximising the profile log-likelihood of a normal fit to
the transformed data (identical to :func:`scipy.stats.yeojohnson_llf`)

.. math::

    \ell(\lambda) = -\frac N2 \log \hat\sigma^2_\psi
        + (\lambda - 1) \sum_i \operatorname{sign}(x_i)\log(1 + |x_i|),

over :math:`\lambda \in [-2, 2]`: a grid, a golden-section search in the best bracket and Newton
polishing, all vectorised over features in float64. The fit is a function
:math:`\lambda^*(x)` defined by :math:`\partial_\lambda \ell(x, \lambda^*) = 0`, so by the implicit
function theorem (as in Li et al. 2023, "Differentiable Gaussianization layers for inverse
problems regularized by deep generative models", ICLR)

.. math::

    \frac{\partial\lambda^*}{\partial x} =
        -\frac{\partial^2 \ell / \partial\lambda\,\partial x}{\partial^2 \ell / \partial\lambda^2};

:class:`YeoJohnsonLambda` solves without a graph and applies this rule in ``backward``. Where the
optimum sits on the bound :math:`\pm 2` the gradient of :math:`\lambda^*` is zero (the bound is
active).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

LAMBDA_BOUNDS = (-2.0, 2.0)
_SMALL = 1e-8
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


def _expm1_over(a: Tensor, t: Tensor) -> Tensor:
    """:math:`(e^{a t} - 1)/a`, exact at :math:`a = 0` (limit :math:`t`) and smooth around it."""
    small = a.abs() < _SMALL
    a_safe = torch.where(small, torch.ones_like(a), a)
    direct = torch.expm1(a_safe * t) / a_safe
    at = a * t
    series = t * (1.0 + 0.5 * at * (1.0 + at / 3.0))
    return torch.where(small, series, direct)


def yeo_johnson(x: Tensor, lam: Tensor | float) -> Tensor:
    r"""Yeo–Johnson transform :math:`\psi(x; \lambda)`, all four branches.

    Parameters
    ----------
    x
        Data of any shape.
    lam
        :math:`\lambda`, broadcastable to ``x`` (e.g. ``(d,)`` for ``x`` of shape ``(N, d)``).

    Returns
    -------
    Tensor
        :math:`\psi(x;\lambda)`, differentiable in ``x`` and ``lam`` (to any order).
    """
    lam = torch.as_tensor(lam, dtype=x.dtype, device=x.device)
    lam = lam.expand_as(x) if lam.dim() == 0 else torch.broadcast_to(lam, x.shape)
    pos = x >= 0
    t_pos = torch.log1p(x.clamp(min=0.0))
    t_neg = torch.log1p((-x).clamp(min=0.0))
    return torch.where(pos, _expm1_over(lam, t_pos), -_expm1_over(2.0 - lam, t_neg))


def yeo_johnson_llf(x: Tensor, lam: Tensor) -> Tensor:
    r"""Profile log-likelihood :math:`\ell(\lambda)` of a normal fit, as ``scipy.stats.yeojohnson_llf``.

    Parameters
    ----------
    x
        ``(..., N, d)``: ``N`` samples (axis ``-2``) of ``d`` features.
    lam
        ``(..., d)``.

    Returns
    -------
    Tensor
        ``(..., d)``: :math:`-\frac N2\log\operatorname{var}(\psi) + (\lambda-1)\sum
        \operatorname{sign}(x)\log(1+|x|)` (population variance, ``ddof=0``).
    """
    n = x.shape[-2]
    psi = yeo_johnson(x, lam.unsqueeze(-2))
    var = psi.var(dim=-2, correction=0)
    jac = (torch.sign(x) * torch.log1p(x.abs())).sum(dim=-2)
    return -0.5 * n * torch.log(var) + (lam - 1.0) * jac


def _llf_derivatives(x: Tensor, lam: Tensor) -> tuple[Tensor, Tensor]:
    """First and second :math:`\\lambda`-derivatives of the llf, per feature (no graph kept)."""
    with torch.enable_grad():
        lam_ = lam.detach().requires_grad_(True)
        ll = yeo_johnson_llf(x.detach(), lam_)
        (g,) = torch.autograd.grad(ll.sum(), lam_, create_graph=True)
        (h,) = torch.autograd.grad(g.sum(), lam_)
    return g.detach(), h.detach()


@torch.no_grad()
def fit_lambda(x: Tensor, *, grid: int = 17, golden_iters: int = 30, newton_iters: int = 8) -> Tensor:
    r"""Maximum-likelihood :math:`\lambda^*` per feature in :math:`[-2, 2]` (no gradient).

    A grid of ``grid`` points brackets the global maximum of :math:`\ell`, a golden-section
    search narrows the bracket to ~1e-7 and Newton steps (kept inside the bracket) polish
    :math:`\partial_\lambda\ell = 0` to machine precision, which the implicit gradient needs.

    Parameters
    ----------
    x
        ``(..., N, d)`` data; samples along axis ``-2``.

    Returns
    -------
    Tensor
        ``(..., d)`` :math:`\lambda^*`.
    """
    lo_b, hi_b = LAMBDA_BOUNDS
    batch = x.shape[:-2] + x.shape[-1:]
    nodes = torch.linspace(lo_b, hi_b, grid, dtype=x.dtype, device=x.device)
    values = torch.stack([yeo_johnson_llf(x, nodes[k].expand(batch)) for k in range(grid)], dim=-1)
    values = torch.nan_to_num(values, nan=-math.inf)
    best = values.argmax(dim=-1)
    step = (hi_b - lo_b) / (grid - 1)
    lo = (nodes[best] - step).clamp(min=lo_b)
    hi = (nodes[best] + step).clamp(max=hi_b)
    # golden-section search for the maximum in [lo, hi]
    c = hi - _GOLDEN * (hi - lo)
    d = lo + _GOLDEN * (hi - lo)
    fc = yeo_johnson_llf(x, c)
    fd = yeo_johnson_llf(x, d)
    for _ in range(golden_iters):
        left = fc > fd  # maximum in [lo, d]
        hi = torch.where(left, d, hi)
        lo = torch.where(left, lo, c)
        new_c = hi - _GOLDEN * (hi - lo)
        new_d = lo + _GOLDEN * (hi - lo)
        c_next = torch.where(left, new_c, d)
        d_next = torch.where(left, c, new_d)
        f_eval = yeo_johnson_llf(x, torch.where(left, c_next, d_next))
        fc, fd = torch.where(left, f_eval, fd), torch.where(left, fc, f_eval)
        c, d = c_next, d_next
    lam = 0.5 * (lo + hi)
    lo = (lo - 1e-6).clamp(min=lo_b)
    hi = (hi + 1e-6).clamp(max=hi_b)
    for _ in range(newton_iters):
        g, h = _llf_derivatives(x, lam)
        ok = h < 0
        step_ = torch.where(ok, g / torch.where(ok, h, -torch.ones_like(h)), torch.zeros_like(g))
        lam = torch.minimum(torch.maximum(lam - step_, lo), hi)
        if bool((step_.abs() <= 1e-15).all()):
            break
    return lam


class YeoJohnsonLambda(torch.autograd.Function):
    r""":math:`x \mapsto \lambda^*(x)` with the implicit-function vector-Jacobian product.

    ``backward`` returns :math:`-\nabla_x \sum_j (v_j / \ell_{\lambda\lambda,j})\,
    \ell_{\lambda,j}(x, \lambda^*)`, i.e. :math:`v^\top \partial\lambda^*/\partial x`; zero for
    features whose optimum is on a bound or not a strict maximum.
    """

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        lam = fit_lambda(x.detach())
        ctx.save_for_backward(x, lam)
        return lam

    @staticmethod
    def backward(ctx, grad_lam: Tensor) -> Tensor:  # type: ignore[override]
        x, lam = ctx.saved_tensors
        lo_b, hi_b = LAMBDA_BOUNDS
        with torch.enable_grad():
            x_ = x.detach().requires_grad_(True)
            lam_ = lam.detach().requires_grad_(True)
            ll = yeo_johnson_llf(x_, lam_)
            (g,) = torch.autograd.grad(ll.sum(), lam_, create_graph=True)
            (h,) = torch.autograd.grad(g.sum(), lam_, retain_graph=True)
            interior = (lam > lo_b + 1e-9) & (lam < hi_b - 1e-9) & (h < 0)
            h_safe = torch.where(interior, h, -torch.ones_like(h))
            weight = torch.where(interior, -grad_lam / h_safe, torch.zeros_like(grad_lam))
            (grad_x,) = torch.autograd.grad(g, x_, grad_outputs=weight.detach())
        return grad_x


def yeo_johnson_lambda(x: Tensor) -> Tensor:
    r"""Differentiable maximum-likelihood :math:`\lambda^*(x)` per feature, ``(..., N, d) -> (..., d)``."""
    return YeoJohnsonLambda.apply(x)


def yeo_johnson_fit_transform(x: Tensor) -> tuple[Tensor, Tensor]:
    r"""Fit :math:`\lambda^*` per feature and transform: returns :math:`(\psi(x;\lambda^*(x)), \lambda^*)`.

    Differentiable in ``x`` through both the transform and :math:`\lambda^*` (implicit gradient).
    ``x`` is ``(..., N, d)``, samples on axis ``-2``; compute in float64.
    """
    lam = yeo_johnson_lambda(x)
    return yeo_johnson(x, lam.unsqueeze(-2)), lam
