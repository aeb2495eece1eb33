r"""Patch extraction on the device of the image, differentiable.

Patches are flattened channel-major, ``(C, k, k) → C·k·k``, i.e. the flattening of
``x[b, :, i:i+k, j:j+k]`` — the layout :class:`~bayesinv.flows.patch.PatchFlow` is trained on.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .._checks import as_image_batch, check_int

__all__ = ["extract_patches", "random_patches"]


def _check(x: object, patch_size: object) -> tuple[Tensor, int]:
    x = as_image_batch(x, "x")
    k = check_int(patch_size, "patch_size")
    if k > x.shape[-2] or k > x.shape[-1]:
        raise ValueError(f"patch_size: {k} is larger than the image ({x.shape[-2]}×{x.shape[-1]})")
    return x, k


def extract_patches(x: Tensor, patch_size: int, stride: int = 1) -> Tensor:
    """All ``k×k`` patches at the given stride (no padding).

    Parameters
    ----------
    x
        Images ``(B, C, H, W)`` (or ``(C, H, W)``, ``(H, W)``).
    patch_size
        Side ``k``.
    stride
        Step between patch positions.

    Returns
    -------
    Tensor
        ``(B, N, C·k·k)`` with ``N = ⌊(H-k)/s+1⌋·⌊(W-k)/s+1⌋``, positions in row-major order.
    """
    x, k = _check(x, patch_size)
    s = check_int(stride, "stride")
    return F.unfold(x, kernel_size=k, stride=s).transpose(1, 2)


def random_patches(x: Tensor, patch_size: int, n: int, generator: torch.Generator | None = None,
                   return_positions: bool = False, replace: bool = True) -> Tensor | tuple[Tensor, Tensor]:
    """``n`` patches per image at uniformly random positions (differentiable in x).

    Top-left corners ``(i, j)`` are uniform on ``{0..H-k} × {0..W-k}``. ``replace=True``: drawn
    independently for each image and patch (a position may repeat). ``replace=False``: ``n``
    distinct positions per image, a uniformly random subset (a random permutation's first ``n``,
    as the patchNR reference's ``randperm`` patch extractor); needs ``n ≤ (H-k+1)(W-k+1)``.

    Returns
    -------
    Tensor
        ``(B, n, C·k·k)``; with ``return_positions`` also the corners ``(B, n, 2)`` (long).
    """
    x, k = _check(x, patch_size)
    n = check_int(n, "n")
    if not isinstance(replace, bool):
        raise TypeError(f"replace: expected a bool, got {replace!r}")
    b, c, h, w = x.shape
    dev = generator.device if generator is not None else x.device
    if replace:
        i = torch.randint(0, h - k + 1, (b, n), generator=generator, device=dev).to(x.device)
        j = torch.randint(0, w - k + 1, (b, n), generator=generator, device=dev).to(x.device)
    else:
        count = (h - k + 1) * (w - k + 1)
        if n > count:
            raise ValueError(f"n: {n} patches without replacement, but a {h}×{w} image has only "
                             f"{count} positions of a {k}×{k} patch")
        # one random permutation per image (argsort of uniforms), its first n entries
        pos = torch.rand(b, count, generator=generator, device=dev).argsort(dim=1)[:, :n].to(x.device)
        i, j = pos // (w - k + 1), pos % (w - k + 1)
    off = torch.arange(k, device=x.device)
    offsets = (off[:, None] * w + off[None, :]).reshape(-1)  # (k·k,)
    idx = ((i * w + j)[..., None] + offsets).reshape(b, 1, n * k * k).expand(b, c, n * k * k)
    p = torch.gather(x.reshape(b, c, h * w), 2, idx).reshape(b, c, n, k * k)
    p = p.permute(0, 2, 1, 3).reshape(b, n, c * k * k)
    if return_positions:
        return p, torch.stack((i, j), dim=-1)
    return p
