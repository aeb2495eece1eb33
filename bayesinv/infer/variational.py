r"""Conditional-flow variational posteriors trained by backward KL through Pyro SVI.

WPPFlow-style amortised variational inference (Altekrüger & Hertrich, *WPPNets and WPPFlows:
the power of Wasserstein patch priors for superresolution*, SIAM J. Imaging Sci. 2023; seed
paper 004): learn :math:`q_\theta(\cdot\mid y) = T_\theta(\cdot; y)_\# \mathcal N(0, I)` by
minimising the backward (reverse) Kullback–Leibler divergence to the posterior, averaged over
measurements :math:`y`,

.. math::

    \min_\theta\; \mathbb E_{y}\,\mathbb E_{\varepsilon\sim\mathcal N(0,I)}\Big[
        \tfrac{1}{2\sigma^2}\|A(x) - y\|^2 + \lambda R(x)
        - \log\big|\det \nabla_\varepsilon T_\theta(\varepsilon; y)\big| \Big],
    \qquad x = T_\theta(\varepsilon; y),

which is, up to constants, :math:`\mathbb E_y[\mathrm{KL}(q_\theta(\cdot\mid y)\,\|\,p(\cdot\mid y))]
= \mathbb E_y[-\mathrm{ELBO}(y)] - \mathbb E_y[\log p(y)]`. For latent priors :math:`x = G(z)`
the variational family lives on the latent: :math:`z = T_\theta(\varepsilon; y)`, and the
objective gains the latent prior term :math:`\tfrac12\|z\|^2`.

The objective is *exactly* Pyro's negative ELBO of ``problem.model`` with the guide
:class:`VariationalGuide`, whose one sample site is the model's latent site (``"z"`` for latent
priors, ``"x"`` for energy priors) drawn from
``pyro.distributions.ConditionalTransformedDistribution(base, [flow]).condition(y)``; it is
optimised with :class:`pyro.infer.SVI`, :class:`pyro.infer.Trace_ELBO` (reparametrised
estimator, ``num_particles`` draws) and :func:`pyro.optim.ClippedAdam` (Adam, lr 2e-4 as in
WPPFlow; optional gradient clipping and learning-rate decay).

Two modes:

* ``mode="single"``: one measurement ``y``, :math:`q(\cdot\mid y)` for that ``y`` only;
* ``mode="amortized"``: a data set of ``N`` measurements (see :func:`simulate_dataset`),
  minibatched through the model's ``"measurements"`` plate; the model and the guide are scaled
  by ``1/B`` (:func:`pyro.poutine.scale`), so each step's loss is an unbiased estimate of the
  per-measurement mean :math:`\frac1N\sum_n -\mathrm{ELBO}(y_n)`.

Guides: :class:`~bayesinv.flows.conditional.ConditionalGlow` (default; context ``y``) and
:class:`ConditionalAffineFlow`, :math:`q(z\mid y) = \mathcal N(\mu(y), LL^\top)`: with
:math:`\mu(y) = Wy + b` the family that contains the exact posterior of every linear-Gaussian
problem (its exactness test); with a nonlinear mean (an MLP, a U-Net on an image estimate, the
prior's encoder :math:`G^{-1}`) an amortised Gaussian guide for nonlinear priors.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
import warnings
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import pyro.distributions as dist
import pyro.optim
import torch
from pyro import poutine
from pyro.distributions import constraints
from pyro.distributions.conditional import ConditionalTransformModule
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.util import zero_grads
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor, nn

from .._checks import (
    Shape,
    as_measurement_batch,
    as_tensor,
    check_choice,
    check_int,
    check_positive,
    check_real,
    make_generator,
)
from ..flows.conditional import ConditionalGlow, StandardNormalBase
from ..flows.train import (
    _atomic_write,
    _json_safe,
    load_checkpoint,
    save_checkpoint,
)
from ..priors.base import LatentPrior, standard_normal_log_prob
from ..problem import InverseProblem
from ._progress import check_loss_finite, progress_bar
from .posterior import Posterior

__all__ = [
    "ConditionalAffineFlow",
    "VariationalGuide",
    "VariationalPosterior",
    "default_guide",
    "fit_variational",
    "guide_classes",
    "simulate_dataset",
]

MODES = ("single", "amortized")
FORMAT = "bayesinv-vi"
FORMAT_VERSION = 1
MODULE_NAME = "guide_flow"
_VAL_SEED_OFFSET = 1  # validation ELBO noise: fixed seed + 1, the same at every evaluation
_SPLIT_SEED_OFFSET = 2  # train/validation split


# ------------------------------------------------------------------------ the affine family
class ConditionalAffineFlow(ConditionalTransformModule):
    r"""Conditional Gaussian :math:`q(z\mid y) = \mathcal N(\mu(y), LL^\top)` as an affine flow.

    :math:`z = T(\varepsilon; y) = \mu(y) + L\varepsilon`, :math:`\varepsilon\sim\mathcal N(0, I_D)`,
    with a dense lower-triangular :math:`L` whose diagonal is :math:`e^{\ell}` (positive), so
    :math:`\log|\det\nabla_\varepsilon T| = \sum_i \ell_i` and, by the change of variables,
    :math:`\log q(z\mid y) = \log\mathcal N(L^{-1}(z - \mu(y)); 0, I) - \sum_i\ell_i`. Dense
    ``L`` has :math:`D^2` parameters: meant for small problems (up to ~1000 dimensions).

    The mean is built in up to three stages (each optional beyond the first):

    .. math::

        h_0(y) &= W\,\mathrm{vec}(y) + b + M\big((\mathrm{vec}(y) - m_y)/s_y\big),\\
        h(y) &= h_0(y) + U\big(h_0(y)\big),\\
        \mu(y) &= E\big(h(y)\big),

    a linear layer plus an MLP :math:`M` (``hidden``), a residual U-Net :math:`U` on the
    image-shaped :math:`h_0` (``cnn_channels``) and an image flow's encoder :math:`E`, e.g.
    :math:`E = G^{-1}` for a flow prior :math:`x = G(z)` (``encoder``; default the identity).
    ``W, b`` (the layer ``loc``) and the last layers of :math:`M` and :math:`U` are
    zero-initialised, so every guide starts at :math:`\mu = E(0)`; with the defaults
    (``hidden=()``, no U-Net, no encoder) :math:`\mu(y) = W\,\mathrm{vec}(y) + b` and the flow
    is exactly the plain affine family, its parameters, state-dict keys and config unchanged.

    * Linear mean: for a linear-Gaussian problem the exact posterior is Gaussian with a mean
      affine in :math:`y` and a covariance independent of :math:`y`, so it lies in this family,
      for one ``y`` and amortised alike.
    * Nonlinear mean (amortised inference for nonlinear priors): the MLP :math:`M` (GELU hidden
      layers of widths ``hidden``, input standardised by the fixed ``context_loc`` :math:`m_y`
      and ``context_scale`` :math:`s_y`) and the U-Net :math:`U` make :math:`\mu` a nonlinear
      function of :math:`y`. For a latent prior :math:`x = G(z)` the posterior latent is
      typically a very nonlinear function of :math:`y` while the posterior *image* is a much
      smoother one; with ``encoder`` = a copy of :math:`G` (its :meth:`encode` is
      :math:`G^{-1}`), :math:`h(y)` is an *image* estimate (e.g. a learned reconstruction
      :math:`\hat x(y)`, pre-trainable by regression on simulated pairs) and the guide's
      latent mean is :math:`G^{-1}(\hat x(y))`, so :math:`G(\mu(y)) = \hat x(y)` exactly. This is
      the "learned reconstruction + invertible prior" parametrisation of an amortised
      Gaussian guide; any function :math:`\mu(y)` keeps the ELBO a valid bound (amortised VI,
      Gershman & Goodman 2014; learned post-processing of a linear reconstruction, Jin et al.,
      *Deep convolutional neural network for inverse problems in imaging*, IEEE TIP 2017).

    Parameters
    ----------
    shape
        Event shape of ``z`` (the model's latent ``latent_shape``, or ``image_shape`` for an
        energy prior), e.g. ``(C, H, W)`` or ``(D,)``.
    context_shape
        Shape of one measurement ``y``.
    init_scale
        Initial :math:`L = \text{init\_scale}\cdot I` (1 matches a standard-normal latent prior).
    hidden
        Widths of the MLP's hidden layers (``()``: no MLP, the plain affine guide).
    cnn_channels
        Base width ``c`` of the residual U-Net :math:`U` (widths ``c, 2c, 4c`` at full, half
        and quarter resolution, two 3×3 convolutions with GELU per stage); ``None``: none. Needs
        an image-shaped :math:`h`: ``shape`` ``(C, H, W)`` or an ``encoder``, with H and W
        divisible by 4.
    encoder
        ``None`` or an image flow of a class in :func:`bayesinv.flows.io.flow_classes` (e.g.
        the :class:`~bayesinv.flows.glow.Glow` of a :class:`~bayesinv.priors.flow.FlowPrior`,
        ``prior.flow``) whose flat latent has ``prod(shape)`` entries; the guide holds a
        *copy* (training never changes the prior). As the dict ``{"class": name, "config":
        flow.config}`` (the form stored in :attr:`config`) a fresh flow is built, whose weights
        must then be loaded (:meth:`VariationalPosterior.load` does).
    context_loc, context_scale
        Fixed standardisation of the MLP's input (only used with ``hidden``).

    Attributes
    ----------
    config
        The constructor arguments, JSON-serialisable (the defaults of the nonlinear-mean options
        are left out, so plain affine guides keep the config they always had).

    Examples
    --------
    >>> flow = ConditionalAffineFlow((4,), (3,), hidden=(16, 16))
    >>> flow.mean(torch.zeros(2, 3)).shape
    torch.Size([2, 4])
    >>> ConditionalAffineFlow(**flow.config).config == flow.config
    True
    """

    def __init__(self, shape: Sequence[int], context_shape: Sequence[int], init_scale: float = 1.0,
                 hidden: Sequence[int] = (), *, cnn_channels: int | None = None,
                 encoder: nn.Module | dict[str, Any] | None = None, context_loc: float = 0.0,
                 context_scale: float = 1.0) -> None:
        super().__init__()
        self.event_shape: Shape = _positive_shape(shape, "shape")
        self.context_shape: Shape = _positive_shape(context_shape, "context_shape")
        init_scale = check_positive(init_scale, "init_scale")
        hidden_t = _hidden_widths(hidden)
        if cnn_channels is not None:
            cnn_channels = check_int(cnn_channels, "cnn_channels")
        context_loc = check_real(context_loc, "context_loc")
        context_scale = check_positive(context_scale, "context_scale")
        self.dim = math.prod(self.event_shape)
        m = math.prod(self.context_shape)
        self.config: dict[str, Any] = {"shape": list(self.event_shape), "context_shape": list(self.context_shape),
                                       "init_scale": init_scale}
        self.encoder: nn.Module | None = None
        if encoder is not None:
            self.encoder, enc_config = _copy_encoder(encoder, self.dim)
            self.config["encoder"] = enc_config
        #: shape of h(y): the encoder's image, else the event shape
        self.pre_shape: Shape = tuple(self.encoder.image_shape) if self.encoder is not None else self.event_shape
        self.loc = nn.Linear(m, math.prod(self.pre_shape))
        nn.init.zeros_(self.loc.weight)
        nn.init.zeros_(self.loc.bias)
        self.mlp: nn.Sequential | None = None
        self.context_loc, self.context_scale = context_loc, context_scale
        if hidden_t:
            self.mlp = _mlp(m, hidden_t, math.prod(self.pre_shape))
            self.config["hidden"] = list(hidden_t)
            if context_loc != 0.0 or context_scale != 1.0:
                self.config.update(context_loc=context_loc, context_scale=context_scale)
        self.cnn: _ResidualUNet | None = None
        if cnn_channels is not None:
            if len(self.pre_shape) != 3 or self.pre_shape[1] % 4 or self.pre_shape[2] % 4:
                raise ValueError(f"cnn_channels: the U-Net needs an image-shaped mean (C, H, W) with H and W "
                                 f"divisible by 4 (an image `shape` or an `encoder`), got {self.pre_shape}")
            self.cnn = _ResidualUNet(self.pre_shape[0], cnn_channels)
            self.config["cnn_channels"] = cnn_channels
        self.log_diag = nn.Parameter(torch.full((self.dim,), math.log(init_scale)))
        self.offdiag = nn.Parameter(torch.zeros(self.dim, self.dim))

    @property
    def nonlinear(self) -> bool:
        """Whether :math:`\\mu(y)` is nonlinear (an MLP, a U-Net or an encoder)."""
        return self.mlp is not None or self.cnn is not None or self.encoder is not None

    def scale_tril(self) -> Tensor:
        r""":math:`L` ``(D, D)``: strictly lower part of ``offdiag`` plus :math:`\mathrm{diag}(e^\ell)`."""
        return torch.tril(self.offdiag, diagonal=-1) + torch.diag_embed(self.log_diag.exp())

    def linear_mean(self, yf: Tensor) -> Tensor:
        r""":math:`W\,\mathrm{vec}(y) + b` for flattened contexts ``yf (..., prod(context_shape))``."""
        return self.loc(yf)

    def pre_mean(self, y: Tensor) -> Tensor:
        r""":math:`h(y)` (before the encoder; an image estimate when there is one), ``(*B, *pre_shape)``."""
        nc = len(self.context_shape)
        lead = y.shape[:y.dim() - nc]
        yf = y.reshape(-1, math.prod(self.context_shape))
        h = self.linear_mean(yf)
        if self.mlp is not None:
            h = h + self.mlp((yf - self.context_loc) / self.context_scale)
        if self.cnn is not None:
            h = self.cnn(h.reshape(-1, *self.pre_shape))
        return h.reshape(*lead, *self.pre_shape)

    def mean(self, y: Tensor) -> Tensor:
        r""":math:`\mu(y)` flattened, ``(*B, D)`` for contexts ``(*B, *context_shape)``."""
        lead = y.shape[:y.dim() - len(self.context_shape)]
        h = self.pre_mean(y)
        if self.encoder is not None:
            h = self.encoder.encode(h.reshape(-1, *self.pre_shape))[0]
        return h.reshape(*lead, self.dim)

    def check_context(self, y: Tensor, name: str = "y") -> Tensor:
        """Return ``y`` as ``(B, *context_shape)`` (an unbatched context gets ``B = 1``)."""
        if not isinstance(y, Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(y).__name__}")
        if tuple(y.shape) == self.context_shape:
            y = y[None]
        if y.dim() != len(self.context_shape) + 1 or tuple(y.shape[1:]) != self.context_shape:
            raise ValueError(f"{name}: expected shape (B, {', '.join(map(str, self.context_shape))}), "
                             f"got {tuple(y.shape)}")
        return y

    def condition(self, context: Tensor) -> _ConditionedAffine:
        r"""The transform :math:`\varepsilon \mapsto \mu(y) + L\varepsilon` for contexts ``(*B, *context_shape)``."""
        return _ConditionedAffine(self, context)

    def conditional_base(self) -> StandardNormalBase:
        """A conditional :math:`\\mathcal N(0, I)` on ``shape`` whose batch shape follows the context."""
        return StandardNormalBase(self.event_shape, len(self.context_shape))

    def log_prob(self, z: Tensor, y: Tensor) -> Tensor:
        r""":math:`\log q(z\mid y)` for ``z (..., B, *shape)`` and ``y (B, ...)``."""
        t = self.condition(self.check_context(y))
        eps = t.inv(z)
        return standard_normal_log_prob(eps, len(self.event_shape)) - t.log_abs_det_jacobian(eps, z)

    def sample(self, y: Tensor, n: int = 1, generator: torch.Generator | None = None) -> Tensor:
        """Draw ``n`` values per context: ``(n, B, *shape)`` (no gradient)."""
        n = check_int(n, "n")
        y = self.check_context(y)
        p = self.log_diag
        gdev = generator.device if generator is not None else p.device
        eps = torch.randn((n, y.shape[0], *self.event_shape), generator=generator, dtype=p.dtype,
                          device=gdev).to(p.device)
        with torch.no_grad():
            return self.condition(y)(eps)

    def extra_repr(self) -> str:
        return f"shape={self.event_shape}, context_shape={self.context_shape}"


class _ConditionedAffine(dist.transforms.Transform):
    r""":math:`\varepsilon \mapsto \mu(y) + L\varepsilon` for a fixed context (parameters stay in the parent)."""

    bijective = True

    def __init__(self, parent: ConditionalAffineFlow, context: Tensor) -> None:
        super().__init__(cache_size=1)
        self.parent = parent
        cs = parent.context_shape
        if context.dim() < len(cs) or tuple(context.shape[context.dim() - len(cs):]) != cs:
            raise ValueError(f"context: expected trailing shape {cs}, got {tuple(context.shape)}")
        self.context = context
        self._loc = parent.mean(context)  # (*B, D)
        self._tril = parent.scale_tril()
        n = len(parent.event_shape)
        self.domain = constraints.independent(constraints.real, n)
        self.codomain = constraints.independent(constraints.real, n)

    def _call(self, eps: Tensor) -> Tensor:
        shape = self.parent.event_shape
        flat = eps.reshape(*eps.shape[:eps.dim() - len(shape)], -1)
        z = self._loc + flat @ self._tril.T
        return z.reshape(*z.shape[:-1], *shape)

    def _inverse(self, z: Tensor) -> Tensor:
        shape = self.parent.event_shape
        flat = z.reshape(*z.shape[:z.dim() - len(shape)], -1) - self._loc
        lead = flat.shape[:-1]
        sol = torch.linalg.solve_triangular(self._tril, flat.reshape(-1, flat.shape[-1]).T, upper=False).T
        return sol.reshape(*lead, *shape)

    def log_abs_det_jacobian(self, eps: Tensor, z: Tensor) -> Tensor:
        batch = z.shape[:z.dim() - len(self.parent.event_shape)]
        return self.parent.log_diag.sum().expand(batch)


def _hidden_widths(hidden: object) -> tuple[int, ...]:
    """``hidden`` as a tuple of positive ints (layer widths), else ``ValueError`` naming it."""
    bad = ValueError(f"hidden: expected a sequence of positive ints (the MLP's hidden-layer widths), got {hidden!r}")
    if isinstance(hidden, (str, bytes)) or not isinstance(hidden, Sequence):
        raise bad
    out = []
    for h in hidden:
        if isinstance(h, bool) or not isinstance(h, (int, np.integer)) or h < 1:
            raise bad
        out.append(int(h))
    return tuple(out)


def _mlp(n_in: int, hidden: tuple[int, ...], n_out: int) -> nn.Sequential:
    """``Linear → GELU`` per hidden width, then a zero-initialised ``Linear(·, n_out)``."""
    layers: list[nn.Module] = []
    width = n_in
    for h in hidden:
        layers += [nn.Linear(width, h), nn.GELU()]
        width = h
    last = nn.Linear(width, n_out)
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
    return nn.Sequential(*layers, last)


def _conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.GELU(),
                         nn.Conv2d(c_out, c_out, 3, padding=1), nn.GELU())


class _ResidualUNet(nn.Module):
    r"""Residual U-Net :math:`h \mapsto h + U(h)` on images ``(N, C, H, W)``, H and W divisible by 4.

    Encoder stages of widths ``c, 2c, 4c`` (two 3×3 convolutions + GELU each, 2×2 average pooling
    between), decoder stages with nearest upsampling and skip concatenations (Ronneberger et
    al., *U-Net*, MICCAI 2015), a zero-initialised 1×1 output convolution (so :math:`U = 0` at
    init).
    """

    def __init__(self, channels: int, width: int) -> None:
        super().__init__()
        c = width
        self.enc1, self.enc2, self.enc3 = _conv_block(channels, c), _conv_block(c, 2 * c), _conv_block(2 * c, 4 * c)
        self.dec2, self.dec1 = _conv_block(6 * c, 2 * c), _conv_block(3 * c, c)
        self.out = nn.Conv2d(c, channels, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, h: Tensor) -> Tensor:
        f = torch.nn.functional
        a = self.enc1(h)
        b = self.enc2(f.avg_pool2d(a, 2))
        c = self.enc3(f.avg_pool2d(b, 2))
        u = self.dec2(torch.cat([f.interpolate(c, scale_factor=2.0, mode="nearest"), b], 1))
        u = self.dec1(torch.cat([f.interpolate(u, scale_factor=2.0, mode="nearest"), a], 1))
        return h + self.out(u)


def _copy_encoder(encoder: object, dim: int) -> tuple[nn.Module, dict[str, Any]]:
    """A fresh copy of an image flow of a registered class (or one built from its dict form)."""
    from ..flows.io import flow_classes

    registry = flow_classes()
    if isinstance(encoder, dict):
        name, cfg = encoder.get("class"), encoder.get("config")
        if name not in registry or not isinstance(cfg, dict):
            raise ValueError(f"encoder: expected {{'class': one of {sorted(registry)}, 'config': {{...}}}}, "
                             f"got {encoder!r}")
        flow = registry[name](**cfg)
        source = None
    elif isinstance(encoder, nn.Module):
        name = type(encoder).__name__
        if registry.get(name) is not type(encoder) or not isinstance(getattr(encoder, "config", None), dict):
            raise TypeError(f"encoder: expected an image flow of one of the classes {sorted(registry)} "
                            f"(e.g. a FlowPrior's .flow), got {name}")
        cfg = _jsonable(encoder.config)
        floats = [t for t in encoder.state_dict().values() if t.is_floating_point()]
        flow = registry[name](**cfg).to(dtype=floats[0].dtype if floats else None)
        source = encoder
    else:
        raise TypeError(f"encoder: expected an image flow module or its {{'class', 'config'}} dict, "
                        f"got {type(encoder).__name__}")
    if not callable(getattr(flow, "encode", None)) or not hasattr(flow, "image_shape"):
        raise TypeError(f"encoder: {name} has no encode()/image_shape")
    if math.prod(getattr(flow, "latent_shape", (0,))) != dim:
        raise ValueError(f"encoder: its latent has {math.prod(getattr(flow, 'latent_shape', (0,)))} entries, "
                         f"the guide's shape {dim}")
    if source is not None:
        flow.load_state_dict(source.state_dict(), strict=True)
    return flow, {"class": name, "config": cfg}


def guide_classes() -> dict[str, type[nn.Module]]:
    """Conditional flow classes a saved :class:`VariationalPosterior` can be rebuilt from."""
    return {"ConditionalGlow": ConditionalGlow, "ConditionalAffineFlow": ConditionalAffineFlow}


def _positive_shape(shape: object, name: str) -> Shape:
    try:
        s = tuple(int(v) for v in shape)  # type: ignore[union-attr]
    except TypeError:
        raise TypeError(f"{name}: expected a tuple of positive ints, got {shape!r}") from None
    if len(s) == 0 or min(s) < 1:
        raise ValueError(f"{name}: expected a non-empty shape with positive sizes, got {shape!r}")
    return s


def _flow_output_shape(flow: nn.Module) -> Shape:
    if isinstance(flow, ConditionalAffineFlow):
        return flow.event_shape
    shape = getattr(flow, "image_shape", None)
    if shape is None:
        raise TypeError(f"guide: expected a ConditionalGlow, a ConditionalAffineFlow or a conditional "
                        f"flow with image_shape/context_shape, got {type(flow).__name__}")
    return tuple(shape)


# ----------------------------------------------------------------------------------- the guide
class VariationalGuide:
    r"""Pyro guide :math:`q_\theta(\cdot\mid y)` for ``problem.model`` from a conditional flow.

    Its one sample site is the model's latent site — ``"z"`` (shape ``latent_shape``) for a
    latent prior, ``"x"`` (shape ``image_shape``) for an energy prior — inside the plate
    ``"measurements"``, drawn from ``ConditionalTransformedDistribution(flow.conditional_base(),
    [flow, reshape]).condition(y)``. When the flow's output has the site's size but another shape
    (a ConditionalGlow ``(C, H, W)`` for a Glow prior's flat latent ``(D,)``), a
    ``ReshapeTransform`` (volume preserving, log-det 0) is appended. The flow's parameters are
    registered with ``pyro.module("guide_flow", flow)``.

    Call it as ``guide(y)`` with the same arguments as ``problem.model(y)``.

    Parameters
    ----------
    problem
        The inverse problem.
    flow
        A conditional flow with ``condition(y)``, ``conditional_base()``, ``context_shape`` equal to
        ``problem.measurement_shape`` and an output of the site's shape (or size, latent priors).
    """

    def __init__(self, problem: InverseProblem, flow: nn.Module) -> None:
        if not isinstance(problem, InverseProblem):
            raise TypeError(f"problem: expected an InverseProblem, got {type(problem).__name__}")
        if not isinstance(flow, ConditionalTransformModule) or not callable(getattr(flow, "conditional_base", None)):
            raise TypeError(f"guide: expected a Pyro ConditionalTransformModule with conditional_base() "
                            f"(ConditionalGlow, ConditionalAffineFlow), got {type(flow).__name__}")
        self.problem = problem
        self.flow = flow
        self.site = "z" if problem.has_latent else "x"
        prior = problem.prior
        self.site_shape: Shape = tuple(prior.latent_shape) if isinstance(prior, LatentPrior) else tuple(
            problem.image_shape)
        ctx = tuple(getattr(flow, "context_shape", ()))
        if ctx != tuple(problem.measurement_shape):
            raise ValueError(f"guide: its context_shape {ctx} differs from the problem's measurement "
                             f"shape {tuple(problem.measurement_shape)}")
        out = _flow_output_shape(flow)
        transforms: list[Any] = [flow]
        self.reshape = out != self.site_shape
        if self.reshape:
            if not problem.has_latent or math.prod(out) != math.prod(self.site_shape):
                raise ValueError(f"guide: its output shape {out} does not match the site {self.site!r} of "
                                 f"shape {self.site_shape}")
            transforms.append(dist.transforms.ReshapeTransform(out, self.site_shape))
        self.output_shape: Shape = out
        self.conditional = dist.ConditionalTransformedDistribution(flow.conditional_base(), transforms)

    def distribution(self, y: Tensor) -> dist.TransformedDistribution:
        """:math:`q(\\cdot\\mid y)` for ``y (B, *measurement_shape)``: batch ``(B,)``, event ``site_shape``."""
        return self.conditional.condition(y)

    def __call__(self, y: Tensor | None = None, batch_size: int | None = None) -> Tensor:
        if y is None:
            raise ValueError("y: the variational guide needs the measurements it is conditioned on")
        y = as_measurement_batch(y, "y", self.problem.measurement_shape)
        pyro.module(MODULE_NAME, self.flow)
        _check_param_store(self.flow)
        with pyro.plate("measurements", y.shape[0]):
            return pyro.sample(self.site, self.distribution(y))


def _check_param_store(flow: nn.Module) -> None:
    """Refuse to run when Pyro's param store holds other tensors under ``guide_flow`` (stale run)."""
    store = pyro.get_param_store()
    for name, p in flow.named_parameters():
        full = f"{MODULE_NAME}$$${name}"
        if p.requires_grad and full in store and store[full] is not p:
            raise RuntimeError(
                f"guide: Pyro's param store already holds a different {MODULE_NAME!r} module (from another "
                "guide); run inside `with pyro.get_param_store().scope():` or call pyro.clear_param_store()")


def _problem_dtype(problem: InverseProblem) -> torch.dtype:
    """The prior's floating dtype, or the operator's when the prior has no tensors (energies)."""
    prior = problem.prior
    if any(t.is_floating_point() for t in list(prior.parameters()) + list(prior.buffers())):
        return prior.dtype
    return problem.operator.dtype


#: CPU-sized default guide (100 draws of 64x64 in < 1 s): 4 steps per level, 32 hidden channels.
DEFAULT_GLOW = {"steps": 4, "hidden": 32, "cond_hidden": 32}


def default_guide(problem: InverseProblem, seed: int = 0) -> ConditionalGlow:
    """The default guide of :func:`fit_variational`: a ConditionalGlow on the latent site.

    Image shape: the latent shape when it is image-like ``(C, H, W)`` (Gaussian priors), else
    the image shape (flat Glow latents are reached by a reshape); context: the measurement
    shape; levels: as many (≤ 2) as H and W allow; :data:`DEFAULT_GLOW` otherwise.
    """
    return _default_flow(problem, check_int(seed, "seed", minimum=0))


def _default_flow(problem: InverseProblem, seed: int) -> ConditionalGlow:
    """ConditionalGlow on the site's image shape, with as many levels (≤ 2) as H, W allow."""
    prior = problem.prior
    shape = tuple(problem.image_shape)
    if isinstance(prior, LatentPrior) and len(prior.latent_shape) == 3:
        shape = tuple(prior.latent_shape)
    levels = 0
    while levels < 2 and shape[1] % 2 ** (levels + 1) == 0 and shape[2] % 2 ** (levels + 1) == 0:
        levels += 1
    if levels == 0:
        raise ValueError(f"guide: the default ConditionalGlow needs even H and W, got {shape}; pass "
                         "guide=ConditionalAffineFlow(...) or another conditional flow")
    return ConditionalGlow(shape, problem.measurement_shape, levels=levels, **DEFAULT_GLOW, seed=seed)


# -------------------------------------------------------------------------------------- data
def simulate_dataset(problem: InverseProblem, n: int | None = None, *, images: object = None,
                     seed: int = 0) -> tuple[Tensor, Tensor]:
    """Training pairs ``(x, y)`` for amortised VI: ``y = A(x) + ε`` with ``x`` from the prior or given.

    Parameters
    ----------
    n
        Number of pairs drawn from the prior (priors that can sample); ignored with ``images``.
    images
        Training images ``(N, C, H, W)`` to simulate measurements of (energy priors need them).
    seed
        Seeds the prior draws and the noise.

    Returns
    -------
    x ``(N, C, H, W)`` and y ``(N, *measurement_shape)``.
    """
    gen = make_generator(check_int(seed, "seed", minimum=0))
    if images is None:
        if n is None:
            raise ValueError("n: give the number of pairs to draw from the prior, or images")
        n = check_int(n, "n")
        try:
            with torch.no_grad():
                x = problem.prior.sample(n, generator=gen)
        except NotImplementedError:
            raise ValueError(f"images: {type(problem.prior).__name__} cannot be sampled; give training "
                             "images") from None
    else:
        x = problem.check_image(images, "images")
    x = x.to(problem.device)
    y = problem.simulate(x, generator=make_generator(check_int(seed, "seed", minimum=0) + 1, x.device))
    return x, y


# ----------------------------------------------------------------------------- RNG, optimiser
@contextmanager
def _forked_rng(seed: int | None, device: torch.device):
    """Fork the global torch RNG (CPU and, where used, the CUDA device) and seed it.

    ``seed=None`` does not fork: draws then advance the caller's global RNG as usual.
    """
    if seed is None:
        yield
        return
    devices = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


class _OptimState:
    """One-optimizer view (``state_dict``) of Pyro's per-parameter optimisers, for checkpoints.

    Pyro's :class:`~pyro.optim.PyroOptim` keeps one torch optimiser per parameter; this adapter
    joins their state dicts (parameter ``i`` = ``names[i]``) into the layout of a single torch
    optimiser so :func:`bayesinv.flows.train.save_checkpoint` can store it, and splits it back.
    """

    def __init__(self, optim: pyro.optim.PyroOptim, names: list[str]) -> None:
        self.optim = optim
        self.names = names

    def state_dict(self) -> dict[str, Any]:
        per = self.optim.get_state()
        state: dict[int, Any] = {}
        groups: list[dict[str, Any]] = []
        for i, name in enumerate(self.names):
            sd = per.get(name)
            if sd is None:
                continue
            if sd["state"]:
                state[i] = next(iter(sd["state"].values()))
            groups.append({**sd["param_groups"][0], "params": [i]})
        return {"state": state, "param_groups": groups}

    def load(self, combined: dict[str, Any]) -> None:
        per: dict[str, Any] = {}
        for group in combined["param_groups"]:
            (i,) = group["params"]
            g = {k: (tuple(v) if k == "betas" else v) for k, v in group.items()}
            g["params"] = [0]
            st = combined["state"].get(i)
            per[self.names[i]] = {"state": {0: st} if st is not None else {}, "param_groups": [g]}
        self.optim.set_state(per)


# ---------------------------------------------------------------------------------- the fit
_RUN_KEYS = ("mode", "lr", "num_particles", "vectorize_particles", "batch_size", "seed", "lr_decay", "grad_clip", "val_every")


def fit_variational(
    problem: InverseProblem,
    y_or_dataset: object,
    *,
    guide: nn.Module | None = None,
    mode: str = "single",
    steps: int = 2000,
    lr: float = 2e-4,
    num_particles: int = 1,
    vectorize_particles: bool = False,
    batch_size: int = 32,
    val_fraction: float = 0.1,
    val_data: object = None,
    val_every: int = 100,
    early_stopping_patience: int | None = None,
    min_delta: float = 0.0,
    lr_decay: float = 1.0,
    grad_clip: float | None = None,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 500,
    resume: bool = True,
    seed: int = 0,
    progress: bool | None = None,
    truth: object = None,
    loss_curve_path: str | os.PathLike | None = None,
) -> VariationalPosterior:
    r"""Fit a conditional-flow variational posterior by backward KL (Pyro SVI, Trace_ELBO).

    Minimises :math:`\mathbb E_y\,\mathbb E_{\varepsilon}[\tfrac{1}{2\sigma^2}\|A(x)-y\|^2
    - \log p(x\text{ or }z) - \log|\det\nabla_\varepsilon T_\theta(\varepsilon; y)|]`, i.e. the
    negative ELBO of ``problem.model`` with the guide :class:`VariationalGuide` (module
    docstring; WPPFlow, Altekrüger & Hertrich 2023).

    Parameters
    ----------
    problem
        The inverse problem.
    y_or_dataset
        ``mode="single"``: one measurement ``measurement_shape`` or ``(1, *measurement_shape)``.
        ``mode="amortized"``: ``N ≥ 2`` measurements ``(N, *measurement_shape)`` (e.g. the ``y`` of
        :func:`simulate_dataset`) or the pair ``(x, y)`` it returns.
    guide
        A conditional flow (:class:`~bayesinv.flows.conditional.ConditionalGlow`,
        :class:`ConditionalAffineFlow`) with ``context_shape = measurement_shape`` and an output of
        the model's latent site shape; default a ConditionalGlow. Trained in place, moved to the
        problem's device and dtype.
    mode
        ``"single"`` or ``"amortized"``.
    steps
        Total number of SVI steps (counting those of a resumed checkpoint).
    lr, lr_decay, grad_clip
        Adam learning rate (2e-4, WPPFlow's), per-step decay such that the lr after ``steps``
        steps is ``lr * lr_decay`` (Pyro ClippedAdam's ``lrd = lr_decay**(1/steps)``), and an
        elementwise gradient clip (``None``: none).
    num_particles, vectorize_particles
        Monte-Carlo draws of the ELBO per measurement and step; ``vectorize_particles`` draws
        them in one pass through an extra leading plate (Pyro's ``vectorize_particles``), which
        needs a prior, operator and flow that broadcast over leading axes (the Gaussian and
        energy priors, the matrix operators and both guide families do).
    batch_size
        Amortised mode: measurements per step, drawn uniformly with replacement; the model and
        guide are scaled by ``1/batch_size``, so the loss is the per-measurement mean.
    val_fraction, val_data
        Amortised mode: held-out measurements, given (``val_data``) or split off the data set
        (``val_fraction`` of it, at least one; 0 disables validation). Their mean −ELBO (fixed
        noise) is recorded every ``val_every`` steps and at the end.
    val_every, early_stopping_patience, min_delta
        Early stopping, checked every ``val_every`` steps: stop when the monitored loss — the
        validation −ELBO (amortised) or the mean training loss of the last ``val_every`` steps
        (single mode, a smoothed-loss plateau) — has not improved on its best by more than
        ``min_delta`` for ``early_stopping_patience`` checks (``None``: never stop early).
    checkpoint, checkpoint_every, resume
        Safetensors checkpoint (guide weights, optimiser state, RNG states, histories; atomic,
        no pickle; :func:`bayesinv.flows.train.save_checkpoint`) written every ``checkpoint_every``
        steps and at the end; with ``resume`` an existing one is continued exactly.
    seed
        Seeds the guide's default initialisation, the minibatches and the forked global RNG that
        Pyro draws the reparametrised noise from.
    progress
        tqdm bar (``None``: only on a terminal).
    truth
        Ground-truth image (single mode), kept for :meth:`VariationalPosterior.posterior`.
    loss_curve_path
        Write the loss curve as ``<path>.json`` and ``<path>.png``.

    Returns
    -------
    VariationalPosterior
        ``settings["loss_trend"]`` / ``settings["converged"]``: :func:`loss_trend` of the step
        losses (``None`` for fewer than 20 steps).

    Warns
    -----
    NotConvergedWarning
        When the −ELBO was still falling at the end (:func:`loss_trend`; not after early
        stopping). Measured on sparse-view CT with the shipped Glow (benchmarks/bench_uncertainty.py,
        6 prior-simulated problems): an affine guide stopped after 300 steps at lr 3e-4 covered
        77 % of pixels with its 90 % intervals, the converged fit (1 500 steps at 1e-3) 91 %.

    Raises
    ------
    FloatingPointError
        When the loss or a gradient becomes NaN/inf, naming the step and likely causes; the
        parameters are not updated with the bad gradient.
    ValueError, TypeError
        For bad arguments, naming the argument.
    """
    if not isinstance(problem, InverseProblem):
        raise TypeError(f"problem: expected an InverseProblem, got {type(problem).__name__}")
    check_choice(mode, "mode", MODES)
    steps = check_int(steps, "steps")
    lr = check_positive(lr, "lr")
    num_particles = check_int(num_particles, "num_particles")
    batch_size = check_int(batch_size, "batch_size")
    val_every = check_int(val_every, "val_every")
    checkpoint_every = check_int(checkpoint_every, "checkpoint_every")
    seed = check_int(seed, "seed", minimum=0)
    min_delta = check_positive(min_delta, "min_delta", allow_zero=True)
    lr_decay = check_positive(lr_decay, "lr_decay")
    if lr_decay > 1:
        raise ValueError(f"lr_decay: expected a factor in (0, 1], got {lr_decay}")
    if grad_clip is not None:
        grad_clip = check_positive(grad_clip, "grad_clip")
    if early_stopping_patience is not None:
        early_stopping_patience = check_int(early_stopping_patience, "early_stopping_patience")
    val_fraction = float(val_fraction)
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction: expected a fraction in [0, 1), got {val_fraction}")
    if not isinstance(resume, bool):
        raise TypeError(f"resume: expected a bool, got {resume!r}")

    dev, dtype = problem.device, _problem_dtype(problem)
    if isinstance(y_or_dataset, tuple) and len(y_or_dataset) == 2:
        y_or_dataset = y_or_dataset[1]
    data = problem.check_measurement(y_or_dataset, "y_or_dataset").to(dtype)
    val: Tensor | None = None
    if mode == "single":
        if data.shape[0] != 1:
            raise ValueError(f"y_or_dataset: mode='single' fits one measurement, got a batch of "
                             f"{data.shape[0]}; use mode='amortized'")
        if val_data is not None:
            raise ValueError("val_data: only used with mode='amortized'")
    else:
        if val_data is not None:
            val = problem.check_measurement(val_data, "val_data").to(dtype)
        elif val_fraction > 0:
            if data.shape[0] < 2:
                raise ValueError(f"y_or_dataset: mode='amortized' with val_fraction > 0 needs at least 2 "
                                 f"measurements, got {data.shape[0]}")
            perm = torch.randperm(data.shape[0], generator=torch.Generator().manual_seed(seed + _SPLIT_SEED_OFFSET))
            n_val = max(1, round(val_fraction * data.shape[0]))
            val, data = data[perm[:n_val].to(dev)], data[perm[n_val:].to(dev)]
    truth_t = None if truth is None else problem.check_image(truth, "truth")[0]

    flow = _default_flow(problem, seed) if guide is None else guide
    if not isinstance(flow, nn.Module):
        raise TypeError(f"guide: expected a conditional flow module, got {type(flow).__name__}")
    flow.to(device=dev, dtype=dtype)
    vguide = VariationalGuide(problem, flow)
    names = [f"{MODULE_NAME}$$${n}" for n, p in flow.named_parameters() if p.requires_grad]
    if not names:
        raise ValueError("guide: has no trainable parameters")

    run_config = {"mode": mode, "lr": lr, "num_particles": num_particles,
                  "vectorize_particles": vectorize_particles,
                  "batch_size": batch_size if mode == "amortized" else 1, "seed": seed,
                  "lr_decay": lr_decay, "grad_clip": grad_clip, "val_every": val_every,
                  "guide_class": type(flow).__name__, "guide_config": _jsonable(getattr(flow, "config", {})),
                  "param_names": names}
    sigma = problem.noise.sigma
    weight = getattr(problem.prior, "weight", None)
    hint = (f"learning rate too high (lr={lr:g}; lower it or set grad_clip), a very sharp likelihood "
            f"(sigma={sigma:g}: a small sigma makes the data term and its gradients large)"
            + (f", a large prior weight (lambda={weight:g})" if weight is not None else "")
            + ", or an unbounded flow scale")

    def scaled_model(y: Tensor) -> Tensor:
        with poutine.scale(scale=1.0 / y.shape[0]):
            return problem.model(y)

    def scaled_guide(y: Tensor) -> Tensor:
        with poutine.scale(scale=1.0 / y.shape[0]):
            return vguide(y)

    if not isinstance(vectorize_particles, bool):
        raise TypeError(f"vectorize_particles: expected a bool, got {vectorize_particles!r}")
    elbo = Trace_ELBO(num_particles=num_particles, vectorize_particles=vectorize_particles,
                      max_plate_nesting=1)
    optim = pyro.optim.ClippedAdam({"lr": lr, "lrd": lr_decay ** (1.0 / steps),
                                    "clip_norm": grad_clip if grad_clip is not None else math.inf})
    svi = SVI(scaled_model, scaled_guide, optim, loss=elbo)
    adapter = _OptimState(optim, names)
    gen = torch.Generator().manual_seed(seed)
    ckpt_path = Path(checkpoint) if checkpoint is not None else None
    train_loss: list[float] = []
    mon_steps: list[int] = []
    mon_loss: list[float] = []
    start_step = 0
    stopped_early = False
    t0 = time.perf_counter()

    def val_loss() -> float:
        assert val is not None
        with _forked_rng(seed + _VAL_SEED_OFFSET, dev), torch.no_grad(), pyro.validation_enabled(False):
            total = 0.0
            for s in range(0, val.shape[0], batch_size):
                yb = val[s:s + batch_size]
                total += elbo.loss(scaled_model, scaled_guide, yb) * yb.shape[0]
        return total / val.shape[0]

    with pyro.get_param_store().scope(), _forked_rng(seed, dev):
        if ckpt_path is not None and resume and ckpt_path.exists():
            ckpt = load_checkpoint(ckpt_path)
            _restore_guide(ckpt, flow, run_config)
            adapter.load(ckpt.optimizer_state)
            gen.set_state(ckpt.generator_state)
            torch.set_rng_state(ckpt.torch_rng_state)
            if dev.type == "cuda" and ckpt.cuda_rng_state is not None:
                torch.cuda.set_rng_state(ckpt.cuda_rng_state, dev)
            start_step = ckpt.step
            train_loss, mon_steps, mon_loss = ckpt.train_loss, ckpt.val_steps, ckpt.val_nll
            stopped_early = bool(ckpt.config.get("stopped_early", False))

        def save(step: int) -> None:
            save_checkpoint(ckpt_path, model=flow, optimizer=adapter, step=step, generator=gen,  # type: ignore[arg-type]
                            train_loss=train_loss, val_steps=mon_steps, val_nll=mon_loss,
                            config={**run_config, "stopped_early": stopped_early},
                            cuda_device=dev if dev.type == "cuda" else None)

        bar = progress_bar(steps, f"vi ({mode})", progress)
        bar.update(min(start_step, steps))
        step = start_step
        try:
            while step < steps and not stopped_early:
                step += 1
                if mode == "single":
                    yb = data
                else:
                    idx = torch.randint(data.shape[0], (batch_size,), generator=gen)
                    yb = data[idx.to(dev)]
                with pyro.validation_enabled(False):  # our own NaN guard; validation costs ~30%
                    loss = _svi_step(svi, yb, step, hint)
                train_loss.append(loss)
                if step % val_every == 0:
                    if mode == "amortized" and val is not None:
                        m = val_loss()
                        check_loss_finite(m, step, "fit_variational (validation -ELBO)", hint)
                    else:
                        m = float(sum(train_loss[-val_every:]) / len(train_loss[-val_every:]))
                    mon_steps.append(step)
                    mon_loss.append(m)
                    if early_stopping_patience is not None:
                        stopped_early = _plateaued(mon_loss, early_stopping_patience, min_delta)
                if ckpt_path is not None and (step % checkpoint_every == 0 or step == steps or stopped_early):
                    save(step)
                bar.update(1)
                if step % 10 == 0:
                    bar.set_postfix(loss=f"{loss:.4g}")
        finally:
            bar.close()
        final_val = None
        if val is not None:
            final_val = mon_loss[-1] if mon_steps and mon_steps[-1] == step else val_loss()
    fit_s = time.perf_counter() - t0

    tail = train_loss[-min(len(train_loss), val_every):]
    final_loss = float(sum(tail) / len(tail)) if tail else float("nan")
    trend = loss_trend(train_loss)
    still_falling = bool(trend is not None and trend["still_falling"] and not stopped_early)
    if still_falling:
        warnings.warn(
            f"fit_variational: the -ELBO was still falling at the end of the fit (the mean step loss "
            f"of the last {trend['window']} steps is {trend['drop']:.4g} ± {trend['se']:.4g} nats "
            f"below the {trend['window']} before); the guide has not converged, and an unconverged "
            "backward-KL fit usually has too small a spread (over-confident intervals). Raise "
            "`steps` or `lr` (or resume from the checkpoint with more steps).",
            NotConvergedWarning, stacklevel=2)
    settings = {
        "steps": steps, "steps_run": len(train_loss), "lr": lr, "lr_decay": lr_decay,
        "grad_clip": grad_clip, "mode": mode, "num_particles": num_particles,
        "vectorize_particles": vectorize_particles, "batch_size": run_config["batch_size"], "num_train": int(data.shape[0]),
        "num_val": 0 if val is None else int(val.shape[0]), "val_every": val_every,
        "early_stopping_patience": early_stopping_patience, "stopped_early": stopped_early,
        "final_loss": final_loss, "final_elbo": -final_loss,
        "final_val_loss": final_val, "loss_trend": trend, "converged": None if trend is None else not still_falling,
        "objective": "backward KL, Trace_ELBO (reparametrised), per-measurement mean",
        "site": vguide.site, "guide_class": type(flow).__name__,
        "guide_config": run_config["guide_config"], "checkpoint": None if ckpt_path is None else str(ckpt_path),
    }
    history = {"loss": list(train_loss), "monitor_steps": list(mon_steps), "monitor_loss": list(mon_loss),
               "monitor": "val_loss" if val is not None else "smoothed_train_loss"}
    result = VariationalPosterior(problem, vguide, history=history, settings=settings, seed=seed,
                                  timings={"fit_s": fit_s}, y=data[0] if mode == "single" else None,
                                  truth=truth_t)
    if loss_curve_path is not None:
        result.save_loss_curve(loss_curve_path)
    return result


class NotConvergedWarning(UserWarning):
    """A fit ended while its objective was still improving (raise the number of steps)."""


def loss_trend(loss: Sequence[float], fraction: float = 0.2, min_window: int = 10,
               threshold: float = 3.0, min_drop: float = 0.5) -> dict[str, float | int | bool] | None:
    r"""Whether a stochastic loss curve was still falling at its end.

    Compares the last window of ``w = max(min_window, ⌊fraction·n⌋)`` step losses with the ``w``
    before it (Welch): :math:`\Delta = \bar\ell_{\text{prev}} - \bar\ell_{\text{last}}`,
    :math:`\mathrm{se} = \sqrt{s^2_{\text{prev}}/w + s^2_{\text{last}}/w}`, and
    ``still_falling`` when :math:`\Delta > \max(\text{threshold}\cdot\mathrm{se},\ \text{min\_drop})`:
    the decrease is larger than the step-to-step Monte-Carlo noise of the −ELBO explains, and not
    negligible (a KL change under half a nat is). Treating the steps as independent understates
    ``se`` a little when the parameters still drift; ``threshold = 3`` leaves room for that.

    Parameters
    ----------
    loss
        Step losses in order (e.g. ``VariationalPosterior.loss_curve``).
    fraction, min_window
        Window size as a fraction of the curve, and its minimum.
    threshold, min_drop
        Decrease, in standard errors and in nats, above which the curve counts as still falling.

    Returns
    -------
    dict or None
        ``window``, ``drop`` (Δ, nats), ``se``, ``z = Δ/se`` and ``still_falling``; ``None``
        when the curve is shorter than ``2·min_window`` steps.
    """
    if not 0.0 < fraction <= 0.5:
        raise ValueError(f"fraction: expected a number in (0, 0.5], got {fraction!r}")
    if isinstance(min_window, bool) or not isinstance(min_window, int) or min_window < 2:
        raise ValueError(f"min_window: expected an integer >= 2, got {min_window!r}")
    values = np.asarray(list(loss), dtype=np.float64)
    n = values.size
    w = max(min_window, int(fraction * n))
    if n < 2 * w:
        return None
    last, prev = values[n - w:], values[n - 2 * w:n - w]
    drop = float(prev.mean() - last.mean())
    se = float(np.sqrt(prev.var(ddof=1) / w + last.var(ddof=1) / w))
    z = drop / se if se > 0 else 0.0  # se = 0: two constant windows, judged on the drop alone
    return {"window": int(w), "drop": drop, "se": se, "z": float(z),
            "still_falling": bool(drop > min_drop and (se == 0 or z > threshold))}


def _svi_step(svi: SVI, yb: Tensor, step: int, hint: str) -> float:
    """``SVI.step`` with a NaN/inf guard between the gradient and the update.

    As :meth:`pyro.infer.SVI.step`: loss and gradients of the ELBO, then the optimiser on the
    parameters seen in the trace; here the loss and the gradients are checked first so a blow-up
    leaves the guide at its last finite state.
    """
    with poutine.trace(param_only=True) as capture:
        loss = svi.loss_and_grads(svi.model, svi.guide, yb)
    params = {site["value"].unconstrained() for site in capture.trace.nodes.values()}
    loss = float(loss)
    try:
        check_loss_finite(loss, step, "fit_variational", hint)
        grads = [p.grad for p in params if p.grad is not None]
        if grads:
            norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))
            if not math.isfinite(norm):
                raise FloatingPointError(f"fit_variational: the gradient became {norm} at step {step} "
                                         f"(loss {loss:.4g}); likely cause: {hint}")
    except FloatingPointError:
        zero_grads(params)
        raise
    svi.optim(params)
    zero_grads(params)
    return loss


def _plateaued(monitored: list[float], patience: int, min_delta: float) -> bool:
    """True when the last ``patience`` monitored values did not beat the best before them by ``min_delta``."""
    if len(monitored) <= patience:
        return False
    best_before = min(monitored[:-patience])
    return min(monitored[-patience:]) > best_before - min_delta


def _restore_guide(ckpt: Any, flow: nn.Module, run_config: dict[str, Any]) -> None:
    saved = ckpt.config
    for key in ("guide_class", "guide_config", "param_names"):
        if saved.get(key) != run_config[key]:
            raise ValueError(f"checkpoint: {str(ckpt.path)!r} was written for another guide ({key}: "
                             f"{saved.get(key)!r} != {run_config[key]!r})")
    changed = {k: (saved.get(k), run_config[k]) for k in _RUN_KEYS if saved.get(k) != run_config[k]}
    if changed:
        warnings.warn(f"checkpoint {str(ckpt.path)!r}: resuming with changed settings {changed}; the run "
                      "will not reproduce an uninterrupted one", UserWarning, stacklevel=3)
    own = flow.state_dict()
    bad = sorted(set(own) ^ set(ckpt.model_state)) + [
        k for k in own if k in ckpt.model_state and own[k].shape != ckpt.model_state[k].shape]
    if bad:
        raise ValueError(f"checkpoint: {str(ckpt.path)!r} does not fit this guide ({bad[:5]})")
    flow.load_state_dict({k: v.to(own[k].dtype) for k, v in ckpt.model_state.items()}, strict=True)


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=lambda o: list(o) if isinstance(o, tuple) else str(o)))


# ---------------------------------------------------------------------------------- the result
class VariationalPosterior:
    r"""A fitted variational posterior :math:`q_\theta(\cdot\mid y)` and how it was fitted.

    Attributes
    ----------
    problem, guide
        The inverse problem and the :class:`VariationalGuide` (``guide.flow`` is the trained flow).
    history
        ``loss`` (per-step −ELBO per measurement, nats), ``monitor_steps``/``monitor_loss`` (the
        validation −ELBO, or the smoothed training loss in single mode).
    settings, seed, timings
        Provenance: the fit's settings (including ``final_elbo``), the seed, wall times.
    y, truth
        The measurement of a single-``y`` fit and the ground truth when given.
    """

    def __init__(self, problem: InverseProblem, guide: VariationalGuide, *, history: dict[str, Any],
                 settings: dict[str, Any], seed: int | None, timings: dict[str, float],
                 y: Tensor | None = None, truth: Tensor | None = None) -> None:
        self.problem = problem
        self.guide = guide
        self.history = history
        self.settings = settings
        self.seed = seed
        self.timings = dict(timings)
        self.y = y
        self.truth = truth

    @property
    def flow(self) -> nn.Module:
        return self.guide.flow

    @property
    def loss_curve(self) -> list[float]:
        """Per-step −ELBO (per measurement)."""
        return list(self.history["loss"])

    def _y(self, y: object) -> Tensor:
        if y is None:
            if self.y is None:
                raise ValueError("y: required for an amortised posterior")
            y = self.y
        return self.problem.check_measurement(y).to(_problem_dtype(self.problem))

    def distribution(self, y: object = None) -> dist.Distribution:
        """:math:`q(\\cdot\\mid y)` on the latent site, batch ``(B,)`` (``y`` default: the fitted one)."""
        return self.guide.distribution(self._y(y))

    def sample_latent(self, y: object = None, n: int = 1, seed: int | None = None) -> Tensor:
        """Draws of the site (``z`` or ``x``): ``(n, *site_shape)`` for one ``y``, ``(n, B, ...)`` for a batch."""
        n = check_int(n, "n")
        yb = self._y(y)
        with _forked_rng(seed, yb.device), torch.no_grad():
            v = self.guide.distribution(yb).sample((n,))
        return v[:, 0] if yb.shape[0] == 1 else v

    def _to_image(self, v: Tensor) -> Tensor:
        prior = self.problem.prior
        if not self.problem.has_latent:
            return v
        lead = v.shape[:v.dim() - len(prior.latent_shape)]
        with torch.no_grad():
            x = prior.generate(v.reshape(-1, *prior.latent_shape))
        return x.reshape(*lead, *self.problem.image_shape)

    def sample(self, y: object = None, n: int = 1, seed: int | None = None) -> Tensor:
        """Image draws ``(n, C, H, W)`` (``x = G(z)`` for latent priors); ``(n, B, C, H, W)`` for a batch."""
        return self._to_image(self.sample_latent(y, n, seed))

    def log_prob(self, value: Tensor, y: object = None, space: str | None = None) -> Tensor:
        r""":math:`\log q(\text{value}\mid y)`.

        ``space="latent"`` (default for latent priors): ``value`` is ``z`` (the guide's site).
        ``space="image"``: ``value`` is an image ``x``; for latent priors
        :math:`\log q_x(x) = \log q_z(G^{-1}(x)) + \log|\det\nabla G^{-1}(x)|`.
        ``value`` has shape ``(..., *site_shape)``, broadcast against the batch of ``y``.
        """
        space = ("latent" if self.problem.has_latent else "image") if space is None else space
        check_choice(space, "space", ("latent", "image"))
        value = as_tensor(value, "value").to(_problem_dtype(self.problem))
        d = self.guide.distribution(self._y(y))
        if space == "image" and self.problem.has_latent:
            shp = tuple(self.problem.image_shape)
            if value.dim() < 3 or tuple(value.shape[-3:]) != shp:
                raise ValueError(f"value: expected images of trailing shape {shp}, got {tuple(value.shape)}")
            lead = value.shape[:-3]
            z, ld = self.problem.prior.encode(value.reshape(-1, *shp))
            z = z.reshape(*lead, *self.guide.site_shape)
            return d.log_prob(z) + ld.reshape(lead)
        n = len(self.guide.site_shape)
        if value.dim() < n or tuple(value.shape[value.dim() - n:]) != self.guide.site_shape:
            raise ValueError(f"value: expected trailing shape {self.guide.site_shape}, got {tuple(value.shape)}")
        return d.log_prob(value)

    def posterior(self, y: object = None, n: int = 100, truth: object = None, seed: int | None = 0) -> Posterior:
        """``n`` independent draws of :math:`q(x\\mid y)` as a :class:`Posterior` (method ``"vi"``)."""
        n = check_int(n, "n")
        yb = self._y(y)
        if yb.shape[0] != 1:
            raise ValueError(f"y: expected a single measurement, got a batch of {yb.shape[0]}")
        if truth is None and y is None:
            truth = self.truth
        truth_t = None if truth is None else self.problem.check_image(truth, "truth")[0]
        t0 = time.perf_counter()
        latent = self.sample_latent(yb, n, seed)
        x = self._to_image(latent)
        sample_s = time.perf_counter() - t0
        return Posterior(
            samples=x[None], method="vi", kind="independent",
            latent_samples=latent[None] if self.problem.has_latent else None,
            observed=yb[0], truth=truth_t, settings=dict(self.settings), seed=seed,
            timings={**self.timings, "sample_s": sample_s}, problem=self.problem.describe())

    # -- files ----------------------------------------------------------------------------------
    def save_loss_curve(self, path: str | os.PathLike) -> tuple[Path, Path]:
        """Write the loss curve to ``<path>.json`` and a plot to ``<path>.png`` (atomically)."""
        path = Path(path)
        jpath, ppath = path.with_suffix(".json"), path.with_suffix(".png")
        _atomic_write(jpath, json.dumps(_json_safe({**self.history, "settings": self.settings}), indent=1).encode())
        import io as _io

        import matplotlib
        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 3.2))
        ax.plot(range(1, len(self.history["loss"]) + 1), self.history["loss"], lw=0.6, alpha=0.6, label="step −ELBO")
        if self.history["monitor_steps"]:
            ax.plot(self.history["monitor_steps"], self.history["monitor_loss"], "o-", ms=3,
                    label=self.history["monitor"])
        ax.set_xlabel("step")
        ax.set_ylabel("−ELBO per measurement")
        ax.legend()
        fig.tight_layout()
        buf = _io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
        plt.close(fig)
        _atomic_write(ppath, buf.getvalue())
        return jpath, ppath

    def save(self, path: str | os.PathLike) -> Path:
        """Save the guide weights (``path``, safetensors) and a JSON sidecar (``path.with_suffix('.json')``).

        No pickle: the sidecar holds the guide class and constructor config, the settings, the
        loss history, the problem description, and the size and SHA-256 of the weights.
        """
        path = Path(path)
        cpath = path.with_suffix(".json")
        if cpath.resolve() == path.resolve():
            raise ValueError(f"path: must not end in .json (the sidecar is {cpath})")
        name = type(self.flow).__name__
        if guide_classes().get(name) is not type(self.flow):
            raise TypeError(f"guide: cannot save a {name}; expected one of {sorted(guide_classes())}")
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.flow.state_dict().items()}
        data = st_save(tensors, metadata={"format": FORMAT})
        meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "guide_class": name,
                "guide_config": _jsonable(self.flow.config), "site": self.guide.site,
                "site_shape": list(self.guide.site_shape), "settings": self.settings,
                "history": self.history, "seed": self.seed, "timings": self.timings,
                "y": None if self.y is None else self.y.detach().cpu().reshape(-1).tolist(),
                "truth": None if self.truth is None else self.truth.detach().cpu().reshape(-1).tolist(),
                "problem": _jsonable(self.problem.describe()),
                "weights": {"file": path.name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}}
        _atomic_write(path, data)
        _atomic_write(cpath, (json.dumps(_json_safe(meta), indent=1) + "\n").encode())
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, problem: InverseProblem) -> VariationalPosterior:
        """Rebuild a posterior saved by :meth:`save` for ``problem`` (checked against the file)."""
        path = Path(path)
        cpath = path.with_suffix(".json")
        try:
            meta = json.loads(cpath.read_text())
        except FileNotFoundError:
            raise ValueError(f"{cpath}: variational posterior sidecar not found") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{cpath}: not valid JSON ({e})") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{cpath}: not a {FORMAT} file of version {FORMAT_VERSION}")
        gcls = guide_classes().get(meta.get("guide_class"))
        if gcls is None:
            raise ValueError(f"{cpath}: unknown guide class {meta.get('guide_class')!r}")
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ValueError(f"{path}: weights file not found") from None
        w = meta.get("weights", {})
        if len(data) != w.get("size") or hashlib.sha256(data).hexdigest() != w.get("sha256"):
            raise ValueError(f"{path}: size/SHA-256 mismatch with {cpath.name} (truncated or corrupted)")
        flow = gcls(**meta["guide_config"])
        tensors = st_load(data)
        own = flow.state_dict()
        if set(own) != set(tensors) or any(own[k].shape != tensors[k].shape for k in own):
            raise ValueError(f"{path}: weights do not match the {gcls.__name__} config in {cpath.name}")
        floats = {t.dtype for t in tensors.values() if t.is_floating_point()}
        if len(floats) == 1:
            flow = flow.to(floats.pop())
        flow.load_state_dict(tensors, strict=True)
        flow.to(device=problem.device, dtype=_problem_dtype(problem))
        guide = VariationalGuide(problem, flow)
        if guide.site != meta.get("site") or list(guide.site_shape) != meta.get("site_shape"):
            raise ValueError(f"problem: its latent site {guide.site!r} {guide.site_shape} differs from the "
                             f"saved one {meta.get('site')!r} {meta.get('site_shape')}")
        if _jsonable(problem.describe()) != meta.get("problem"):
            warnings.warn(f"{cpath}: the problem differs from the one the posterior was fitted to",
                          UserWarning, stacklevel=2)
        dtype = _problem_dtype(problem)
        y = None if meta.get("y") is None else torch.tensor(meta["y"], dtype=dtype).reshape(
            problem.measurement_shape).to(problem.device)
        truth = None if meta.get("truth") is None else torch.tensor(meta["truth"], dtype=dtype).reshape(
            problem.image_shape)
        return cls(problem, guide, history=meta["history"], settings=meta["settings"], seed=meta.get("seed"),
                   timings=meta.get("timings", {}), y=y, truth=truth)

    def __repr__(self) -> str:
        return (f"VariationalPosterior(guide={type(self.flow).__name__}, site={self.guide.site!r}, "
                f"mode={self.settings.get('mode')!r}, steps_run={self.settings.get('steps_run')}, "
                f"final_elbo={self.settings.get('final_elbo')})")
