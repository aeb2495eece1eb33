r"""Embedded test images: scikit-image's bundled samples and seeded procedural phantoms.

Nothing here touches the network. :func:`load_image` reads one of the sample images that ship
inside scikit-image (``skimage.data``), converts it to grayscale in :math:`[0, 1]`, and
centre-crops and resizes it to the requested size. :func:`ellipse_phantoms` draws random
ellipse phantoms for CT (sums of ellipses of random position, size, angle and intensity, as in
the Shepp–Logan construction, Shepp & Logan 1974), seeded and vectorised.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from .._checks import check_choice, check_int, check_positive, resolve_device

#: Sample images bundled with scikit-image that bayesinv can load without a network.
IMAGE_NAMES = ("camera", "astronaut", "brick", "grass", "gravel", "coins", "moon", "text",
               "shepp_logan_phantom", "cell", "chelsea", "clock", "coffee",
               "immunohistochemistry", "page", "rocket")

#: Natural photographs a natural-image prior may be trained on: every bundled photograph except
#: ``camera`` and ``astronaut`` (held out for super-resolution and latent-MAP tests) and
#: ``rocket`` (held out for a prior's validation likelihood).
NATURAL_TRAIN_NAMES = ("brick", "grass", "gravel", "coins", "moon", "text", "cell", "chelsea",
                       "clock", "coffee", "immunohistochemistry", "page")

#: Textures (for Wasserstein patch priors and texture super-resolution).
TEXTURE_NAMES = ("brick", "grass", "gravel")


def _raw_image(name: str) -> np.ndarray:
    from skimage import data

    return np.asarray(getattr(data, name)())


def load_image(name: str = "camera", size: int | tuple[int, int] | None = 64, *,
               crop: float = 1.0, dtype: torch.dtype | None = None,
               device: torch.device | str | None = None) -> Tensor:
    """Load an embedded sample image as a ``(1, H, W)`` tensor with values in ``[0, 1]``.

    Parameters
    ----------
    name
        One of :data:`IMAGE_NAMES`.
    size
        Output size ``H = W = size`` or ``(H, W)``; ``None`` keeps the native resolution.
    crop
        Fraction in ``(0, 1]`` of the largest centred square (or the aspect ratio of ``size``)
        that is kept before resizing; ``crop < 1`` zooms in, which keeps texture detail.
    dtype, device
        Of the returned tensor (default: torch's default dtype, CPU).

    Returns
    -------
    Tensor
        ``(1, H, W)``, grayscale (luminance for colour images), min/max scaled to ``[0, 1]``.
    """
    check_choice(name, "name", IMAGE_NAMES)
    device = torch.device("cpu") if device is None else resolve_device(device)
    crop = check_positive(crop, "crop")
    if crop > 1:
        raise ValueError(f"crop: expected a fraction in (0, 1], got {crop}")
    img = _raw_image(name).astype(np.float64)
    if img.ndim == 3:
        from skimage.color import rgb2gray

        img = rgb2gray(img[..., :3] / 255.0 if img.max() > 1 else img[..., :3])
    elif img.max() > 1:
        img = img / 255.0
    if size is None:
        out_hw = img.shape
    else:
        out_hw = (size, size) if isinstance(size, int) else tuple(size)
        if len(out_hw) != 2:
            raise ValueError(f"size: expected an int or (H, W), got {size!r}")
        out_hw = (check_int(out_hw[0], "size"), check_int(out_hw[1], "size"))
    # centred crop with the aspect ratio of the output
    h, w = img.shape
    aspect = out_hw[1] / out_hw[0]
    ch = min(h, w / aspect) * crop
    cw = ch * aspect
    top, left = int(round((h - ch) / 2)), int(round((w - cw) / 2))
    img = img[top: top + int(round(ch)), left: left + int(round(cw))]
    if size is not None and img.shape != out_hw:
        from skimage.transform import resize

        img = resize(img, out_hw, order=3, anti_aliasing=True, mode="reflect")
    lo, hi = float(img.min()), float(img.max())
    img = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
    t = torch.from_numpy(np.ascontiguousarray(img)).to(dtype or torch.get_default_dtype())
    return t[None].to(device)


def ellipse_phantoms(n: int, size: int = 64, *, n_ellipses: tuple[int, int] = (3, 8),
                     seed: int = 0, dtype: torch.dtype | None = None,
                     device: torch.device | str | None = None) -> Tensor:
    r"""Seeded random-ellipse phantoms ``(n, 1, size, size)`` in ``[0, 1]``, for CT.

    Each phantom is a large outer ellipse of intensity in :math:`[0.2, 0.4]` (the "body")
    plus between ``n_ellipses[0]`` and ``n_ellipses[1]`` inner ellipses, each adding an
    intensity in :math:`[-0.25, 0.5]`; the result is clipped to :math:`[0, 1]`. An ellipse
    with centre :math:`c`, semi-axes :math:`(a, b)` and angle :math:`\theta` is the set
    :math:`((u\cos\theta + v\sin\theta)/a)^2 + ((-u\sin\theta + v\cos\theta)/b)^2 \le 1`
    with :math:`(u, v) = p - c` in coordinates :math:`[-1, 1]^2`. Everything stays inside
    the inscribed circle, as a parallel-beam scanner sees it.
    """
    n = check_int(n, "n")
    size = check_int(size, "size", minimum=4)
    device = torch.device("cpu") if device is None else resolve_device(device)
    lo_e, hi_e = (check_int(v, "n_ellipses", minimum=0) for v in n_ellipses)
    if lo_e > hi_e:
        raise ValueError(f"n_ellipses: expected (min, max) with min <= max, got {n_ellipses}")
    rng = np.random.default_rng(seed)
    coords = (np.arange(size) + 0.5) / size * 2 - 1
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    out = np.zeros((n, size, size))

    def ellipse(cx, cy, a, b, theta):
        u, v = xx - cx, yy - cy
        c, s = math.cos(theta), math.sin(theta)
        return ((u * c + v * s) / a) ** 2 + ((-u * s + v * c) / b) ** 2 <= 1.0

    for i in range(n):
        a, b = rng.uniform(0.6, 0.85), rng.uniform(0.6, 0.85)
        img = rng.uniform(0.2, 0.4) * ellipse(0.0, 0.0, a, b, rng.uniform(0, math.pi))
        for _ in range(int(rng.integers(lo_e, hi_e + 1))):
            r = rng.uniform(0, 0.45)
            phi = rng.uniform(0, 2 * math.pi)
            img = img + rng.uniform(-0.25, 0.5) * ellipse(
                r * math.cos(phi), r * math.sin(phi), rng.uniform(0.05, 0.3),
                rng.uniform(0.05, 0.3), rng.uniform(0, math.pi))
        out[i] = np.clip(img, 0.0, 1.0)
    t = torch.from_numpy(out).to(dtype or torch.get_default_dtype())
    return t[:, None].to(device)


def image_crops(name: str, n: int, size: int = 32, *, scale: float = 1.0, seed: int = 0,
                dtype: torch.dtype | None = None) -> Tensor:
    """Seeded random ``size × size`` crops ``(n, 1, size, size)`` of an embedded image.

    The image is first loaded at ``scale`` times its native resolution (``scale < 1``
    downsamples, which gives smoother crops), then crops are drawn at uniform positions.
    """
    n = check_int(n, "n")
    size = check_int(size, "size", minimum=2)
    scale = check_positive(scale, "scale")
    full = load_image(name, size=None, dtype=torch.float64)
    if scale != 1.0:
        h, w = full.shape[-2:]
        full = load_image(name, size=(max(size, int(h * scale)), max(size, int(w * scale))),
                          dtype=torch.float64)
    h, w = full.shape[-2:]
    if h < size or w < size:
        raise ValueError(f"size: {size} is larger than the image {name!r} ({h}×{w})")
    gen = torch.Generator().manual_seed(check_int(seed, "seed", minimum=0))
    tops = torch.randint(0, h - size + 1, (n,), generator=gen)
    lefts = torch.randint(0, w - size + 1, (n,), generator=gen)
    crops = torch.stack([full[:, t: t + size, l: l + size] for t, l in zip(tops, lefts, strict=True)])
    return crops.to(dtype or torch.get_default_dtype())
