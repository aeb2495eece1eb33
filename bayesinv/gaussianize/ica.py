r"""Differentiable symmetric FastICA (Hyvärinen 1999) with a fixed number of unrolled iterations.

Hyvärinen, "Fast and robust fixed-point algorithms for independent component analysis", IEEE
Trans. Neural Networks 10 (1999). For data :math:`X \in \mathbb R^{N\times d}` (``N`` samples
of ``d`` features), in float64:

1. **Centre** :math:`X_c = X - \bar X`.
2. **Whiten with shrinkage**: :math:`\Sigma = X_c^\top X_c / N`,
   :math:`\Sigma_\varepsilon = (1-\varepsilon)\Sigma + \varepsilon\,\frac{\operatorname{tr}\Sigma}{d} I`
   with :math:`\varepsilon = 10^{-3}` (keeps the whitening well conditioned, and its gradient
   finite, for nearly degenerate groups; the reference code of Li et al. shrinks towards
   :math:`10^{-3} I`, we shrink towards the mean eigenvalue so that it is scale invariant).
   ZCA (symmetric) whitening :math:`Z = X_c\Sigma_\varepsilon^{-1/2}`, as in the reference code,
   keeps the whitened coordinates aligned with the input ones. It is computed without an
   eigen-decomposition (whose derivative is singular at repeated eigenvalues): Cholesky
   :math:`\Sigma_\varepsilon = LL^\top` and :math:`\Sigma_\varepsilon^{-1/2} = RL^{-1}` with
   :math:`R = (LL^\top)^{-1/2}L` the orthogonal polar factor of :math:`L` (Newton–Schulz, below).
3. **Symmetric FastICA** with the log-cosh contrast :math:`G(s) = \log\cosh s`,
   :math:`g = \tanh`, :math:`g' = 1 - \tanh^2`:

   .. math::

       W \leftarrow \tfrac1N g(Z W^\top)^\top Z - \operatorname{diag}\big(\overline{g'(ZW^\top)}\big) W,
       \qquad W \leftarrow (W W^\top)^{-1/2} W,

   from :math:`W_0 = I` (as in the reference code: for a nearly Gaussian group the rotation then
   stays near the identity, so :math:`g` is smooth in the latent) or, with ``seed``, from a
   deterministic seeded random rotation (QR of a Gaussian matrix), for a fixed number of
   iterations. The symmetric decorrelation uses Hyvärinen's iterative scheme
   :math:`W \leftarrow W/\|W\|_F`, then :math:`W \leftarrow \frac32 W - \frac12 WW^\top W`
   (Newton–Schulz for the polar factor), which is matmul-only and so differentiable without
   eigen-decompositions. The whole loop is unrolled: gradients are by autograd.

The sources are :math:`S = Z W^\top` (uncorrelated, unit variance), with each row of :math:`W`
sign-aligned to :math:`W_0` (:math:`\operatorname{diag}(W W_0^\top) \ge 0`): ICA leaves the sign
of each component free, and a sign flip between nearby latents would make the layer
discontinuous.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

SHRINKAGE = 1e-3


@dataclass
class ICAResult:
    """Sources ``(..., N, d)`` and the fitted maps: ``sources = (x - mean) @ whitening^T @ rotation^T``."""

    sources: Tensor
    mean: Tensor
    whitening: Tensor
    rotation: Tensor

    @property
    def unmixing(self) -> Tensor:
        """``rotation @ whitening``: ``sources = (x - mean) @ unmixing^T``."""
        return self.rotation @ self.whitening


def initial_rotation(d: int, seed: int = 0, *, dtype: torch.dtype = torch.float64,
                     device: torch.device | str | None = None) -> Tensor:
    """Deterministic random orthogonal ``(d, d)`` matrix: QR of a seeded Gaussian matrix."""
    gen = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r)).unsqueeze(0)
    return q.to(dtype=dtype, device=device)


def whiten(x: Tensor, shrinkage: float = SHRINKAGE, decorrelation_iters: int = 50
           ) -> tuple[Tensor, Tensor, Tensor]:
    r"""ZCA-whiten ``(..., N, d)`` with the shrunk covariance; returns ``(Z, mean, K)``, ``K = Σ_ε^{-1/2}``.

    The shrinkage bounds :math:`\operatorname{cond}(L) \le \sqrt{d/\varepsilon}`, so the
    Newton–Schulz polar factor of the Cholesky factor always converges.
    """
    d = x.shape[-1]
    n = x.shape[-2]
    mean = x.mean(dim=-2, keepdim=True)
    xc = x - mean
    cov = xc.transpose(-1, -2) @ xc / n
    trace = torch.diagonal(cov, dim1=-2, dim2=-1).sum(-1)
    eye = torch.eye(d, dtype=x.dtype, device=x.device)
    cov = (1.0 - shrinkage) * cov + shrinkage * (trace / d)[..., None, None] * eye
    chol = torch.linalg.cholesky(cov)
    polar = symmetric_decorrelation(chol, decorrelation_iters)
    eye_b = eye.expand_as(chol)
    whitening = polar @ torch.linalg.solve_triangular(chol, eye_b, upper=False)
    return xc @ whitening.transpose(-1, -2), mean, whitening


def symmetric_decorrelation(w: Tensor, iters: int = 50) -> Tensor:
    r"""Polar factor :math:`(WW^\top)^{-1/2}W` by Newton–Schulz iterations (differentiable).

    After :math:`W/\|W\|_F` all singular values lie in :math:`(0, 1]`; each iteration maps
    :math:`s \mapsto \frac32 s - \frac12 s^3`, which grows small ones by 1.5 and converges
    quadratically near 1, so ``iters`` = 50 orthogonalises matrices with condition numbers up to
    ~1e7 to machine precision.
    """
    w = w / torch.linalg.matrix_norm(w, ord="fro", keepdim=True)
    for _ in range(iters):
        w = 1.5 * w - 0.5 * (w @ w.transpose(-1, -2)) @ w
    return w


def fast_ica(x: Tensor, *, iters: int = 10, seed: int | None = None, shrinkage: float = SHRINKAGE,
             decorrelation_iters: int = 50) -> ICAResult:
    r"""Symmetric FastICA with the log-cosh contrast, ``iters`` unrolled iterations.

    Parameters
    ----------
    x
        ``(..., N, d)`` data (samples on axis ``-2``); computed in float64.
    iters
        Number of FastICA fixed-point iterations (unrolled, differentiable).
    seed
        ``None``: start at :math:`W_0 = I`; an int: seed of a random initial rotation.
    shrinkage
        :math:`\varepsilon` of the whitening covariance shrinkage.

    Returns
    -------
    ICAResult
        ``sources`` :math:`S = Z W^\top` and the fitted mean, whitening matrix and rotation.
    """
    x = x.to(torch.float64)
    d = x.shape[-1]
    n = x.shape[-2]
    z, mean, whitening = whiten(x, shrinkage)
    if seed is None:
        w0 = torch.eye(d, dtype=x.dtype, device=x.device)
    else:
        w0 = initial_rotation(d, seed, dtype=x.dtype, device=x.device)
    w = w0.expand(*x.shape[:-2], d, d)
    for _ in range(iters):
        s = z @ w.transpose(-1, -2)  # (..., N, d)
        gs = torch.tanh(s)
        dgs = 1.0 - gs * gs
        w_new = gs.transpose(-1, -2) @ z / n - dgs.mean(dim=-2).unsqueeze(-1) * w
        w = symmetric_decorrelation(w_new, decorrelation_iters)
    # ICA fixes each row only up to sign, and the fixed-point update may flip a row between
    # iterations; align each row with the start W0 so that the layer does not jump in sign.
    sign = torch.sign(torch.diagonal(w @ w0.transpose(-1, -2), dim1=-2, dim2=-1).detach())
    sign = torch.where(sign == 0, torch.ones_like(sign), sign)
    w = sign.unsqueeze(-1) * w
    return ICAResult(sources=z @ w.transpose(-1, -2), mean=mean, whitening=whitening, rotation=w)


def amari_index(w: Tensor, a: Tensor) -> float:
    r"""Amari distance of :math:`P = WA` from a scaled permutation (0 = perfect separation).

    :math:`\frac{1}{2d(d-1)}\sum_i\big(\sum_j\frac{|p_{ij}|}{\max_k|p_{ik}|} - 1\big)
    + \sum_j\big(\sum_i\frac{|p_{ij}|}{\max_k|p_{kj}|} - 1\big)`.
    """
    p = (w @ a).abs()
    d = p.shape[-1]
    rows = (p / p.max(dim=-1, keepdim=True).values).sum(-1) - 1.0
    cols = (p / p.max(dim=-2, keepdim=True).values).sum(-2) - 1.0
    return float((rows.sum() + cols.sum()) / (2 * d * (d - 1)))
