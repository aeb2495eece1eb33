r"""Parallel-beam computed tomography: the discrete Radon transform and filtered back-projection.

Geometry (the one of :func:`skimage.transform.radon` with ``circle=True``)
--------------------------------------------------------------------------
An ``N × N`` image with rotation centre at pixel ``(N // 2, N // 2)`` is rotated by each angle
:math:`\theta` (degrees) and its columns are summed. The sample points of the ray of detector
``d`` are, for ``k = 0 … n_det - 1`` with offsets :math:`u = d - n_{det}/\!/2`,
:math:`v = k - n_{det}/\!/2` and centre :math:`c_0 = N/\!/2`,

.. math::

    \text{col} = c_0 + u\cos\theta + v\sin\theta, \qquad
    \text{row} = c_0 - u\sin\theta + v\cos\theta,

and the image is read there by bilinear interpolation with zeros outside, so that

.. math::

    (A x)_{\theta, d} = \sum_k \sum_{p} w_p(\text{row}_{\theta d k}, \text{col}_{\theta d k})\, x_p,

with :math:`w_p` the bilinear weights (Kak & Slaney, *Principles of Computerized Tomographic
Imaging*, IEEE Press 1988, ch. 3; the rotate-and-sum scheme is that of scikit-image's
``radon``, which this reproduces to round-off for ``n_detectors = N``, and ``circle=False``
for ``n_detectors = ceil(√2 N)``).

The weights form a sparse matrix :math:`A` of shape ``(n_angles·n_det, N²)``, built once in
float64 (one vectorised pass per angle, coalesced by :mod:`scipy.sparse`) and stored as two
CSR triplets (:math:`A` and :math:`A^\top`) of plain buffers, so ``.to(device)`` and
``.to(torch.float64)`` move and cast it, ``deepcopy`` and ``state_dict`` work, and the adjoint
:math:`A^* y = A^\top y` is exact by construction. Both products run as ``torch`` sparse-CSR ×
dense matrix products.

Filtered back-projection
------------------------
:meth:`Radon.fbp` filters each projection along the detector axis by FFT (zero padding to
``max(64, 2^{⌈log2(2 n_det)⌉})``) with the ramp filter computed from the spatial-domain
discretisation of Kak & Slaney (ch. 3, eq. 61), optionally apodised (Shepp–Logan, cosine,
Hamming, Hann; the windows of ``skimage.transform.iradon``), then applies the exact adjoint
:math:`A^\top` and scales by :math:`\pi / (2\, n_{angles})`:

.. math::

    \hat x = \frac{\pi}{2 n_{angles}}\, A^\top (h * y).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from .._checks import Shape, check_choice, check_int, check_positive
from .base import LinearOperator, _flatten_check

FILTERS: tuple[str, ...] = ("ramp", "shepp-logan", "cosine", "hamming", "hann", "none")
"""Names accepted by :meth:`Radon.fbp` (``"none"``: plain back-projection, no filtering)."""


# -- sparse matrix construction (numpy / scipy, float64) -----------------------------------------
def radon_matrix(size: int, angles: np.ndarray, n_detectors: int):
    r"""The parallel-beam Radon system matrix as a ``scipy.sparse.csr_matrix`` (float64).

    Parameters
    ----------
    size
        Image side ``N`` (square images, row-major pixel index ``row·N + col``).
    angles
        Projection angles in degrees, shape ``(n_angles,)``.
    n_detectors
        Detector bins per angle (unit spacing, centred at ``n_detectors // 2``).

    Returns
    -------
    scipy.sparse.csr_matrix
        Shape ``(n_angles·n_detectors, N²)``, row index ``angle·n_detectors + detector``.
    """
    import scipy.sparse as sp

    n, nd = int(size), int(n_detectors)
    c0 = n // 2
    offsets = np.arange(nd, dtype=np.float64) - nd // 2
    u = offsets[:, None]  # detector offset (rows of the block)
    v = offsets[None, :]  # position along the ray
    det = np.broadcast_to(np.arange(nd)[:, None], (nd, nd))
    blocks = []
    for theta in np.deg2rad(np.asarray(angles, dtype=np.float64)):
        cos, sin = math.cos(theta), math.sin(theta)
        col = c0 + cos * u + sin * v
        row = c0 - sin * u + cos * v
        col0, row0 = np.floor(col), np.floor(row)
        dc, dr = col - col0, row - row0
        col0, row0 = col0.astype(np.int64), row0.astype(np.int64)
        r_idx, c_idx, vals = [], [], []
        for o_r, o_c, w in ((0, 0, (1 - dr) * (1 - dc)), (0, 1, (1 - dr) * dc),
                            (1, 0, dr * (1 - dc)), (1, 1, dr * dc)):
            ri, ci = row0 + o_r, col0 + o_c
            ok = (ri >= 0) & (ri < n) & (ci >= 0) & (ci < n) & (w > 0)
            r_idx.append(det[ok])
            c_idx.append((ri * n + ci)[ok])
            vals.append(w[ok])
        blocks.append(sp.csr_matrix(
            (np.concatenate(vals), (np.concatenate(r_idx), np.concatenate(c_idx))),
            shape=(nd, n * n)))  # duplicates (a pixel met by several samples) are summed
    return sp.vstack(blocks, format="csr")


def disc_mask(size: int) -> np.ndarray:
    """Boolean ``(N, N)`` mask of the inscribed disc, ``(r - N//2)² + (c - N//2)² <= (N//2)²``
    (the reconstruction circle of scikit-image's ``radon``/``iradon``)."""
    r = np.arange(size) - size // 2
    return (r[:, None] ** 2 + r[None, :] ** 2) <= (size // 2) ** 2


def fourier_filter(size: int, name: str) -> np.ndarray:
    r"""Real, even frequency response of length ``size`` (FFT order) for FBP.

    The ramp is :math:`2\,\mathrm{Re}\,\mathcal F[h]` of the band-limited spatial ramp
    :math:`h_0 = 1/4`, :math:`h_n = -1/(\pi n)^2` for odd :math:`n`, 0 for even :math:`n \ne 0`
    (Kak & Slaney 1988, ch. 3, eq. 61), which removes the DC bias of sampling :math:`|\omega|`
    directly. Windows as in ``skimage.transform.iradon``; the response is symmetrised,
    :math:`(H_k + H_{-k})/2`, which is what taking the real part of the inverse FFT does.
    """
    check_choice(name, "filter", FILTERS)
    n = np.concatenate((np.arange(1, size / 2 + 1, 2, dtype=int),
                        np.arange(size / 2 - 1, 0, -2, dtype=int)))
    f = np.zeros(size)
    f[0] = 0.25
    f[1::2] = -1.0 / (np.pi * n) ** 2
    h = 2.0 * np.real(np.fft.fft(f))
    if name == "shepp-logan":
        omega = np.pi * np.fft.fftfreq(size)[1:]
        h[1:] *= np.sin(omega) / omega
    elif name == "cosine":
        h *= np.fft.fftshift(np.sin(np.linspace(0, np.pi, size, endpoint=False)))
    elif name == "hamming":
        h *= np.fft.fftshift(np.hamming(size))
    elif name == "hann":
        h *= np.fft.fftshift(np.hanning(size))
    elif name == "none":
        h[:] = 1.0
    return 0.5 * (h + np.roll(h[::-1], 1))


# -- sparse products with an exact transpose ---------------------------------------------------
def _csr(crow: Tensor, col: Tensor, val: Tensor, shape: tuple[int, int]) -> Tensor:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Ss]parse.*")
        return torch.sparse_csr_tensor(crow, col, val, shape, check_invariants=False)


class _CSRMatmul(torch.autograd.Function):
    """``M @ X`` for a fixed CSR matrix ``M``; the backward is ``Mᵀ @ G`` with the stored
    transpose (itself a ``_CSRMatmul``, so higher derivatives work too). No gradient flows to
    the matrix entries (they are fixed buffers)."""

    @staticmethod
    def forward(ctx, x, crow, col, val, crow_t, col_t, val_t, shape):  # noqa: D102
        ctx.save_for_backward(crow, col, val, crow_t, col_t, val_t)
        ctx.shape = shape
        return _csr(crow, col, val.to(x.dtype), shape) @ x

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        crow, col, val, crow_t, col_t, val_t = ctx.saved_tensors
        g = None
        if ctx.needs_input_grad[0]:
            g = _CSRMatmul.apply(grad.contiguous(), crow_t, col_t, val_t, crow, col, val,
                                 (ctx.shape[1], ctx.shape[0]))
        return g, None, None, None, None, None, None, None


# -- the operator ------------------------------------------------------------------------------
def _square_shape(in_shape: Sequence[int]) -> Shape:
    try:
        shape = tuple(int(s) for s in in_shape)
    except (TypeError, ValueError):
        raise TypeError(f"in_shape: expected (C, H, W) or (H, W) integers, got {in_shape!r}") from None
    if len(shape) == 2:
        shape = (1, *shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"in_shape: expected (C, H, W) or (H, W) with positive sizes, got {in_shape!r}")
    if shape[1] != shape[2]:
        raise ValueError(f"in_shape: the Radon transform needs square images (H == W), "
                         f"got H={shape[1]}, W={shape[2]}")
    return shape


def _check_angles(angles: object) -> np.ndarray:
    if isinstance(angles, Tensor):
        angles = angles.detach().cpu().numpy()
    try:
        a = np.asarray(angles, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"angles: expected a 1-D sequence of angles in degrees, got {angles!r}") from None
    if a.ndim != 1 or a.size < 1:
        raise ValueError(f"angles: expected a non-empty 1-D array of angles in degrees, "
                         f"got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError("angles: contains NaN/inf; expected finite angles in degrees")
    return a


class Radon(LinearOperator):
    r"""Parallel-beam Radon transform :math:`y = A x` with its exact adjoint (sparse matrix).

    Images ``(..., C, H, W)`` with ``H == W = N`` map to sinograms
    ``(..., C, n_angles, n_detectors)`` (each channel independently). Note the axis order: the
    angle axis comes first, so ``y[0, 0].T`` is scikit-image's ``(n_det, n_angles)`` sinogram.

    Parameters
    ----------
    in_shape
        ``(C, N, N)`` or ``(N, N)``; non-square images raise ``ValueError``.
    angles
        Projection angles in degrees (any real values; the usual range is ``[0, 180)``).
        Default: ``n_angles`` angles ``linspace(0, 180, n_angles, endpoint=False)`` — for 180
        that is scikit-image's default ``np.arange(180)``.
    n_angles
        Number of uniformly spaced angles over ``[0°, 180°)`` when ``angles`` is not given
        (default 180); when both are given they must agree.
    n_detectors
        Detector bins per angle (unit spacing, centred at bin ``n_detectors // 2``). Default
        ``N`` (scikit-image ``circle=True``); ``ceil(√2 N)`` covers the whole square
        (scikit-image ``circle=False``).
    mask_circle
        If ``True``, pixels outside the inscribed disc are ignored: :math:`A\,\mathrm{diag}(m)`
        (they are then seen by no angle and left to the prior). Default ``False``: the full
        square is projected, exactly as ``skimage.transform.radon``.
    dtype
        Floating dtype of the stored weights (default: torch's default dtype). The matrix is
        always computed in float64 and then cast.

    Notes
    -----
    Memory: about ``2·nnz·(4 + itemsize)`` bytes, ``nnz ≈ 1.4 M`` for 64² / 180 angles and
    ``≈ 5.8 M`` for 128² / 180 angles (≈ 46 MB in float32). Construction is
    :math:`O(n_{angles} n_{det}^2)` (≈ 0.2 s and ≈ 1.3 s for those two on one core).

    Use :meth:`limited_angle` and :meth:`sparse_view` for the two classic ill-posed settings.
    """

    def __init__(self, in_shape: Shape, angles: Sequence[float] | np.ndarray | Tensor | None = None,
                 n_angles: int | None = None, n_detectors: int | None = None, *,
                 mask_circle: bool = False, dtype: torch.dtype | None = None) -> None:
        shape = _square_shape(in_shape)
        size = shape[-1]
        if angles is None:
            n_ang = 180 if n_angles is None else check_int(n_angles, "n_angles", minimum=1)
            ang = np.linspace(0.0, 180.0, n_ang, endpoint=False)
        else:
            ang = _check_angles(angles)
            if n_angles is not None and check_int(n_angles, "n_angles", minimum=1) != ang.size:
                raise ValueError(f"n_angles: {n_angles} disagrees with len(angles) = {ang.size}")
        n_det = size if n_detectors is None else check_int(n_detectors, "n_detectors", minimum=1)
        if not isinstance(mask_circle, (bool, np.bool_)):
            raise TypeError(f"mask_circle: expected a bool, got {mask_circle!r}")
        if dtype is not None and (not isinstance(dtype, torch.dtype) or not dtype.is_floating_point):
            raise TypeError(f"dtype: expected a floating torch.dtype, got {dtype!r}")
        dtype = dtype or torch.get_default_dtype()
        super().__init__(shape, (shape[0], ang.size, n_det))
        self._angles = ang
        self._angles.setflags(write=False)
        self.n_detectors = n_det
        self.mask_circle = bool(mask_circle)

        t0 = time.perf_counter()
        mat = radon_matrix(size, ang, n_det)
        disc = disc_mask(size)
        if self.mask_circle:
            mat = mat.multiply(disc.reshape(1, -1).astype(np.float64)).tocsr()
        mat.eliminate_zeros()
        mat_t = mat.T.tocsr()
        self.build_seconds = time.perf_counter() - t0
        self.nnz = int(mat.nnz)
        index = torch.int32 if max(mat.nnz, *mat.shape) < 2**31 - 1 else torch.int64

        def triplet(m, prefix: str) -> None:
            self.register_buffer(prefix + "_crow", torch.from_numpy(m.indptr).to(index))
            self.register_buffer(prefix + "_col", torch.from_numpy(m.indices).to(index))
            self.register_buffer(prefix + "_val", torch.from_numpy(m.data).to(dtype))

        triplet(mat, "_a")
        triplet(mat_t, "_at")
        self._shape_a = (int(mat.shape[0]), int(mat.shape[1]))
        self.register_buffer("disc", torch.from_numpy(disc).to(dtype))

    # -- factories --------------------------------------------------------------------------
    @classmethod
    def limited_angle(cls, in_shape: Shape, max_angle: float = 90.0, n_angles: int | None = None,
                      **kwargs) -> Radon:
        r"""Limited-angle CT: ``n_angles`` uniform angles over ``[0°, max_angle)``.

        Parameters
        ----------
        max_angle
            Covered arc in degrees, in ``(0, 180]`` (180 is full-angle CT).
        n_angles
            Default: one per degree, ``max(1, round(max_angle))``.
        **kwargs
            Passed to :class:`Radon` (``n_detectors``, ``mask_circle``, ``dtype``).
        """
        max_angle = check_positive(max_angle, "max_angle")
        if max_angle > 180.0:
            raise ValueError(f"max_angle: expected a value in (0, 180] degrees, got {max_angle!r}")
        n = max(1, round(max_angle)) if n_angles is None else check_int(n_angles, "n_angles")
        return cls(in_shape, angles=np.linspace(0.0, max_angle, n, endpoint=False), **kwargs)

    @classmethod
    def sparse_view(cls, in_shape: Shape, n_angles: int = 30, **kwargs) -> Radon:
        """Sparse-view CT: ``n_angles`` (default 30) uniform angles over ``[0°, 180°)``."""
        n = check_int(n_angles, "n_angles", minimum=1)
        return cls(in_shape, angles=np.linspace(0.0, 180.0, n, endpoint=False), **kwargs)

    # -- properties -------------------------------------------------------------------------
    @property
    def angles(self) -> np.ndarray:
        """Projection angles in degrees (read-only float64 array)."""
        return self._angles

    @property
    def n_angles(self) -> int:
        """Number of projection angles."""
        return int(self._angles.size)

    # -- products ---------------------------------------------------------------------------
    def _matmul(self, v: Tensor, transpose: bool) -> Tensor:
        a = (self._a_crow, self._a_col, self._a_val)
        at = (self._at_crow, self._at_col, self._at_val)
        m, d = self._shape_a
        if transpose:
            return _CSRMatmul.apply(v, *at, *a, (d, m))
        return _CSRMatmul.apply(v, *a, *at, (m, d))

    def _forward(self, x: Tensor) -> Tensor:
        b, c = x.shape[:2]
        cols = x.reshape(b * c, -1).T.contiguous()  # (N², B·C)
        out = self._matmul(cols, transpose=False)  # (n_angles·n_det, B·C)
        return out.T.reshape(b, *self.out_shape)

    def _adjoint(self, y: Tensor) -> Tensor:
        b, c = y.shape[:2]
        cols = y.reshape(b * c, -1).T.contiguous()
        out = self._matmul(cols, transpose=True)  # (N², B·C)
        return out.T.reshape(b, *self.in_shape)

    # -- reconstruction ---------------------------------------------------------------------
    def filter_sinogram(self, y: Tensor, filter: str = "ramp") -> Tensor:
        """Filter projections ``(..., C, n_angles, n_det)`` along the detector axis by FFT with
        zero padding to ``max(64, 2^⌈log2(2 n_det)⌉)`` (see :func:`fourier_filter`)."""
        check_choice(filter, "filter", FILTERS)
        y = _flatten_check(y, self.out_shape, "y")
        n_det = self.n_detectors
        size = max(64, 2 ** math.ceil(math.log2(2 * n_det)))
        h = fourier_filter(size, filter)[: size // 2 + 1]
        spec = torch.fft.rfft(y, n=size, dim=-1) * y.new_tensor(h)
        return torch.fft.irfft(spec, n=size, dim=-1)[..., :n_det]

    def fbp(self, y: Tensor, filter: str = "ramp", circle: bool = True) -> Tensor:
        r"""Filtered back-projection :math:`\frac{\pi}{2 n_{angles}} A^\top (h * y)`.

        Differentiable, batched over leading axes: ``(..., C, n_angles, n_det)`` →
        ``(..., C, N, N)``. The result is *not* clamped to ``[0, 1]`` (ringing and negative
        values are kept, so the map stays linear). The scale :math:`\pi/(2 n_{angles})`
        assumes angles spread uniformly over 180° (as ``skimage.transform.iradon`` does for the
        same ``theta``); for limited-angle data it is that of iradon, not a missing-wedge
        correction.

        Parameters
        ----------
        y
            Sinograms.
        filter
            One of :data:`FILTERS`: ``"ramp"`` (default), ``"shepp-logan"``, ``"cosine"``,
            ``"hamming"``, ``"hann"``, ``"none"``.
        circle
            Zero the pixels outside the inscribed disc (as ``iradon(circle=True)``).
        """
        lead = y.shape[: y.dim() - 3] if isinstance(y, Tensor) else ()
        yf = self.filter_sinogram(y, filter)
        x = self._adjoint(yf) * (math.pi / (2 * self.n_angles))
        if circle:
            x = x * self.disc.to(x.dtype)
        return x.reshape(*lead, *self.in_shape)

    def init_estimate(self, y: Tensor) -> Tensor:
        """Ramp-filtered back-projection (:meth:`fbp`), unclamped, shape ``(B, C, N, N)``."""
        return self.fbp(y).reshape(-1, *self.in_shape)

    def _settings(self) -> dict[str, object]:
        a = self._angles
        steps = np.diff(a)
        uniform = a.size > 1 and bool(np.allclose(steps, steps[0], rtol=0, atol=1e-9))
        return {"n_angles": self.n_angles, "n_detectors": self.n_detectors,
                "angle_min": float(a.min()), "angle_max": float(a.max()),
                "angle_step": float(steps[0]) if uniform else None,
                "angles": "uniform" if uniform or a.size == 1 else "custom",
                "mask_circle": self.mask_circle, "nnz": self.nnz}

    def extra_repr(self) -> str:
        return (f"in_shape={self.in_shape}, n_angles={self.n_angles}, "
                f"n_detectors={self.n_detectors}, mask_circle={self.mask_circle}")
