r"""Differentiable Gaussianization layer for latent-space MAP (Li et al. 2023, seed paper 000).

Li, Xu, Chen & Mao, "Differentiable Gaussianization layers for inverse problems regularized by
deep generative models", ICLR 2023. During latent MAP, :math:`\min_z \|A(G(z)) - y\|^2 +
\gamma\|z\|^2`, the latent drifts out of the Gaussian typical set; the layer :math:`g` maps the
free variable to a Gaussianized latent, :math:`x = G(g(z))`.

The latent of one batch element is cut into ``N`` samples of a small group of ``d`` features:

* image-shaped latent ``(C, H, W)``: non-overlapping ``p × p`` patches, ``N = HW/p²`` samples of
  ``d = C p²`` features;
* any other shape (e.g. flat ``(D,)``): the flattened latent in consecutive chunks of
  ``group_size``, ``N = D/d`` samples.

On these ``(N, d)`` samples, in float64, per batch element:

1. **ICA** (:func:`~bayesinv.gaussianize.ica.fast_ica`): centring, whitening with shrinkage
   :math:`10^{-3}` and symmetric FastICA (log-cosh, ``ica_iters`` unrolled iterations) — the
   group's features become (approximately) independent, so per-dimension transforms suffice.
   Without ICA the features are only standardised (Yeo–Johnson is not scale invariant).
2. **Yeo–Johnson** per dimension (:mod:`~bayesinv.gaussianize.yeo_johnson`): :math:`\lambda` by
   maximum likelihood in :math:`[-2, 2]`, differentiated implicitly — removes skewness.
3. **Lambert W × F** per dimension (:mod:`~bayesinv.gaussianize.lambert_w`), only where the
   kurtosis exceeds 3: :math:`\delta` by IGMM, differentiated implicitly — removes heavy tails.
4. **Standardisation** per dimension: zero mean, unit (population) variance, then the ``scale``
   :math:`\tau`: the output's samples have variance :math:`\tau^2`, the target
   :math:`\mathcal N(0, \tau^2 I)`. :math:`\tau = 1` is the flow's base distribution; a
   flow trained with dequantisation noise encodes clean images to latents of smaller spread
   (the shipped phantom Glow: RMS 0.60 on held-out phantoms), and Li et al.'s Glow
   experiments decode at temperature 0.7 — :meth:`GaussianizationLayer.for_prior` sets
   :math:`\tau` to the latent RMS of example images, the spread of in-distribution latents.

A flat flow latent ``(D,)`` can be grouped in patches of its image-shaped view (``layout``: the
flow's :meth:`~bayesinv.flows.Glow.latent_layout`, each latent entry at the pixel it describes),
as Li et al. do for Glow.

The result is put back into the latent shape and returned in the input dtype. Every step is a
differentiable function of the latent (unrolled ICA; implicit-function gradients for
:math:`\lambda^*` and :math:`\delta^*`), so MAP's L-BFGS sees the exact gradient of
:math:`z \mapsto G(g(z))`. ``enabled=False`` makes the layer the identity (to switch it per run).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .._checks import check_int, check_positive
from .ica import fast_ica
from .lambert_w import kurtosis, lambert_w_gaussianize
from .yeo_johnson import yeo_johnson_fit_transform

MIN_SAMPLES = 8


def _standardise(x: Tensor) -> Tensor:
    mean = x.mean(dim=-2, keepdim=True)
    std = x.std(dim=-2, correction=0, keepdim=True)
    return (x - mean) / std


class GaussianizationLayer(nn.Module):
    r"""Gaussianization layer :math:`g`: latent ``(B, *latent_shape)`` → same shape.

    Parameters
    ----------
    latent_shape
        Shape of one latent, e.g. ``(C, H, W)`` for a Gaussian/image-shaped latent or ``(D,)``
        for a flat flow latent.
    patch_size
        ``(C, H, W)`` latents only: side ``p`` of the non-overlapping patches (default 2 when
        ``group_size`` is not given). Must divide ``H`` and ``W``.
    group_size
        Number ``d`` of consecutive latent entries per group (any latent shape; default 4 for
        non-image latents). Must divide the number of latent entries.
    ica, yeo_johnson, lambert_w
        Switch the stages on/off (standardisation is always applied).
    ica_iters
        Unrolled FastICA iterations.
    ica_seed
        ``None`` (default, as Li et al.'s code): FastICA starts at the identity rotation, so
        :math:`g` is smooth where the latent is already near Gaussian; an int: seed of a random
        initial rotation.
    enabled
        ``False``: the layer is the identity.
    scale
        :math:`\tau > 0`: the standardised output is multiplied by it (target
        :math:`\mathcal N(0, \tau^2 I)`); a float, or ``d`` floats, one per group feature
        (e.g. per position in a latent patch, whose entries may belong to different levels of
        a multiscale flow).
    layout
        ``(image_shape, perm)`` for a flat latent ``(D,)`` (``latent_shape == (D,)``): its
        image-shaped view ``z_img`` of shape ``image_shape`` with ``z = z_img.flatten()[perm]``
        (e.g. :meth:`bayesinv.flows.Glow.latent_layout`). Patches (``patch_size``) are then cut
        from that view.

    Raises
    ------
    ValueError
        If the grouping does not tile the latent, or yields fewer than ``max(8, 2d)`` samples of
        ``d`` features per latent (the fits need several samples per feature).

    Notes
    -----
    A group whose samples are all equal (e.g. the all-zeros start of latent MAP) cannot be
    standardised; start MAP from a random latent (``init=...``). After each forward pass,
    ``last_fit`` holds the fitted ``lambda`` ``(B, d)``, ``delta`` ``(B, d)`` and the Lambert-W
    ``active`` mask, detached, for diagnostics.
    """

    def __init__(self, latent_shape: Sequence[int], patch_size: int | None = None,
                 group_size: int | None = None, *, ica: bool = True, yeo_johnson: bool = True,
                 lambert_w: bool = True, ica_iters: int = 10, ica_seed: int | None = None,
                 enabled: bool = True, scale: float | Sequence[float] | Tensor = 1.0,
                 layout: tuple[Sequence[int], Tensor] | None = None) -> None:
        super().__init__()
        try:
            shape = tuple(check_int(s, "latent_shape") for s in latent_shape)
        except TypeError:
            raise TypeError(f"latent_shape: expected a sequence of positive ints, got {latent_shape!r}") from None
        if len(shape) == 0:
            raise ValueError("latent_shape: expected at least one dimension")
        self.flat_shape = shape  # the shape of the latent the layer is called on
        perm = None
        if layout is not None:
            perm, shape = self._check_layout(layout, shape)
        self.register_buffer("perm", perm, persistent=False)
        self.register_buffer("inv_perm", None if perm is None else torch.argsort(perm), persistent=False)
        if patch_size is not None and group_size is not None:
            raise ValueError("patch_size: give either patch_size (image latents) or group_size, not both")
        numel = math.prod(shape)
        if patch_size is not None or (len(shape) == 3 and group_size is None):
            if len(shape) != 3:
                raise ValueError(f"patch_size: patches need a (C, H, W) latent, got latent_shape {shape}")
            p = check_int(2 if patch_size is None else patch_size, "patch_size")
            c, h, w = shape
            if h % p or w % p:
                raise ValueError(f"patch_size: {p} does not divide the latent's H×W = {h}×{w}")
            self.mode, self.patch_size, self.group_size = "patch", p, c * p * p
            arg = "patch_size"
        else:
            d = check_int(4 if group_size is None else group_size, "group_size")
            if numel % d:
                raise ValueError(f"group_size: {d} does not divide the latent size {numel}")
            self.mode, self.patch_size, self.group_size = "group", None, d
            arg = "group_size"
        self.num_samples = numel // self.group_size
        needed = max(MIN_SAMPLES, 2 * self.group_size)
        if self.num_samples < needed:
            raise ValueError(
                f"{arg}: groups of d = {self.group_size} features give only {self.num_samples} "
                f"samples per latent of shape {shape}; need at least {needed} (use a smaller group)")
        self.latent_shape = shape
        self.register_buffer("scale", self._check_scale(scale, self.group_size), persistent=False)
        self.ica, self.yeo_johnson, self.lambert_w = bool(ica), bool(yeo_johnson), bool(lambert_w)
        self.ica_iters = check_int(ica_iters, "ica_iters", minimum=0)
        self.ica_seed = None if ica_seed is None else int(ica_seed)
        self.enabled = bool(enabled)
        self.last_fit: dict[str, Tensor] = {}

    @staticmethod
    def _check_scale(scale: object, d: int) -> Tensor:
        if isinstance(scale, (int, float)) and not isinstance(scale, bool):
            return torch.tensor(check_positive(scale, "scale"), dtype=torch.float64)
        try:
            t = torch.as_tensor(scale, dtype=torch.float64).detach().cpu().reshape(-1)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"scale: expected a positive float or {d} of them, got {scale!r}") from None
        if t.numel() != d:
            raise ValueError(f"scale: expected a float or {d} values (one per group feature), "
                             f"got {t.numel()}")
        if not bool(torch.isfinite(t).all()) or bool((t <= 0).any()):
            raise ValueError("scale: expected finite values > 0")
        return t

    @staticmethod
    def _check_layout(layout: object, flat: tuple[int, ...]) -> tuple[Tensor, tuple[int, ...]]:
        try:
            image_shape, perm = layout  # type: ignore[misc]
            image_shape = tuple(check_int(s, "layout") for s in image_shape)
        except (TypeError, ValueError):
            raise TypeError("layout: expected (image_shape, perm) as returned by a flow's "
                            f"latent_layout(), got {type(layout).__name__}") from None
        if len(flat) != 1:
            raise ValueError(f"layout: only for a flat latent (D,), got latent_shape {flat}")
        d = flat[0]
        if math.prod(image_shape) != d:
            raise ValueError(f"layout: image shape {image_shape} has {math.prod(image_shape)} "
                             f"entries, the latent {d}")
        if not isinstance(perm, Tensor) or perm.dtype != torch.long or tuple(perm.shape) != (d,) \
                or not torch.equal(torch.sort(perm.cpu()).values, torch.arange(d)):
            raise ValueError(f"layout: perm must be a permutation of range({d}) (a LongTensor)")
        return perm.clone(), image_shape

    @classmethod
    def for_prior(cls, prior: nn.Module, patch_size: int = 2, *, images: Tensor | None = None,
                  scale: float | None = None, **kwargs) -> GaussianizationLayer:
        r"""A layer for a flow prior's latent, in patches of its image-shaped view.

        Parameters
        ----------
        prior
            A :class:`~bayesinv.priors.FlowPrior` (or a flow) whose flow has
            ``latent_layout()`` (e.g. :class:`~bayesinv.flows.Glow`); a prior with an
            image-shaped latent ``(C, H, W)`` is used as it is.
        patch_size
            Side of the latent patches.
        images
            Example in-distribution images ``(N, C, H, W)`` (e.g. held-out training data):
            ``scale`` becomes their latent RMS per group feature,
            :math:`\tau_j = \sqrt{\overline{(G^{-1}(x))_j^2}}` averaged over the images and
            the groups (the spread of in-distribution latents).
        scale
            :math:`\tau` given directly (default 1, or from ``images``).
        **kwargs
            Other :class:`GaussianizationLayer` arguments (``ica``, ``yeo_johnson``, ...).
        """
        if scale is not None and images is not None:
            raise ValueError("scale: give either scale or images (to estimate it), not both")
        if images is not None:
            if not isinstance(images, Tensor) or not images.is_floating_point():
                raise TypeError(f"images: expected a floating torch.Tensor, got {type(images).__name__}")
        latent_shape = tuple(prior.latent_shape)
        flow = getattr(prior, "flow", prior)
        if len(latent_shape) == 1:
            if not hasattr(flow, "latent_layout"):
                raise ValueError("prior: its flat latent has no image-shaped layout (the flow has "
                                 "no latent_layout()); use GaussianizationLayer(latent_shape, "
                                 "group_size=...) instead")
            kwargs["layout"] = flow.latent_layout()
        layer = cls(latent_shape, patch_size=patch_size, scale=1.0 if scale is None else scale,
                    **kwargs)
        if images is not None:
            with torch.no_grad():
                z, _ = prior.encode(images)
            if not bool(torch.isfinite(z).all()):
                raise ValueError("images: their latents contain NaN/inf")
            groups = layer.to_groups(z.to(torch.float64))  # (N, samples, d)
            layer.scale = groups.pow(2).mean(dim=(0, 1)).sqrt().cpu()
        return layer

    # -- grouping -----------------------------------------------------------------------------
    def to_groups(self, latent: Tensor) -> Tensor:
        """``(B, *latent_shape)`` → ``(B, N, d)`` samples of the groups."""
        b = latent.shape[0]
        if self.perm is not None:  # flat latent -> its image-shaped view
            latent = latent.reshape(b, -1)[:, self.inv_perm.to(latent.device)].reshape(b, *self.latent_shape)
        if self.mode == "patch":
            c, h, w = self.latent_shape
            p = self.patch_size
            x = latent.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
            return x.reshape(b, self.num_samples, self.group_size)
        return latent.reshape(b, self.num_samples, self.group_size)

    def from_groups(self, groups: Tensor) -> Tensor:
        """Inverse of :meth:`to_groups`."""
        b = groups.shape[0]
        if self.mode == "patch":
            c, h, w = self.latent_shape
            p = self.patch_size
            x = groups.reshape(b, h // p, w // p, c, p, p).permute(0, 3, 1, 4, 2, 5)
        else:
            x = groups
        if self.perm is not None:  # image-shaped view -> flat latent
            return x.reshape(b, -1)[:, self.perm.to(x.device)]
        return x.reshape(b, *self.latent_shape)

    # -- forward ------------------------------------------------------------------------------
    def _check_latent(self, latent: Tensor) -> tuple[Tensor, bool]:
        if not isinstance(latent, Tensor) or not latent.is_floating_point():
            raise TypeError(f"latent: expected a floating torch.Tensor, got {type(latent).__name__}")
        unbatched = tuple(latent.shape) == self.flat_shape
        if unbatched:
            latent = latent.unsqueeze(0)
        if tuple(latent.shape[1:]) != self.flat_shape or latent.dim() != len(self.flat_shape) + 1:
            raise ValueError(f"latent: expected shape (B, *{self.flat_shape}), got {tuple(latent.shape)}")
        if not bool(torch.isfinite(latent).all()):
            raise ValueError("latent: contains NaN/inf values")
        return latent, unbatched

    def forward(self, latent: Tensor) -> Tensor:
        if not self.enabled:
            return latent
        latent, unbatched = self._check_latent(latent)
        x = self.to_groups(latent).to(torch.float64)
        spread = x.std(dim=-2, correction=0)
        if bool((spread <= 1e-12 * (1.0 + x.abs().amax(dim=-2))).any()):
            raise ValueError("latent: a group feature is constant over its samples (e.g. an all-zeros "
                             "latent); Gaussianization needs a non-constant latent — start MAP from "
                             "a random init")
        if self.ica and self.group_size > 1:
            s = fast_ica(x, iters=self.ica_iters, seed=self.ica_seed).sources
        else:  # for d = 1, ICA is exactly standardisation (the shrinkage has no effect)
            s = _standardise(x)
        fit: dict[str, Tensor] = {}
        if self.yeo_johnson:
            s, lam = yeo_johnson_fit_transform(s)
            fit["lambda"] = lam.detach()
        if self.lambert_w:
            with torch.no_grad():
                active = kurtosis(s.detach()) > 3.0
            s, theta = lambert_w_gaussianize(s, active)
            fit["delta"] = theta[..., 2].detach()
            fit["active"] = active
        s = _standardise(s)
        s = s * self.scale.to(device=s.device, dtype=s.dtype)
        self.last_fit = fit
        out = self.from_groups(s).to(latent.dtype)
        return out[0] if unbatched else out

    def extra_repr(self) -> str:
        group = f"patch_size={self.patch_size}" if self.mode == "patch" else f"group_size={self.group_size}"
        return (f"latent_shape={self.latent_shape}, {group}, d={self.group_size}, N={self.num_samples}, "
                f"ica={self.ica}, yeo_johnson={self.yeo_johnson}, lambert_w={self.lambert_w}, "
                f"ica_iters={self.ica_iters}, "
                f"scale={[round(v, 3) for v in self.scale.reshape(-1).tolist()]}, "
                f"layout={self.perm is not None}, enabled={self.enabled}")
