r"""Accelerated MRI: the subsampled orthonormal 2-D Fourier transform :math:`y = P F x`.

``F`` is ``torch.fft.fft2(..., norm="ortho")`` (unitary) applied to each channel, ``P`` keeps
the sampled k-space locations of a mask ``M`` (in ``fft2`` layout: DC at ``[0, 0]``). The
measurement is complex; following the bayesinv convention it is stored as a real trailing axis
of length 2 (``torch.view_as_real``): ``out_shape = (C, H, W, 2)``, zeros where not sampled.

Since the image ``x`` is real, ``A`` maps :math:`\mathbb R^n` to :math:`\mathbb C^n \cong
\mathbb R^{2n}` with the real inner product :math:`\langle u, v\rangle = \mathrm{Re}\sum
\bar u v`, and its adjoint is :math:`A^* y = \mathrm{Re}(F^{-1}(M \odot y))` (the zero-filled
reconstruction). With a full mask ``A`` is an isometry, :math:`\|Ax\| = \|x\|`.

Masks, all seeded and reaching a sampled fraction :math:`\approx 1/\text{acceleration}`:

* ``"cartesian"``: full phase-encode lines (columns) with a fully sampled centre band of
  ``round(center_fraction · W)`` lines and the rest drawn uniformly, as the fastMRI
  ``RandomMaskFunc`` (Zbontar et al., 2018), but with an exact line count.
* ``"random"``: variable-density random points, a fully sampled centre square of side
  ``center_fraction`` and the rest drawn without replacement with density
  :math:`\propto (1-r)^2 + 0.01` in the normalised radius ``r`` (Lustig, Donoho & Pauly, 2007).
* ``"radial"``: spokes through the centre at equally spaced angles (seeded rotation), the
  number of spokes chosen to reach the acceleration (Lauterbur, 1973).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._checks import (
    Shape,
    check_choice,
    check_int,
    check_positive,
    make_generator,
)
from .base import LinearOperator, _flatten_check
from .mask import as_binary_mask

MASKS = ("random", "cartesian", "radial")


def _centred_coords(h: int, w: int) -> tuple[Tensor, Tensor]:
    """Signed frequency indices ``(rows, cols)`` of a centred ``(H, W)`` grid (DC at ``(H//2, W//2)``)."""
    u = torch.arange(h, dtype=torch.float64) - h // 2
    v = torch.arange(w, dtype=torch.float64) - w // 2
    return torch.meshgrid(u, v, indexing="ij")


def _to_fft_layout(centred: Tensor) -> Tensor:
    return torch.fft.ifftshift(centred, dim=(-2, -1))


def _check_mask_args(shape: object, acceleration: float,
                     center_fraction: float = 0.0) -> tuple[int, int, float, float]:
    """Validate the arguments shared by the mask builders (same rules as :class:`MRI`)."""
    if not isinstance(shape, (tuple, list)) or len(shape) != 2:
        raise ValueError(f"shape: expected (H, W), got {shape!r}")
    h, w = (check_int(n, "shape") for n in shape)
    acceleration = check_positive(acceleration, "acceleration")
    if acceleration < 1:
        raise ValueError(f"acceleration: expected a number >= 1, got {acceleration!r}")
    center_fraction = check_positive(center_fraction, "center_fraction", allow_zero=True)
    if center_fraction > 1:
        raise ValueError(f"center_fraction: expected a number in [0, 1], got {center_fraction!r}")
    return h, w, acceleration, center_fraction


def _target_count(n: int, acceleration: float) -> int:
    return max(1, min(n, round(n / acceleration)))


def cartesian_mask(shape: tuple[int, int], acceleration: float = 4.0, center_fraction: float = 0.08,
                   seed: int = 0) -> Tensor:
    """Boolean ``(H, W)`` mask in ``fft2`` layout of ``round(W/acceleration)`` full columns,
    including the ``round(center_fraction · W)`` central ones (see module docstring)."""
    h, w, acceleration, center_fraction = _check_mask_args(shape, acceleration, center_fraction)
    n_total = _target_count(w, acceleration)
    n_low = round(center_fraction * w)
    if n_low > n_total:
        raise ValueError(f"center_fraction: the centre band ({n_low} of {w} lines) exceeds the "
                         f"{n_total} lines allowed by acceleration={acceleration}")
    cols = torch.zeros(w, dtype=torch.bool)
    start = (w - n_low + 1) // 2
    cols[start:start + n_low] = True
    gen = make_generator(seed)
    rest = torch.nonzero(~cols).flatten()
    pick = rest[torch.randperm(rest.numel(), generator=gen)[: n_total - n_low]]
    cols[pick] = True
    return _to_fft_layout(cols.expand(h, w).clone())


def random_mask(shape: tuple[int, int], acceleration: float = 4.0, center_fraction: float = 0.08,
                seed: int = 0) -> Tensor:
    """Boolean ``(H, W)`` variable-density random mask in ``fft2`` layout with exactly
    ``round(H·W/acceleration)`` samples (see module docstring)."""
    h, w, acceleration, center_fraction = _check_mask_args(shape, acceleration, center_fraction)
    n_total = _target_count(h * w, acceleration)
    mask = torch.zeros(h, w, dtype=torch.bool)
    ch, cw = round(center_fraction * h), round(center_fraction * w)
    r0, c0 = (h - ch + 1) // 2, (w - cw + 1) // 2
    mask[r0:r0 + ch, c0:c0 + cw] = True
    n_center = int(mask.sum())
    if n_center > n_total:
        raise ValueError(f"center_fraction: the centre square ({n_center} samples) exceeds the "
                         f"{n_total} samples allowed by acceleration={acceleration}")
    u, v = _centred_coords(h, w)
    r = torch.hypot(u / max(h / 2, 1), v / max(w / 2, 1))
    density = (1 - r / r.max().clamp_min(1e-12)) ** 2 + 0.01
    density = density.flatten().masked_fill(mask.flatten(), 0.0)
    n_rest = n_total - n_center
    if n_rest > 0:
        gen = make_generator(seed)
        pick = torch.multinomial(density, n_rest, replacement=False, generator=gen)
        mask.view(-1)[pick] = True
    return _to_fft_layout(mask)


def _spokes(h: int, w: int, n: int, offset: float) -> Tensor:
    r"""Centred mask of ``n`` spokes (full lines through DC) at angles
    :math:`\theta_j = \text{offset} + \pi j/n`: pixel :math:`(u, v) = \rho(\sin\varphi, \cos\varphi)`
    is sampled when its distance :math:`\rho|\sin(\varphi-\theta_j)|` to the nearest spoke is
    at most 1/2 (vectorised over pixels: only the angularly nearest spoke matters)."""
    u, v = _centred_coords(h, w)
    rho = torch.hypot(u, v)
    step = math.pi / n
    delta = torch.remainder(torch.atan2(u, v) - offset, step)
    delta = torch.minimum(delta, step - delta)
    return rho * torch.sin(delta) <= 0.5 + 1e-9


def radial_mask(shape: tuple[int, int], acceleration: float = 4.0, seed: int = 0) -> Tensor:
    """Boolean ``(H, W)`` mask in ``fft2`` layout of equally spaced spokes through the centre
    (one-pixel wide, seeded rotation), with the number of spokes whose sampled fraction is
    closest to ``1/acceleration``."""
    h, w, acceleration, _ = _check_mask_args(shape, acceleration)
    target = 1.0 / acceleration
    gen = make_generator(seed)
    offset = float(torch.rand((), generator=gen, dtype=torch.float64)) * math.pi
    lo, hi = 1, 4 * (h + w)
    if float(_spokes(h, w, hi, offset).double().mean()) < target:
        return _to_fft_layout(torch.ones(h, w, dtype=torch.bool))
    while lo < hi:  # smallest spoke count reaching the target (fraction grows with n)
        mid = (lo + hi) // 2
        if float(_spokes(h, w, mid, offset).double().mean()) >= target:
            hi = mid
        else:
            lo = mid + 1
    best = min({max(lo - 1, 1), lo},
               key=lambda n: abs(float(_spokes(h, w, n, offset).double().mean()) - target))
    return _to_fft_layout(_spokes(h, w, best, offset))


class MRI(LinearOperator):
    r"""Subsampled orthonormal 2-D FFT :math:`y = M \odot F x`, ``out_shape = (C, H, W, 2)``.

    Parameters
    ----------
    in_shape
        Image shape ``(C, H, W)`` (real images; each channel is a coil-free slice).
    acceleration
        Target :math:`R \ge 1`: about ``1/R`` of k-space is sampled; ``1`` samples all of it.
        Ignored when ``mask`` is a tensor.
    mask
        ``"random"``, ``"cartesian"``, ``"radial"`` (see the module docstring), or a
        boolean/0-1 tensor ``(H, W)`` or ``(C, H, W)`` in ``fft2`` layout (DC at ``[0, 0]``;
        ``torch.fft.ifftshift`` a centred mask first).
    center_fraction
        Fully sampled centre share for ``"cartesian"`` (of the lines) and ``"random"`` (of each
        axis), in ``[0, 1]``.
    seed
        Mask seed.

    Notes
    -----
    :math:`A^*A = \mathrm{Re}\,F^{-1} M F` on real images equals :math:`F^{-1} Q F` with
    :math:`Q = (M + \tilde M)/2`, :math:`\tilde M(k) = M(-k)`, because the spectrum of a real
    image is Hermitian. So :meth:`pinv` is the exact
    :math:`\mathrm{Re}\,F^{-1}[\hat z/(Q+\epsilon)]` with :math:`\hat z = F A^* y`, restricted
    to :math:`Q > 0`. :meth:`init_estimate` is the zero-filled reconstruction :math:`A^* y`.
    """

    def __init__(self, in_shape: Shape, acceleration: float = 4.0, mask: str | Tensor = "random",
                 center_fraction: float = 0.08, seed: int = 0) -> None:
        c, h, w = (int(s) for s in in_shape) if len(in_shape) == 3 else (0, 0, 0)
        super().__init__(in_shape, (c, h, w, 2))
        acceleration = check_positive(acceleration, "acceleration")
        if acceleration < 1:
            raise ValueError(f"acceleration: expected a number >= 1, got {acceleration!r}")
        center_fraction = check_positive(center_fraction, "center_fraction", allow_zero=True)
        if center_fraction > 1:
            raise ValueError(f"center_fraction: expected a number in [0, 1], got {center_fraction!r}")
        self._seed = check_int(seed, "seed", minimum=0)
        self.acceleration, self.center_fraction = acceleration, center_fraction
        if isinstance(mask, str):
            self.mask_kind = check_choice(mask, "mask", MASKS)
            if acceleration == 1:
                m = torch.ones(h, w, dtype=torch.bool)
            elif mask == "cartesian":
                m = cartesian_mask((h, w), acceleration, center_fraction, self._seed)
            elif mask == "random":
                m = random_mask((h, w), acceleration, center_fraction, self._seed)
            else:
                m = radial_mask((h, w), acceleration, self._seed)
        else:
            m = as_binary_mask(mask, self.in_shape)
            self.mask_kind = "tensor"
        m = m.to(torch.get_default_dtype()).expand(c, h, w).clone()
        if not bool(m.any()):
            raise ValueError("mask: no sampled k-space location (the mask is all zeros)")
        self.register_buffer("mask", m)
        flipped = torch.roll(torch.flip(m, dims=(-2, -1)), shifts=(1, 1), dims=(-2, -1))
        self.register_buffer("gram_diag", (m + flipped) / 2)

    @property
    def sampled_fraction(self) -> float:
        """Share of sampled k-space locations."""
        return float(self.mask.mean())

    @property
    def mask_centered(self) -> Tensor:
        """The mask with DC at the centre (``fftshift``), for display."""
        return torch.fft.fftshift(self.mask, dim=(-2, -1))

    def _forward(self, x: Tensor) -> Tensor:
        k = torch.fft.fft2(x, norm="ortho")
        return torch.view_as_real(k * self.mask)

    def _adjoint(self, y: Tensor) -> Tensor:
        k = torch.complex(y[..., 0], y[..., 1]) * self.mask
        return torch.fft.ifft2(k, norm="ortho").real

    def pinv(self, y: Tensor, *, eps: float = 1e-6, max_iter: int = 200, tol: float = 1e-8) -> Tensor:
        r"""Exact :math:`(A^*A+\epsilon I)^{-1}A^*y` in k-space, shape ``(B, C, H, W)``.

        ``max_iter`` and ``tol`` are accepted for interface compatibility and unused.
        """
        y = _flatten_check(y, self.out_shape, "y")
        eps = check_positive(eps, "eps", allow_zero=True)
        q = self.gram_diag
        gain = torch.where(q > 0, 1.0 / (q + eps).clamp_min(torch.finfo(q.dtype).tiny), 0.0)
        z = torch.fft.fft2(self._adjoint(y), norm="ortho") * gain
        return torch.fft.ifft2(z, norm="ortho").real

    def init_estimate(self, y: Tensor) -> Tensor:
        """Zero-filled reconstruction :math:`A^* y`, shape ``(B, C, H, W)``."""
        return self._adjoint(_flatten_check(y, self.out_shape, "y"))

    def _settings(self) -> dict[str, object]:
        return {"mask": self.mask_kind, "acceleration": self.acceleration,
                "sampled_fraction": round(self.sampled_fraction, 6),
                "center_fraction": self.center_fraction, "seed": self._seed}
