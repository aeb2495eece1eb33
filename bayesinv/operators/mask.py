r"""Inpainting: a pixel mask :math:`A x = m \odot x` with :math:`m \in \{0, 1\}^{C\times H\times W}`.

The measurement keeps the image shape, with zeros at the missing pixels (rather than a vector
of the observed pixels only): it is easy to display and to build masks for, and the operator is
an orthogonal projection, :math:`A^* = A = A^2`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._checks import Shape, as_tensor, check_finite, check_int, check_positive, make_generator
from .base import LinearOperator, _flatten_check


def as_binary_mask(mask: object, in_shape: Shape) -> Tensor:
    """Validate a user mask: finite, 0/1 (or bool), of shape ``(H, W)`` or ``(C, H, W)``."""
    c, h, w = in_shape
    m = check_finite(as_tensor(mask, "mask"), "mask").detach()
    if tuple(m.shape) not in ((h, w), (c, h, w)):
        raise ValueError(f"mask: expected shape (H, W) = {(h, w)} or (C, H, W) = "
                         f"{(c, h, w)}, got {tuple(m.shape)}")
    if not bool(((m == 0) | (m == 1)).all()):
        raise ValueError("mask: expected boolean or 0/1 values")
    return m

class Inpainting(LinearOperator):
    r"""Pixel-mask operator :math:`y = m \odot x`, :math:`A^* y = m \odot y`.

    Parameters
    ----------
    in_shape
        Image shape ``(C, H, W)``; ``out_shape`` is the same (zeros where missing).
    mask
        Boolean or 0/1 tensor (or numpy array) of shape ``(H, W)`` (shared by all channels)
        or ``(C, H, W)``; ``1``/``True`` marks an observed pixel. Give either ``mask`` or
        ``fraction``.
    fraction
        Keep a seeded uniformly random set of ``round(fraction * H * W)`` pixel positions
        (at least one), the same positions in every channel. Must lie in ``(0, 1]``.
    seed
        Seed of the random mask.

    Notes
    -----
    Since :math:`A^*A = \operatorname{diag}(m)` is a projection, the regularised pseudo-inverse
    is :math:`(A^*A+\epsilon I)^{-1}A^*y = m\odot y/(1+\epsilon)` (zero filling).
    """

    def __init__(self, in_shape: Shape, mask: Tensor | None = None, fraction: float | None = None,
                 seed: int = 0) -> None:
        super().__init__(in_shape, in_shape)
        c, h, w = self.in_shape
        if (mask is None) == (fraction is None):
            raise ValueError("mask/fraction: give exactly one of mask (a 0/1 tensor) or fraction "
                             "(the share of observed pixels)")
        self._seed = check_int(seed, "seed", minimum=0)
        if mask is not None:
            m = as_binary_mask(mask, self.in_shape)
            self._source = "given"
            self._fraction = None
        else:
            frac = check_positive(fraction, "fraction")
            if frac > 1:
                raise ValueError(f"fraction: expected a number in (0, 1], got {fraction!r}")
            k = max(1, round(frac * h * w))
            gen = make_generator(self._seed)
            keep = torch.randperm(h * w, generator=gen)[:k]
            m = torch.zeros(h * w)
            m[keep] = 1.0
            m = m.reshape(h, w)
            self._source = "random"
            self._fraction = frac
        m = m.to(torch.get_default_dtype()).expand(c, h, w).clone()
        if not bool(m.any()):
            raise ValueError("mask: no observed pixel (the mask is all zeros)")
        self.register_buffer("mask", m)

    @property
    def observed_fraction(self) -> float:
        """Share of observed entries of ``(C, H, W)``."""
        return float(self.mask.mean())

    def _forward(self, x: Tensor) -> Tensor:
        return x * self.mask

    def _adjoint(self, y: Tensor) -> Tensor:
        return y * self.mask

    def pinv(self, y: Tensor, *, eps: float = 1e-6, max_iter: int = 200, tol: float = 1e-8) -> Tensor:
        r"""Closed-form :math:`m \odot y / (1 + \epsilon)` (zero filling), shape ``(B, C, H, W)``.

        ``max_iter`` and ``tol`` are accepted for interface compatibility and unused.
        """
        y = _flatten_check(y, self.out_shape, "y")
        return y * self.mask / (1.0 + check_positive(eps, "eps", allow_zero=True))

    def init_estimate(self, y: Tensor) -> Tensor:
        r"""Observed pixels kept, missing pixels filled with the mean of the observed pixels of
        the same image and channel (a better solver start than zeros). Shape ``(B, C, H, W)``."""
        y = _flatten_check(y, self.out_shape, "y")
        m = self.mask
        n_obs = m.sum(dim=(-2, -1)).clamp_min(1.0)  # (C,)
        mean = (y * m).sum(dim=(-2, -1)) / n_obs  # (B, C)
        return y * m + (1.0 - m) * mean[..., None, None]

    def _settings(self) -> dict[str, object]:
        return {"mask": self._source, "fraction": self._fraction,
                "observed_fraction": round(self.observed_fraction, 6), "seed": self._seed,
                "n_observed": int(self.mask.sum())}

