r"""A normalizing-flow prior :math:`x = G(z)`, :math:`z \sim \mathcal N(0, I)`.

Wraps a bayesinv flow (:class:`~bayesinv.flows.glow.Glow`) as a
:class:`~bayesinv.priors.base.LatentPrior`: ``generate`` is the flow's generative direction,
``encode`` its normalizing direction with :math:`\log|\det\nabla G^{-1}(x)|`, so

.. math::

    \log p(x) = \log\mathcal N(G^{-1}(x); 0, I) + \log|\det\nabla G^{-1}(x)|

(Asim et al. 2020; Kingma & Dhariwal 2018). In a Pyro model it samples the flat latent site
``"z"`` (shape ``latent_shape = (C·H·W,)``) and records the image as deterministic ``"x"``.
"""

from __future__ import annotations

import os

from torch import Tensor, nn

from .base import LatentPrior

__all__ = ["FlowPrior"]


class FlowPrior(LatentPrior):
    """Latent prior given by an (unconditional) image flow.

    Parameters
    ----------
    flow
        A flow with ``image_shape``, ``latent_shape``, ``generate(z)`` and ``encode(x)``
        (e.g. :class:`~bayesinv.flows.glow.Glow`).

    Examples
    --------
    >>> from bayesinv.flows.glow import Glow
    >>> prior = FlowPrior(Glow((1, 8, 8), levels=2, steps=2, hidden=16))
    >>> prior.sample(2).shape
    torch.Size([2, 1, 8, 8])
    """

    def __init__(self, flow: nn.Module) -> None:
        from pyro.distributions.conditional import ConditionalTransformModule

        if isinstance(flow, ConditionalTransformModule):
            raise TypeError(f"flow: expected an unconditional image flow, got the conditional "
                            f"{type(flow).__name__} (condition it on y for amortised inference)")
        for attr in ("image_shape", "latent_shape", "generate", "encode"):
            if not hasattr(flow, attr):
                raise TypeError(f"flow: expected an image flow with {attr!r} (e.g. Glow), "
                                f"got {type(flow).__name__}")
        super().__init__(tuple(flow.image_shape), tuple(flow.latent_shape))
        self.flow = flow

    @classmethod
    def from_file(cls, path: str | os.PathLike, config_path: str | os.PathLike | None = None) -> FlowPrior:
        """Load the flow saved by :func:`bayesinv.flows.io.save_flow` at ``path``."""
        from ..flows.io import load_flow

        return cls(load_flow(path, config_path))

    def generate(self, z: Tensor) -> Tensor:
        return self.flow.generate(z)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.flow.encode(x)

    def _settings(self) -> dict[str, object]:
        return {"flow": type(self.flow).__name__, "config": dict(getattr(self.flow, "config", {})),
                "latent_shape": list(self.latent_shape)}
