r"""Glow: a multiscale normalizing flow on images (Kingma & Dhariwal 2018).

Architecture, in the normalizing direction (image → latent), for levels :math:`l = 1..L`::

    squeeze → K × (ActNorm → invertible 1×1 conv (LU) → affine coupling) → split

where *split* moves the first half of the channels to the latent and keeps the second half
for the next level (the last level keeps all its channels). The whole flow is one bijection
between an image ``(B, C, H, W)`` and a **flat latent** ``(B, D)``, ``D = C·H·W``, the
concatenation of the flattened per-level latents (level 1 first). The base distribution is
:math:`\mathcal N(0, I_D)`, so

.. math::

    x = G(z),\qquad \log p(x) = \log\mathcal N(G^{-1}(x); 0, I) + \log|\det\nabla G^{-1}(x)|.

The density is on the image space itself (no logit/dequantisation preprocessing).

Directions: ``generate(z) -> x`` (= ``flow(z)`` as a Pyro transform, = ``flow.forward(z)``),
``encode(x) -> (z, log|det ∂z/∂x|)`` (= ``flow.inv(x)`` plus the log-det).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from pyro.distributions import constraints
from pyro.distributions.torch_transform import TransformModule
from torch import Tensor, nn

from .._checks import Shape, check_int, check_positive
from .base import LadjCacheMixin, draw_latents
from .layers import ActNorm, AffineCoupling, Invertible1x1Conv, Squeeze

__all__ = ["Glow", "MultiscaleCore", "standard_normal_log_prob"]

_LOG_2PI = math.log(2.0 * math.pi)


def standard_normal_log_prob(z: Tensor, event_dims: int) -> Tensor:
    r""":math:`\log \mathcal N(z; 0, I)` summed over the trailing ``event_dims`` axes."""
    d = math.prod(z.shape[z.dim() - event_dims:])
    return -0.5 * z.pow(2).flatten(z.dim() - event_dims).sum(-1) - 0.5 * d * _LOG_2PI


def _check_image_shape(image_shape: Sequence[int], levels: int, name: str = "image_shape") -> Shape:
    try:
        shape = tuple(int(s) for s in image_shape)
    except TypeError:
        raise TypeError(f"{name}: expected (C, H, W), got {image_shape!r}") from None
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"{name}: expected (C, H, W) with positive sizes, got {image_shape!r}")
    f = 2**levels
    if shape[1] % f or shape[2] % f:
        raise ValueError(f"{name}: height and width must be divisible by 2**levels = {f}, got {shape}")
    return shape


class MultiscaleCore(nn.Module):
    """The Glow layer stack shared by :class:`Glow` and the conditional Glow.

    ``context_channels[l]`` > 0 makes the couplings of level ``l`` conditional; their context
    features (``(B, context_channels[l], H_l, W_l)``) are passed to :meth:`encode`/:meth:`generate`.
    """

    def __init__(self, image_shape: Shape, levels: int, steps: int, hidden: int, clamp: float,
                 seed: int, context_channels: Sequence[int] | None = None) -> None:
        super().__init__()
        self.image_shape = image_shape
        self.levels = levels
        ctx = list(context_channels) if context_channels is not None else [0] * levels
        c, h, w = image_shape
        self.squeeze = Squeeze()
        self.steps = nn.ModuleList()
        self.level_shapes: list[Shape] = []  # shape after squeeze at each level
        self.split_sizes: list[int] = []  # channels moved to the latent at each level
        for lev in range(levels):
            c, h, w = 4 * c, h // 2, w // 2
            self.level_shapes.append((c, h, w))
            layers = nn.ModuleList()
            for k in range(steps):
                layers.append(nn.ModuleList([
                    ActNorm(c, 3),
                    Invertible1x1Conv(c, seed=seed * 1000 + lev * 100 + k),
                    AffineCoupling(c, 3, hidden, ctx[lev], clamp),
                ]))
            self.steps.append(layers)
            keep = c if lev == levels - 1 else c - c // 2
            self.split_sizes.append(c - keep)
            c = keep
        self.latent_dim = math.prod(image_shape)

    def encode(self, x: Tensor, feats: Sequence[Tensor | None] | None = None) -> tuple[Tensor, Tensor]:
        """``x (N, C, H, W)`` → flat ``z (N, D)`` and :math:`\\log|\\det\\partial z/\\partial x|`."""
        h = x
        ld = x.new_zeros(x.shape[0])
        zs: list[Tensor] = []
        for lev in range(self.levels):
            h, _ = self.squeeze.inverse_and_ladj(h)
            f = feats[lev] if feats is not None else None
            for act, conv, coup in self.steps[lev]:
                h, l1 = act.inverse_and_ladj(h)
                h, l2 = conv.inverse_and_ladj(h)
                h, l3 = coup.inverse_and_ladj(h, f)
                ld = ld + (l1 + l2 + l3)
            s = self.split_sizes[lev]
            if s:
                zs.append(h[:, :s].flatten(1))
                h = h[:, s:]
        zs.append(h.flatten(1))
        return torch.cat(zs, dim=1), ld

    def latent_layout(self) -> Tensor:
        """Where each flat latent entry sits in the image: ``perm (D,)``, ``z = z_img.flatten()[perm]``.

        The image-shaped view of the latent puts each entry at the pixel it occupies when every
        flow step is the identity (the squeeze/split bookkeeping alone): level :math:`l`'s
        latent channels are un-squeezed back to full resolution. Neighbouring pixels of
        ``z_img`` are latent entries that describe neighbouring image regions, so patches of it
        are meaningful groups (Li et al. 2023 Gaussianize patches of this view).
        """
        c, h, w = self.image_shape
        index = torch.arange(c * h * w, dtype=torch.float64).reshape(1, c, h, w)
        zs: list[Tensor] = []
        for lev in range(self.levels):
            index, _ = self.squeeze.inverse_and_ladj(index)
            s = self.split_sizes[lev]
            if s:
                zs.append(index[:, :s].flatten(1))
                index = index[:, s:]
        zs.append(index.flatten(1))
        return torch.cat(zs, dim=1)[0].round().long()

    def generate(self, z: Tensor, feats: Sequence[Tensor | None] | None = None) -> tuple[Tensor, Tensor]:
        """Flat ``z (N, D)`` → ``x (N, C, H, W)`` and :math:`\\log|\\det\\partial x/\\partial z|`."""
        n = z.shape[0]
        sizes = [s * lh * lw for s, (_, lh, lw) in zip(self.split_sizes, self.level_shapes, strict=False)]
        c_last, h_last, w_last = self.level_shapes[-1]
        sizes[-1] = c_last * h_last * w_last
        parts = z.split(sizes, dim=1)
        ld = z.new_zeros(n)
        h: Tensor | None = None
        for lev in reversed(range(self.levels)):
            c, lh, lw = self.level_shapes[lev]
            if lev == self.levels - 1:
                h = parts[lev].reshape(n, c, lh, lw)
            else:
                zl = parts[lev].reshape(n, self.split_sizes[lev], lh, lw)
                h = torch.cat((zl, h), dim=1)
            f = feats[lev] if feats is not None else None
            for act, conv, coup in reversed(self.steps[lev]):
                h, l3 = coup.call_and_ladj(h, f)
                h, l2 = conv.call_and_ladj(h)
                h, l1 = act.call_and_ladj(h)
                ld = ld + (l1 + l2 + l3)
            h, _ = self.squeeze.call_and_ladj(h)
        assert h is not None
        return h, ld


class Glow(LadjCacheMixin, TransformModule):
    r"""Multiscale Glow flow :math:`x = G(z)` between flat latents ``(B, D)`` and images.

    Parameters
    ----------
    image_shape
        ``(C, H, W)``; ``H`` and ``W`` divisible by ``2**levels``.
    levels
        Number of scales :math:`L`.
    steps
        Flow steps :math:`K` per level.
    hidden
        Hidden channels of the coupling subnets.
    clamp
        Bound of the coupling log-scales.
    seed
        Seed of the parameter initialisation (1×1 conv rotations, subnet weights).

    Notes
    -----
    As a Pyro transform it maps the latent (event dim 1) to the image (event dim 3):
    ``TransformedDistribution(Normal(0, 1).expand((D,)).to_event(1), [glow])`` is the flow's
    distribution, with the same ``log_prob`` as :meth:`log_prob`.

    Examples
    --------
    >>> flow = Glow((1, 8, 8), levels=2, steps=2, hidden=16)
    >>> x = flow.sample(3)
    >>> flow.log_prob(x).shape
    torch.Size([3])
    """

    bijective = True
    __repr__ = nn.Module.__repr__  # (torch Transform.__repr__ would hide the layers)

    def __init__(self, image_shape: Sequence[int], levels: int = 2, steps: int = 4,
                 hidden: int = 128, clamp: float = 2.0, seed: int = 0) -> None:
        super().__init__(cache_size=0)
        levels = check_int(levels, "levels")
        steps = check_int(steps, "steps")
        hidden = check_int(hidden, "hidden")
        clamp = check_positive(clamp, "clamp")
        seed = check_int(seed, "seed", minimum=0)
        self.image_shape: Shape = _check_image_shape(image_shape, levels)
        self.latent_shape: Shape = (math.prod(self.image_shape),)
        self.config = {"image_shape": list(self.image_shape), "levels": levels, "steps": steps,
                       "hidden": hidden, "clamp": clamp, "seed": seed}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.core = MultiscaleCore(self.image_shape, levels, steps, hidden, clamp, seed)
        self._ladj_cache: tuple[Tensor, Tensor, Tensor] | None = None

    # -- Pyro transform interface ----------------------------------------------------------------
    domain = constraints.independent(constraints.real, 1)
    codomain = constraints.independent(constraints.real, 3)

    def forward_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        return (*shape[:-1], *self.image_shape)

    def inverse_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        return (*shape[:-3], *self.latent_shape)

    # -- flow API -------------------------------------------------------------------------------
    def generate_and_ladj(self, z: Tensor) -> tuple[Tensor, Tensor]:
        r""":math:`x = G(z)` and :math:`\log|\det\partial x/\partial z|` for ``z (..., D)``."""
        if z.dim() < 1 or z.shape[-1] != self.latent_shape[0]:
            raise ValueError(f"z: expected latents (..., {self.latent_shape[0]}), got {tuple(z.shape)}")
        lead = z.shape[:-1]
        x, ld = self.core.generate(z.reshape(-1, self.latent_shape[0]))
        return x.reshape(*lead, *self.image_shape), ld.reshape(lead)

    def generate(self, z: Tensor) -> Tensor:
        """:math:`x = G(z)`: latents ``(..., D)`` → images ``(..., C, H, W)``."""
        return self.generate_and_ladj(z)[0]

    def forward(self, z: Tensor) -> Tensor:
        """Same as :meth:`generate` (generative direction)."""
        return self.generate(z)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        r""":math:`z = G^{-1}(x)` and :math:`\log|\det\nabla G^{-1}(x)|` for images ``(..., C, H, W)``."""
        if x.dim() < 3 or tuple(x.shape[-3:]) != self.image_shape:
            raise ValueError(f"x: expected images (..., {', '.join(map(str, self.image_shape))}), "
                             f"got {tuple(x.shape)}")
        lead = x.shape[:-3]
        z, ld = self.core.encode(x.reshape(-1, *self.image_shape))
        return z.reshape(*lead, -1), ld.reshape(lead)

    def latent_layout(self) -> tuple[Shape, Tensor]:
        """Image-shaped view of the flat latent: ``(image_shape, perm)``, ``z = z_img.flatten(1)[:, perm]``.

        See :meth:`MultiscaleCore.latent_layout`; used by
        :meth:`~bayesinv.gaussianize.GaussianizationLayer.for_prior` to Gaussianize patches of
        the latent.
        """
        return self.image_shape, self.core.latent_layout()

    def log_prob(self, x: Tensor) -> Tensor:
        """Log density of images ``(..., C, H, W)`` → ``(...)``."""
        z, ld = self.encode(x)
        return standard_normal_log_prob(z, 1) + ld

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Draw ``n`` images ``(n, C, H, W)``."""
        return self.generate(draw_latents(self, n, self.latent_shape[0], generator))

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.config.items())
