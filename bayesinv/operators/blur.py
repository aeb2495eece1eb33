r"""Deblurring and super-resolution by circular convolution, computed with the FFT.

:class:`Blur` is :math:`A x = k \circledast x` (periodic boundary), with the kernel ``k``
centred at its middle pixel and normalised to :math:`\sum k = 1`. By the convolution theorem
:math:`A = F^{-1}\operatorname{diag}(\hat k)F` and :math:`A^* = F^{-1}\operatorname{diag}(\overline{\hat k})F`
(correlation with ``k``).

:class:`SuperResolution` is :math:`A x = S_f(g_\sigma \circledast x)`: an anti-aliasing
Gaussian blur then subsampling with stride ``f``, where low-resolution pixel ``i`` sits at the
centre of its ``f × f`` block (high-resolution coordinate :math:`f i + (f-1)/2`, the
convention of bicubic ``interpolate(..., align_corners=False)``). Its adjoint is zero-filling
upsampling :math:`S_f^*` followed by correlation.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .._checks import Shape, as_tensor, check_finite, check_int, check_positive
from .base import LinearOperator, _flatten_check

KERNELS = ("gaussian", "motion")


# -- kernels -----------------------------------------------------------------------------------
def _check_size(size: int, name: str = "size") -> int:
    size = check_int(size, name, minimum=1)
    if size % 2 == 0:
        raise ValueError(f"{name}: expected an odd kernel size (centred kernel), got {size}")
    return size


def default_size(width: float, limit: int | None = None) -> int:
    r"""Odd kernel size :math:`2\lceil 3\sigma\rceil + 1` covering :math:`\pm 3\sigma`, capped at
    the largest odd number :math:`\le` ``limit`` (the image side) when given."""
    size = 2 * math.ceil(3 * float(width)) + 1
    if limit is not None:
        size = min(size, limit if limit % 2 else limit - 1)
    return max(size, 1)


def gaussian_kernel(size: int, width: float, *, dtype: torch.dtype | None = None) -> Tensor:
    r"""Isotropic Gaussian kernel :math:`k_{ij} \propto \exp(-(i^2+j^2)/(2\sigma^2))`,
    :math:`i, j \in \{-r..r\}`, ``size = 2r+1``, normalised to sum 1.

    Equal to the (separable, truncated at ``r``) kernel of ``scipy.ndimage.gaussian_filter``
    with ``sigma = width``.

    Parameters
    ----------
    size
        Odd kernel side length.
    width
        Standard deviation :math:`\sigma > 0` in pixels.
    """
    size = _check_size(size)
    width = check_positive(width, "width")
    t = torch.arange(size, dtype=torch.float64) - size // 2
    g = torch.exp(-0.5 * (t / width) ** 2)
    k = g[:, None] * g[None, :]
    return (k / k.sum()).to(dtype or torch.get_default_dtype())


def motion_kernel(size: int, length: float, angle: float = 0.0, *,
                  dtype: torch.dtype | None = None) -> Tensor:
    r"""Linear motion-blur kernel: a segment of ``length`` pixels through the centre at
    ``angle`` degrees (counter-clockwise from the horizontal axis), normalised to sum 1.

    The segment is drawn anti-aliased: pixel ``p`` gets weight :math:`\max(0, 1 - d(p, s))`,
    with :math:`d(p, s)` the Euclidean distance from the pixel centre to the centred segment
    ``s`` of length :math:`\max(L - 1, 0)`, so that a horizontal kernel has total weight ``L``
    before normalisation (``L = 3`` gives ``[1, 1, 1]/3``, ``L = 4`` gives
    ``[.5, 1, 1, 1, .5]/4``). The kernel is point-symmetric and varies continuously with
    ``length`` and ``angle``; ``length <= 1`` gives the identity (a single pixel).

    Parameters
    ----------
    size
        Odd kernel side length, at least ``length``.
    length
        Segment length :math:`\ge 0` in pixels.
    angle
        Direction in degrees.
    """
    size = _check_size(size)
    length = check_positive(length, "length", allow_zero=True)
    if length > size:
        raise ValueError(f"length: expected at most the kernel size {size}, got {length}")
    try:
        theta = math.radians(float(angle))
    except (TypeError, ValueError):
        raise TypeError(f"angle: expected a number of degrees, got {angle!r}") from None
    if not math.isfinite(theta):
        raise ValueError(f"angle: expected a finite number, got {angle!r}")
    t = torch.arange(size, dtype=torch.float64) - size // 2
    row, col = torch.meshgrid(t, t, indexing="ij")
    ux, uy = math.cos(theta), -math.sin(theta)  # image rows point down
    half = max(length - 1.0, 0.0) / 2
    along = (col * ux + row * uy).clamp(-half, half)
    d = torch.hypot(col - along * ux, row - along * uy)
    k = (1.0 - d).clamp_min(0.0)
    return (k / k.sum()).to(dtype or torch.get_default_dtype())


def kernel_to_otf(kernel: Tensor, shape: tuple[int, int]) -> Tensor:
    r"""Zero-pad a centred kernel ``(..., kh, kw)`` to ``shape = (H, W)``, roll its centre
    ``(kh//2, kw//2)`` to pixel ``(0, 0)`` and return its real FFT (optical transfer function)
    as a real tensor ``(..., H, W//2+1, 2)`` (``torch.view_as_real``)."""
    kh, kw = kernel.shape[-2:]
    h, w = shape
    pad = kernel.new_zeros((*kernel.shape[:-2], h, w))
    pad[..., :kh, :kw] = kernel
    pad = torch.roll(pad, shifts=(-(kh // 2), -(kw // 2)), dims=(-2, -1))
    return torch.view_as_real(torch.fft.rfft2(pad)).contiguous()


def _filter(x: Tensor, otf: Tensor, *, adjoint: bool = False) -> Tensor:
    """Circular convolution (or correlation when ``adjoint``) of ``x (B, C, H, W)`` by FFT."""
    k = torch.view_as_complex(otf)
    if adjoint:
        k = k.conj()
    return torch.fft.irfft2(torch.fft.rfft2(x) * k, s=x.shape[-2:])


# -- Blur ----------------------------------------------------------------------------------------
class Blur(LinearOperator):
    r"""Circular convolution :math:`y = k \circledast x` by FFT; :math:`A^*` is correlation.

    Parameters
    ----------
    in_shape
        Image shape ``(C, H, W)``; ``out_shape`` is the same.
    kernel
        ``"gaussian"`` (:func:`gaussian_kernel`), ``"motion"`` (:func:`motion_kernel`), or a
        tensor ``(kh, kw)`` (all channels) or ``(C, kh, kw)`` centred at ``(kh//2, kw//2)``,
        normalised here to sum 1 per channel.
    width
        Gaussian standard deviation :math:`\sigma > 0` in pixels.
    size
        Odd kernel side length; default :math:`2\lceil 3\sigma\rceil+1` (Gaussian, capped at
        the largest odd size that fits the image) or the smallest odd size holding ``length``
        (motion). At most ``min(H, W)``.
    angle, length
        Motion direction in degrees and segment length in pixels.

    Notes
    -----
    :meth:`pinv` is the closed-form Tikhonov/Wiener filter
    :math:`F^{-1}\big[\overline{\hat k}\,\hat y/(|\hat k|^2+\epsilon)\big]`.
    :meth:`init_estimate` returns ``y`` itself: the pseudo-inverse of a Gaussian blur amplifies
    noise by up to :math:`1/\epsilon` and is a poor solver start.
    """

    def __init__(self, in_shape: Shape, kernel: str | Tensor = "gaussian", width: float = 1.0,
                 size: int | None = None, angle: float = 0.0, length: float = 5.0) -> None:
        super().__init__(in_shape, in_shape)
        c, h, w = self.in_shape
        if isinstance(kernel, str):
            if kernel not in KERNELS:
                raise ValueError(f"kernel: unknown value {kernel!r}; expected one of "
                                 f"{sorted(KERNELS)} or a tensor")
            if kernel == "gaussian":
                width = check_positive(width, "width")
                size = default_size(width, min(h, w)) if size is None else size
                k = gaussian_kernel(size, width)
                self._settings_dict: dict[str, object] = {"kernel": "gaussian", "width": width,
                                                          "size": int(size)}
            else:
                length = check_positive(length, "length", allow_zero=True)
                size = 2 * math.ceil(length / 2) + 1 if size is None else size
                k = motion_kernel(size, length, angle)
                self._settings_dict = {"kernel": "motion", "length": length,
                                       "angle": float(angle), "size": int(size)}
        else:
            k = check_finite(as_tensor(kernel, "kernel"), "kernel").detach()
            if k.dim() == 3 and k.shape[0] != c or k.dim() not in (2, 3):
                raise ValueError(f"kernel: expected shape (kh, kw) or (C={c}, kh, kw), "
                                 f"got {tuple(k.shape)}")
            total = k.sum(dim=(-2, -1), keepdim=True)
            if not bool((total > 0).all()):
                raise ValueError("kernel: expected a positive sum (it is normalised to sum 1)")
            k = (k / total).to(torch.get_default_dtype())
            self._settings_dict = {"kernel": "tensor", "kernel_shape": list(k.shape)}
        if k.shape[-2] > h or k.shape[-1] > w:
            raise ValueError(f"size: kernel of shape {tuple(k.shape[-2:])} is larger than the "
                             f"image ({h}, {w})")
        self.register_buffer("kernel", k)
        self.register_buffer("otf", kernel_to_otf(k, (h, w)))

    def _forward(self, x: Tensor) -> Tensor:
        return _filter(x, self.otf)

    def _adjoint(self, y: Tensor) -> Tensor:
        return _filter(y, self.otf, adjoint=True)

    def pinv(self, y: Tensor, *, eps: float = 1e-6, max_iter: int = 200, tol: float = 1e-8) -> Tensor:
        r"""Closed-form :math:`(A^*A+\epsilon I)^{-1}A^*y` in Fourier space, shape ``(B, C, H, W)``.

        ``max_iter`` and ``tol`` are accepted for interface compatibility and unused.
        """
        y = _flatten_check(y, self.out_shape, "y")
        eps = check_positive(eps, "eps", allow_zero=True)
        k = torch.view_as_complex(self.otf)
        den = k.real**2 + k.imag**2 + eps
        gain = torch.where(den > 0, k.conj() / den.clamp_min(torch.finfo(den.dtype).tiny), 0)
        return torch.fft.irfft2(torch.fft.rfft2(y) * gain, s=y.shape[-2:])

    def init_estimate(self, y: Tensor) -> Tensor:
        """The blurred image itself, shape ``(B, C, H, W)``."""
        return _flatten_check(y, self.out_shape, "y").clone()

    def _settings(self) -> dict[str, object]:
        return dict(self._settings_dict)


# -- SuperResolution -----------------------------------------------------------------------------
def _block_centred_gaussian(n: int, factor: int, width: float, radius: int) -> Tensor:
    r"""1-D periodic kernel :math:`h_t \propto g_\sigma(t + (f-1)/2)` on :math:`\mathbb Z_n`,
    truncated to :math:`|t + (f-1)/2| \le r + (f-1)/2` and normalised to sum 1, so that
    :math:`(h \circledast x)_{f i}` is a Gaussian average centred at :math:`f i + (f-1)/2`."""
    s = (factor - 1) / 2
    t = torch.arange(n, dtype=torch.float64)
    u = t + s
    u = torch.where(u > n / 2, u - n, u)  # signed periodic offset from the block centre
    g = torch.exp(-0.5 * (u / width) ** 2) * (u.abs() <= radius + s + 1e-9)
    return g / g.sum()


class SuperResolution(LinearOperator):
    r"""Anti-aliasing Gaussian blur then stride-``factor`` subsampling:
    :math:`y = S_f(g_\sigma \circledast x)`, ``out_shape = (C, H/f, W/f)``.

    Parameters
    ----------
    in_shape
        High-resolution image shape ``(C, H, W)``; ``factor`` must divide ``H`` and ``W``.
    factor
        Downsampling factor :math:`f \ge 1`.
    width
        Gaussian standard deviation :math:`\sigma > 0` in high-resolution pixels; default
        :math:`f/2` (e.g. :math:`\sigma = 2` for :math:`f = 4`, the setting of WPPNets,
        Altekrüger & Hertrich, 2023).
    size
        Odd truncation size :math:`2r+1` of the Gaussian (default :math:`2\lceil 3\sigma\rceil+1`,
        capped to fit), with ``size + factor - 1 <= min(H, W)`` (the kernel support around a
        block centre).

    Notes
    -----
    Low-resolution pixel ``i`` is the Gaussian average centred at the middle of high-resolution
    block ``i`` (coordinate :math:`fi + (f-1)/2`), which is the geometry of
    :meth:`bicubic` (``align_corners=False``). Adjoint: :math:`A^* y = g_\sigma \star S_f^* y`
    (zero-filled upsampling, then correlation). Since :math:`AA^*` is a convolution on the
    low-resolution grid with kernel :math:`(g\star g)` subsampled by ``f``, :meth:`pinv` is the
    exact :math:`A^*(AA^*+\epsilon I)^{-1}y` in Fourier space.
    """

    def __init__(self, in_shape: Shape, factor: int, width: float | None = None,
                 size: int | None = None) -> None:
        super().__init__(in_shape, in_shape)
        c, h, w = self.in_shape
        f = check_int(factor, "factor", minimum=1)
        if h % f or w % f:
            raise ValueError(f"factor: {f} must divide the image height and width ({h}, {w})")
        width = f / 2 if width is None else check_positive(width, "width")
        # the block-centred kernel spans size + f - 1 pixels, which must fit in the image
        limit = min(h, w) - f + 1
        size = default_size(width, max(limit, 1)) if size is None else _check_size(size)
        if size > limit:
            raise ValueError(f"size: kernel size {size} plus factor - 1 = {f - 1} exceeds the "
                             f"image ({h}, {w})")
        self.factor, self.width, self.size = f, float(width), int(size)
        self.out_shape = (c, h // f, w // f)
        r = size // 2
        kh = _block_centred_gaussian(h, f, width, r)
        kw = _block_centred_gaussian(w, f, width, r)
        pad = (kh[:, None] * kw[None, :]).to(torch.get_default_dtype())
        self.register_buffer("otf", torch.view_as_real(torch.fft.rfft2(pad)).contiguous())
        # Spectrum of A A^* on the low-resolution grid: (g * g~) subsampled by f.
        k = torch.fft.rfft2(pad.double())
        auto = torch.fft.irfft2(k.real**2 + k.imag**2, s=(h, w))[::f, ::f]
        self.register_buffer("gram_spectrum",
                             torch.fft.rfft2(auto).real.clamp_min(0).to(torch.get_default_dtype()))

    def _forward(self, x: Tensor) -> Tensor:
        f = self.factor
        return _filter(x, self.otf)[..., ::f, ::f]

    def upsample_zero(self, y: Tensor) -> Tensor:
        r"""Zero-filling upsampling :math:`S_f^*`: ``(B, C, h, w) -> (B, C, fh, fw)``."""
        f = self.factor
        z = y.new_zeros((*y.shape[:-2], y.shape[-2] * f, y.shape[-1] * f))
        z[..., ::f, ::f] = y
        return z

    def _adjoint(self, y: Tensor) -> Tensor:
        return _filter(self.upsample_zero(y), self.otf, adjoint=True)

    def bicubic(self, y: Tensor) -> Tensor:
        """Bicubic upsampling of ``y (..., C, h, w)`` to ``(..., C, H, W)`` (the SR baseline;
        ``torch.nn.functional.interpolate``, ``align_corners=False``), not clamped."""
        lead = y.shape[: y.dim() - 3] if y.dim() >= 3 else ()
        yb = _flatten_check(y, self.out_shape, "y")
        up = F.interpolate(yb, size=self.in_shape[1:], mode="bicubic", align_corners=False)
        return up.reshape(*lead, *self.in_shape)

    def init_estimate(self, y: Tensor) -> Tensor:
        """Bicubic upsampling of ``y`` clamped to [0, 1], shape ``(B, C, H, W)``."""
        yb = _flatten_check(y, self.out_shape, "y")
        return self.bicubic(yb).clamp(0.0, 1.0)

    def pinv(self, y: Tensor, *, eps: float = 1e-6, max_iter: int = 200, tol: float = 1e-8) -> Tensor:
        r"""Exact :math:`A^*(AA^*+\epsilon I)^{-1}y` (FFT on the low-resolution grid), shape
        ``(B, C, H, W)``. ``max_iter`` and ``tol`` are unused."""
        y = _flatten_check(y, self.out_shape, "y")
        eps = check_positive(eps, "eps", allow_zero=True)
        den = self.gram_spectrum + eps
        gain = torch.where(den > 0, 1.0 / den.clamp_min(torch.finfo(den.dtype).tiny), 0)
        w = torch.fft.irfft2(torch.fft.rfft2(y) * gain, s=y.shape[-2:])
        return self._adjoint(w)

    def _settings(self) -> dict[str, object]:
        return {"factor": self.factor, "width": self.width, "size": self.size}
