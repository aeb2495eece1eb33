r"""Gaussian priors as affine flows :math:`x = \mu + L z`.

A Gaussian prior :math:`\mathcal N(\mu, \Sigma)` with :math:`\Sigma = LL^\top` is the pushforward
of :math:`z \sim \mathcal N(0, I)` by the affine map :math:`G(z) = \mu + Lz`, with
:math:`\log|\det \nabla G^{-1}| = -\log|\det L|`. It is the one prior for which every posterior
of a linear problem is known in closed form, so it is the exactness test case of every
inference method in bayesinv.

Two parametrisations are provided:

* dense: ``GaussianPrior(mean, covariance=Σ)`` or ``scale_tril=L`` — any covariance, for
  images of up to a few thousand pixels;
* stationary: :meth:`GaussianPrior.stationary` — a circulant (periodic, translation-invariant)
  covariance :math:`\Sigma = F^* \operatorname{diag}(s) F` applied by FFT in
  :math:`O(n \log n)`, with a squared-exponential kernel
  :math:`k(r) = \text{std}^2 \exp(-r^2 / 2\ell^2)` (Rasmussen & Williams 2006, §4.2).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._checks import Shape, as_tensor, check_finite, check_positive
from .base import LatentPrior


class GaussianPrior(LatentPrior):
    r"""A Gaussian prior :math:`\mathcal N(\mu, \Sigma)` on images, as an affine flow.

    Parameters
    ----------
    mean
        Mean image ``(C, H, W)`` (or ``(H, W)``), or a scalar with ``image_shape`` given.
    covariance
        Dense covariance ``(D, D)``, ``D = C·H·W``, symmetric positive definite.
    scale_tril
        Lower-triangular :math:`L` with :math:`\Sigma = LL^\top` (instead of ``covariance``).
    image_shape
        Required when ``mean`` is a scalar.

    Examples
    --------
    >>> prior = GaussianPrior(torch.zeros(1, 4, 4), covariance=torch.eye(16))
    >>> prior.sample(2).shape
    torch.Size([2, 1, 4, 4])
    """

    def __init__(self, mean: Tensor | float, covariance: Tensor | None = None, *,
                 scale_tril: Tensor | None = None, image_shape: Shape | None = None) -> None:
        mean_t = _mean_image(mean, image_shape)
        super().__init__(tuple(mean_t.shape), tuple(mean_t.shape))
        self.register_buffer("mean", mean_t)
        d = mean_t.numel()
        if (covariance is None) == (scale_tril is None):
            raise ValueError("covariance/scale_tril: give exactly one of them (or use GaussianPrior.stationary)")
        if covariance is not None:
            cov = check_finite(as_tensor(covariance, "covariance"), "covariance").to(mean_t.dtype)
            _check_square(cov, "covariance", d)
            if not torch.allclose(cov, cov.T, atol=1e-6 * float(cov.abs().max())):
                raise ValueError("covariance: expected a symmetric matrix")
            tril, info = torch.linalg.cholesky_ex(cov.double())
            if int(info) != 0:
                raise ValueError("covariance: expected a positive definite matrix (Cholesky failed)")
            tril = tril.to(mean_t.dtype)
        else:
            tril = check_finite(as_tensor(scale_tril, "scale_tril"), "scale_tril").to(mean_t.dtype)
            _check_square(tril, "scale_tril", d)
            tril = torch.tril(tril)
            if bool((tril.diagonal() <= 0).any()):
                raise ValueError("scale_tril: expected a lower-triangular matrix with a positive diagonal")
        self.register_buffer("scale_tril", tril)
        self.kind = "dense"

    # -- alternative constructor ------------------------------------------------------------
    @classmethod
    def stationary(cls, image_shape: Shape, *, std: float = 0.25, length_scale: float = 2.0,
                   mean: float | Tensor = 0.5, nugget: float = 1e-4) -> GaussianPrior:
        r"""A stationary prior with a periodic squared-exponential covariance, applied by FFT.

        The covariance is circulant, :math:`\Sigma = F^* \operatorname{diag}(s) F`, where
        :math:`s` is the 2-D DFT of the kernel :math:`k(r) = \text{std}^2 e^{-r^2/2\ell^2}` on
        the torus (per channel, channels independent), floored at
        ``nugget · std²`` so that :math:`\Sigma` is well conditioned. Then
        :math:`L = \Sigma^{1/2} = F^* \operatorname{diag}(\sqrt s) F`.

        ``image_shape`` is ``(C, H, W)``, or ``(H, W)`` read as ``(1, H, W)`` (as for the
        constructor's ``mean``).
        """
        std = check_positive(std, "std")
        length_scale = check_positive(length_scale, "length_scale")
        nugget = check_positive(nugget, "nugget")
        self = cls.__new__(cls)
        mean_t = _mean_image(mean, image_shape)
        LatentPrior.__init__(self, tuple(mean_t.shape), tuple(mean_t.shape))
        self.register_buffer("mean", mean_t)
        _, h, w = mean_t.shape
        dy = torch.minimum(torch.arange(h), h - torch.arange(h)).to(torch.float64)
        dx = torch.minimum(torch.arange(w), w - torch.arange(w)).to(torch.float64)
        r2 = dy[:, None] ** 2 + dx[None, :] ** 2
        kernel = std**2 * torch.exp(-r2 / (2 * length_scale**2))
        spectrum = torch.fft.fft2(kernel).real.clamp_min(nugget * std**2)
        self.register_buffer("sqrt_spectrum", spectrum.sqrt().to(mean_t.dtype))
        self.kind = "stationary"
        self._stationary = {"std": std, "length_scale": length_scale, "nugget": nugget}
        return self

    # -- the affine map -----------------------------------------------------------------------
    def _scale(self, z: Tensor) -> Tensor:
        """:math:`Lz` for ``z`` of shape ``(..., C, H, W)``."""
        if self.kind == "dense":
            flat = z.flatten(-3)
            return (flat @ self.scale_tril.T).reshape(z.shape)
        return torch.fft.ifft2(torch.fft.fft2(z) * self.sqrt_spectrum).real

    def _unscale(self, v: Tensor) -> Tensor:
        r""":math:`L^{-1}v`."""
        if self.kind == "dense":
            flat = v.reshape(-1, math.prod(self.image_shape))
            sol = torch.linalg.solve_triangular(self.scale_tril, flat.T, upper=False).T
            return sol.reshape(v.shape)
        return torch.fft.ifft2(torch.fft.fft2(v) / self.sqrt_spectrum).real

    def _unscale_adjoint(self, v: Tensor) -> Tensor:
        r""":math:`L^{-\top}v`."""
        if self.kind == "dense":
            flat = v.reshape(-1, math.prod(self.image_shape))
            sol = torch.linalg.solve_triangular(self.scale_tril.T, flat.T, upper=True).T
            return sol.reshape(v.shape)
        return self._unscale(v)  # circulant square root is symmetric

    def log_det_scale(self) -> Tensor:
        r""":math:`\log|\det L|`."""
        if self.kind == "dense":
            return self.scale_tril.diagonal().log().sum()
        return self.image_shape[0] * self.sqrt_spectrum.log().sum()

    def generate(self, z: Tensor) -> Tensor:
        return self.mean + self._scale(z)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        z = self._unscale(x - self.mean)
        log_det = (-self.log_det_scale()).expand(x.shape[:-3])
        return z, log_det

    def precision_matvec(self, v: Tensor) -> Tensor:
        r""":math:`\Sigma^{-1} v = L^{-\top} L^{-1} v` for images ``(..., C, H, W)``."""
        return self._unscale_adjoint(self._unscale(v))

    def covariance_matvec(self, v: Tensor) -> Tensor:
        r""":math:`\Sigma v` for images ``(..., C, H, W)``."""
        if self.kind == "dense":
            flat = v.reshape(-1, math.prod(self.image_shape))
            return ((flat @ self.scale_tril) @ self.scale_tril.T).reshape(v.shape)
        return self._scale(self._scale(v))

    def dense_covariance(self) -> Tensor:
        """The covariance as a dense ``(D, D)`` matrix (small images only)."""
        d = math.prod(self.image_shape)
        if d > 16384:
            raise ValueError(f"dense_covariance: image has {d} pixels; a dense covariance would need "
                             f"{d * d * 8 / 2**30:.1f} GiB")
        eye = torch.eye(d, dtype=self.mean.dtype, device=self.mean.device).reshape(d, *self.image_shape)
        return self.covariance_matvec(eye).reshape(d, d)

    def _settings(self) -> dict[str, object]:
        if self.kind == "stationary":
            return {"kind": "stationary", **self._stationary}
        return {"kind": "dense"}


def _mean_image(mean: Tensor | float, image_shape: Shape | None) -> Tensor:
    if isinstance(mean, (int, float)):
        if image_shape is None:
            raise ValueError("image_shape: required when mean is a scalar")
        shape = tuple(int(s) for s in image_shape)
        if len(shape) == 2:
            shape = (1, *shape)
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"image_shape: expected (C, H, W) or (H, W), got {image_shape}")
        return torch.full(shape, float(mean), dtype=torch.get_default_dtype())
    m = check_finite(as_tensor(mean, "mean"), "mean")
    if m.dim() == 2:
        m = m[None]
    if m.dim() != 3:
        raise ValueError(f"mean: expected an image (C, H, W) or (H, W), got shape {tuple(m.shape)}")
    if image_shape is not None and tuple(m.shape) != tuple(image_shape)[-3:] and (1, *tuple(image_shape)) != tuple(m.shape):
        raise ValueError(f"mean: shape {tuple(m.shape)} does not match image_shape {tuple(image_shape)}")
    return m.clone()


def _check_square(m: Tensor, name: str, d: int) -> None:
    if tuple(m.shape) != (d, d):
        raise ValueError(f"{name}: expected a ({d}, {d}) matrix for a mean of {d} pixels, got {tuple(m.shape)}")
