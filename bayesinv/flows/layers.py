r"""Invertible layers of normalizing flows, each a Pyro ``TransformModule``.

Direction convention (the whole of :mod:`bayesinv.flows` follows it)
--------------------------------------------------------------------
Every layer is a bijection :math:`T: u \mapsto x` in the **generative** direction, from the
latent side :math:`u` to the data side :math:`x`, as Pyro's
:class:`~pyro.distributions.TransformedDistribution` expects (``x = T(u)``, ``u ~ base``):

* ``layer(u)`` / :meth:`FlowLayer.call_and_ladj` — generative direction, with
  :math:`\log|\det \partial x/\partial u|`;
* ``layer.inv(x)`` / :meth:`FlowLayer.inverse_and_ladj` — normalizing direction (data →
  latent), with :math:`\log|\det \partial u/\partial x|` (the negative of the former);
* ``log_abs_det_jacobian(u, x)`` — :math:`\log|\det \partial x/\partial u|` per item, summed
  over the event dimensions, shape ``(B,)``.

The layer formulas of Glow (Kingma & Dhariwal 2018, Table 1) are written in the normalizing
direction (data → latent), so e.g. :class:`Squeeze` squeezes (space-to-depth) in
``inverse_and_ladj`` and un-squeezes in ``call_and_ladj``.

Image layers work on ``(B, C, H, W)`` (event dim 3), vector layers on ``(B, D)`` (event dim 1).
Couplings accept an optional ``context`` feature tensor that is concatenated to the subnet
input (conditional flows, :mod:`bayesinv.flows.conditional`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from pyro.distributions import constraints
from pyro.distributions.torch_transform import TransformModule
from torch import Tensor, nn

from .._checks import check_int, check_positive
from .base import LadjCacheMixin

__all__ = [
    "FlowLayer",
    "ActNorm",
    "Invertible1x1Conv",
    "AffineCoupling",
    "Squeeze",
    "Permutation",
    "actnorm",
    "invertible_1x1_conv",
    "affine_coupling",
    "squeeze",
    "permutation",
    "glow_step",
]


def _event_sum(t: Tensor, event_dim: int) -> Tensor:
    """Sum over the trailing ``event_dim`` axes."""
    return t.flatten(t.dim() - event_dim).sum(-1) if event_dim else t


def _check_event_dim(event_dim: int) -> int:
    if event_dim not in (1, 3):
        raise ValueError(f"event_dim: expected 1 (vectors) or 3 (images), got {event_dim!r}")
    return event_dim


class FlowLayer(LadjCacheMixin, TransformModule):
    """Base class: a bijective ``TransformModule`` with fused value + log-det methods.

    Subclasses implement :meth:`call_and_ladj` and :meth:`inverse_and_ladj`. The log-det of
    the last ``_call``/``_inverse`` is cached (one slot, matched by tensor identity), so
    ``TransformedDistribution.log_prob`` costs one pass per layer.
    """

    bijective = True
    _ladj_forward = "call_and_ladj"  # Pyro interface (_call, _inverse, log-det, forward): LadjCacheMixin
    _ladj_inverse = "inverse_and_ladj"
    __repr__ = nn.Module.__repr__  # (torch Transform.__repr__ would hide the layers)

    def __init__(self, event_dim: int) -> None:
        super().__init__(cache_size=0)
        self._event_dim = _check_event_dim(event_dim)
        self._ladj_cache: tuple[Tensor, Tensor, Tensor] | None = None

    @property
    def domain(self) -> constraints.Constraint:  # type: ignore[override]
        return constraints.independent(constraints.real, self._event_dim)

    @property
    def codomain(self) -> constraints.Constraint:  # type: ignore[override]
        return constraints.independent(constraints.real, self._event_dim)

    # -- to implement ----------------------------------------------------------------------
    def call_and_ladj(self, u: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        r"""Generative direction: :math:`x = T(u)` and :math:`\log|\det\partial x/\partial u|`."""
        raise NotImplementedError

    def inverse_and_ladj(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        r"""Normalizing direction: :math:`u = T^{-1}(x)` and :math:`\log|\det\partial u/\partial x|`."""
        raise NotImplementedError


# ---------------------------------------------------------------------------------------------
class ActNorm(FlowLayer):
    r"""Activation normalisation (Kingma & Dhariwal 2018, §3.1).

    Normalizing direction :math:`u = (x - b)\,e^{-\log s}` per channel (image, broadcast over
    pixels) or per feature (vector); generative :math:`x = u\,e^{\log s} + b`, with
    :math:`\log|\det\partial x/\partial u| = HW\sum_c \log s_c`.

    Data-dependent initialisation: the first call in the normalizing direction (on a data
    batch) sets :math:`b` and :math:`s` to the per-channel mean and standard deviation of that
    batch, so its output is zero-mean and unit-variance. The boolean buffer ``initialized``
    records it (and survives save/load).

    Parameters
    ----------
    num_channels
        Channels ``C`` (images) or features ``D`` (vectors).
    event_dim
        3 for images ``(B, C, H, W)``, 1 for vectors ``(B, D)``.
    """

    def __init__(self, num_channels: int, event_dim: int = 3) -> None:
        super().__init__(event_dim)
        self.num_channels = check_int(num_channels, "num_channels")
        shape = (num_channels, 1, 1) if event_dim == 3 else (num_channels,)
        self.bias = nn.Parameter(torch.zeros(shape))
        self.log_scale = nn.Parameter(torch.zeros(shape))
        self.register_buffer("initialized", torch.tensor(False))
        self._init_known = False  # host-side copy of ``initialized`` (avoids a device sync per call)

    def _load_from_state_dict(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super()._load_from_state_dict(*args, **kwargs)
        self._init_known = False

    def _pixels(self, t: Tensor) -> int:
        return t.shape[-1] * t.shape[-2] if self._event_dim == 3 else 1

    @torch.no_grad()
    def initialize(self, x: Tensor, eps: float = 1e-6) -> None:
        """Set bias/scale from the per-channel mean/std of the data batch ``x``."""
        dims = [0, 2, 3] if self._event_dim == 3 else [0]
        flat = x.reshape(-1, *x.shape[-self._event_dim:])
        mean = flat.mean(dim=dims, keepdim=True)[0]
        std = flat.std(dim=dims, keepdim=True, unbiased=False)[0]
        self.bias.copy_(mean)
        self.log_scale.copy_((std + eps).log())
        self.initialized.fill_(True)
        self._init_known = True

    def call_and_ladj(self, u: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x = u * self.log_scale.exp() + self.bias
        ladj = (self._pixels(u) * self.log_scale.sum()).expand(u.shape[:-self._event_dim])
        return x, ladj

    def inverse_and_ladj(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if not self._init_known:
            if bool(self.initialized):
                self._init_known = True
            else:
                self.initialize(x)
        u = (x - self.bias) * (-self.log_scale).exp()
        ladj = (-self._pixels(x) * self.log_scale.sum()).expand(x.shape[:-self._event_dim])
        return u, ladj


# ---------------------------------------------------------------------------------------------
class Invertible1x1Conv(FlowLayer):
    r"""Invertible 1×1 convolution with an LU-decomposed weight (Kingma & Dhariwal 2018, §3.2).

    :math:`W = P\,L\,(U + \operatorname{diag}(\operatorname{sign}(s)\,e^{\log|s|}))` with a
    fixed permutation :math:`P`, unit-lower-triangular :math:`L` and strictly upper :math:`U`,
    initialised from a random rotation (QR of a Gaussian matrix, seeded). Normalizing
    direction :math:`u = W x` at every pixel with
    :math:`\log|\det\partial u/\partial x| = HW\sum\log|s|`; generative :math:`x = W^{-1}u`,
    :math:`W^{-1} = (U+D)^{-1} L^{-1} P^\top` by two triangular solves. The weight is built
    once per call.
    """

    def __init__(self, num_channels: int, seed: int = 0) -> None:
        super().__init__(3)
        c = self.num_channels = check_int(num_channels, "num_channels")
        gen = torch.Generator().manual_seed(int(seed))
        q, _ = torch.linalg.qr(torch.randn(c, c, generator=gen, dtype=torch.float64))
        p, low, up = torch.linalg.lu(q)
        s = up.diagonal()
        dtype = torch.get_default_dtype()
        self.register_buffer("perm", p.to(dtype))
        self.register_buffer("sign_s", s.sign().to(dtype))
        self.register_buffer("lower_mask", torch.tril(torch.ones(c, c, dtype=dtype), -1))
        self.lower = nn.Parameter(low.to(dtype))
        self.upper = nn.Parameter(torch.triu(up, 1).to(dtype))
        self.log_s = nn.Parameter(s.abs().log().to(dtype))

    def _factors(self) -> tuple[Tensor, Tensor]:
        eye = torch.eye(self.num_channels, dtype=self.lower.dtype, device=self.lower.device)
        low = self.lower * self.lower_mask + eye
        up = self.upper * self.lower_mask.T + torch.diag(self.sign_s * self.log_s.exp())
        return low, up

    def weight(self) -> Tensor:
        """:math:`W` (normalizing direction), ``(C, C)``."""
        low, up = self._factors()
        return self.perm @ low @ up

    def inverse_weight(self) -> Tensor:
        """:math:`W^{-1}` (generative direction), ``(C, C)``."""
        low, up = self._factors()
        linv_pt = torch.linalg.solve_triangular(low, self.perm.T, upper=False, unitriangular=True)
        return torch.linalg.solve_triangular(up, linv_pt, upper=True)

    def _ladj(self, t: Tensor) -> Tensor:
        return (t.shape[-1] * t.shape[-2] * self.log_s.sum()).expand(t.shape[:-3])

    def call_and_ladj(self, u: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        w = self.inverse_weight()
        return _conv1x1(u, w), -self._ladj(u)

    def inverse_and_ladj(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return _conv1x1(x, self.weight()), self._ladj(x)


def _conv1x1(x: Tensor, w: Tensor) -> Tensor:
    c, h, wd = x.shape[-3:]
    flat = x.reshape(-1, c, h, wd)
    return F.conv2d(flat, w[:, :, None, None]).reshape(x.shape)


# ---------------------------------------------------------------------------------------------
class AffineCoupling(FlowLayer):
    r"""Affine coupling with a bounded log-scale (Dinh et al. 2017; Kingma & Dhariwal 2018).

    The input is split into :math:`(x_1, x_2)` along channels (images) or features (vectors);
    ``parity=1`` swaps the roles. Normalizing direction:

    .. math::

        u_1 = x_1,\qquad u_2 = x_2 \odot e^{s(x_1)} + t(x_1),\qquad
        s = c\,\tanh(\hat s / c),

    with :math:`(\hat s, t) = \mathrm{NN}([x_1, \text{context}])` and clamp :math:`c`;
    :math:`\log|\det\partial u/\partial x| = \sum s`. Generative direction
    :math:`x_2 = (u_2 - t(u_1))\,e^{-s(u_1)}`. The subnet's last layer is zero-initialised, so
    the layer starts as the identity.

    Subnets: images — conv 3×3 → ReLU → conv 1×1 → ReLU → conv 3×3 (Glow); vectors — an MLP
    with ``hidden`` (int or list of ints) hidden sizes and ReLU (patchNR / FrEIA GLOW block).

    Parameters
    ----------
    num_channels
        ``C`` (images) or ``D`` (vectors), >= 2.
    event_dim
        3 (images) or 1 (vectors).
    hidden
        Hidden channels (images, int) or hidden sizes of the MLP (vectors, int or sequence).
    context_channels
        Channels (images) or features (vectors) of the context features appended to the
        subnet input; 0 for an unconditional layer.
    clamp
        Bound :math:`c` of the log-scale.
    parity
        0: :math:`x_1` is the first half; 1: the second half.
    """

    def __init__(self, num_channels: int, event_dim: int = 3, hidden: int | Sequence[int] = 64,
                 context_channels: int = 0, clamp: float = 2.0, parity: int = 0) -> None:
        super().__init__(event_dim)
        c = self.num_channels = check_int(num_channels, "num_channels", minimum=2)
        self.context_channels = check_int(context_channels, "context_channels", minimum=0)
        self.clamp = check_positive(clamp, "clamp")
        if parity not in (0, 1):
            raise ValueError(f"parity: expected 0 or 1, got {parity!r}")
        self.parity = parity
        first = c // 2
        self.sizes = (first, c - first) if parity == 0 else (c - first, first)
        n_in, n_out = self.sizes[0] + self.context_channels, 2 * self.sizes[1]
        if event_dim == 3:
            h = check_int(hidden, "hidden")
            self.subnet = nn.Sequential(
                nn.Conv2d(n_in, h, 3, padding=1), nn.ReLU(),
                nn.Conv2d(h, h, 1), nn.ReLU(),
                nn.Conv2d(h, n_out, 3, padding=1))
        else:
            hs = [hidden] if isinstance(hidden, int) else list(hidden)
            if not hs:
                raise ValueError("hidden: expected at least one hidden size")
            hs = [check_int(v, "hidden") for v in hs]
            mods: list[nn.Module] = []
            for a, b in zip([n_in] + hs[:-1], hs, strict=False):
                mods += [nn.Linear(a, b), nn.ReLU()]
            mods.append(nn.Linear(hs[-1], n_out))
            self.subnet = nn.Sequential(*mods)
        last = self.subnet[-1]
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def _split(self, t: Tensor) -> tuple[Tensor, Tensor]:
        dim = -3 if self._event_dim == 3 else -1
        a, b = t.split(list(self.sizes if self.parity == 0 else self.sizes[::-1]), dim=dim)
        return (a, b) if self.parity == 0 else (b, a)

    def _join(self, t1: Tensor, t2: Tensor) -> Tensor:
        dim = -3 if self._event_dim == 3 else -1
        return torch.cat((t1, t2) if self.parity == 0 else (t2, t1), dim=dim)

    def _scale_shift(self, x1: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        ed = self._event_dim
        lead = x1.shape[:-ed]
        h = x1.reshape(-1, *x1.shape[-ed:])
        if self.context_channels:
            if context is None:
                raise ValueError("context: this coupling is conditional and needs context features")
            ctx = context.reshape(-1, *context.shape[-ed:])
            if ctx.shape[0] != h.shape[0]:
                ctx = ctx.expand(h.shape[0], *ctx.shape[1:])
            h = torch.cat((h, ctx), dim=1)
        out = self.subnet(h)
        raw, shift = out.chunk(2, dim=1)
        s = self.clamp * torch.tanh(raw / self.clamp)
        return s.reshape(*lead, *s.shape[1:]), shift.reshape(*lead, *shift.shape[1:])

    def call_and_ladj(self, u: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        u1, u2 = self._split(u)
        s, t = self._scale_shift(u1, context)
        x2 = (u2 - t) * torch.exp(-s)
        return self._join(u1, x2), -_event_sum(s, self._event_dim)

    def inverse_and_ladj(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x1, x2 = self._split(x)
        s, t = self._scale_shift(x1, context)
        u2 = x2 * torch.exp(s) + t
        return self._join(x1, u2), _event_sum(s, self._event_dim)


# ---------------------------------------------------------------------------------------------
class Squeeze(FlowLayer):
    r"""Space-to-depth 2×2 squeeze (Dinh et al. 2017), volume preserving (log-det 0).

    Normalizing direction (data → latent): ``(C, H, W) → (4C, H/2, W/2)``
    (``pixel_unshuffle``); generative direction: ``(4C, H/2, W/2) → (C, H, W)``
    (``pixel_shuffle``). So ``layer(u)`` takes the squeezed tensor.
    """

    def __init__(self) -> None:
        super().__init__(3)

    @staticmethod
    def _zero(t: Tensor) -> Tensor:
        return t.new_zeros(t.shape[:-3])

    def call_and_ladj(self, u: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if u.shape[-3] % 4:
            raise ValueError(f"u: channels must be a multiple of 4 to un-squeeze, got {u.shape[-3]}")
        c, h, w = u.shape[-3:]
        x = F.pixel_shuffle(u.reshape(-1, c, h, w), 2)
        return x.reshape(*u.shape[:-3], *x.shape[1:]), self._zero(u)

    def inverse_and_ladj(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        c, h, w = x.shape[-3:]
        if h % 2 or w % 2:
            raise ValueError(f"x: height and width must be even to squeeze, got {(h, w)}")
        u = F.pixel_unshuffle(x.reshape(-1, c, h, w), 2)
        return u.reshape(*x.shape[:-3], *u.shape[1:]), self._zero(x)

    def forward_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        *b, c, h, w = shape
        return (*b, c // 4, 2 * h, 2 * w)

    def inverse_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        *b, c, h, w = shape
        return (*b, 4 * c, h // 2, w // 2)


# ---------------------------------------------------------------------------------------------
class Permutation(FlowLayer):
    r"""A fixed, seeded random permutation of features (vectors) or channels (images).

    Normalizing direction :math:`u = x_{\pi}`; generative :math:`x = u_{\pi^{-1}}`; log-det 0.
    """

    def __init__(self, num_channels: int, event_dim: int = 1, seed: int = 0) -> None:
        super().__init__(event_dim)
        self.num_channels = check_int(num_channels, "num_channels")
        perm = torch.randperm(num_channels, generator=torch.Generator().manual_seed(int(seed)))
        self.register_buffer("perm", perm)
        self.register_buffer("inv_perm", torch.argsort(perm))

    def _permute(self, t: Tensor, index: Tensor) -> Tensor:
        dim = -3 if self._event_dim == 3 else -1
        return t.index_select(t.dim() + dim, index)

    def call_and_ladj(self, u: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._permute(u, self.inv_perm), u.new_zeros(u.shape[:-self._event_dim])

    def inverse_and_ladj(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._permute(x, self.perm), x.new_zeros(x.shape[:-self._event_dim])


# ---------------------------------------------------------------------------------------------
# factory helpers (Pyro style)
def actnorm(num_channels: int, event_dim: int = 3) -> ActNorm:
    """An :class:`ActNorm` layer."""
    return ActNorm(num_channels, event_dim)


def invertible_1x1_conv(num_channels: int, seed: int = 0) -> Invertible1x1Conv:
    """An :class:`Invertible1x1Conv` layer."""
    return Invertible1x1Conv(num_channels, seed)


def affine_coupling(num_channels: int, event_dim: int = 3, hidden: int | Sequence[int] = 64,
                    context_channels: int = 0, clamp: float = 2.0, parity: int = 0) -> AffineCoupling:
    """An :class:`AffineCoupling` layer."""
    return AffineCoupling(num_channels, event_dim, hidden, context_channels, clamp, parity)


def squeeze() -> Squeeze:
    """A :class:`Squeeze` layer."""
    return Squeeze()


def permutation(num_channels: int, event_dim: int = 1, seed: int = 0) -> Permutation:
    """A :class:`Permutation` layer."""
    return Permutation(num_channels, event_dim, seed)


def glow_step(num_channels: int, hidden: int = 64, context_channels: int = 0,
              clamp: float = 2.0, seed: int = 0) -> list[FlowLayer]:
    """One Glow step ``[ActNorm, Invertible1x1Conv, AffineCoupling]`` in normalizing order."""
    return [ActNorm(num_channels, 3), Invertible1x1Conv(num_channels, seed),
            AffineCoupling(num_channels, 3, hidden, context_channels, clamp)]

