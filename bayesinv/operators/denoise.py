r"""Denoising: the identity operator :math:`A = I`, so :math:`y = x + \varepsilon`."""

from __future__ import annotations

from torch import Tensor

from .._checks import Shape, check_positive
from .base import LinearOperator, _flatten_check


class Identity(LinearOperator):
    r"""The identity :math:`A x = x` (denoising); :math:`A^* = A^{-1} = I`.

    Parameters
    ----------
    in_shape
        Image shape ``(C, H, W)``; ``out_shape`` is the same.

    Notes
    -----
    The regularised pseudo-inverse has the closed form
    :math:`(A^*A + \epsilon I)^{-1}A^* y = y / (1 + \epsilon)`.
    """

    def __init__(self, in_shape: Shape) -> None:
        super().__init__(in_shape, in_shape)

    def _forward(self, x: Tensor) -> Tensor:
        return x.clone()

    def _adjoint(self, y: Tensor) -> Tensor:
        return y.clone()

    def pinv(self, y: Tensor, *, eps: float = 1e-6, max_iter: int = 200, tol: float = 1e-8) -> Tensor:
        r"""Closed-form :math:`(A^*A + \epsilon I)^{-1} A^* y = y/(1+\epsilon)`, shape ``(B, C, H, W)``.

        ``max_iter`` and ``tol`` are accepted for interface compatibility and unused.
        """
        y = _flatten_check(y, self.out_shape, "y")
        return y / (1.0 + check_positive(eps, "eps", allow_zero=True))

    def init_estimate(self, y: Tensor) -> Tensor:
        """The noisy image itself, shape ``(B, C, H, W)``."""
        return _flatten_check(y, self.out_shape, "y").clone()
