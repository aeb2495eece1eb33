r"""An explicit matrix as a linear operator: :math:`y = M\,\mathrm{vec}(x)`."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._checks import Shape, as_tensor, check_finite, check_int
from .base import LinearOperator


class MatrixOperator(LinearOperator):
    r"""The linear map :math:`y = M \operatorname{vec}(x)` for a dense matrix ``M`` of shape
    ``(m, C·H·W)``; adjoint :math:`x = \operatorname{vec}^{-1}(M^\top y)`.

    Parameters
    ----------
    matrix
        ``(m, D)`` with ``D = prod(in_shape)``.
    in_shape
        Image shape ``(C, H, W)``.
    """

    def __init__(self, matrix: Tensor, in_shape: Shape) -> None:
        m = check_finite(as_tensor(matrix, "matrix"), "matrix")
        if m.dim() != 2 or m.shape[1] != math.prod(in_shape):
            raise ValueError(f"matrix: expected shape (m, {math.prod(in_shape)}) for in_shape "
                             f"{tuple(in_shape)}, got {tuple(m.shape)}")
        super().__init__(in_shape, (m.shape[0],))
        self.register_buffer("matrix", m.clone())

    def _forward(self, x: Tensor) -> Tensor:
        return x.flatten(1) @ self.matrix.T

    def _adjoint(self, y: Tensor) -> Tensor:
        return (y @ self.matrix).reshape(-1, *self.in_shape)

    def _settings(self) -> dict[str, object]:
        return {"m": int(self.matrix.shape[0])}


def random_gaussian_matrix(m: int, d: int, seed: int = 0, dtype: torch.dtype | None = None) -> Tensor:
    r"""A seeded ``(m, d)`` matrix with i.i.d. :math:`\mathcal N(0, 1/m)` entries
    (so that :math:`\mathbb E[M^\top M] = I`)."""
    m, d = check_int(m, "m"), check_int(d, "d")
    gen = torch.Generator().manual_seed(check_int(seed, "seed", minimum=0))
    return torch.randn(m, d, generator=gen, dtype=dtype or torch.get_default_dtype()) / math.sqrt(m)
