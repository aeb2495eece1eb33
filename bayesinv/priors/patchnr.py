r"""The patchNR prior: a patch normalizing flow as an image regulariser, and its MAP.

Altekrüger, Denker, Hagemann, Hertrich, Maass & Steidl, *PatchNR: learning from very few images
by patch normalizing flow regularization* (Inverse Problems 39, 2023). A flow :math:`T` is fitted
by maximum likelihood to the 6×6 patches of one or a few clean images
(:class:`~bayesinv.flows.patch.PatchFlow`, :func:`~bayesinv.flows.train.train_flow`); the
regulariser of an image is the mean patch negative log-likelihood

.. math::

    R(x) = \frac{1}{N_p}\sum_{i=1}^{N_p}\Big[\tfrac12\|T^{-1}(p_i(x))\|^2
           - \log|\det\nabla T^{-1}(p_i(x))|\Big],

over :math:`N_p` patches :math:`p_i(x)` drawn at uniformly random positions (a fresh draw per
evaluation: an unbiased stochastic estimate of the all-patches mean), or over all patches
(deterministic). As an :class:`~bayesinv.priors.base.EnergyPrior` the prior is
:math:`p(x)\propto\exp(-\lambda R(x))`, and image MAP
(:func:`bayesinv.infer.map.map_estimate` with ``method="image"``) minimises

.. math::

    U(x) = \frac{1}{2\sigma^2}\|Ax - y\|^2 + \lambda R(x)

with Adam on the pixels, from FBP / bicubic.

**Weight conversion.** The reference code minimises
:math:`\|Ax-y\|^2 + \lambda_{\rm ref} R(x)`. Multiplying by :math:`1/(2\sigma^2)` (which does
not move the minimiser) gives :math:`U` with

.. math::

    \lambda = \frac{\lambda_{\rm ref}}{2\sigma^2},

see :func:`reference_settings`. Adam is invariant to a constant rescaling of the objective (up
to its :math:`\epsilon`), so the reference learning rates carry over unchanged. Two caveats: the
data term is a *sum* over measurements while :math:`R` is a *mean* over patches, so the balance
changes with the number of measurements (a 32×32 problem needs a smaller :math:`\lambda`
relative to the data term than the reference's 362×362 CT); and the reference CT experiment
uses a Poisson log-likelihood (LoDoPaB, 4096 photons), for which the conversion is only the
Gaussian approximation. Weights are therefore re-tuned per problem size in the tests.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .._checks import Shape, as_image_batch, check_choice, check_int, check_positive
from .base import EnergyPrior
from .patches import extract_patches, random_patches

__all__ = ["PatchNRPrior", "REFERENCE_SETTINGS", "reference_settings"]

#: Settings of the reference code (github.com/FabianAltekrueger/patchNR), per task. ``lam_ref`` is
#: the weight of R in ``||Ax - y||^2 + lam_ref R(x)`` (CT: Poisson loss instead of the square);
#: ``sigma_ref`` the noise level of the experiment; ``pad`` the reflect padding before patch
#: extraction; ``train_steps``/``train_batch`` the zero-shot flow training.
REFERENCE_SETTINGS: dict[str, dict[str, Any]] = {
    "ct": {"lam_ref": 700.0, "n_patches": 40_000, "lr": 0.005, "steps": 300, "pad": 4,
           "sigma_ref": None, "data_term": "poisson (LoDoPaB, 4096 photons/pixel)"},
    "limited_angle_ct": {"lam_ref": 700.0, "n_patches": 40_000, "lr": 0.005, "steps": 3000,
                         "pad": 4, "sigma_ref": None,
                         "data_term": "poisson (LoDoPaB, 4096 photons/pixel)"},
    "superresolution": {"lam_ref": 0.15, "n_patches": 130_000, "lr": 0.03, "steps": 300, "pad": 0,
                        "sigma_ref": 0.01, "data_term": "squared"},
    "deblurring": {"lam_ref": 0.87, "n_patches": 40_000, "lr": 0.005, "steps": 600, "pad": 4,
                   "sigma_ref": 5.0 / 255.0, "data_term": "squared"},
    "zero_shot_sr": {"lam_ref": 0.25, "n_patches": 80_000, "lr": 0.01, "steps": 60, "pad": 7,
                     "sigma_ref": 0.01, "data_term": "squared", "train_steps": 10_000,
                     "train_batch": 128, "train_lr": 1e-4},
}
TASKS = tuple(REFERENCE_SETTINGS)


def reference_settings(task: str, sigma: float | None = None) -> dict[str, Any]:
    r"""The reference patchNR MAP settings of ``task``, with the weight in our scaling.

    Parameters
    ----------
    task
        ``"ct"`` (low-dose, full angle), ``"limited_angle_ct"``, ``"superresolution"``,
        ``"deblurring"`` or ``"zero_shot_sr"``.
    sigma
        Noise standard deviation of *our* problem (default: the reference experiment's, where
        it has one; required for CT).

    Returns
    -------
    dict
        ``weight`` :math:`=\lambda_{\rm ref}/(2\sigma^2)` (the ``weight`` of
        :class:`PatchNRPrior` for ``InverseProblem(..., noise=sigma)``), ``lam_ref``,
        ``n_patches``, ``lr``, ``steps``, ``pad``, ``sigma`` and the reference's data term;
        ``lr`` and ``steps`` go to :func:`~bayesinv.infer.map.map_estimate` unchanged (Adam is
        scale invariant).
    """
    check_choice(task, "task", TASKS)
    ref = dict(REFERENCE_SETTINGS[task])
    if sigma is None:
        sigma = ref["sigma_ref"]
        if sigma is None:
            raise ValueError(f"sigma: task {task!r} has no Gaussian reference noise level (Poisson "
                             "data); give the noise level of your problem")
    sigma = check_positive(sigma, "sigma")
    ref["sigma"] = sigma
    ref["weight"] = ref["lam_ref"] / (2.0 * sigma**2)
    return ref


class PatchNRPrior(EnergyPrior):
    r"""patchNR: :math:`p(x) \propto \exp(-\lambda R(x))`, :math:`R` the mean patch NLL of a flow.

    Parameters
    ----------
    flow
        A trained :class:`~bayesinv.flows.patch.PatchFlow` (any module with ``patch_size``,
        ``channels`` and ``energy(patches) -> (...)`` works).
    image_shape
        ``(C, H, W)``; ``C`` must equal ``flow.channels``.
    weight
        :math:`\lambda > 0` (see the module docstring for the conversion from the reference).
    patch_size
        Patch side (default and required: the flow's).
    n_patches
        :math:`N_p`, patches per image at uniformly random positions, redrawn at each
        evaluation; ``None``: all patches (stride 1), deterministic.
    pad
        Reflect padding of the image before patch extraction (reference: 4 for CT and
        deblurring), so boundary pixels are covered by as many patches as interior ones.
    seed
        Seed of a private CPU generator for the patch positions; ``None`` draws from torch's
        global stream (which :func:`~bayesinv.infer.map.map_estimate` seeds with its ``seed``).
    generator
        Alternatively, a ``torch.Generator`` (on any device) to draw the positions from.
    freeze
        Set ``requires_grad=False`` on the flow's parameters (the flow is fixed during
        reconstruction; no wasted parameter gradients).
    replace
        Draw the ``n_patches`` positions with replacement (default, independent positions) or
        without (distinct positions, as the reference implementation; capped at the number of
        positions, where it becomes all patches in random order).

    Examples
    --------
    >>> from bayesinv.flows.patch import PatchFlow
    >>> prior = PatchNRPrior(PatchFlow(patch_size=4, hidden=16), (1, 16, 16), weight=1.0,
    ...                      n_patches=None)
    >>> prior.energy(torch.rand(2, 1, 16, 16)).shape
    torch.Size([2])
    """

    def __init__(self, flow: torch.nn.Module, image_shape: Shape, weight: float = 1.0, *,
                 patch_size: int | None = None, n_patches: int | None = 40_000, pad: int = 0,
                 seed: int | None = None, generator: torch.Generator | None = None,
                 freeze: bool = True, replace: bool = True) -> None:
        super().__init__(image_shape, weight)
        if not isinstance(flow, torch.nn.Module) or not callable(getattr(flow, "energy", None)):
            raise TypeError(f"flow: expected a patch flow with energy(patches) (PatchFlow), "
                            f"got {type(flow).__name__}")
        c, h, w = self.image_shape
        flow_k = getattr(flow, "patch_size", None)
        k = check_int(patch_size if patch_size is not None else flow_k, "patch_size")
        if flow_k is not None and k != flow_k:
            raise ValueError(f"patch_size: {k} differs from the flow's patch size {flow_k}")
        flow_c = getattr(flow, "channels", None)
        if flow_c is not None and flow_c != c:
            raise ValueError(f"flow: trained on {flow_c}-channel patches but image_shape has C = {c}")
        self.pad = check_int(pad, "pad", minimum=0)
        if self.pad >= min(h, w):
            raise ValueError(f"pad: reflect padding {self.pad} must be smaller than the image "
                             f"({h}×{w})")
        if k > min(h, w) + 2 * self.pad:
            raise ValueError(f"patch_size: {k} is larger than the image ({h}×{w}, pad {self.pad})")
        self.patch_size = k
        self.n_patches = None if n_patches is None else check_int(n_patches, "n_patches")
        if not isinstance(replace, bool):
            raise TypeError(f"replace: expected a bool, got {replace!r}")
        self.replace = replace
        self.seed = None if seed is None else check_int(seed, "seed", minimum=0)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator: expected a torch.Generator, got {type(generator).__name__}")
        if generator is not None and seed is not None:
            raise ValueError("seed/generator: give at most one of them")
        self.generator = generator if seed is None else torch.Generator().manual_seed(self.seed)
        if not isinstance(freeze, bool):
            raise TypeError(f"freeze: expected a bool, got {freeze!r}")
        if freeze:
            flow.requires_grad_(False)
        self.flow = flow

    def padded(self, x: Tensor) -> Tensor:
        """The image with ``pad`` pixels of reflect padding on each side."""
        return F.pad(x, [self.pad] * 4, mode="reflect") if self.pad else x

    def patches(self, x: Tensor) -> Tensor:
        """The patches :math:`p_i(x)` that :meth:`energy` uses, ``(B, N, C·k·k)`` (random ones
        advance the generator)."""
        xp = self.padded(as_image_batch(x, "x", self.image_shape))
        if self.n_patches is None:
            return extract_patches(xp, self.patch_size)
        n = self.n_patches
        if not self.replace:  # a random subset of the positions, all of them when N_p exceeds their number
            n = min(n, (xp.shape[-2] - self.patch_size + 1) * (xp.shape[-1] - self.patch_size + 1))
        return random_patches(xp, self.patch_size, n, generator=self.generator, replace=self.replace)

    def energy(self, x: Tensor) -> Tensor:
        r""":math:`R(x)`: mean of ``flow.energy`` over the patches of each image, ``(B,)``."""
        p = self.patches(x)
        return self.flow.energy(p).mean(dim=-1)

    def _settings(self) -> dict[str, object]:
        cfg = getattr(self.flow, "config", None)
        return {"weight": self.weight, "patch_size": self.patch_size, "n_patches": self.n_patches,
                "replace": self.replace, "pad": self.pad, "seed": self.seed, "flow": dict(cfg) if isinstance(cfg, dict) else
                type(self.flow).__name__}
