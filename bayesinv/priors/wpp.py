r"""The Wasserstein patch prior (WPP): optimal transport between image patches and reference patches.

Hertrich, Houdard & Redenbach, *Wasserstein patch prior for image superresolution* (IEEE TCI
2022), reference code github.com/johertrich/Wasserstein_Patch_Prior. The regulariser is the
squared Wasserstein-2 distance between the empirical distribution of the :math:`N` patches
:math:`p_i(x)` of the image and that of :math:`M` reference patches :math:`q_j` (of a texture
or material sample), written through the semi-discrete OT dual with potentials
:math:`\psi\in\mathbb R^M` (the c-transform form):

.. math::

    W(x) = \max_{\psi} F(\psi; x),\qquad
    F(\psi; x) = \frac1N\sum_{i=1}^N \min_j\big(\|p_i(x) - q_j\|^2 - \psi_j\big)
                 + \frac1M\sum_{j=1}^M \psi_j .

:math:`F` is concave in :math:`\psi` with supergradient
:math:`\partial F/\partial\psi_j = 1/M - n_j/N`, :math:`n_j = \#\{i : j^*(i) = j\}`,
:math:`j^*(i) = \arg\min_j(\|p_i - q_j\|^2 - \psi_j)`. Each evaluation runs ``inner_steps``
steps of averaged stochastic gradient ascent on :math:`\psi` (the reference's
``torch.optim.ASGD(lr=1, alpha=0.5, t0=1)``, :math:`\lambda_{\rm ASGD}=10^{-4}`), warm-started
from the previous evaluation (``psi`` is a buffer updated without gradients). By the envelope
(Danskin) theorem the gradient of :math:`W` in :math:`x` at the optimal :math:`\psi` is that of
:math:`\frac1N\sum_i\|p_i(x) - q_{j^*(i)}\|^2` with :math:`j^*` held fixed, which is what
autograd gives for :meth:`WassersteinPatchPrior.energy`.

**Multi-scale.** With ``scales = S`` the image and the reference are repeatedly filtered by the
reference's Gaussian (4×4, std 1) and subsampled by 2, and

.. math::

    R(x) = \sum_{s=0}^{S-1} W_s(x),

so that the reference objective :math:`\|Ax-y\|^2 + \lambda_{\rm ref}\sum_s W_s` is :math:`2\sigma^2` times ours,
:math:`\frac{1}{2\sigma^2}\|Ax-y\|^2 + \lambda R(x)`, for :math:`\lambda = \lambda_{\rm ref}/(2\sigma^2)`
(reference 2-D: :math:`\lambda_{\rm ref} = 6000/36`, :math:`\sigma = 0.01`, 4000 reference patches).

**Memory.** The nearest-patch search (:func:`nearest_patches`) never stores the :math:`N\times M`
cost matrix: image patches are processed in chunks of ``chunk_size`` rows, peak extra memory
:math:`\approx 4\,\mathrm{chunk\_size}\cdot M` bytes in float32 plus a few :math:`N\times D` patch
arrays (the patches, their gradient; the matched-cost term has a chunked backward). Measured
(``benchmarks/bench_wpp_memory.py``, one energy + gradient, 6×6 patches, 2 scales, M = 10,000,
chunk 1024, float32): 79 MB extra resident memory for 256×256 and 101 MB for 512×512, where the
unchunked cost matrices would take 2.5 GB and 10.3 GB.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .._checks import Shape, as_image_batch, check_finite, check_int, check_positive
from .base import EnergyPrior
from .patches import extract_patches

__all__ = ["WassersteinPatchPrior", "dual_objective", "gaussian_pyramid", "nearest_patches",
           "wasserstein_patch_distance"]

_BLUR_SIZE, _BLUR_STD = 4, 1.0  # the reference's downsampling filter (stride 2, no padding)
_ASGD_LAMBD, _ASGD_ALPHA, _ASGD_T0 = 1e-4, 0.5, 1.0


def nearest_patches(p: Tensor, q: Tensor, psi: Tensor | None = None,
                    chunk_size: int | None = 1024) -> tuple[Tensor, Tensor]:
    r"""For each row :math:`p_i`, :math:`j^*(i) = \arg\min_j (\|p_i - q_j\|^2 - \psi_j)` and the minimum.

    The squared distances are expanded as :math:`\|p\|^2 + \|q\|^2 - 2\langle p, q\rangle` with one
    ``addmm`` per chunk (the matrix-product mode of ``torch.cdist``, here without its square
    root since :math:`\psi` shifts squared costs), over ``chunk_size`` rows at a time so that
    memory stays :math:`O(\mathrm{chunk\_size}\cdot M)`.

    Parameters
    ----------
    p
        ``(N, D)`` query patches.
    q
        ``(M, D)`` reference patches.
    psi
        ``(M,)`` potentials (default zeros: plain nearest neighbour).
    chunk_size
        Rows per chunk; ``None``: all at once.

    Returns
    -------
    (Tensor, Tensor)
        ``idx (N,)`` (long) and ``value (N,)``, the c-transform :math:`\psi^c(p_i)`.
    """
    if p.dim() != 2 or q.dim() != 2 or p.shape[1] != q.shape[1]:
        raise ValueError(f"p/q: expected (N, D) and (M, D) patches, got {tuple(p.shape)} and {tuple(q.shape)}")
    n = p.shape[0]
    step = n if chunk_size is None else check_int(chunk_size, "chunk_size")
    shift = q.pow(2).sum(-1)
    if psi is not None:
        shift = shift - psi
    idx = torch.empty(n, dtype=torch.long, device=p.device)
    val = torch.empty(n, dtype=p.dtype, device=p.device)
    qt = q.t()
    for start in range(0, n, max(step, 1)):
        pc = p[start:start + step]
        scores = torch.addmm(shift[None], pc, qt, beta=1.0, alpha=-2.0)  # (c, M)
        v, j = scores.min(dim=1)
        idx[start:start + step] = j
        val[start:start + step] = v + pc.pow(2).sum(-1)
        del scores
    return idx, val


def dual_objective(p: Tensor, q: Tensor, psi: Tensor, chunk_size: int | None = 1024) -> Tensor:
    r"""The semi-discrete dual :math:`F(\psi) = \frac1N\sum_i \psi^c(p_i) + \frac1M\sum_j\psi_j`
    (a lower bound of :math:`W_2^2` between the two empirical measures, equal at the optimum)."""
    _, val = nearest_patches(p, q, psi, chunk_size)
    return val.mean() + psi.mean()


class _MatchedSquaredDistance(torch.autograd.Function):
    r""":math:`\sum_i \|p_i - q_{j(i)}\|^2` for fixed indices ``j``, differentiable in ``p`` only.

    Computed in chunks of rows in both passes, so no ``(N, D)`` temporaries besides the gradient
    itself (autograd of ``(p - q[idx]).pow(2).sum()`` would keep three). Gradient:
    :math:`2(p_i - q_{j(i)})`.
    """

    @staticmethod
    def forward(ctx, p: Tensor, q: Tensor, idx: Tensor, chunk_size: int) -> Tensor:  # noqa: D102
        total = p.new_zeros(())
        for start in range(0, p.shape[0], chunk_size):
            sl = slice(start, start + chunk_size)
            total = total + (p[sl] - q[idx[sl]]).pow(2).sum()
        ctx.save_for_backward(p, q, idx)
        ctx.chunk_size = chunk_size
        return total

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):  # noqa: D102
        p, q, idx = ctx.saved_tensors
        out = torch.empty_like(p)
        for start in range(0, p.shape[0], ctx.chunk_size):
            sl = slice(start, start + ctx.chunk_size)
            torch.sub(p[sl], q[idx[sl]], out=out[sl])
        out.mul_(2 * grad)
        return out, None, None, None


def _blur_kernel(channels: int, dtype: torch.dtype) -> Tensor:
    t = torch.arange(_BLUR_SIZE, dtype=torch.float64) - (_BLUR_SIZE - 1) / 2
    g = torch.exp(-0.5 * (t / _BLUR_STD) ** 2)
    k = g[:, None] * g[None, :]
    k = (k / k.sum()).to(dtype)
    return k.expand(channels, 1, _BLUR_SIZE, _BLUR_SIZE).contiguous()


def gaussian_pyramid(x: Tensor, scales: int) -> list[Tensor]:
    """``[x, D(x), D(D(x)), ...]`` (``scales`` images), ``D`` = 4×4 Gaussian (std 1) filter with
    stride 2 and no padding, as in the reference code; ``(B, C, H, W)`` in, per channel."""
    out = [x]
    for _ in range(scales - 1):
        x = F.conv2d(x, _blur_kernel(x.shape[1], x.dtype).to(x.device), stride=2, groups=x.shape[1])
        out.append(x)
    return out


def _pyramid_sizes(h: int, w: int, scales: int) -> list[tuple[int, int]]:
    sizes = [(h, w)]
    for _ in range(scales - 1):
        h, w = (h - _BLUR_SIZE) // 2 + 1, (w - _BLUR_SIZE) // 2 + 1
        sizes.append((h, w))
    return sizes


class WassersteinPatchPrior(EnergyPrior):
    r"""Wasserstein patch prior :math:`p(x)\propto\exp(-\lambda\sum_s W_s(x))` (Hertrich et al. 2022).

    Parameters
    ----------
    reference
        Reference image(s) ``(H, W)``, ``(C, H, W)`` or ``(R, C, H, W)`` (e.g. a texture crop),
        with the channels of ``image_shape``; values as the images (``[0, 1]``).
    image_shape
        ``(C, H, W)`` of the reconstructed images.
    weight
        :math:`\lambda > 0` (see the module docstring for the reference's scaling).
    patch_size
        Patch side (reference: 6).
    n_reference
        Maximum number :math:`M` of reference patches per scale: all patches (stride 1) of the
        (downsampled) reference images, randomly subsampled without replacement (seeded) when
        there are more.
    scales
        Number of scales :math:`S` (reference: 2).
    inner_steps, inner_lr
        ASGD steps and learning rate on :math:`\psi` per evaluation (reference: 10 and 1).
    chunk_size
        Rows per chunk in the nearest-patch search (memory :math:`\approx 4\,\mathrm{chunk}\cdot M` bytes).
    seed
        Seed of the reference-patch subsampling.

    Notes
    -----
    Each image of a batch keeps its own potentials (buffers ``psi_s`` of shape ``(B, M)``); they
    are reset to zero when the batch size changes and by :meth:`reset_potentials`.
    :meth:`energy` updates them (``inner_steps`` ascent steps) before evaluating; use
    :meth:`dual_value` to evaluate without updating.
    """

    def __init__(self, reference: Tensor, image_shape: Shape, weight: float = 1.0, *,
                 patch_size: int = 6, n_reference: int = 10_000, scales: int = 2,
                 inner_steps: int = 10, inner_lr: float = 1.0, chunk_size: int = 1024,
                 seed: int = 0) -> None:
        super().__init__(image_shape, weight)
        c, h, w = self.image_shape
        self.patch_size = k = check_int(patch_size, "patch_size")
        self.scales = check_int(scales, "scales")
        self.n_reference = check_int(n_reference, "n_reference")
        self.inner_steps = check_int(inner_steps, "inner_steps", minimum=0)
        self.inner_lr = check_positive(inner_lr, "inner_lr")
        self.chunk_size = check_int(chunk_size, "chunk_size")
        self.seed = check_int(seed, "seed", minimum=0)
        if k > min(h, w):
            raise ValueError(f"patch_size: {k} is larger than the image ({h}×{w})")
        if min(_pyramid_sizes(h, w, self.scales)[-1]) < k:
            raise ValueError(f"scales: {self.scales} scales shrink the {h}×{w} image below the "
                             f"patch size {k} (sizes {_pyramid_sizes(h, w, self.scales)})")
        ref = check_finite(as_image_batch(reference, "reference"), "reference").detach()
        ref = ref.to(torch.get_default_dtype() if not ref.is_floating_point() else ref.dtype)
        if ref.shape[1] != c:
            raise ValueError(f"reference: has {ref.shape[1]} channel(s) but image_shape has C = {c}")
        rsizes = _pyramid_sizes(ref.shape[-2], ref.shape[-1], self.scales)
        if min(rsizes[-1]) < k:
            raise ValueError(f"reference: {ref.shape[-2]}×{ref.shape[-1]} is too small for "
                             f"{self.scales} scale(s) of {k}×{k} patches (sizes {rsizes})")
        gen = torch.Generator().manual_seed(self.seed)
        for s, level in enumerate(gaussian_pyramid(ref, self.scales)):
            q = extract_patches(level, k).reshape(-1, c * k * k)
            if q.shape[0] > self.n_reference:
                q = q[torch.randperm(q.shape[0], generator=gen)[: self.n_reference]]
            if q.shape[0] < 2:
                raise ValueError(f"reference: only {q.shape[0]} patch(es) at scale {s}; need >= 2")
            self.register_buffer(f"reference_patches_{s}", q.contiguous())
            self.register_buffer(f"psi_{s}", q.new_zeros((0, q.shape[0])), persistent=False)

    # -- access --------------------------------------------------------------------------------
    def reference_patches(self, s: int) -> Tensor:
        """The ``(M_s, C·k·k)`` reference patches of scale ``s``."""
        return getattr(self, f"reference_patches_{s}")

    def potentials(self, s: int) -> Tensor:
        r"""The current potentials :math:`\psi` of scale ``s``, ``(B, M_s)`` (``B = 0`` before use)."""
        return getattr(self, f"psi_{s}")

    def reset_potentials(self) -> None:
        """Forget the warm start (potentials back to zero on the next evaluation)."""
        for s in range(self.scales):
            q = self.reference_patches(s)
            setattr(self, f"psi_{s}", q.new_zeros((0, q.shape[0])))

    def image_patches(self, x: Tensor) -> list[Tensor]:
        """Patches of each scale of ``x``: a list of ``(B, N_s, C·k·k)`` (differentiable)."""
        x = as_image_batch(x, "x", self.image_shape)
        return [extract_patches(level, self.patch_size) for level in gaussian_pyramid(x, self.scales)]

    def _psi(self, s: int, b: int, like: Tensor) -> Tensor:
        psi = self.potentials(s)
        if psi.shape[0] != b or psi.device != like.device or psi.dtype != like.dtype:
            psi = like.new_zeros((b, self.reference_patches(s).shape[0]))
            setattr(self, f"psi_{s}", psi)
        return psi

    # -- the dual ascent -------------------------------------------------------------------------
    @torch.no_grad()
    def ascend(self, p: Tensor, q: Tensor, psi: Tensor, steps: int, lr: float) -> Tensor:
        r"""``steps`` of averaged gradient ascent on :math:`F(\cdot; p)` from ``psi`` (one image).

        The update of ``torch.optim.ASGD(lr, lambd=1e-4, alpha=0.5, t0=1)`` on :math:`-F`:
        :math:`\psi \leftarrow (1-\lambda\eta_t)\psi + \eta_t(1/M - n/N)`, average
        :math:`\bar\psi \leftarrow \bar\psi + \mu_t(\psi - \bar\psi)`, :math:`\eta_{t+1} =
        \mathrm{lr}/(1+\lambda\,\mathrm{lr}\,t)^{\alpha}`, :math:`\mu_{t+1} = 1/\max(1, t-t_0)`.
        Returns the average :math:`\bar\psi` (the reference continues from it).
        """
        n, m = p.shape[0], q.shape[0]
        psi = psi.clone()
        avg = psi.clone()
        eta, mu = lr, 1.0
        for t in range(1, steps + 1):
            idx, _ = nearest_patches(p, q, psi, self.chunk_size)
            counts = torch.bincount(idx, minlength=m).to(psi.dtype)
            psi.mul_(1 - _ASGD_LAMBD * eta).add_(1.0 / m - counts / n, alpha=eta)
            avg.copy_(psi) if mu == 1.0 else avg.add_((psi - avg) * mu)
            eta = lr / (1 + _ASGD_LAMBD * lr * t) ** _ASGD_ALPHA
            mu = 1.0 / max(1.0, t - _ASGD_T0)
        return avg

    def update_potentials(self, x: Tensor, steps: int | None = None, lr: float | None = None) -> None:
        """Run ``steps`` (default ``inner_steps``) ascent steps on every scale's potentials at ``x``."""
        steps = self.inner_steps if steps is None else check_int(steps, "steps", minimum=0)
        lr = self.inner_lr if lr is None else check_positive(lr, "lr")
        with torch.no_grad():
            for s, p in enumerate(self.image_patches(x.detach())):
                q = self.reference_patches(s)
                psi = self._psi(s, p.shape[0], q)
                if steps:
                    new = torch.stack([self.ascend(p[b], q, psi[b], steps, lr) for b in range(p.shape[0])])
                    setattr(self, f"psi_{s}", new)

    def dual_value(self, x: Tensor) -> Tensor:
        r""":math:`\sum_s F_s(\psi_s; x)` at the current potentials, ``(B,)``, without updating them;
        differentiable in ``x`` (envelope gradient, :math:`j^*` fixed)."""
        total = []
        for s, p in enumerate(self.image_patches(x)):
            q = self.reference_patches(s)
            psi = self._psi(s, p.shape[0], q)
            vals = []
            n = p.shape[1]
            for b in range(p.shape[0]):
                idx, _ = nearest_patches(p[b].detach(), q, psi[b], self.chunk_size)
                matched = _MatchedSquaredDistance.apply(p[b], q, idx, self.chunk_size)
                vals.append((matched - psi[b][idx].sum()) / n + psi[b].mean())
            total.append(torch.stack(vals))
        return torch.stack(total).sum(0)

    def energy(self, x: Tensor) -> Tensor:
        r""":math:`R(x) = \sum_s W_s(x)`: ``inner_steps`` warm-started ascent steps on each
        :math:`\psi_s`, then :meth:`dual_value`. ``(B,)``."""
        if self.inner_steps:
            self.update_potentials(x)
        return self.dual_value(x)

    def cost_matrix_bytes(self, n_patches: int) -> int:
        """Bytes a full (unchunked) ``N × M`` float cost matrix at scale 0 would take."""
        q = self.reference_patches(0)
        return int(n_patches) * q.shape[0] * q.element_size()

    def _settings(self) -> dict[str, object]:
        return {"weight": self.weight, "patch_size": self.patch_size, "scales": self.scales,
                "n_reference": [int(self.reference_patches(s).shape[0]) for s in range(self.scales)],
                "inner_steps": self.inner_steps, "inner_lr": self.inner_lr,
                "chunk_size": self.chunk_size, "seed": self.seed}


def wasserstein_patch_distance(x: Tensor, y: Tensor, patch_size: int = 6, n: int = 1024,
                               seed: int = 0) -> float:
    r"""Exact :math:`W_2^2` between ``n`` random patches of image ``x`` and ``n`` of image ``y``.

    A texture statistic for evaluation (not differentiable): with uniform weights on equally
    many points, optimal transport is an assignment problem,
    :math:`\min_\sigma \frac1n\sum_i \|p_i - q_{\sigma(i)}\|^2`, solved exactly by
    :func:`scipy.optimize.linear_sum_assignment`. Patches are drawn without replacement
    (seeded); ``n`` is capped at the smaller patch count.
    """
    from scipy.optimize import linear_sum_assignment

    k = check_int(patch_size, "patch_size")
    n = check_int(n, "n")
    a = extract_patches(as_image_batch(x, "x")[:1].detach(), k)[0].double().cpu()
    b = extract_patches(as_image_batch(y, "y")[:1].detach(), k)[0].double().cpu()
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"x/y: patch dimensions differ ({a.shape[1]} vs {b.shape[1]}); same channels?")
    n = min(n, a.shape[0], b.shape[0])
    gen = torch.Generator().manual_seed(check_int(seed, "seed", minimum=0))
    a = a[torch.randperm(a.shape[0], generator=gen)[:n]]
    b = b[torch.randperm(b.shape[0], generator=gen)[:n]]
    cost = torch.cdist(a, b).pow(2).numpy()
    rows, cols = linear_sum_assignment(cost)
    return float(cost[rows, cols].mean())
