r"""Forward operators :math:`A: x \mapsto y`.

An :class:`Operator` is a ``torch.nn.Module`` mapping images of shape ``(..., C, H, W)``
(``in_shape = (C, H, W)``) to measurements of shape ``(..., *out_shape)``; every leading axis
is a batch axis. Operators hold their fixed data (masks, matrices, kernels) as buffers, so
``.to(device)`` / ``.to(torch.float64)`` moves and casts them, and they are differentiable by
autograd.

A :class:`LinearOperator` also has the exact discrete adjoint :math:`A^*`, defined by
:math:`\langle A x, y\rangle = \langle x, A^* y\rangle`, which :func:`adjointness_error` checks.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch
from torch import Tensor, nn

from .._checks import Shape, check_int, check_positive


class Operator(nn.Module, ABC):
    """A differentiable forward operator ``A`` from images to measurements.

    Subclasses implement :meth:`_forward` on a tensor of shape ``(B, *in_shape)``; the public
    :meth:`forward` checks the trailing shape and flattens any leading axes into ``B``.

    Parameters
    ----------
    in_shape
        Image shape ``(C, H, W)``.
    out_shape
        Measurement shape (without batch axis).
    """

    def __init__(self, in_shape: Shape, out_shape: Shape) -> None:
        super().__init__()
        self.in_shape: Shape = tuple(int(s) for s in in_shape)
        self.out_shape: Shape = tuple(int(s) for s in out_shape)
        if len(self.in_shape) != 3 or min(self.in_shape) < 1:
            raise ValueError(f"in_shape: expected (C, H, W) with positive sizes, got {in_shape}")

    # -- public API ---------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:  # noqa: D102 - documented on the class
        return _apply_batched(self._forward, x, self.in_shape, self.out_shape, "x")

    @property
    def is_linear(self) -> bool:
        """Whether the operator is linear (has an exact adjoint)."""
        return False

    @property
    def device(self) -> torch.device:
        """Device of the operator's buffers (CPU when it has none)."""
        from ..priors.base import _first_floating

        return _first_floating(self).device

    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype of the operator's buffers (the default dtype when it has none)."""
        from ..priors.base import _first_floating

        return _first_floating(self).dtype

    def describe(self) -> dict[str, object]:
        """A JSON-serialisable description (name, shapes, settings) for provenance."""
        return {"name": type(self).__name__, "in_shape": list(self.in_shape),
                "out_shape": list(self.out_shape), **self._settings()}

    def _settings(self) -> dict[str, object]:
        return {}

    def extra_repr(self) -> str:
        return f"in_shape={self.in_shape}, out_shape={self.out_shape}"

    @abstractmethod
    def _forward(self, x: Tensor) -> Tensor:
        """Apply ``A`` to a batch ``(B, *in_shape)``."""

    def init_estimate(self, y: Tensor) -> Tensor:
        """A cheap image estimate from measurements, used to initialise solvers.

        The default is a zero image; linear operators use a (regularised) pseudo-inverse.
        """
        y = _flatten_check(y, self.out_shape, "y")
        return y.new_zeros((y.shape[0], *self.in_shape))


class LinearOperator(Operator):
    r"""A linear operator with an exact adjoint.

    Subclasses implement :meth:`_adjoint` on ``(B, *out_shape)``. :meth:`pinv` defaults to the
    minimum-norm least-squares solution of :math:`\min_x \|Ax-y\|^2 + \epsilon\|x\|^2` by
    conjugate gradients on the normal equations, and subclasses override it where a direct
    formula exists (masks, orthonormal transforms, filtered back-projection).
    """

    @property
    def is_linear(self) -> bool:
        return True

    def adjoint(self, y: Tensor) -> Tensor:
        """Apply :math:`A^*` to measurements of shape ``(..., *out_shape)``."""
        return _apply_batched(self._adjoint, y, self.out_shape, self.in_shape, "y")

    def normal(self, x: Tensor) -> Tensor:
        """Apply :math:`A^* A`."""
        return self.adjoint(self.forward(x))

    @abstractmethod
    def _adjoint(self, y: Tensor) -> Tensor:
        """Apply ``A*`` to a batch ``(B, *out_shape)``."""

    def pinv(self, y: Tensor, *, eps: float = 1e-6, max_iter: int = 200, tol: float = 1e-8) -> Tensor:
        r"""Regularised pseudo-inverse :math:`(A^*A + \epsilon I)^{-1} A^* y` by CG."""
        y = _flatten_check(y, self.out_shape, "y")
        eps = check_positive(eps, "eps", allow_zero=True)
        return conjugate_gradient(lambda v: self.normal(v) + eps * v, self.adjoint(y),
                                  max_iter=max_iter, tol=tol)

    def init_estimate(self, y: Tensor) -> Tensor:
        return self.pinv(y)

    def operator_norm(self, n_iter: int = 50, seed: int = 0) -> float:
        r"""Estimate :math:`\|A\|_2` by power iteration on :math:`A^*A`."""
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn((1, *self.in_shape), generator=gen, dtype=self.dtype).to(self.device)
        x = x / x.norm()
        lam = torch.zeros(())
        for _ in range(check_int(n_iter, "n_iter")):
            v = self.normal(x)
            lam = v.norm()
            if lam == 0:
                return 0.0
            x = v / lam
        return math.sqrt(float(lam))


def conjugate_gradient(matvec, b: Tensor, x0: Tensor | None = None, *, max_iter: int = 200,
                       tol: float = 1e-8) -> Tensor:
    r"""Solve :math:`Mx = b` for a symmetric positive definite ``M`` given by ``matvec``.

    Batched over the first axis: each item has its own step sizes, so a batch converges like
    independent solves (Hestenes & Stiefel, 1952). Stops when every residual satisfies
    :math:`\|r\| \le \text{tol}\,\|b\|`.
    """
    dims = tuple(range(1, b.dim()))

    def dot(u: Tensor, v: Tensor) -> Tensor:
        return (u * v).sum(dim=dims, keepdim=True)

    x = torch.zeros_like(b) if x0 is None else x0.clone()
    r = b - matvec(x) if x0 is not None else b.clone()
    p = r.clone()
    rs = dot(r, r)
    b_norm2 = dot(b, b).clamp_min(torch.finfo(b.dtype).tiny)
    for _ in range(max_iter):
        if bool((rs <= tol**2 * b_norm2).all()):
            break
        mp = matvec(p)
        denom = dot(p, mp)
        alpha = torch.where(denom > 0, rs / denom.clamp_min(torch.finfo(b.dtype).tiny), 0.0)
        x = x + alpha * p
        r = r - alpha * mp
        rs_new = dot(r, r)
        beta = torch.where(rs > 0, rs_new / rs.clamp_min(torch.finfo(b.dtype).tiny), 0.0)
        p = r + beta * p
        rs = rs_new
    return x


def adjointness_error(op: LinearOperator, *, n_trials: int = 3, seed: int = 0,
                      dtype: torch.dtype = torch.float64, batch: int = 2) -> float:
    r"""Largest relative error of :math:`\langle Ax, y\rangle = \langle x, A^*y\rangle`.

    The operator is copied to ``dtype`` (float64 by default) and probed with ``n_trials``
    batches of seeded standard-normal ``x`` and ``y``. The error for one pair is
    :math:`|\langle Ax,y\rangle - \langle x,A^*y\rangle| / (\|Ax\|\|y\|)`, scale-free and
    well defined even when the inner product is near zero.

    Returns
    -------
    float
        The largest error over trials; an exact adjoint gives ~1e-15 in float64.
    """
    if not isinstance(op, LinearOperator):
        raise TypeError(f"op: expected a LinearOperator, got {type(op).__name__}")
    import copy

    op64 = copy.deepcopy(op).to(dtype)
    gen = torch.Generator().manual_seed(seed)
    worst = 0.0
    for _ in range(n_trials):
        x = torch.randn((batch, *op.in_shape), generator=gen, dtype=dtype).to(op64.device)
        y = torch.randn((batch, *op.out_shape), generator=gen, dtype=dtype).to(op64.device)
        ax = op64(x)
        aty = op64.adjoint(y)
        lhs = (ax * y).sum()
        rhs = (x * aty).sum()
        scale = float(ax.norm() * y.norm()) or 1.0
        worst = max(worst, abs(float(lhs - rhs)) / scale)
    return worst


def _flatten_check(t: Tensor, shape: Shape, name: str) -> Tensor:
    n = len(shape)
    if not isinstance(t, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if t.dim() < n or tuple(t.shape[t.dim() - n:]) != tuple(shape):
        raise ValueError(f"{name}: expected shape (..., {', '.join(map(str, shape))}), "
                         f"got {tuple(t.shape)}")
    return t.reshape(-1, *shape)


def _apply_batched(fn, t: Tensor, in_shape: Shape, out_shape: Shape, name: str) -> Tensor:
    if isinstance(t, Tensor) and (t.is_complex() or not t.is_floating_point()):
        raise TypeError(f"{name}: expected a real floating-point tensor, got dtype {t.dtype}"
                        + (" (store complex data as a real trailing axis of length 2, "
                           "torch.view_as_real)" if t.is_complex() else ""))
    lead = t.shape[: t.dim() - len(in_shape)] if isinstance(t, Tensor) else ()
    out = fn(_flatten_check(t, in_shape, name))
    return out.reshape(*lead, *out_shape)
