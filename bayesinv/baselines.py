r"""Classical (untrained) reconstruction baselines that the seed papers compare against.

=========================  ==============================================================
function                   problem solved
=========================  ==============================================================
:func:`tikhonov`           :math:`\min_x \tfrac12\|A(x)-y\|^2 + \tfrac{w}{2}\|L(x-x_{ref})\|^2`,
                           :math:`L = I` or the discrete gradient :math:`\nabla`
                           (CG on the normal equations; L-BFGS for nonlinear ``A``)
:func:`total_variation`    :math:`\min_{x\in[a,b]} \tfrac12\|Ax-y\|^2 + w\,\mathrm{TV}(x)`
                           (primal–dual hybrid gradient, Chambolle & Pock 2011)
:func:`lasso_dct`          :math:`\min_x \tfrac12\|Ax-y\|^2 + w\|\Psi x\|_1`, :math:`\Psi` the
                           orthonormal 2-D DCT (FISTA, Beck & Teboulle 2009)
:func:`select_weight`      oracle grid search of ``w`` by PSNR against a known truth
=========================  ==============================================================

Sources: Tikhonov regularisation (Tikhonov 1963; the eikonal/traveltime baseline of seed 000);
total variation (Rudin, Osher & Fatemi 1992) solved by PDHG (Chambolle & Pock, *J. Math.
Imaging Vis.* 40, 2011, Algorithm 1); Lasso in a DCT basis, the compressed-sensing baseline of
Asim et al. (ICML 2020), solved by FISTA (Beck & Teboulle, *SIAM J. Imaging Sci.* 2, 2009);
filtered back-projection and bicubic interpolation (Hertrich's baselines) live on the
operators (:meth:`~bayesinv.operators.Radon.fbp`,
:meth:`~bayesinv.operators.SuperResolution.bicubic`).

Every solver is batched over the first axis (``y`` of shape ``(B, *out_shape)``, or a single
unbatched measurement), works on the device and dtype of ``y``, and returns images
``(B, C, H, W)``. The objectives are separable over the batch, so a batch is solved like
independent problems (CG and PDHG use per-item step sizes or are elementwise; L-BFGS
minimises the sum, whose minimiser is the tuple of individual minimisers).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ._checks import as_tensor, check_choice, check_finite, check_int, check_positive
from .operators.base import LinearOperator, Operator, _flatten_check, conjugate_gradient

KINDS = ("identity", "gradient")
BOUNDARIES = ("neumann", "periodic")
SOLVERS = ("auto", "cg", "lbfgs")


# -- discrete gradient ---------------------------------------------------------------------------
def gradient(x: Tensor, boundary: str = "neumann") -> Tensor:
    r"""Forward-difference gradient :math:`\nabla x`, shape ``(..., 2, H, W)`` from ``(..., H, W)``.

    Component 0 is the vertical difference :math:`x_{i+1,j} - x_{i,j}`, component 1 the
    horizontal one :math:`x_{i,j+1} - x_{i,j}`. ``"neumann"``: the difference across the last
    row/column is 0 (Chambolle 2004, eq. 2.1); ``"periodic"``: indices wrap around. In both
    cases :math:`\|\nabla\|_2^2 \le 8`.
    """
    check_choice(boundary, "boundary", BOUNDARIES)
    if boundary == "periodic":
        dv = torch.roll(x, -1, dims=-2) - x
        dh = torch.roll(x, -1, dims=-1) - x
    else:
        dv = torch.nn.functional.pad(x[..., 1:, :] - x[..., :-1, :], (0, 0, 0, 1))
        dh = torch.nn.functional.pad(x[..., :, 1:] - x[..., :, :-1], (0, 1, 0, 0))
    return torch.stack([dv, dh], dim=-3)


def gradient_adjoint(p: Tensor, boundary: str = "neumann") -> Tensor:
    r"""Exact adjoint :math:`\nabla^* p = -\mathrm{div}\,p` of :func:`gradient`,
    ``(..., 2, H, W) -> (..., H, W)``."""
    check_choice(boundary, "boundary", BOUNDARIES)
    pv, ph = p[..., 0, :, :], p[..., 1, :, :]
    if boundary == "periodic":
        return (torch.roll(pv, 1, dims=-2) - pv) + (torch.roll(ph, 1, dims=-1) - ph)
    qv, qh = pv[..., :-1, :], ph[..., :, :-1]
    out = torch.zeros_like(pv)
    out[..., 1:, :] += qv
    out[..., :-1, :] -= qv
    out[..., :, 1:] += qh
    out[..., :, :-1] -= qh
    return out


def tv_norm(x: Tensor, *, isotropic: bool = True, boundary: str = "neumann") -> Tensor:
    r"""Total variation per batch item, shape ``(B,)`` for ``x`` of shape ``(B, C, H, W)``.

    Isotropic: :math:`\sum_{c,i,j} \sqrt{(\nabla_v x)^2 + (\nabla_h x)^2}`; anisotropic:
    :math:`\sum |\nabla_v x| + |\nabla_h x|` (Rudin, Osher & Fatemi 1992).
    """
    g = gradient(x, boundary)
    mag = g.pow(2).sum(dim=-3).sqrt() if isotropic else g.abs().sum(dim=-3)
    return mag.flatten(1).sum(dim=1)


# -- 2-D DCT --------------------------------------------------------------------------------------
_DCT_CACHE: dict[tuple[int, torch.dtype, torch.device], Tensor] = {}


def dct_matrix(n: int, *, dtype: torch.dtype | None = None,
               device: torch.device | str | None = None) -> Tensor:
    r"""The orthonormal DCT-II matrix :math:`C_{kj} = lpha_k\cos(\pi k(2j+1)/(2n))`,
    :math:`lpha_0 = \sqrt{1/n}`, :math:`lpha_k = \sqrt{2/n}` (so :math:`C C^	op = I`; equal
    to ``scipy.fft.dct(eye(n), norm="ortho", axis=0)``), built in float64 and cached."""
    dtype = dtype or torch.get_default_dtype()
    key = (int(n), dtype, torch.device(device or "cpu"))
    if key not in _DCT_CACHE:
        k = torch.arange(n, dtype=torch.float64)[:, None]
        j = torch.arange(n, dtype=torch.float64)[None, :]
        c = torch.cos(math.pi * k * (2 * j + 1) / (2 * n)) * math.sqrt(2.0 / n)
        c[0] = math.sqrt(1.0 / n)
        _DCT_CACHE[key] = c.to(dtype=dtype, device=key[2])
    return _DCT_CACHE[key]


def dct2(x: Tensor) -> Tensor:
    r"""Orthonormal 2-D DCT-II over the last two axes, :math:`\Psi x = C_H\,x\,C_W^	op`
    (separable; two small matrix products, faster than FFTs for the image sizes used here)."""
    ch = dct_matrix(x.shape[-2], dtype=x.dtype, device=x.device)
    cw = dct_matrix(x.shape[-1], dtype=x.dtype, device=x.device)
    return ch @ x @ cw.T


def idct2(c: Tensor) -> Tensor:
    r"""Inverse (= transpose) of :func:`dct2`, :math:`\Psi^	op c = C_H^	op c\,C_W`."""
    ch = dct_matrix(c.shape[-2], dtype=c.dtype, device=c.device)
    cw = dct_matrix(c.shape[-1], dtype=c.dtype, device=c.device)
    return ch.T @ c @ cw


# -- validation -----------------------------------------------------------------------------------
def _check_operator(operator: object, *, linear: bool, fn: str) -> Operator:
    if not isinstance(operator, Operator):
        raise TypeError(f"operator: expected a bayesinv Operator, got {type(operator).__name__}")
    if linear and not (isinstance(operator, LinearOperator) and operator.is_linear):
        raise TypeError(f"operator: {fn} needs a LinearOperator (with an adjoint), got the "
                        f"nonlinear {type(operator).__name__}; use tikhonov (L-BFGS) instead")
    return operator


def _check_y(operator: Operator, y: object) -> Tensor:
    y = check_finite(as_tensor(y, "y"), "y")
    return _flatten_check(y.detach(), operator.out_shape, "y")


def _check_image(x: object, name: str, operator: Operator, batch: int, like: Tensor) -> Tensor:
    x = check_finite(as_tensor(x, name), name).detach().to(like)
    x = _flatten_check(x, operator.in_shape, name)
    if x.shape[0] == 1 and batch > 1:
        x = x.expand(batch, *operator.in_shape)
    if x.shape[0] != batch:
        raise ValueError(f"{name}: expected batch size 1 or {batch} (that of y), got {x.shape[0]}")
    return x.clone()


def _check_box(box: object) -> tuple[float, float] | None:
    if box is None:
        return None
    try:
        lo, hi = (float(v) for v in box)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise TypeError(f"box: expected None or a pair (low, high), got {box!r}") from None
    if not lo < hi or math.isnan(lo) or math.isnan(hi):
        raise ValueError(f"box: expected low < high, got {box!r}")
    return lo, hi


def _op_norm(operator: LinearOperator, value: float | None, like: Tensor) -> float:
    if value is not None:
        return check_positive(value, "op_norm")
    # power iteration in the dtype of the data for a tight, reproducible estimate
    gen = torch.Generator().manual_seed(0)
    v = torch.randn((1, *operator.in_shape), generator=gen, dtype=like.dtype).to(like.device)
    v = v / v.norm()
    lam = 0.0
    for _ in range(100):
        w = operator.normal(v)
        lam_new = float(w.norm())
        if lam_new == 0:
            raise ValueError("operator: A*A maps a random image to zero; is the operator empty?")
        v = w / lam_new
        if abs(lam_new - lam) <= 1e-6 * lam_new:
            lam = lam_new
            break
        lam = lam_new
    return math.sqrt(lam) * 1.01  # a 1 % margin keeps the step-size conditions strict


# -- Tikhonov -------------------------------------------------------------------------------------
def tikhonov_objective(operator: Operator, x: Tensor, y: Tensor, weight: float, *,
                       kind: str = "identity", boundary: str = "neumann",
                       reference: Tensor | None = None) -> Tensor:
    r"""Per-item :math:`\tfrac12\|A(x)-y\|^2 + \tfrac{w}{2}\|L(x - x_{ref})\|^2`, shape ``(B,)``."""
    y = _flatten_check(y, operator.out_shape, "y")
    x = _flatten_check(x, operator.in_shape, "x")
    d = x if reference is None else x - reference
    reg = d if kind == "identity" else gradient(d, boundary)
    return 0.5 * (operator(x) - y).pow(2).flatten(1).sum(1) + 0.5 * weight * reg.pow(2).flatten(1).sum(1)


def tikhonov(operator: Operator, y: Tensor, weight: float, *, kind: str = "identity",
             boundary: str = "neumann", reference: Tensor | None = None, x0: Tensor | None = None,
             solver: str = "auto", max_iter: int = 500, tol: float = 1e-6) -> Tensor:
    r"""Tikhonov-regularised least squares.

    .. math::
        \hat x = \arg\min_x \tfrac12\|A(x) - y\|^2 + \tfrac{w}{2}\|L(x - x_{ref})\|^2,
        \qquad L \in \{I, \nabla\}.

    For a linear ``A`` the minimiser solves the normal equations
    :math:`(A^*A + w L^*L)\,x = A^*y + w L^*L x_{ref}` (SPD for ``w > 0`` when
    :math:`\ker A \cap \ker L = \{0\}`), solved by conjugate gradients
    (:func:`~bayesinv.operators.base.conjugate_gradient`, Hestenes & Stiefel 1952). For a
    nonlinear ``A`` (e.g. eikonal traveltimes, differentiable by autograd) the objective is
    minimised by L-BFGS with a strong-Wolfe line search (``torch.optim.LBFGS``; Nocedal 1980),
    as in the traveltime-tomography baseline of seed 000.

    Parameters
    ----------
    operator
        Forward operator; linear ones (``is_linear``) use CG unless ``solver="lbfgs"``.
    y
        Measurements ``(B, *out_shape)`` or one ``out_shape`` measurement.
    weight
        :math:`w \ge 0`.
    kind
        ``"identity"`` (:math:`L = I`) or ``"gradient"`` (:math:`L = \nabla`, see :func:`gradient`).
    boundary
        Boundary condition of :math:`\nabla`: ``"neumann"`` or ``"periodic"``.
    reference
        :math:`x_{ref}` (default 0), e.g. a background velocity for traveltime tomography;
        ``(C, H, W)`` or ``(B, C, H, W)``.
    x0
        Start (default: ``reference`` if given, else ``operator.init_estimate(y)``).
    solver
        ``"auto"`` (CG for linear, L-BFGS otherwise), ``"cg"`` or ``"lbfgs"``.
    max_iter
        CG iterations, or L-BFGS iterations (function evaluations are capped at 1.25×).
    tol
        CG: relative residual :math:`\|r\|\le\text{tol}\,\|b\|`; L-BFGS: gradient tolerance
        (sup-norm) and change tolerance ``tol**2``.

    Returns
    -------
    Tensor
        :math:`\hat x`, shape ``(B, C, H, W)``, detached.
    """
    _check_operator(operator, linear=False, fn="tikhonov")
    yb = _check_y(operator, y)
    weight = check_positive(weight, "weight", allow_zero=True)
    check_choice(kind, "kind", KINDS)
    check_choice(boundary, "boundary", BOUNDARIES)
    check_choice(solver, "solver", SOLVERS)
    max_iter = check_int(max_iter, "max_iter")
    tol = check_positive(tol, "tol")
    batch = yb.shape[0]
    ref = None if reference is None else _check_image(reference, "reference", operator, batch, yb)
    linear = isinstance(operator, LinearOperator) and operator.is_linear
    if solver == "cg" and not linear:
        raise ValueError(f"solver: 'cg' needs a linear operator, got {type(operator).__name__}")
    if x0 is not None:
        start = _check_image(x0, "x0", operator, batch, yb)
    elif ref is not None:
        start = ref.clone()
    else:
        with torch.no_grad():
            start = operator.init_estimate(yb).detach().to(yb)

    def reg_normal(v: Tensor) -> Tensor:
        return v if kind == "identity" else gradient_adjoint(gradient(v, boundary), boundary)

    if linear and solver != "lbfgs":
        with torch.no_grad():
            rhs = operator.adjoint(yb)
            if ref is not None:
                rhs = rhs + weight * reg_normal(ref)
            return conjugate_gradient(lambda v: operator.normal(v) + weight * reg_normal(v), rhs,
                                      x0=start, max_iter=max_iter, tol=tol).detach()

    x = start.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([x], lr=1.0, max_iter=max_iter, max_eval=int(1.25 * max_iter) + 1,
                            tolerance_grad=tol, tolerance_change=tol**2, history_size=20,
                            line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = tikhonov_objective(operator, x, yb, weight, kind=kind, boundary=boundary,
                                  reference=ref).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return x.detach()


# -- total variation (PDHG) -----------------------------------------------------------------------
@dataclass
class PDHGHistory:
    """Objective and primal–dual gap of :func:`total_variation`, every ``log_every`` iterations.

    ``objective[k]`` and ``gap[k]`` are per-item lists (length ``B``) at iteration
    ``iterations[k]`` (0 is the start); both in the scale of the original objective.
    """

    iterations: list[int] = field(default_factory=list)
    objective: list[list[float]] = field(default_factory=list)
    gap: list[list[float]] = field(default_factory=list)


def tv_objective(operator: LinearOperator, x: Tensor, y: Tensor, weight: float, *,
                 isotropic: bool = True, boundary: str = "neumann") -> Tensor:
    r"""Per-item :math:`\tfrac12\|Ax-y\|^2 + w\,\mathrm{TV}(x)`, shape ``(B,)`` (no box term)."""
    y = _flatten_check(y, operator.out_shape, "y")
    x = _flatten_check(x, operator.in_shape, "x")
    data = 0.5 * (operator(x) - y).pow(2).flatten(1).sum(1)
    return data + weight * tv_norm(x, isotropic=isotropic, boundary=boundary)


def total_variation(operator: LinearOperator, y: Tensor, weight: float, *, max_iter: int = 500,
                    isotropic: bool = True, box: tuple[float, float] | None = (0.0, 1.0),
                    boundary: str = "neumann", x0: Tensor | None = None,
                    op_norm: float | None = None, tol: float = 0.0, log_every: int = 0,
                    return_history: bool = False) -> Tensor | tuple[Tensor, PDHGHistory]:
    r"""TV-regularised least squares by the primal–dual hybrid gradient method.

    .. math::
        \hat x = \arg\min_{x \in [a, b]^D} \tfrac12\|Ax - y\|^2 + w\,\|\nabla x\|_{2,1}

    (Rudin, Osher & Fatemi 1992), written as :math:`\min_x F(Kx) + G(x)` with
    :math:`K = (\tilde A, \nabla)`, :math:`F(u, g) = \tfrac12\|u - \tilde y\|^2 +
    \tilde w\|g\|_{2,1}`, :math:`G = \iota_{[a,b]}`, and solved by Chambolle & Pock (2011),
    Algorithm 1 with :math:`\theta = 1`:

    .. math::
        p &\leftarrow \frac{p + \sigma(\tilde A\bar x - \tilde y)}{1 + \sigma}, \qquad
        q \leftarrow \Pi_{\|\cdot\|_{2,\infty}\le\tilde w}(q + \sigma\nabla\bar x), \\
        x' &\leftarrow \Pi_{[a,b]}\big(x - \tau(\tilde A^* p + \nabla^* q)\big), \qquad
        \bar x \leftarrow 2x' - x.

    The problem is first rescaled by :math:`s = \|A\|_2` (power iteration, or ``op_norm``):
    :math:`\tilde A = A/s`, :math:`\tilde y = y/s`, :math:`\tilde w = w/s^2` (the same
    minimiser), so that :math:`\|K\|^2 \le 1 + 8` and the steps
    :math:`\tau = \sigma = 0.99/3` satisfy :math:`\tau\sigma\|K\|^2 < 1` whatever the scale of
    ``A`` (CT sinograms or masks).

    The primal–dual gap :math:`P(x) - D(p, q) \ge 0`, with
    :math:`D = -\tfrac12\|p\|^2 - \langle p, \tilde y\rangle - G^*(-\tilde A^*p - \nabla^*q)`
    and :math:`G^*(v) = \sum_i \max(a v_i, b v_i)`, certifies convergence; it is finite only
    with a bounded ``box``.

    Parameters
    ----------
    operator
        A :class:`~bayesinv.operators.LinearOperator`.
    y
        Measurements ``(B, *out_shape)`` or one ``out_shape`` measurement.
    weight
        :math:`w \ge 0`.
    max_iter
        PDHG iterations.
    isotropic
        Isotropic (:math:`\ell_{2,1}`) or anisotropic (:math:`\ell_1`) TV.
    box
        Pixel bounds ``(a, b)`` (default ``(0, 1)``; ``(0, inf)`` for non-negativity), or
        ``None`` for no constraint.
    boundary
        Of :math:`\nabla`: ``"neumann"`` (default) or ``"periodic"``.
    x0
        Start (default: ``operator.init_estimate(y)`` projected on the box).
    op_norm
        :math:`\|A\|_2` if known (skips the power iteration).
    tol
        Stop when every item's relative gap :math:`\text{gap}/\max(P, \epsilon) \le` ``tol``
        (checked every ``log_every`` iterations, or every 50 when ``log_every = 0``);
        0 runs all ``max_iter`` iterations.
    log_every
        Record objective and gap every so many iterations (0: only start and end).
    return_history
        Also return a :class:`PDHGHistory`.

    Returns
    -------
    Tensor or (Tensor, PDHGHistory)
        :math:`\hat x`, shape ``(B, C, H, W)``.
    """
    _check_operator(operator, linear=True, fn="total_variation")
    yb = _check_y(operator, y)
    weight = check_positive(weight, "weight", allow_zero=True)
    max_iter = check_int(max_iter, "max_iter")
    if not isinstance(isotropic, bool):
        raise TypeError(f"isotropic: expected a bool, got {isotropic!r}")
    bounds = _check_box(box)
    check_choice(boundary, "boundary", BOUNDARIES)
    tol = check_positive(tol, "tol", allow_zero=True)
    log_every = check_int(log_every, "log_every", minimum=0)
    batch = yb.shape[0]

    with torch.no_grad():
        s = _op_norm(operator, op_norm, yb)
        yt, wt = yb / s, weight / s**2

        def clip(v: Tensor) -> Tensor:
            return v if bounds is None else v.clamp(bounds[0], bounds[1])

        if x0 is not None:
            x = clip(_check_image(x0, "x0", operator, batch, yb))
        else:
            x = clip(operator.init_estimate(yb).detach().to(yb))
        xbar = x.clone()
        p = torch.zeros_like(yb)
        q = torch.zeros_like(gradient(x, boundary))
        tau = sigma = 0.99 / 3.0

        def project(v: Tensor) -> Tensor:
            if isotropic:
                mag = v.pow(2).sum(dim=-3, keepdim=True).sqrt()
                return v / (mag / wt).clamp_min(1.0) if wt > 0 else torch.zeros_like(v)
            return v.clamp(-wt, wt)

        def primal(v: Tensor) -> Tensor:
            return tv_objective(operator, v, yb, weight, isotropic=isotropic, boundary=boundary)

        def gap(v: Tensor) -> Tensor:
            if bounds is None:
                return torch.full((batch,), math.inf, dtype=yb.dtype, device=yb.device)
            kstar = -(operator.adjoint(p) / s + gradient_adjoint(q, boundary))
            gstar = torch.maximum(bounds[0] * kstar, bounds[1] * kstar).flatten(1).sum(1)
            dual = -0.5 * p.pow(2).flatten(1).sum(1) - (p * yt).flatten(1).sum(1) - gstar
            return primal(v) / s**2 - dual  # scaled objective minus dual, then back to scale

        history = PDHGHistory()

        def log(k: int) -> Tensor:
            obj, g = primal(x), gap(x) * s**2
            history.iterations.append(k)
            history.objective.append([float(v) for v in obj])
            history.gap.append([float(v) for v in g])
            return g / obj.abs().clamp_min(torch.finfo(obj.dtype).tiny)

        log(0)
        check_every = log_every or (50 if tol > 0 else 0)
        for k in range(1, max_iter + 1):
            p = (p + sigma * (operator(xbar) / s - yt)) / (1.0 + sigma)
            q = project(q + sigma * gradient(xbar, boundary))
            x_new = clip(x - tau * (operator.adjoint(p) / s + gradient_adjoint(q, boundary)))
            xbar = 2.0 * x_new - x
            x = x_new
            if check_every and k % check_every == 0 and k < max_iter:
                rel = log(k)
                if tol > 0 and bool((rel <= tol).all()):
                    break
        if not history.iterations or history.iterations[-1] != k:
            log(k)
    return (x, history) if return_history else x


# -- Lasso in the DCT basis (FISTA) ---------------------------------------------------------------
def lasso_objective(operator: LinearOperator, x: Tensor, y: Tensor, weight: float) -> Tensor:
    r"""Per-item :math:`\tfrac12\|Ax-y\|^2 + w\|\Psi x\|_1`, shape ``(B,)``."""
    y = _flatten_check(y, operator.out_shape, "y")
    x = _flatten_check(x, operator.in_shape, "x")
    return 0.5 * (operator(x) - y).pow(2).flatten(1).sum(1) + weight * dct2(x).abs().flatten(1).sum(1)


def lasso_dct(operator: LinearOperator, y: Tensor, weight: float, *, max_iter: int = 500,
              x0: Tensor | None = None, op_norm: float | None = None, tol: float = 1e-7) -> Tensor:
    r"""Lasso with an :math:`\ell_1` penalty on orthonormal 2-D DCT coefficients, by FISTA.

    .. math::
        \hat x = \Psi^\top \hat c, \qquad
        \hat c = \arg\min_c \tfrac12\|A\Psi^\top c - y\|^2 + w\|c\|_1,

    with :math:`\Psi` the orthonormal 2-D DCT-II per channel (:func:`dct2`). This is the
    "Lasso-DCT" compressed-sensing baseline of Asim et al. (ICML 2020). FISTA (Beck &
    Teboulle 2009): with :math:`L = \|A\|_2^2` (power iteration, 1 % margin),

    .. math::
        c_k = \mathcal S_{w/L}\big(z_k - \tfrac1L\Psi A^*(A\Psi^\top z_k - y)\big), \quad
        t_{k+1} = \tfrac{1 + \sqrt{1 + 4t_k^2}}{2}, \quad
        z_{k+1} = c_k + \tfrac{t_k - 1}{t_{k+1}}(c_k - c_{k-1}),

    :math:`\mathcal S_\lambda(u) = \mathrm{sign}(u)\max(|u|-\lambda, 0)`.

    Parameters
    ----------
    operator
        A :class:`~bayesinv.operators.LinearOperator`.
    y
        Measurements ``(B, *out_shape)`` or one ``out_shape`` measurement.
    weight
        :math:`w \ge 0`.
    max_iter
        FISTA iterations.
    x0
        Start (default: ``operator.init_estimate(y)``).
    op_norm
        :math:`\|A\|_2` if known.
    tol
        Stop when :math:`\|c_k - c_{k-1}\| \le \text{tol}\,\|c_k\|` for every item.

    Returns
    -------
    Tensor
        :math:`\hat x`, shape ``(B, C, H, W)`` (not clipped).
    """
    _check_operator(operator, linear=True, fn="lasso_dct")
    yb = _check_y(operator, y)
    weight = check_positive(weight, "weight", allow_zero=True)
    max_iter = check_int(max_iter, "max_iter")
    tol = check_positive(tol, "tol", allow_zero=True)
    with torch.no_grad():
        lip = _op_norm(operator, op_norm, yb) ** 2
        if x0 is not None:
            start = _check_image(x0, "x0", operator, yb.shape[0], yb)
        else:
            start = operator.init_estimate(yb).detach().to(yb)
        c = dct2(start)
        z, t = c.clone(), 1.0
        thr = weight / lip
        for _ in range(max_iter):
            grad = dct2(operator.adjoint(operator(idct2(z)) - yb))
            u = z - grad / lip
            c_new = u.sign() * (u.abs() - thr).clamp_min(0.0)
            t_new = (1.0 + math.sqrt(1.0 + 4.0 * t * t)) / 2.0
            z = c_new + ((t - 1.0) / t_new) * (c_new - c)
            step = (c_new - c).flatten(1).norm(dim=1)
            size = c_new.flatten(1).norm(dim=1).clamp_min(torch.finfo(c.dtype).tiny)
            c, t = c_new, t_new
            if tol > 0 and bool((step <= tol * size).all()):
                break
        return idct2(c)


# -- oracle weight selection ----------------------------------------------------------------------
@dataclass
class WeightSelection:
    """Result of :func:`select_weight`: the best weight, its mean PSNR, and every ``(w, PSNR)``."""

    weight: float
    psnr: float
    scores: list[tuple[float, float]]


def select_weight(fn: Callable[..., Tensor], operator: Operator, y: Tensor, truth: Tensor,
                  grid: Sequence[float], *, refine: int = 0, **kwargs) -> WeightSelection:
    r"""Oracle grid search: the weight in ``grid`` whose reconstruction has the best PSNR.

    Evaluates ``fn(operator, y, w, **kwargs)`` for each ``w`` and scores it by the mean PSNR
    (:func:`bayesinv.metrics.psnr`, data range 1) over the batch against ``truth``. With
    ``refine = r > 0``, ``r`` rounds of bisection in :math:`\log w` follow: the geometric
    midpoints between the current best and its neighbours are tried.

    This is an **oracle**: it uses the ground truth, so on the images it is tuned on it gives
    the baseline its best possible weight and its numbers are optimistic. For a fair benchmark
    tune on separate validation images and apply the weight to the test images (as
    ``benchmarks/quality.py`` does).

    Parameters
    ----------
    fn
        A solver with signature ``fn(operator, y, weight, **kwargs) -> x̂`` (e.g.
        :func:`tikhonov`, :func:`total_variation`, :func:`lasso_dct`).
    operator, y
        The problem (``y`` batched over the first axis).
    truth
        Ground truth ``(B, C, H, W)`` (or one image) matching ``fn``'s output.
    grid
        Candidate weights (non-negative; ``refine`` needs them positive).
    refine
        Rounds of log-space bisection around the best grid point.

    Returns
    -------
    WeightSelection
    """
    from .metrics import psnr

    if not callable(fn):
        raise TypeError(f"fn: expected a callable solver, got {type(fn).__name__}")
    _check_operator(operator, linear=False, fn="select_weight")
    yb = _check_y(operator, y)
    truth_b = _check_image(truth, "truth", operator, yb.shape[0], yb)
    try:
        cands = sorted({check_positive(w, "grid", allow_zero=True) for w in grid})
    except TypeError:
        raise TypeError(f"grid: expected a sequence of non-negative numbers, got {grid!r}") from None
    if not cands:
        raise ValueError("grid: expected at least one weight")
    refine = check_int(refine, "refine", minimum=0)
    if refine and cands[0] == 0:
        raise ValueError("grid: refine > 0 bisects in log space and needs positive weights")
    scores: dict[float, float] = {}

    def score(w: float) -> float:
        if w not in scores:
            est = fn(operator, yb, w, **kwargs)
            scores[w] = float(sum(psnr(e, t) for e, t in zip(est, truth_b, strict=True)) / len(truth_b))
        return scores[w]

    for w in cands:
        score(w)
    for _ in range(refine):
        ws = sorted(scores)
        i = max(range(len(ws)), key=lambda j: scores[ws[j]])
        for j in (i - 1, i + 1):
            if 0 <= j < len(ws):
                score(math.sqrt(ws[i] * ws[j]))
    best = max(scores, key=lambda w: scores[w])
    return WeightSelection(weight=best, psnr=scores[best], scores=sorted(scores.items()))
