r"""Seeded procedural seismic velocity models (km/s) for traveltime tomography.

Two families of ``(B, 1, H, W)`` models on a grid whose row index is depth:

* :func:`layered_velocity` — ``K`` layers (``K`` uniform in ``layers``), velocities sorted
  increasingly with depth, :math:`v_1 < \dots < v_K` drawn uniformly in ``[vmin, vmax]``;
  interface ``k`` is a smooth undulating curve

  .. math:: d_k(x) = \bar d_k + t_k\,(x - W/2) + a_k \sin(2\pi f_k x / W + \varphi_k),

  with mean depths :math:`\bar d_k` the ``K - 1`` shallowest of ``max(layers) - 1`` uniforms in
  :math:`(0.1H, 0.9H)` (few layers → a thick deepest layer), a small tilt :math:`t_k`, amplitude
  :math:`a_k \le` ``undulation`` pixels and 0.5–1.5 periods across the model. A pixel at depth
  ``i`` in column ``x`` lies in layer :math:`\#\{k : i \ge d_k(x)\}`, so in every column the
  velocity is non-decreasing with depth.
* :func:`faulted_velocity` — the same layers cut by one straight fault through
  :math:`(x_0, H/2)` with dip angle :math:`\theta` from the vertical; on the hanging wall
  (right of the fault line) the layering is shifted down by the throw :math:`\Delta` pixels
  (normal fault), i.e. the layer index is evaluated at depth :math:`i - \Delta`. This makes a
  lateral velocity discontinuity along the fault, the classic layer-plus-fault synthetic
  medium of traveltime tomography.

Both use one ``numpy.random.Generator`` seeded with ``seed``; for the same arguments
:func:`faulted_velocity` draws the layers first with the same stream as
:func:`layered_velocity`, so ``faulted_velocity(n, seed=s)`` equals ``layered_velocity(n,
seed=s)`` on the footwall. Everything is vectorised over the batch (no Python loop over
models). :func:`to_unit` / :func:`from_unit` are the affine maps
:math:`u = (v - v_{min})/(v_{max} - v_{min})` between velocity and :math:`[0, 1]` used by the
velocity flow prior.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .._checks import check_int, check_positive

__all__ = ["VMIN", "VMAX", "layered_velocity", "faulted_velocity", "velocity_models",
           "to_unit", "from_unit"]

VMIN = 1.5  # km/s, water-like top
VMAX = 4.5  # km/s, consolidated rock


def _check_common(n: object, size: object, layers: object, vmin: object, vmax: object,
                  undulation: object) -> tuple[int, int, int, int, int, float, float, float]:
    n = check_int(n, "n")
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        size = (size, size)
    try:
        H, W = (check_int(s, "size") for s in size)  # type: ignore[union-attr]
    except TypeError:
        raise TypeError(f"size: expected an int or (H, W), got {size!r}") from None
    if H < 4 or W < 4:
        raise ValueError(f"size: H and W must be >= 4, got {(H, W)}")
    try:
        kmin, kmax = (check_int(k, "layers") for k in layers)  # type: ignore[union-attr]
    except TypeError:
        raise TypeError(f"layers: expected (min, max) numbers of layers, got {layers!r}") from None
    if kmin < 2 or kmax < kmin:
        raise ValueError(f"layers: expected 2 <= min <= max, got {layers!r}")
    vmin = check_positive(vmin, "vmin")
    vmax = check_positive(vmax, "vmax")
    if vmax <= vmin:
        raise ValueError(f"vmax: must exceed vmin = {vmin}, got {vmax}")
    undulation = check_positive(undulation, "undulation", allow_zero=True)
    return n, H, W, kmin, kmax, vmin, vmax, undulation


def _layer_params(rng: np.random.Generator, n: int, H: int, W: int, kmin: int, kmax: int,
                  vmin: float, vmax: float, undulation: float) -> tuple[np.ndarray, np.ndarray]:
    """Interfaces ``(n, kmax-1, W)`` (unused ones at +inf) and velocities ``(n, kmax)``."""
    m = kmax - 1
    k = rng.integers(kmin, kmax + 1, size=n)  # number of layers per model
    # velocities: k sorted uniforms per model (unused slots repeat the deepest layer's)
    pos = np.arange(kmax)[None, :]
    draw = np.where(pos < k[:, None], rng.uniform(vmin, vmax, size=(n, kmax)), np.inf)
    v = np.sort(draw, axis=1)
    v = np.where(pos < k[:, None], v, np.take_along_axis(v, (k - 1)[:, None], 1))
    # mean interface depths: the k-1 shallowest of kmax-1 uniforms in (0.1 H, 0.9 H), so models
    # with few layers have a thick deepest layer (the shipped prior was trained on this law)
    depth = np.sort(rng.uniform(0.1 * H, 0.9 * H, size=(n, m)), axis=1)
    tilt = rng.uniform(-0.15, 0.15, size=(n, m))
    amp = rng.uniform(0.0, undulation, size=(n, m))
    freq = rng.uniform(0.5, 1.5, size=(n, m))
    phase = rng.uniform(0.0, 2 * np.pi, size=(n, m))
    x = np.arange(W, dtype=float)[None, None, :]
    iface = (depth[..., None] + tilt[..., None] * (x - W / 2)
             + amp[..., None] * np.sin(2 * np.pi * freq[..., None] * x / W + phase[..., None]))
    used = np.arange(m)[None, :] < (k - 1)[:, None]
    iface = np.where(used[..., None], iface, np.inf)
    return iface, v


def _assemble(iface: np.ndarray, v: np.ndarray, depth_eff: np.ndarray) -> np.ndarray:
    """Velocity ``(n, H, W)``: layer index = number of interfaces above the (effective) depth."""
    # depth_eff (n, H, W) vs iface (n, m, W) -> count over m
    idx = (depth_eff[:, None, :, :] >= iface[:, :, None, :]).sum(axis=1)  # (n, H, W)
    n = v.shape[0]
    return np.take_along_axis(v, idx.reshape(n, -1), axis=1).reshape(idx.shape)


def _to_tensor(a: np.ndarray, dtype: torch.dtype | None) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(a[:, None])).to(dtype or torch.get_default_dtype())


def layered_velocity(n: int, size: int | tuple[int, int] = 32, *, seed: int = 0,
                     layers: tuple[int, int] = (3, 6), vmin: float = VMIN, vmax: float = VMAX,
                     undulation: float = 3.0, dtype: torch.dtype | None = None) -> Tensor:
    r"""``n`` layered velocity models ``(n, 1, H, W)`` in km/s, seeded.

    Parameters
    ----------
    n
        Number of models.
    size
        ``H = W = size`` or ``(H, W)``; rows are depth.
    seed
        Seed of the ``numpy.random.Generator``.
    layers
        ``(min, max)`` number of layers (>= 2).
    vmin, vmax
        Velocity range (km/s); layer velocities are sorted uniforms in it.
    undulation
        Largest interface undulation amplitude, in pixels.
    dtype
        Output dtype (default: torch's default float dtype).
    """
    n, H, W, kmin, kmax, vmin, vmax, und = _check_common(n, size, layers, vmin, vmax, undulation)
    rng = np.random.default_rng(check_int(seed, "seed", minimum=0))
    iface, v = _layer_params(rng, n, H, W, kmin, kmax, vmin, vmax, und)
    depth = np.broadcast_to(np.arange(H, dtype=float)[None, :, None], (n, H, W))
    return _to_tensor(_assemble(iface, v, depth), dtype)


def faulted_velocity(n: int, size: int | tuple[int, int] = 32, *, seed: int = 0,
                     layers: tuple[int, int] = (3, 6), vmin: float = VMIN, vmax: float = VMAX,
                     undulation: float = 3.0, throw: tuple[float, float] = (3.0, 8.0),
                     dtype: torch.dtype | None = None,
                     return_fault: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    r"""``n`` layered models cut by one random normal fault, ``(n, 1, H, W)`` km/s, seeded.

    The fault is the line :math:`x_f(i) = x_0 + (i - H/2)\tan\theta` with :math:`x_0` uniform in
    the middle half of the width and :math:`\theta` uniform in :math:`[-30°, 30°]`; pixels with
    :math:`x > x_f(i)` (hanging wall) take the layering at depth :math:`i - \Delta`, with the
    throw :math:`\Delta` uniform in ``throw`` (pixels). Other parameters as in
    :func:`layered_velocity` (the layers are drawn first, with the same random stream).

    Parameters
    ----------
    throw
        ``(min, max)`` vertical offset in pixels, ``0 <= min <= max``.
    return_fault
        Also return the hanging-wall mask ``(n, 1, H, W)`` (bool).
    """
    n, H, W, kmin, kmax, vmin, vmax, und = _check_common(n, size, layers, vmin, vmax, undulation)
    try:
        tmin, tmax = (check_positive(t, "throw", allow_zero=True) for t in throw)  # type: ignore[union-attr]
    except TypeError:
        raise TypeError(f"throw: expected (min, max) pixels, got {throw!r}") from None
    if tmax < tmin:
        raise ValueError(f"throw: expected min <= max, got {throw!r}")
    rng = np.random.default_rng(check_int(seed, "seed", minimum=0))
    iface, v = _layer_params(rng, n, H, W, kmin, kmax, vmin, vmax, und)
    x0 = rng.uniform(0.25 * W, 0.75 * W, size=n)
    theta = np.deg2rad(rng.uniform(-30.0, 30.0, size=n))
    dz = rng.uniform(tmin, tmax, size=n)
    ii, jj = np.meshgrid(np.arange(H, dtype=float), np.arange(W, dtype=float), indexing="ij")
    xf = x0[:, None, None] + (ii[None] - H / 2) * np.tan(theta)[:, None, None]
    hanging = jj[None] > xf  # (n, H, W)
    depth = ii[None] - dz[:, None, None] * hanging
    vel = _to_tensor(_assemble(iface, v, depth), dtype)
    if return_fault:
        return vel, torch.from_numpy(np.ascontiguousarray(hanging[:, None]))
    return vel


def velocity_models(n: int, size: int | tuple[int, int] = 32, *, seed: int = 0,
                    faulted_fraction: float = 0.5, dtype: torch.dtype | None = None,
                    **kwargs: object) -> Tensor:
    """A seeded mix of layered and faulted models (the velocity prior's training family).

    Model ``b`` is faulted when a seeded uniform draw is below ``faulted_fraction``; the
    layered and faulted parts come from :func:`layered_velocity` / :func:`faulted_velocity`
    with seeds derived from ``seed``. ``kwargs`` go to both (``throw`` to the faulted ones).
    """
    n = check_int(n, "n")
    seed = check_int(seed, "seed", minimum=0)
    f = check_positive(faulted_fraction, "faulted_fraction", allow_zero=True)
    if f > 1:
        raise ValueError(f"faulted_fraction: expected a number in [0, 1], got {faulted_fraction}")
    ss = np.random.SeedSequence(seed)
    s_mix, s_lay, s_flt = (int(c.generate_state(1)[0]) for c in ss.spawn(3))
    is_f = np.random.default_rng(s_mix).uniform(size=n) < f
    n_f = int(is_f.sum())
    throw = kwargs.pop("throw", (3.0, 8.0))
    out = torch.empty((n, 1, *_size_hw(size)), dtype=dtype or torch.get_default_dtype())
    if n - n_f:
        out[torch.from_numpy(~is_f)] = layered_velocity(n - n_f, size, seed=s_lay, dtype=out.dtype,
                                                        **kwargs)  # type: ignore[arg-type]
    if n_f:
        out[torch.from_numpy(is_f)] = faulted_velocity(n_f, size, seed=s_flt, dtype=out.dtype,
                                                       throw=throw, **kwargs)  # type: ignore[arg-type]
    return out


def _size_hw(size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        return int(size), int(size)
    return tuple(int(s) for s in size)  # type: ignore[return-value]


def to_unit(v: Tensor, vmin: float = VMIN, vmax: float = VMAX) -> Tensor:
    r"""Velocity → unit scale, :math:`u = (v - v_{min})/(v_{max} - v_{min})` (tensor or array)."""
    vmin, vmax = _check_range(vmin, vmax)
    if not isinstance(v, (Tensor, np.ndarray)):
        raise TypeError(f"v: expected a torch.Tensor or numpy array, got {type(v).__name__}")
    return (v - vmin) / (vmax - vmin)


def from_unit(u: Tensor, vmin: float = VMIN, vmax: float = VMAX) -> Tensor:
    r"""Unit scale → velocity, :math:`v = v_{min} + (v_{max} - v_{min})\,u` (tensor or array)."""
    vmin, vmax = _check_range(vmin, vmax)
    if not isinstance(u, (Tensor, np.ndarray)):
        raise TypeError(f"u: expected a torch.Tensor or numpy array, got {type(u).__name__}")
    return vmin + (vmax - vmin) * u


def _check_range(vmin: float, vmax: float) -> tuple[float, float]:
    vmin = check_positive(vmin, "vmin")
    vmax = check_positive(vmax, "vmax")
    if vmax <= vmin:
        raise ValueError(f"vmax: must exceed vmin = {vmin}, got {vmax}")
    return vmin, vmax
