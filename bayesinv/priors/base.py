r"""Priors on images.

Two families share one interface (:class:`Prior`):

* :class:`LatentPrior` — a pushforward :math:`x = G(z)`, :math:`z \sim \mathcal N(0, I)` of a
  bijection :math:`G` (an affine map for :class:`~bayesinv.priors.GaussianPrior`, a normalizing
  flow for :class:`~bayesinv.priors.FlowPrior`). Its density follows from the change of
  variables :math:`\log p(x) = \log \mathcal N(G^{-1}(x); 0, I) + \log|\det \nabla G^{-1}(x)|`.
  In a Pyro model it samples the latent site ``"z"`` and records ``"x"`` as a deterministic
  site.
* :class:`EnergyPrior` — an unnormalised density :math:`p(x) \propto \exp(-\lambda R(x))` on the
  image itself (patchNR, Wasserstein patch prior). In a Pyro model it places an improper flat
  site ``"x"`` and adds ``pyro.factor("prior", -λ R(x))``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor, nn

from .._checks import Shape, check_int

_LOG_2PI = math.log(2.0 * math.pi)


def standard_normal_log_prob(z: Tensor, event_dims: int) -> Tensor:
    r""":math:`\log \mathcal N(z; 0, I)` summed over the trailing ``event_dims`` axes."""
    d = math.prod(z.shape[z.dim() - event_dims:])
    return -0.5 * z.pow(2).flatten(z.dim() - event_dims).sum(-1) - 0.5 * d * _LOG_2PI


class Prior(nn.Module, ABC):
    """A prior distribution on images of shape ``image_shape = (C, H, W)``."""

    #: Whether the prior is a pushforward of latents (site ``"z"``) rather than an energy on x.
    has_latent: bool = False

    def __init__(self, image_shape: Shape) -> None:
        super().__init__()
        self.image_shape: Shape = tuple(int(s) for s in image_shape)
        if len(self.image_shape) != 3 or min(self.image_shape) < 1:
            raise ValueError(f"image_shape: expected (C, H, W) with positive sizes, got {image_shape}")

    @property
    def device(self) -> torch.device:
        """Device of the prior's parameters/buffers (CPU when it has none)."""
        return _first_floating(self).device

    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype of the prior's parameters/buffers (the default dtype when none)."""
        return _first_floating(self).dtype

    @abstractmethod
    def log_prob(self, x: Tensor) -> Tensor:
        """Log density of images ``(B, C, H, W)`` -> ``(B,)`` (up to a constant for energies)."""

    @abstractmethod
    def pyro_sample(self) -> Tensor:
        """Place the prior in a Pyro model and return the image ``x``."""

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Draw ``n`` images ``(n, C, H, W)``."""
        raise NotImplementedError(f"{type(self).__name__} cannot be sampled directly")

    def describe(self) -> dict[str, object]:
        """A JSON-serialisable description for provenance."""
        return {"name": type(self).__name__, "image_shape": list(self.image_shape), **self._settings()}

    def _settings(self) -> dict[str, object]:
        return {}


class LatentPrior(Prior):
    r"""A prior :math:`x = G(z)`, :math:`z \sim \mathcal N(0, I_{\text{latent\_shape}})`.

    Subclasses implement :meth:`generate` (:math:`G`) and :meth:`encode`
    (:math:`G^{-1}` with :math:`\log|\det\nabla G^{-1}|`).
    """

    has_latent = True

    def __init__(self, image_shape: Shape, latent_shape: Shape) -> None:
        super().__init__(image_shape)
        self.latent_shape: Shape = tuple(int(s) for s in latent_shape)

    @abstractmethod
    def generate(self, z: Tensor) -> Tensor:
        """:math:`x = G(z)` for latents ``(..., *latent_shape)``."""

    @abstractmethod
    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        r"""Return :math:`z = G^{-1}(x)` and :math:`\log|\det \nabla G^{-1}(x)|` (per image)."""

    def log_prob(self, x: Tensor) -> Tensor:
        n = len(self.image_shape)
        if not isinstance(x, Tensor):
            raise TypeError(f"x: expected a torch.Tensor, got {type(x).__name__}")
        if x.dim() < n or tuple(x.shape[x.dim() - n:]) != tuple(self.image_shape):
            raise ValueError(f"x: expected images of shape (B, {', '.join(map(str, self.image_shape))}), "
                             f"got {tuple(x.shape)}")
        z, log_det = self.encode(x)
        return standard_normal_log_prob(z, len(self.latent_shape)) + log_det

    def latent_log_prob(self, z: Tensor) -> Tensor:
        r""":math:`\log\mathcal N(z; 0, I)` per item."""
        return standard_normal_log_prob(z, len(self.latent_shape))

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        n = check_int(n, "n")
        z = torch.randn((n, *self.latent_shape), generator=generator, dtype=self.dtype,
                        device=generator.device if generator is not None else self.device)
        return self.generate(z.to(self.device))

    def latent_distribution(self) -> dist.Distribution:
        """The standard normal on latents, as a Pyro distribution with event shape latent_shape."""
        zero = torch.zeros((), device=self.device, dtype=self.dtype)
        return dist.Normal(zero, 1.0).expand(self.latent_shape).to_event(len(self.latent_shape))

    def pyro_sample(self) -> Tensor:
        z = pyro.sample("z", self.latent_distribution())
        return pyro.deterministic("x", self.generate(z), event_dim=len(self.image_shape))


class EnergyPrior(Prior):
    r"""An unnormalised image prior :math:`p(x) \propto \exp(-\lambda R(x))`.

    Subclasses implement :meth:`energy` (:math:`R`, per image). ``weight`` is :math:`\lambda`.
    """

    def __init__(self, image_shape: Shape, weight: float = 1.0) -> None:
        super().__init__(image_shape)
        from .._checks import check_positive

        self.weight = check_positive(weight, "weight")

    @abstractmethod
    def energy(self, x: Tensor) -> Tensor:
        """:math:`R(x)` for images ``(B, C, H, W)`` -> ``(B,)``."""

    def log_prob(self, x: Tensor) -> Tensor:
        """:math:`-\\lambda R(x)` (unnormalised)."""
        return -self.weight * self.energy(x)

    def pyro_sample(self) -> Tensor:
        flat = dist.ImproperUniform(dist.constraints.real, (), self.image_shape)
        x = pyro.sample("x", flat)
        pyro.factor("prior", self.log_prob(x))
        return x

    def _settings(self) -> dict[str, object]:
        return {"weight": self.weight}


def _first_floating(module: nn.Module) -> Tensor:
    for t in list(module.parameters()) + list(module.buffers()):
        if t.is_floating_point():
            return t
    return torch.zeros(())
