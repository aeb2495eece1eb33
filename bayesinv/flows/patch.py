r"""The patchNR flow: a dense coupling flow on flattened image patches.

Altekrüger, Denker, Hagemann, Hertrich, Maass & Steidl, *PatchNR: learning from very few images
by patch normalizing flow regularization* (Inverse Problems 2023), reference code
``FrEIA``: ``n_blocks × (GLOWCouplingBlock + PermuteRandom)`` on ``k·k·C`` features, subnets
with two hidden layers of 512 units. A FrEIA GLOW coupling block updates both halves, so each
block here is ``AffineCoupling(parity 0) → AffineCoupling(parity 1) → Permutation`` in the
normalizing direction (patch → latent).

Conventions as in :mod:`bayesinv.flows.layers`: ``flow(z)`` / :meth:`PatchFlow.generate` is the
generative direction :math:`p = T(z)`; :meth:`PatchFlow.encode` returns
:math:`z = T^{-1}(p)` and :math:`\log|\det\nabla T^{-1}(p)|`. The patchNR regulariser is the
per-patch negative log-likelihood without constants,

.. math::

    E(p) = \tfrac12\|T^{-1}(p)\|^2 - \log|\det\nabla T^{-1}(p)|.
"""

from __future__ import annotations

import torch
from pyro.distributions import constraints
from pyro.distributions.torch_transform import TransformModule
from torch import Tensor, nn

from .._checks import check_int, check_positive
from .base import LadjCacheMixin, draw_latents
from .glow import standard_normal_log_prob
from .layers import AffineCoupling, Permutation

__all__ = ["PatchFlow"]


class PatchFlow(LadjCacheMixin, TransformModule):
    """Dense coupling flow on flattened ``patch_size × patch_size × channels`` patches.

    Parameters
    ----------
    patch_size
        Patch side :math:`k`.
    channels
        Image channels :math:`C`; the flow acts on vectors of size ``D = C·k·k`` (>= 2).
    n_blocks
        Number of GLOW coupling blocks (each: two affine couplings + a fixed permutation).
    hidden
        Width of the subnet hidden layers.
    n_hidden_layers
        Number of hidden layers of each subnet.
    clamp
        Bound of the coupling log-scales.
    seed
        Seed of the permutations and of the initialisation.

    Examples
    --------
    >>> flow = PatchFlow(patch_size=4, hidden=32)
    >>> flow.energy(torch.rand(10, 16)).shape
    torch.Size([10])
    """

    bijective = True
    __repr__ = nn.Module.__repr__  # (torch Transform.__repr__ would hide the layers)
    domain = constraints.independent(constraints.real, 1)
    codomain = constraints.independent(constraints.real, 1)

    def __init__(self, patch_size: int = 6, channels: int = 1, n_blocks: int = 5, hidden: int = 512,
                 n_hidden_layers: int = 2, clamp: float = 2.0, seed: int = 0) -> None:
        super().__init__(cache_size=0)
        patch_size = check_int(patch_size, "patch_size")
        channels = check_int(channels, "channels")
        n_blocks = check_int(n_blocks, "n_blocks")
        hidden = check_int(hidden, "hidden")
        n_hidden_layers = check_int(n_hidden_layers, "n_hidden_layers")
        clamp = check_positive(clamp, "clamp")
        seed = check_int(seed, "seed", minimum=0)
        dim = channels * patch_size * patch_size
        if dim < 2:
            raise ValueError(f"patch_size/channels: the patch dimension C·k·k must be >= 2, got {dim}")
        self.patch_size, self.channels, self.dim = patch_size, channels, dim
        self.latent_shape = (dim,)
        self.config = {"patch_size": patch_size, "channels": channels, "n_blocks": n_blocks,
                       "hidden": hidden, "n_hidden_layers": n_hidden_layers, "clamp": clamp,
                       "seed": seed}
        hs = [hidden] * n_hidden_layers
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            layers = []
            for b in range(n_blocks):
                layers += [AffineCoupling(dim, 1, hs, 0, clamp, parity=0),
                           AffineCoupling(dim, 1, hs, 0, clamp, parity=1),
                           Permutation(dim, 1, seed=seed * 1000 + b)]
        self.layers = nn.ModuleList(layers)  # normalizing order
        self._ladj_cache: tuple[Tensor, Tensor, Tensor] | None = None

    # -- flow API -------------------------------------------------------------------------------
    def _check(self, t: Tensor, name: str) -> None:
        if t.shape[-1] != self.dim:
            raise ValueError(f"{name}: expected a trailing dimension C·k·k = {self.dim}, got {tuple(t.shape)}")

    def encode(self, patches: Tensor) -> tuple[Tensor, Tensor]:
        r""":math:`z = T^{-1}(p)` and :math:`\log|\det\nabla T^{-1}(p)|` for ``(..., D)``."""
        self._check(patches, "patches")
        h = patches
        ld = patches.new_zeros(patches.shape[:-1])
        for layer in self.layers:
            h, l = layer.inverse_and_ladj(h)
            ld = ld + l
        return h, ld

    def generate_and_ladj(self, z: Tensor) -> tuple[Tensor, Tensor]:
        r""":math:`p = T(z)` and :math:`\log|\det\partial p/\partial z|`."""
        self._check(z, "z")
        h = z
        ld = z.new_zeros(z.shape[:-1])
        for layer in reversed(self.layers):
            h, l = layer.call_and_ladj(h)
            ld = ld + l
        return h, ld

    def generate(self, z: Tensor) -> Tensor:
        """:math:`p = T(z)` (generative direction)."""
        return self.generate_and_ladj(z)[0]

    def forward(self, z: Tensor) -> Tensor:
        return self.generate(z)

    def log_prob(self, patches: Tensor) -> Tensor:
        """Log density of flattened patches ``(..., D)`` → ``(...)``."""
        z, ld = self.encode(patches)
        return standard_normal_log_prob(z, 1) + ld

    def energy(self, patches: Tensor) -> Tensor:
        r"""patchNR energy :math:`\tfrac12\|T^{-1}(p)\|^2 - \log|\det\nabla T^{-1}(p)|` per patch."""
        z, ld = self.encode(patches)
        return 0.5 * z.pow(2).sum(-1) - ld

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Draw ``n`` flattened patches ``(n, D)``."""
        return self.generate(draw_latents(self, n, self.dim, generator))

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.config.items())
