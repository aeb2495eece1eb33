r"""Compressed sensing: :math:`y = A\,\mathrm{vec}(x) \in \mathbb R^m` with ``m`` random
measurements of a ``D = C·H·W`` pixel image.

Two kinds, both scaled so that :math:`\mathbb E[A^\top A] = I`:

* ``"gaussian"``: a seeded dense matrix with i.i.d. :math:`\mathcal N(0, 1/m)` entries
  (Candès & Tao, 2006; Donoho, 2006). Memory and time :math:`O(mD)`.
* ``"structured"``: a subsampled random-sign orthonormal transform
  :math:`A = \sqrt{D/m}\,S\,F\,\Sigma` with :math:`\Sigma` a seeded diagonal of random signs,
  :math:`F` the orthonormal DCT-II of length ``D`` (computed by FFT in :math:`O(D\log D)`,
  Makhoul, 1980) and :math:`S` the selection of ``m`` seeded distinct rows — a "structurally
  random matrix" (Do, Gan, Nguyen & Tran, 2012). Since
  :math:`\mathbb E[S^\top S] = (m/D) I`, :math:`\mathbb E[A^\top A] = I`, and
  :math:`AA^\top = (D/m) I_m` exactly. Memory :math:`O(D)`, so it scales to large images.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._checks import Shape, check_choice, check_int, check_positive, make_generator
from .base import LinearOperator, _flatten_check
from .matrix import MatrixOperator, random_gaussian_matrix

KINDS = ("gaussian", "structured")


def dct_ortho(x: Tensor) -> Tensor:
    r"""Orthonormal DCT-II along the last axis (equal to ``scipy.fft.dct(x, norm="ortho")``).

    Makhoul (1980): with :math:`v = (x_0, x_2, x_4, \dots, x_5, x_3, x_1)` and :math:`V = \mathrm{FFT}(v)`,
    :math:`X_k = \mathrm{Re}(e^{-i\pi k/(2N)} V_k)`, then scaled by :math:`\sqrt{2/N}`
    (and :math:`\sqrt{1/N}` for :math:`k = 0`).
    """
    n = x.shape[-1]
    v = torch.cat([x[..., ::2], x[..., 1::2].flip(-1)], dim=-1)
    big_v = torch.fft.fft(v, dim=-1)
    k = torch.arange(n, device=x.device, dtype=x.dtype)
    phase = -math.pi * k / (2 * n)
    out = big_v.real * torch.cos(phase) - big_v.imag * torch.sin(phase)
    scale = x.new_full((n,), math.sqrt(2.0 / n))
    scale[0] = math.sqrt(1.0 / n)
    return out * scale


def idct_ortho(y: Tensor) -> Tensor:
    r"""Inverse (= transpose) of :func:`dct_ortho` along the last axis (orthonormal DCT-III).

    Undo the scaling, form :math:`V_k = e^{i\pi k/(2N)}(X_k - i X_{N-k})` (:math:`X_N = 0`),
    :math:`v = \mathrm{Re}\,\mathrm{IFFT}(V)`, and undo Makhoul's permutation.
    """
    n = y.shape[-1]
    scale = y.new_full((n,), math.sqrt(n / 2.0))
    scale[0] = math.sqrt(float(n))
    big_x = y * scale
    rev = torch.cat([big_x[..., :1] * 0, big_x[..., 1:].flip(-1)], dim=-1)  # X_{N-k}, X_N = 0
    k = torch.arange(n, device=y.device, dtype=y.dtype)
    phase = math.pi * k / (2 * n)
    c, s = torch.cos(phase), torch.sin(phase)
    # (c + i s)(X - i R) = (c X + s R) + i (s X - c R)
    big_v = torch.complex(c * big_x + s * rev, s * big_x - c * rev)
    v = torch.fft.ifft(big_v, dim=-1).real
    out = torch.empty_like(v)
    n_even = (n + 1) // 2
    out[..., ::2] = v[..., :n_even]
    out[..., 1::2] = v[..., n_even:].flip(-1)
    return out


class CompressedSensing(LinearOperator):
    r"""Random compressed-sensing measurements :math:`y = A\,\mathrm{vec}(x)`, ``out_shape = (m,)``.

    Parameters
    ----------
    in_shape
        Image shape ``(C, H, W)``; ``D = C·H·W``.
    m
        Number of measurements, ``1 <= m <= D``.
    kind
        ``"gaussian"`` (dense :math:`\mathcal N(0,1/m)` matrix, via
        :class:`~bayesinv.operators.matrix.MatrixOperator`) or ``"structured"``
        (:math:`\sqrt{D/m}\,S\,\mathrm{DCT}\,\Sigma`, :math:`O(D\log D)` per image).
    seed
        Seed of the matrix, or of the signs and selected rows.

    Notes
    -----
    Both kinds satisfy :math:`\mathbb E[A^\top A] = I`, so :math:`\mathbb E\|Ax\|^2 = \|x\|^2`.
    :meth:`pinv` is the exact minimum-norm solution
    :math:`A^\top(AA^\top + \epsilon I)^{-1}y`; for ``"structured"`` it is
    :math:`A^\top y/(D/m + \epsilon)`.
    """

    def __init__(self, in_shape: Shape, m: int, kind: str = "gaussian", seed: int = 0) -> None:
        super().__init__(in_shape, (1,))
        d = math.prod(self.in_shape)
        m = check_int(m, "m", minimum=1)
        if m > d:
            raise ValueError(f"m: expected at most D = C*H*W = {d} measurements, got {m}")
        self.kind = check_choice(kind, "kind", KINDS)
        self._seed = check_int(seed, "seed", minimum=0)
        self.m, self.d = m, d
        self.out_shape = (m,)
        if self.kind == "gaussian":
            self.matrix_op = MatrixOperator(random_gaussian_matrix(m, d, seed=self._seed), self.in_shape)
        else:
            gen = make_generator(self._seed)
            signs = torch.randint(0, 2, (d,), generator=gen).to(torch.get_default_dtype()) * 2 - 1
            rows = torch.randperm(d, generator=gen)[:m].sort().values
            self.register_buffer("signs", signs)
            self.register_buffer("rows", rows)

    @property
    def scale(self) -> float:
        r""":math:`\sqrt{D/m}` for ``"structured"`` (1 for ``"gaussian"``)."""
        return math.sqrt(self.d / self.m) if self.kind == "structured" else 1.0

    def _forward(self, x: Tensor) -> Tensor:
        if self.kind == "gaussian":
            return self.matrix_op._forward(x)
        coeffs = dct_ortho(x.flatten(1) * self.signs)
        return coeffs[:, self.rows] * self.scale

    def _adjoint(self, y: Tensor) -> Tensor:
        if self.kind == "gaussian":
            return self.matrix_op._adjoint(y)
        full = y.new_zeros((y.shape[0], self.d))
        full = full.index_copy(1, self.rows, y * self.scale)
        return (idct_ortho(full) * self.signs).reshape(-1, *self.in_shape)

    def pinv(self, y: Tensor, *, eps: float = 1e-6, max_iter: int = 200, tol: float = 1e-8) -> Tensor:
        r"""Exact :math:`A^\top(AA^\top+\epsilon I)^{-1}y`, shape ``(B, C, H, W)``.

        ``"gaussian"`` solves the ``m × m`` system directly; ``"structured"`` uses
        :math:`AA^\top = (D/m) I`. ``max_iter`` and ``tol`` are unused.
        """
        y = _flatten_check(y, self.out_shape, "y")
        eps = check_positive(eps, "eps", allow_zero=True)
        if self.kind == "structured":
            return self._adjoint(y / (self.d / self.m + eps))
        mat = self.matrix_op.matrix
        gram = mat @ mat.T + eps * torch.eye(self.m, dtype=mat.dtype, device=mat.device)
        w = torch.linalg.solve(gram, y.to(mat.dtype).T).T
        return self._adjoint(w.to(y.dtype))

    def _settings(self) -> dict[str, object]:
        return {"m": self.m, "kind": self.kind, "seed": self._seed}
