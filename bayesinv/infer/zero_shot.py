r"""Zero-shot super-resolution with patchNR (Altekrüger et al. 2023, "PatchNR: learning from
very few images by patch normalizing flow regularization", Sec. 4.3).

It trains a patch flow on the low-resolution image itself and then runs image MAP, so it is
inference built from the prior, the flow trainer and :func:`~bayesinv.infer.map.map_estimate`
(which is why it lives in ``infer`` and not in ``priors``).
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from torch import Tensor

from .._checks import as_image_batch, check_finite, check_int, check_positive
from ..flows.patch import PatchFlow
from ..flows.train import dihedral_augment, train_flow
from ..operators.blur import SuperResolution
from ..priors.patches import extract_patches
from ..priors.patchnr import PatchNRPrior
from ..problem import InverseProblem
from .map import map_estimate

__all__ = ["zero_shot_sr"]


def zero_shot_sr(y: Tensor, operator: Any, *, sigma: float, weight: float | None = None,
                 patch_size: int = 6, n_patches: int | None = 20_000, pad: int | None = None,
                 train_steps: int = 1000, train_batch: int = 128, train_lr: float = 1e-3,
                 hidden: int = 128, n_blocks: int = 5, map_steps: int | None = None,
                 map_lr: float | None = None, seed: int = 0, device: str | torch.device = "cpu",
                 progress: bool | None = None, truth: Tensor | None = None):
    r"""Zero-shot super-resolution with patchNR (Altekrüger et al. 2023, Sec. 4.3).

    No training data: a :class:`~bayesinv.flows.patch.PatchFlow` is fitted to the patches of the
    low-resolution image ``y`` itself and their 8 dihedral copies (4 rotations × mirror,
    :func:`~bayesinv.flows.train.dihedral_augment` applied to the square patches, which equals
    taking the patches of the dihedral copies of ``y``), relying on the self-similarity of
    natural images across scales; then image MAP with :class:`~bayesinv.priors.patchnr.PatchNRPrior` from bicubic.

    Parameters
    ----------
    y
        One low-resolution image, ``operator.out_shape`` (or with a batch axis of 1).
    operator
        The :class:`~bayesinv.operators.blur.SuperResolution` operator.
    sigma
        Noise standard deviation of ``y``.
    weight
        :math:`\lambda`; default the reference's :math:`0.25/(2\sigma^2)`.
    patch_size, n_patches, pad
        Prior settings (reference: 6, 80k, 7; ``pad=None`` takes ``min(7, lr side - 1)``).
    train_steps, train_batch, train_lr
        Flow training (reference: 10,000 steps, batch 128, Adam 1e-4 with subnets of 512). The
        default here, 1000 steps at 1e-3 with subnets of ``hidden = 128``, fits one small
        image in well under a minute on one CPU core; raise it for large images.
    hidden, n_blocks
        Flow architecture.
    map_steps, map_lr
        Adam on the pixels (reference: 60 steps at 0.01; default here 150 at 0.01).
    seed
        Seeds the flow initialisation, its training and the patch draws of the MAP.
    device
        Where the flow is trained and the MAP runs.
    truth
        Optional ground truth stored in the posterior.

    Returns
    -------
    Posterior
        The MAP posterior (kind ``"point"``); ``settings`` also hold ``zero_shot`` (training
        log: steps, final NLL, wall time) and ``timings`` the training time.
    """
    if not isinstance(operator, SuperResolution):
        raise TypeError(f"operator: expected a SuperResolution operator, got {type(operator).__name__}")
    sigma = check_positive(sigma, "sigma")
    seed = check_int(seed, "seed", minimum=0)
    yb = check_finite(as_image_batch(y, "y", operator.out_shape), "y")
    if yb.shape[0] != 1:
        raise ValueError(f"y: expected one low-resolution image, got a batch of {yb.shape[0]}")
    k = check_int(patch_size, "patch_size")
    c, h, w = operator.out_shape
    if k > min(h, w):
        raise ValueError(f"patch_size: {k} is larger than the low-resolution image ({h}×{w})")
    weight = 0.25 / (2 * sigma**2) if weight is None else check_positive(weight, "weight")
    pad = min(7, min(operator.in_shape[1:]) - 1) if pad is None else pad

    # training patches: all k×k patches of y and of their 8 dihedral copies
    patches = extract_patches(yb, k)[0].reshape(-1, c, k, k)
    train = dihedral_augment(patches).reshape(-1, c * k * k).detach()
    flow = PatchFlow(patch_size=k, channels=c, n_blocks=n_blocks, hidden=hidden, seed=seed)
    t0 = time.perf_counter()
    log = train_flow(flow, train, steps=train_steps, batch_size=train_batch, lr=train_lr,
                     seed=seed, device=device, progress=progress, grad_clip=10.0)
    t_train = time.perf_counter() - t0
    flow.eval()

    dev = next(flow.parameters()).device
    prior = PatchNRPrior(flow, operator.in_shape, weight, n_patches=n_patches, pad=pad)
    problem = InverseProblem(operator.to(dev), prior, noise=sigma)
    post = map_estimate(problem, yb.to(dev), method="image", optimizer="adam",
                        steps=150 if map_steps is None else map_steps,
                        lr=0.01 if map_lr is None else map_lr, seed=seed, clamp=(0.0, 1.0),
                        progress=progress, truth=truth)
    post.settings["zero_shot"] = {"train_steps": log.steps, "train_batch": train_batch,
                                  "train_lr": train_lr, "n_train_patches": int(train.shape[0]),
                                  "final_train_nll": log.final_train_nll, "hidden": hidden,
                                  "n_blocks": n_blocks, "weight": weight,
                                  "n_patches": n_patches, "pad": pad}
    post.timings["train_s"] = t_train
    if not math.isfinite(log.final_train_nll):
        raise FloatingPointError("zero_shot_sr: flow training diverged (non-finite NLL)")
    return post
