r"""Conditional Glow :math:`x = G(z; y)` for amortised posteriors :math:`q(x \mid y)`.

SRFlow-like conditioning (Lugmayr et al., *SRFlow*, ECCV 2020): the coupling subnets of level
:math:`l` receive features :math:`h_l(y)` of the context, concatenated to their input:

.. math::

    u_2 = x_2\odot e^{s(x_1, h_l(y))} + t(x_1, h_l(y)).

:math:`h_l` is a small CNN (conv 3×3 → ReLU → conv 3×3) applied to the context resized to the
level's spatial size. Image-shaped contexts ``(C_y, H_y, W_y)`` (e.g. a low-resolution image,
any resolution) are resized by ``interpolate`` (area when shrinking, bilinear when enlarging);
all other contexts (e.g. compressed-sensing measurements ``(m,)`` or sinograms ``(A, D)``) are
flattened and mapped by an MLP to a feature map at the first level's resolution.

The flow is a Pyro :class:`~pyro.distributions.conditional.ConditionalTransformModule`:
``flow.condition(y)`` is a ``TransformModule`` latent ``(..., D)`` → image ``(..., C, H, W)``,
so ``ConditionalTransformedDistribution(flow.conditional_base(), [flow]).condition(y)`` is
:math:`q(\cdot\mid y)` with ``rsample`` and ``log_prob``. Directions and the flat latent are as
in :class:`~bayesinv.flows.glow.Glow`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.distributions import constraints
from pyro.distributions.conditional import ConditionalDistribution, ConditionalTransformModule
from pyro.distributions.torch_transform import TransformModule
from torch import Tensor, nn

from .._checks import Shape, check_int, check_positive
from .base import LadjCacheMixin
from .glow import MultiscaleCore, _check_image_shape, standard_normal_log_prob

__all__ = ["ConditionalGlow", "ConditionalFlow", "ConditionedGlow", "StandardNormalBase"]


def _resize(t: Tensor, size: tuple[int, int]) -> Tensor:
    if tuple(t.shape[-2:]) == size:
        return t
    shrink = t.shape[-2] >= size[0] and t.shape[-1] >= size[1]
    if shrink:
        return F.interpolate(t, size=size, mode="area")
    return F.interpolate(t, size=size, mode="bilinear", align_corners=False)


class ConditionalGlow(ConditionalTransformModule):
    """Multiscale Glow whose couplings are conditioned on a context ``y``.

    Parameters
    ----------
    image_shape
        ``(C, H, W)`` of ``x``; ``H, W`` divisible by ``2**levels``.
    context_shape
        ``(C_y, H_y, W_y)`` (image context, any resolution) or any other shape, e.g. ``(D_y,)``
        or a sinogram ``(A, D)``, which is flattened and mapped by an MLP (vector context).
    levels, steps, hidden, clamp, seed
        As in :class:`~bayesinv.flows.glow.Glow`.
    cond_channels
        Channels of the context features fed to each coupling.
    cond_hidden
        Hidden width of the conditioning networks.
    """

    def __init__(self, image_shape: Sequence[int], context_shape: Sequence[int], levels: int = 2,
                 steps: int = 4, hidden: int = 128, cond_channels: int = 16, cond_hidden: int = 64,
                 clamp: float = 2.0, seed: int = 0) -> None:
        super().__init__()
        levels = check_int(levels, "levels")
        steps = check_int(steps, "steps")
        hidden = check_int(hidden, "hidden")
        cond_channels = check_int(cond_channels, "cond_channels")
        cond_hidden = check_int(cond_hidden, "cond_hidden")
        clamp = check_positive(clamp, "clamp")
        seed = check_int(seed, "seed", minimum=0)
        self.image_shape: Shape = _check_image_shape(image_shape, levels)
        try:
            cs = tuple(int(s) for s in context_shape)
        except TypeError:
            raise TypeError(f"context_shape: expected (C, H, W) or (D,), got {context_shape!r}") from None
        if len(cs) == 0 or min(cs) < 1:
            raise ValueError(f"context_shape: expected (C, H, W) or any other non-empty shape with "
                             f"positive sizes, got {context_shape!r}")
        self.context_shape: Shape = cs
        self.latent_shape: Shape = (math.prod(self.image_shape),)
        self.config = {"image_shape": list(self.image_shape), "context_shape": list(cs),
                       "levels": levels, "steps": steps, "hidden": hidden,
                       "cond_channels": cond_channels, "cond_hidden": cond_hidden,
                       "clamp": clamp, "seed": seed}
        _, h, w = self.image_shape
        self.level_sizes = [(h // 2 ** (lev + 1), w // 2 ** (lev + 1)) for lev in range(levels)]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.core = MultiscaleCore(self.image_shape, levels, steps, hidden, clamp, seed,
                                       context_channels=[cond_channels] * levels)
            if len(cs) != 3:
                h0, w0 = self.level_sizes[0]
                self.context_mlp: nn.Module | None = nn.Sequential(
                    nn.Flatten(), nn.Linear(math.prod(cs), cond_hidden), nn.ReLU(),
                    nn.Linear(cond_hidden, cond_channels * h0 * w0))
                c_in = cond_channels
            else:
                self.context_mlp = None
                c_in = cs[0]
            self.context_nets = nn.ModuleList([
                nn.Sequential(nn.Conv2d(c_in, cond_hidden, 3, padding=1), nn.ReLU(),
                              nn.Conv2d(cond_hidden, cond_channels, 3, padding=1))
                for _ in range(levels)])
        self.cond_channels = cond_channels

    # -- context features -----------------------------------------------------------------------
    def check_context(self, y: Tensor, name: str = "y") -> Tensor:
        """Return ``y`` as ``(B, *context_shape)`` (an unbatched context gets ``B = 1``)."""
        if not isinstance(y, Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(y).__name__}")
        cs = self.context_shape
        if tuple(y.shape) == cs:
            y = y[None]
        if y.dim() != len(cs) + 1 or tuple(y.shape[1:]) != cs:
            raise ValueError(f"{name}: expected shape (B, {', '.join(map(str, cs))}), got {tuple(y.shape)}")
        return y

    def context_features(self, y: Tensor) -> list[Tensor]:
        """Per-level features ``(B, cond_channels, H_l, W_l)`` of contexts ``(B, *context_shape)``."""
        if self.context_mlp is not None:
            h0, w0 = self.level_sizes[0]
            base = self.context_mlp(y).reshape(y.shape[0], self.cond_channels, h0, w0)
        else:
            base = y
        return [net(_resize(base, size)) for net, size in zip(self.context_nets, self.level_sizes, strict=False)]

    # -- Pyro interface -----------------------------------------------------------------------------
    def condition(self, context: Tensor) -> ConditionedGlow:
        """The transform :math:`z \\mapsto G(z; y)` for contexts ``(*B, *context_shape)``."""
        return ConditionedGlow(self, context)

    def conditional_base(self) -> StandardNormalBase:
        """A conditional :math:`\\mathcal N(0, I_D)` base whose batch shape follows the context."""
        return StandardNormalBase(self.latent_shape, len(self.context_shape))

    # -- conveniences -----------------------------------------------------------------------------
    def _device_dtype(self) -> tuple[torch.device, torch.dtype]:
        p = next(self.parameters())
        return p.device, p.dtype

    def encode(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        r""":math:`z = G^{-1}(x; y)` and :math:`\log|\det\partial z/\partial x|`, batched with ``y``."""
        return self.condition(self.check_context(y)).encode(x)

    def generate(self, z: Tensor, y: Tensor) -> Tensor:
        """:math:`x = G(z; y)`; ``z (..., B, D)`` broadcast against contexts ``(B, ...)``."""
        return self.condition(self.check_context(y))(z)

    def log_prob(self, x: Tensor, y: Tensor) -> Tensor:
        r""":math:`\log q(x\mid y)` for ``x (B, C, H, W)`` (or ``(..., B, C, H, W)``), ``y (B, ...)``."""
        z, ld = self.encode(x, y)
        return standard_normal_log_prob(z, 1) + ld

    def rsample_and_log_prob(self, y: Tensor, n: int = 1,
                             generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        r"""Reparametrised draws ``x (n, B, C, H, W)`` of :math:`q(\cdot\mid y)` and
        :math:`\log q(x\mid y)` ``(n, B)`` in one generative pass:
        :math:`\log q = \log\mathcal N(z) - \log|\det\partial x/\partial z|`."""
        n = check_int(n, "n")
        y = self.check_context(y)
        dev, dtype = self._device_dtype()
        gdev = generator.device if generator is not None else dev
        z = torch.randn((n, y.shape[0], *self.latent_shape), generator=generator, dtype=dtype,
                        device=gdev).to(dev)
        x, ld = self.condition(y).generate_and_ladj(z)
        return x, standard_normal_log_prob(z, 1) - ld

    def sample(self, y: Tensor, n: int = 1, generator: torch.Generator | None = None) -> Tensor:
        """Draw ``n`` images per context: ``(n, B, C, H, W)`` (no gradient)."""
        with torch.no_grad():
            return self.rsample_and_log_prob(y, n, generator)[0]

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.config.items())


#: Alias: the conditional flow of bayesinv is a conditional Glow.
ConditionalFlow = ConditionalGlow


class ConditionedGlow(LadjCacheMixin, TransformModule):
    """:math:`z \\mapsto G(z; y)` for a fixed context (returned by :meth:`ConditionalGlow.condition`).

    Latents ``(*S, D)`` broadcast against the context batch shape ``*B``: the output has batch
    shape ``broadcast(S, B)``. Context features are computed once per conditioned transform.
    """

    bijective = True
    domain = constraints.independent(constraints.real, 1)
    codomain = constraints.independent(constraints.real, 3)

    def __init__(self, parent: ConditionalGlow, context: Tensor) -> None:
        super().__init__(cache_size=0)
        self.__dict__["parent"] = parent  # not registered as a submodule (no cycles, no duplicates)
        cs = parent.context_shape
        if context.dim() < len(cs) or tuple(context.shape[context.dim() - len(cs):]) != cs:
            raise ValueError(f"context: expected trailing shape {cs}, got {tuple(context.shape)}")
        self.context = context
        self.context_batch = tuple(context.shape[:context.dim() - len(cs)])
        self._feats: list[Tensor] | None = None
        self._ladj_cache: tuple[Tensor, Tensor, Tensor] | None = None

    def _features(self, batch: tuple[int, ...]) -> list[Tensor]:
        if self._feats is None:
            p = self.parent
            y = self.context.reshape(-1, *p.context_shape)
            self._feats = p.context_features(y)
        nb = math.prod(self.context_batch)
        if tuple(batch) == self.context_batch:
            return self._feats
        idx = torch.arange(nb, device=self.context.device).reshape(self.context_batch)
        idx = idx.expand(batch).reshape(-1)
        return [f.index_select(0, idx) for f in self._feats]

    def generate_and_ladj(self, z: Tensor) -> tuple[Tensor, Tensor]:
        r""":math:`x = G(z; y)` and :math:`\log|\det\partial x/\partial z|`."""
        p = self.parent
        batch = torch.broadcast_shapes(z.shape[:-1], self.context_batch)
        zf = z.expand(*batch, z.shape[-1]).reshape(-1, z.shape[-1])
        x, ld = p.core.generate(zf, self._features(batch))
        return x.reshape(*batch, *p.image_shape), ld.reshape(batch)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        r""":math:`z = G^{-1}(x; y)` and :math:`\log|\det\partial z/\partial x|`."""
        p = self.parent
        if x.dim() < 3 or tuple(x.shape[-3:]) != p.image_shape:
            raise ValueError(f"x: expected trailing shape {p.image_shape}, got {tuple(x.shape)}")
        batch = torch.broadcast_shapes(x.shape[:-3], self.context_batch)
        xf = x.expand(*batch, *p.image_shape).reshape(-1, *p.image_shape)
        z, ld = p.core.encode(xf, self._features(batch))
        return z.reshape(*batch, -1), ld.reshape(batch)

    def forward_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        return (*shape[:-1], *self.parent.image_shape)

    def inverse_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        return (*shape[:-3], *self.parent.latent_shape)


class StandardNormalBase(ConditionalDistribution):
    """Conditional base :math:`\\mathcal N(0, I_D)` with the batch shape of the context."""

    def __init__(self, latent_shape: Shape, context_event_dims: int) -> None:
        self.latent_shape = tuple(latent_shape)
        self.context_event_dims = context_event_dims

    def condition(self, context: Tensor) -> dist.Distribution:
        batch = context.shape[:context.dim() - self.context_event_dims]
        zero = context.new_zeros(())
        return dist.Normal(zero, 1.0).expand((*batch, *self.latent_shape)).to_event(len(self.latent_shape))
