r"""Shared plumbing of the flow transforms: the one-slot log-det cache and latent draws.

A bijection :math:`x = T(z)` used by Pyro/``torch.distributions`` needs ``_call``,
``_inverse`` and ``log_abs_det_jacobian``. Our flows compute value and log-determinant in one
pass, so the log-det of the last ``_call``/``_inverse`` is cached (one slot, matched by tensor
identity): ``TransformedDistribution.log_prob`` then costs one pass, using

.. math::

    \log\left|\det\frac{\partial x}{\partial z}\right| = -\log\left|\det\frac{\partial z}{\partial x}\right|

(inverse function theorem) for the normalizing direction.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .._checks import check_int

__all__ = ["LadjCacheMixin", "draw_latents"]


class LadjCacheMixin:
    """``_call``/``_inverse``/``log_abs_det_jacobian``/``forward`` from fused value + log-det methods.

    Put it before ``TransformModule`` in the bases. The class names its two fused methods in
    ``_ladj_forward`` (generative: ``z -> (x, log|det dx/dz|)``, default ``generate_and_ladj``)
    and ``_ladj_inverse`` (normalizing: ``x -> (z, log|det dz/dx|)``, default ``encode``), and
    sets ``self._ladj_cache = None`` in ``__init__``.
    """

    _ladj_forward = "generate_and_ladj"
    _ladj_inverse = "encode"
    _ladj_cache: tuple[Tensor, Tensor, Tensor] | None

    def _call(self, z: Tensor) -> Tensor:
        x, ld = getattr(self, self._ladj_forward)(z)
        self._ladj_cache = (z, x, ld)
        return x

    def _inverse(self, x: Tensor) -> Tensor:
        z, ld = getattr(self, self._ladj_inverse)(x)
        self._ladj_cache = (z, x, -ld)
        return z

    def log_abs_det_jacobian(self, z: Tensor, x: Tensor) -> Tensor:
        r""":math:`\log|\det\partial x/\partial z|` per item."""
        c = self._ladj_cache
        if c is not None and c[0] is z and c[1] is x:
            return c[2]
        return getattr(self, self._ladj_forward)(z)[1]

    def forward(self, z: Tensor) -> Tensor:
        """Generative direction :math:`x = T(z)` (the ``nn.Module`` entry point)."""
        return getattr(self, self._ladj_forward)(z)[0]


def draw_latents(module: nn.Module, n: object, dim: int, generator: torch.Generator | None) -> Tensor:
    r""":math:`n` standard-normal latents :math:`z \sim \mathcal N(0, I_D)`, shape ``(n, D)``.

    Drawn on the generator's device (else the module's) in the module's dtype, then moved to
    the module's device; ``n`` is checked as a positive int named ``n``.
    """
    n = check_int(n, "n")
    p = next(module.parameters())
    dev = generator.device if generator is not None else p.device
    z = torch.randn((n, dim), generator=generator, dtype=p.dtype, device=dev)
    return z.to(p.device)
