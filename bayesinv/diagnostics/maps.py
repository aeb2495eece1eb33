r"""Pixelwise posterior maps, vectorised over pixels: moments, HDI, R-hat, ESS, MCSE, errors.

Every function takes draws ``(chain, draw, *pixels)`` (a numpy array or torch tensor, e.g.
``Posterior.samples`` of shape ``(chain, draw, C, H, W)``) and returns ``(*pixels)`` float64
arrays. Pixels are processed in chunks (``chunk_size`` pixels at a time) so memory stays
bounded for large images; all the work inside a chunk is vectorised numpy/scipy.

The convergence diagnostics follow Vehtari, Gelman, Simpson, Carpenter & Bürkner (2021),
*Rank-normalization, folding, and localization: an improved R-hat for assessing convergence of
MCMC*, Bayesian Analysis 16(2), and reproduce ArviZ's ``rhat(method="rank")``,
``ess(method="bulk"/"tail"/"mean")`` and ``mcse(method="mean")`` to rounding error (the test
suite checks 1e-8 agreement):

* split chains: each chain of ``n`` draws becomes two of ``⌊n/2⌋`` (the middle draw of an odd
  chain is dropped);
* rank normalisation: :math:`z = \Phi^{-1}\big((r - 3/8)/(S + 1/4)\big)` with :math:`r` the
  average rank among all :math:`S` pooled draws (Blom 1958);
* :math:`\hat R = \sqrt{(\widehat{\mathrm{var}}^+)/W}` with :math:`\widehat{\mathrm{var}}^+ =
  \tfrac{n-1}{n}W + B/n`; rank R-hat is the max of the bulk R-hat (rank-normalised split chains)
  and the tail R-hat (rank-normalised :math:`|x - \mathrm{median}(x)|`);
* ESS :math:`= MN/\hat\tau`, :math:`\hat\tau = -1 + 2\sum_{t}\hat\rho_t` with the autocorrelations
  :math:`\hat\rho_t = 1 - (W - \bar\gamma_t)/\widehat{\mathrm{var}}^+` from FFT autocovariances
  :math:`\gamma_t`, truncated by Geyer's (1992) initial positive sequence and made monotone
  (initial monotone sequence); bulk ESS uses rank-normalised split chains, tail ESS the minimum
  over the 5% and 95% quantile indicators :math:`I(x \le q)`;
* MCSE of the mean :math:`= \mathrm{sd}(x)/\sqrt{\mathrm{ESS}_\text{mean}}`.
"""

from __future__ import annotations

import math
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import scipy.fft
from scipy import special

#: Pixels per chunk: a (256, 4, 1000) float64 block is 8 MB, cache-friendly and memory-bounded.
DEFAULT_CHUNK = 256

#: Which maps each kind of posterior supports.
MAPS_BY_KIND = {
    "point": ("estimate",),
    "independent": ("estimate", "mean", "median", "std", "hdi_lower", "hdi_upper", "hdi_width",
                    "ess_bulk", "ess_tail", "mcse_mean"),
    "markov": ("estimate", "mean", "median", "std", "hdi_lower", "hdi_upper", "hdi_width",
               "rhat", "ess_bulk", "ess_tail", "mcse_mean"),
}


# ---------------------------------------------------------------------------------------------
# input handling
# ---------------------------------------------------------------------------------------------
def as_draws(samples: Any, name: str = "samples", *, min_draws: int = 1) -> np.ndarray:
    """``samples`` as a floating numpy array ``(chain, draw, *pixels)`` (at least 3-D).

    No copy for CPU tensors/arrays of float32/float64: conversion to float64 happens chunk by
    chunk (see :func:`_chunked`), so a 256×256 image with 4×1000 float32 draws needs no 2 GB
    float64 copy.
    """
    try:
        import torch

        if isinstance(samples, torch.Tensor):
            if samples.is_complex():
                raise TypeError(f"{name}: complex draws are not accepted (got dtype {samples.dtype}); "
                                "pass the real part, the magnitude or torch.view_as_real")
            t = samples.detach().cpu()
            if t.dtype not in (torch.float32, torch.float64):
                t = t.double()
            samples = t.numpy()
    except ImportError:  # pragma: no cover
        pass
    if not isinstance(samples, np.ndarray):
        raise TypeError(f"{name}: expected a numpy array or torch tensor, got {type(samples).__name__}")
    if samples.dtype.kind not in "biuf":
        raise TypeError(f"{name}: expected real numeric draws, got a numpy array of dtype {samples.dtype}")
    if samples.ndim < 2:
        raise ValueError(f"{name}: expected shape (chain, draw, *pixels), got {samples.shape}")
    if samples.shape[1] < min_draws:
        raise ValueError(f"{name}: at least {min_draws} draws per chain needed, got {samples.shape[1]}")
    if samples.dtype not in (np.float32, np.float64):
        samples = samples.astype(np.float64)
    _check_finite_draws(samples, name)
    return samples[..., None] if samples.ndim == 2 else samples


def _check_finite_draws(a: np.ndarray, name: str, block: int = 1 << 22) -> None:
    """Refuse infinite draws; warn about NaN draws (their pixels get NaN maps, as documented).

    ``±inf`` has no meaning as a draw (a diverged sampler) and would give garbage statistics,
    so it raises ``ValueError``. NaN marks a missing pixel value: the maps of that pixel are
    NaN (same as ArviZ) and a ``RuntimeWarning`` says how many values are affected, so the
    NaN is never silent. Scans at most ``block`` values at a time (no full-size copy).
    """
    per_draw = max(1, math.prod(a.shape[2:]))
    step = max(1, block // per_draw)
    n_nan = 0
    for c in range(a.shape[0]):
        for d in range(0, a.shape[1], step):
            chunk = a[c, d:d + step]
            if np.isfinite(chunk).all():
                continue
            n_inf = int(np.isinf(chunk).sum())
            if n_inf:
                raise ValueError(f"{name}: chain {c} has {n_inf} infinite value(s) in draws "
                                 f"{d}..{min(d + step, a.shape[1]) - 1}; expected finite draws "
                                 "(did the sampler diverge?)")
            n_nan += int(np.isnan(chunk).sum())
    if n_nan:
        warnings.warn(f"{name}: {n_nan} draw value(s) are NaN; the maps of the pixels holding them "
                      "are NaN", RuntimeWarning, stacklevel=3)


def default_workers() -> int:
    """CPU cores this process may use (``os.sched_getaffinity`` where available)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS / Windows
        return max(1, os.cpu_count() or 1)


def _check_workers(workers: Any) -> int:
    if workers is None:
        return default_workers()
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1:
        raise ValueError(f"workers: expected a positive integer or None, got {workers!r}")
    return int(workers)


def _chunked(fn, draws: np.ndarray, chunk_size: int, n_out: int = 1, workers: int = 1):
    """Apply ``fn(block) -> (P,) arrays`` over pixel chunks and reshape back.

    ``block`` is pixel-major, ``(P, chain, draw)`` and contiguous, so that sorts and FFTs run
    along the contiguous last axis. With ``workers > 1`` chunks run in a thread pool: the
    work inside a chunk is numpy/scipy that releases the GIL (sorts, FFTs, reductions), so the
    threads run on separate cores. Chunks are independent and each writes its own slice of
    the outputs, so the result does not depend on ``workers`` (bit for bit); peak memory is
    ``workers`` chunks.
    """
    chain, draw = draws.shape[:2]
    pix_shape = draws.shape[2:]
    flat = draws.reshape(chain, draw, -1)
    npix = flat.shape[2]
    outs = [np.empty(npix) for _ in range(n_out)]

    def run(start: int) -> None:
        block = np.ascontiguousarray(np.moveaxis(flat[:, :, start:start + chunk_size], 2, 0),
                                     dtype=np.float64)
        res = fn(block)
        res = res if isinstance(res, tuple) else (res,)
        for o, r in zip(outs, res, strict=True):
            o[start:start + block.shape[0]] = r

    starts = range(0, npix, chunk_size)
    if workers > 1 and len(starts) > 1:
        with ThreadPoolExecutor(max_workers=min(workers, len(starts))) as pool:
            for _ in pool.map(run, starts):  # re-raises a chunk's exception here
                pass
    else:
        for start in starts:
            run(start)
    outs = [o.reshape(pix_shape) for o in outs]
    return outs[0] if n_out == 1 else tuple(outs)


# ---------------------------------------------------------------------------------------------
# building blocks on pixel-major (P, chain, draw) blocks
# ---------------------------------------------------------------------------------------------
def _split_chains(a: np.ndarray) -> np.ndarray:
    """``(P, M, n) -> (P, 2M, n // 2)``: first and last halves of each chain."""
    p, m, n = a.shape
    half = n // 2
    if n % 2 == 0:  # the halves are consecutive: a view, no copy
        return a.reshape(p, 2 * m, half)
    return np.concatenate([a[:, :, :half], a[:, :, n - half:]], axis=1)


def _tied_ranks(sorted_values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions in tied runs of sorted rows and twice their average (1-based) rank.

    A run of equal values at 0-based positions ``a..b`` gets the rank :math:`(a + b)/2 + 1`, as
    ``scipy.stats.rankdata(method="average")`` (returned doubled so it stays an integer).
    Untied positions keep rank ``position + 1``. Ties are rare in continuous draws, so only the
    tied runs are visited. Returns ``(flat_positions, twice_ranks)``.
    """
    size = sorted_values.shape[1]
    rows, cols = np.nonzero(sorted_values[:, 1:] == sorted_values[:, :-1])
    if rows.size == 0:
        return rows, rows
    e = rows * size + cols  # flat index of the left member of each equal neighbour pair
    brk = np.flatnonzero(np.diff(e) != 1)  # runs never continue across rows (gap of 2)
    a = e[np.concatenate([[0], brk + 1])]  # flat start of each run of equal values
    b = e[np.concatenate([brk, [e.size - 1]])] + 1  # flat end (inclusive)
    value = 2 * (a % size) + (b - a) + 2  # col_a + col_b + 2
    lengths = b - a + 1
    members = np.repeat(a - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths) + \
        np.arange(lengths.sum())
    return members, np.repeat(value, lengths)


def _twice_average_ranks(sorted_values: np.ndarray) -> np.ndarray:
    """Twice the tie-averaged 1-based ranks of sorted rows (see :func:`_tied_ranks`)."""
    p, size = sorted_values.shape
    ranks2 = np.broadcast_to(2 * np.arange(1, size + 1), (p, size)).copy()
    members, value = _tied_ranks(sorted_values)
    ranks2.flat[members] = value
    return ranks2


class _Sorted:
    """Pooled draws of each pixel (rows of ``(P, M, n)``), sorted once and reused.

    Gives rank normalisation (:meth:`z_scale`), the rank normalisation of the folded draws
    :math:`|x - \\mathrm{median}|` without a second full sort (:meth:`z_scale_folded`: the
    folded values are two sorted runs, merged by a stable sort in linear time), the median and
    type-7 quantiles. Gathers use flat indices (much faster than ``take_along_axis``).
    """

    def __init__(self, a: np.ndarray) -> None:
        p = a.shape[0]
        self.shape = a.shape
        self.flat = a.reshape(p, -1)
        size = self.flat.shape[1]
        self.offsets = (np.arange(p) * size)[:, None]
        self.order = np.argsort(self.flat, axis=1) + self.offsets  # flat indices
        self.values = np.take(self.flat, self.order)
        self.table = special.ndtri((np.arange(1, size + 1) - 0.375) / (size + 0.25))

    def _scatter(self, flat_order: np.ndarray, sorted_values: np.ndarray) -> np.ndarray:
        """Blom scores :math:`\\Phi^{-1}((r - 3/8)/(S + 1/4))` put back in draw order."""
        p, size = sorted_values.shape
        z_sorted = np.broadcast_to(self.table, (p, size)).copy()
        members, twice = _tied_ranks(sorted_values)
        if members.size:
            z_sorted.flat[members] = special.ndtri((twice / 2.0 - 0.375) / (size + 0.25))
        z = np.empty_like(self.flat)
        np.put(z, flat_order, z_sorted)
        return z.reshape(self.shape)

    def z_scale(self) -> np.ndarray:
        """Rank normalisation with average ranks of ties (Vehtari et al. 2021, eq. 14)."""
        return self._scatter(self.order, self.values)

    def z_scale_folded(self) -> np.ndarray:
        """Rank normalisation of :math:`|x - \\mathrm{median}(x)|` (the tail R-hat's input)."""
        size = self.values.shape[1]
        half = size // 2  # values[:, :half] <= median <= values[:, half:]
        med = self.median()[:, None]
        left = np.abs(self.values[:, :half][:, ::-1] - med)  # ascending (rounding is monotone)
        right = np.abs(self.values[:, half:] - med)
        folded = np.concatenate([left, right], axis=1)
        idx = np.concatenate([self.order[:, :half][:, ::-1], self.order[:, half:]], axis=1)
        merge = np.argsort(folded, axis=1, kind="stable") + self.offsets  # merges the two runs
        return self._scatter(np.take(idx, merge), np.take(folded, merge))

    def median(self) -> np.ndarray:
        size = self.values.shape[1]
        if size % 2:
            return self.values[:, size // 2].copy()
        return (self.values[:, size // 2 - 1] + self.values[:, size // 2]) / 2.0

    def quantile(self, q: float) -> np.ndarray:
        """R type-7 quantile computed as ``scipy.stats.mstats.mquantiles(alphap=1, betap=1)``."""
        n = self.values.shape[1]
        if n == 1:
            return self.values[:, 0].copy()
        m = 1.0 + q * (1.0 - 1.0 - 1.0)
        aleph = n * q + m
        k = int(np.floor(np.clip(aleph, 1, n - 1)))
        gamma = float(np.clip(aleph - k, 0, 1))
        return (1.0 - gamma) * self.values[:, k - 1] + gamma * self.values[:, k]


def _z_scale(a: np.ndarray) -> np.ndarray:
    """Rank normalisation per pixel over all chains and draws (Blom offsets, average ties)."""
    return _Sorted(a).z_scale()


def _rhat_basic(a: np.ndarray) -> np.ndarray:
    """Gelman-Rubin :math:`\\hat R` of (already split) chains ``(P, M, n)``, per pixel."""
    n = a.shape[2]
    chain_mean = a.mean(axis=2)
    within = a.var(axis=2, ddof=1).mean(axis=1)
    between = n * chain_mean.var(axis=1, ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.sqrt((between / within + n - 1) / n)


#: Lag windows computed directly (dot products, cheaper than an FFT for few lags) before falling
#: back to the FFT of all lags for slow-mixing pixels.
DIRECT_LAGS = (16, 64)


def _acov_direct(x: np.ndarray, lags: int) -> np.ndarray:
    """:math:`\\sum_{i<n-t} x_i x_{i+t}/n` for ``t < lags`` of centred ``(P, M, n)`` series."""
    n = x.shape[2]
    out = np.empty((*x.shape[:2], lags))
    dot = getattr(np, "vecdot", None)  # numpy >= 2 (BLAS-backed, ~2x faster than einsum)
    for t in range(lags):
        a, b = x[..., : n - t], x[..., t:]
        out[..., t] = dot(a, b) if dot is not None else np.einsum("pmi,pmi->pm", a, b)
    return out / n


def _acov_fft(x: np.ndarray) -> np.ndarray:
    """All-lag autocovariances of centred ``(P, M, n)`` series by zero-padded FFT (ArviZ's)."""
    n = x.shape[2]
    nfft = scipy.fft.next_fast_len(2 * n)
    f = scipy.fft.rfft(x, n=nfft, axis=2)
    return scipy.fft.irfft(f.real**2 + f.imag**2, n=nfft, axis=2)[..., :n] / n


def _geyer_tau(rho: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Geyer-truncated :math:`\\hat\\tau` from autocorrelations ``rho`` (P, L) (L <= n lags).

    Returns ``(tau, resolved)``; ``resolved`` is False where the truncation point lies beyond
    the ``L`` lags given (then ``tau`` is meaningless and more lags are needed).
    """
    lags = rho.shape[1]
    npair = lags // 2
    pairs = rho[:, 0:2 * npair:2] + rho[:, 1:2 * npair:2]
    # Geyer's initial positive sequence on pairs P_k = rho_{2k} + rho_{2k+1}: the scan stops at
    # the first k with P_k <= 0 or with 2k + 1 >= n - 3 (ArviZ's loop bound).
    kcap = max(0, math.ceil((n - 4) / 2))
    kcap = min(kcap, n // 2 - 1)
    avail = min(kcap, npair)
    nonpos = pairs[:, :avail] <= 0
    found = nonpos.any(axis=1)
    first = np.where(found, nonpos.argmax(axis=1), kcap) if avail > 0 else \
        np.full(rho.shape[0], kcap, dtype=np.int64)
    resolved = first < npair
    first = np.minimum(first, npair - 1)
    rows = np.arange(first.size)
    even_k = rho[rows, 2 * first]
    pair_k = pairs[rows, first]
    last = np.where((even_k > 0) | (pair_k >= 0), even_k, 0.0)
    # initial monotone sequence: pair sums 0..K-1 replaced by their running minimum
    mono = np.minimum.accumulate(pairs, axis=1)
    mask = np.arange(npair)[None, :] < first[:, None]
    tau = -1.0 + 2.0 * np.where(mask, mono, 0.0).sum(axis=1) + last
    return tau, resolved


def _ess_basic(a: np.ndarray) -> np.ndarray:
    """ESS of (already split) chains ``(P, M, n)``: autocovariances + Geyer's sequences.

    The first autocovariances come from direct dot products (windows :data:`DIRECT_LAGS`);
    pixels whose Geyer truncation needs more lags get all lags from the FFT (as ArviZ always
    does). The result does not depend on the windows (up to rounding).
    """
    p, m, n = a.shape
    out = np.full(p, np.nan)
    finite = np.isfinite(a).all(axis=(1, 2))
    const = finite & ((a.max(axis=(1, 2)) - a.min(axis=(1, 2))) < np.finfo(float).resolution)
    out[const] = m * n
    work = finite & ~const
    if not work.any():
        return out
    x = a[work] if not work.all() else a
    chain_mean = x.mean(axis=2)  # (P, M)
    x = x - chain_mean[:, :, None]
    var_between = chain_mean.var(axis=1, ddof=1) if m > 1 else 0.0

    def rho_of(acov_mean: np.ndarray, rows=slice(None)) -> np.ndarray:
        mean_var = acov_mean[:, 0] * n / (n - 1.0)
        var_plus = mean_var * (n - 1.0) / n
        if m > 1:
            var_plus = var_plus + var_between[rows]
        with np.errstate(divide="ignore", invalid="ignore"):
            rho = 1.0 - (mean_var[:, None] - acov_mean) / var_plus[:, None]
        rho[:, 0] = 1.0
        return rho

    tau = np.empty(x.shape[0])
    bad = np.zeros(x.shape[0], dtype=bool)
    todo = np.arange(x.shape[0])
    for lags in (*[k for k in DIRECT_LAGS if k < n], None):  # growing lag windows, then FFT
        xs = x[todo] if todo.size < x.shape[0] else x
        acov = _acov_fft(xs) if lags is None else _acov_direct(xs, lags)
        rho = rho_of(acov.mean(axis=1), todo)
        t, resolved = _geyer_tau(rho, n)
        if lags is None:
            resolved[:] = True
        tau[todo[resolved]] = t[resolved]
        bad[todo[resolved]] = ~np.isfinite(rho[resolved]).all(axis=1)
        todo = todo[~resolved]
        if todo.size == 0:
            break
    total = m * n
    ess = total / np.maximum(tau, 1.0 / np.log10(total))
    ess[bad] = np.nan
    out[work] = ess
    return out


def _masked(fn, a: np.ndarray, min_draws: int, min_chains: int, n_out: int = 1):
    """Run ``fn`` on the NaN-free pixels of ``a``; NaN elsewhere and for too short chains."""
    outs = [np.full(a.shape[0], np.nan) for _ in range(n_out)]
    ok = ~np.isnan(a).any(axis=(1, 2))
    if a.shape[1] >= min_chains and a.shape[2] >= min_draws and ok.any():
        res = fn(a if ok.all() else a[ok])
        res = res if isinstance(res, tuple) else (res,)
        for o, r in zip(outs, res, strict=True):
            o[ok] = r
    return outs[0] if n_out == 1 else tuple(outs)


def _max_like_python(bulk: np.ndarray, tail: np.ndarray) -> np.ndarray:
    """``max(bulk, tail)`` element-wise as Python's ``max`` (ArviZ): NaN bulk stays NaN."""
    return np.where(np.isnan(bulk), np.nan, np.where(tail > bulk, tail, bulk))


#: Quantities :func:`convergence_maps` can compute in one pass.
CONVERGENCE_QUANTITIES = ("rhat", "ess_bulk", "ess_tail", "ess_mean", "mcse_mean")


def _convergence_block(a: np.ndarray, which: tuple[str, ...],
                       tail_prob: tuple[float, float] = (0.05, 0.95)) -> tuple[np.ndarray, ...]:
    """All requested diagnostics of one (P, M, N) block, sharing sorts between them."""
    p, m, n_draw = a.shape
    res: dict[str, np.ndarray] = {}
    nan = np.full(p, np.nan)
    ok = ~np.isnan(a).any(axis=(1, 2))
    if n_draw < 4 or not ok.any():
        return tuple(nan.copy() for _ in which)
    b = a if ok.all() else a[ok]
    split = _split_chains(b)
    need_split_sort = any(k in which for k in ("rhat", "ess_bulk")) or (
        "ess_tail" in which and n_draw % 2 == 0)
    srt = _Sorted(split) if need_split_sort else None
    if "rhat" in which or "ess_bulk" in which:
        z = srt.z_scale()
        if "rhat" in which:
            if m >= 2:
                bulk = _rhat_basic(z)
                tail = _rhat_basic(srt.z_scale_folded())
                res["rhat"] = _max_like_python(bulk, tail)
            else:
                res["rhat"] = np.full(b.shape[0], np.nan)
        if "ess_bulk" in which:
            res["ess_bulk"] = _ess_basic(z)
    if "ess_tail" in which:
        # quantiles of the pooled *unsplit* draws; for an even draw count they are the same set
        full = srt if (srt is not None and n_draw % 2 == 0) else _Sorted(b)
        ess = []
        for q in tail_prob:
            ind = (b <= full.quantile(q)[:, None, None]).astype(np.float64)
            ess.append(_ess_basic(_split_chains(ind)))
        res["ess_tail"] = np.minimum(ess[0], ess[1])
    if "ess_mean" in which or "mcse_mean" in which:
        ess_mean = _ess_basic(split)
        res["ess_mean"] = ess_mean
        if "mcse_mean" in which:
            res["mcse_mean"] = b.reshape(b.shape[0], -1).std(axis=1, ddof=1) / np.sqrt(ess_mean)
    out = []
    for k in which:
        full_res = nan.copy()
        full_res[ok] = res[k]
        out.append(full_res)
    return tuple(out)


# ---------------------------------------------------------------------------------------------
# public pixelwise maps
# ---------------------------------------------------------------------------------------------
def convergence_maps(samples: Any, which: tuple[str, ...] = ("rhat", "ess_bulk", "ess_tail"), *,
                     chunk_size: int = DEFAULT_CHUNK,
                     workers: int | None = None) -> dict[str, np.ndarray]:
    """Several convergence diagnostics per pixel in one pass (sorts shared between them).

    ``which`` is any of :data:`CONVERGENCE_QUANTITIES`; see :func:`rhat_map`, :func:`ess_map`
    and :func:`mcse_mean_map` for their definitions. ``workers`` threads process pixel chunks
    in parallel (default: the CPU cores available to the process; the result does not depend
    on it).
    """
    which = tuple(which)
    for k in which:
        if k not in CONVERGENCE_QUANTITIES:
            raise ValueError(f"which: unknown quantity {k!r}; expected some of "
                             f"{list(CONVERGENCE_QUANTITIES)}")
    if not which:
        return {}
    chunk_size = _check_chunk(chunk_size)
    workers = _check_workers(workers)
    res = _chunked(lambda blk: _convergence_block(blk, which), as_draws(samples), chunk_size,
                   n_out=len(which), workers=workers)
    res = res if isinstance(res, tuple) else (res,)
    return dict(zip(which, res, strict=True))


def _check_chunk(chunk_size: Any) -> int:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise ValueError(f"chunk_size: expected a positive integer, got {chunk_size!r}")
    return int(chunk_size)


def rhat_map(samples: Any, *, chunk_size: int = DEFAULT_CHUNK,
             workers: int | None = None) -> np.ndarray:
    """Rank-normalised split :math:`\\hat R` per pixel (Vehtari et al. 2021; = ``arviz.rhat``).

    NaN where there are fewer than 2 chains or 4 draws, or a pixel holds NaN.
    """
    return convergence_maps(samples, ("rhat",), chunk_size=chunk_size, workers=workers)["rhat"]


def ess_map(samples: Any, method: str = "bulk", *, chunk_size: int = DEFAULT_CHUNK,
            workers: int | None = None) -> np.ndarray:
    """Effective sample size per pixel: ``method`` = ``"bulk"``, ``"tail"`` or ``"mean"``.

    Vehtari et al. (2021) bulk/tail ESS; ``"mean"`` is the classic ESS of split chains.
    Equal to ``arviz.ess(..., method=method)`` pixel by pixel.
    """
    if method not in ("bulk", "tail", "mean"):
        raise ValueError(f"method: unknown value {method!r}; expected one of ['bulk', 'mean', 'tail']")
    key = f"ess_{method}"
    return convergence_maps(samples, (key,), chunk_size=chunk_size, workers=workers)[key]


def mcse_mean_map(samples: Any, *, chunk_size: int = DEFAULT_CHUNK,
                  workers: int | None = None) -> np.ndarray:
    """Monte-Carlo standard error of the posterior mean, ``sd / sqrt(ESS_mean)`` per pixel."""
    return convergence_maps(samples, ("mcse_mean",), chunk_size=chunk_size,
                            workers=workers)["mcse_mean"]


def hdi_map(samples: Any, hdi_prob: float = 0.9, *, chunk_size: int = DEFAULT_CHUNK,
            workers: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Highest-density interval per pixel: the shortest interval holding ``hdi_prob`` of the draws.

    With the :math:`S` pooled draws sorted, :math:`x_{(1)} \\le \\dots \\le x_{(S)}`, and
    :math:`k = \\lfloor p S \\rfloor`, the interval is :math:`[x_{(i)}, x_{(i+k)}]` for the
    :math:`i` minimising :math:`x_{(i+k)} - x_{(i)}` (first minimum), as ``arviz.hdi``
    (Chen & Shao 1999). Returns ``(lower, upper)``.
    """
    p = float(hdi_prob)
    if not 0.0 < p < 1.0:
        raise ValueError(f"hdi_prob: expected a probability in (0, 1), got {hdi_prob!r}")
    draws = as_draws(samples)
    s = draws.shape[0] * draws.shape[1]
    k = int(math.floor(p * s))
    if s - k < 1 or k < 1:
        raise ValueError(f"hdi_prob: {hdi_prob} with {s} draws leaves no interval to choose")

    def fn(b):
        srt = np.sort(b.reshape(b.shape[0], s), axis=1)
        width = srt[:, k:] - srt[:, : s - k]
        i = np.argmin(width, axis=1)
        rows = np.arange(srt.shape[0])
        return srt[rows, i], srt[rows, i + k]

    return _chunked(fn, draws, _check_chunk(chunk_size), n_out=2, workers=_check_workers(workers))


def _image(a: Any, name: str) -> np.ndarray:
    try:
        import torch

        if isinstance(a, torch.Tensor):
            a = a.detach().cpu().double().numpy()
    except ImportError:  # pragma: no cover
        pass
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name}: expected a numpy array or torch tensor, got {type(a).__name__}")
    return np.asarray(a, dtype=np.float64)


def error_map(estimate: Any, truth: Any) -> np.ndarray:
    """Signed error ``estimate - truth`` per pixel."""
    est, tru = _image(estimate, "estimate"), _image(truth, "truth")
    if est.shape != tru.shape:
        raise ValueError(f"truth: expected shape {est.shape}, got {tru.shape}")
    return est - tru


def zscore_map(estimate: Any, truth: Any, std: Any) -> np.ndarray:
    """Standardised error :math:`|\\hat x - x| / \\mathrm{sd}` per pixel (inf where sd = 0)."""
    err = np.abs(error_map(estimate, truth))
    sd = _image(std, "std")
    if sd.shape != err.shape:
        raise ValueError(f"std: expected shape {err.shape}, got {sd.shape}")
    with np.errstate(divide="ignore", invalid="ignore"):
        return err / sd


# ---------------------------------------------------------------------------------------------
# all maps of a Posterior
# ---------------------------------------------------------------------------------------------
def posterior_maps(posterior, hdi_prob: float = 0.9, *, chunk_size: int = DEFAULT_CHUNK,
                   workers: int | None = None) -> dict[str, np.ndarray]:
    """All pixelwise maps that apply to ``posterior`` (a :class:`~bayesinv.infer.posterior.Posterior`).

    Returns a dict of ``(C, H, W)`` float64 arrays. Always ``"estimate"`` (the point
    estimate); for ``kind="independent"`` also ``mean``, ``median``, ``std``, ``hdi_lower``,
    ``hdi_upper``, ``hdi_width``, ``ess_bulk``, ``ess_tail``, ``mcse_mean``; for
    ``kind="markov"`` additionally ``rhat``. With a known truth: ``error`` (estimate − truth),
    ``abs_error`` and, where a std exists, ``zscore`` = ``|estimate − truth| / std``.
    Maps that need more draws than there are (HDI, ESS with < 4 draws) are left out.
    ``workers`` threads share the pixel chunks (default: the available CPU cores).
    """
    from ..infer.posterior import Posterior

    if not isinstance(posterior, Posterior):
        raise TypeError(f"posterior: expected a bayesinv Posterior, got {type(posterior).__name__}")
    try:
        hdi_prob = float(hdi_prob)
    except (TypeError, ValueError):
        raise TypeError(f"hdi_prob: expected a probability in (0, 1), got {hdi_prob!r}") from None
    if not 0.0 < hdi_prob < 1.0:
        raise ValueError(f"hdi_prob: expected a probability in (0, 1), got {hdi_prob!r}")
    kind = posterior.kind
    workers = _check_workers(workers)
    draws = as_draws(posterior.samples)
    out: dict[str, np.ndarray] = {"estimate": _image(posterior.point_estimate, "point_estimate")}
    nchain, ndraw = draws.shape[:2]
    if kind != "point" and nchain * ndraw >= 2:
        def moments(b):
            f = b.reshape(b.shape[0], -1)
            return f.mean(axis=1), np.median(f, axis=1), f.std(axis=1, ddof=1)

        out["mean"], out["median"], out["std"] = _chunked(moments, draws, _check_chunk(chunk_size),
                                                          n_out=3, workers=workers)
        s = nchain * ndraw
        k = int(math.floor(hdi_prob * s))
        if 1 <= k < s:
            lo, hi = hdi_map(draws, hdi_prob, chunk_size=chunk_size, workers=workers)
            out.update(hdi_lower=lo, hdi_upper=hi, hdi_width=hi - lo)
        if ndraw >= 4:
            which = ("ess_bulk", "ess_tail", "mcse_mean")
            if kind == "markov" and nchain >= 2:
                which = ("rhat", *which)
            out.update(convergence_maps(draws, which, chunk_size=chunk_size, workers=workers))
    if posterior.truth is not None:
        truth = _image(posterior.truth, "truth")
        out["error"] = out["estimate"] - truth
        out["abs_error"] = np.abs(out["error"])
        if "std" in out:
            with np.errstate(divide="ignore", invalid="ignore"):
                out["zscore"] = out["abs_error"] / out["std"]
    return out


def summary_table(maps: dict[str, np.ndarray], *, rhat_threshold: float = 1.01,
                  ess_threshold: float = 400.0) -> dict[str, float]:
    """Scalar summaries of :func:`posterior_maps` output (fractions of flagged pixels etc.).

    Keys present only where their maps exist: ``frac_rhat_gt`` (fraction of pixels with
    R-hat > ``rhat_threshold``, Vehtari et al. 2021 recommend 1.01), ``max_rhat``,
    ``frac_ess_bulk_lt`` / ``frac_ess_tail_lt`` (fraction with ESS < ``ess_threshold``, 400 =
    100 per chain for 4 chains), ``min_ess_bulk``, ``min_ess_tail``, ``median_ess_bulk``,
    ``mean_std``, ``mean_hdi_width``, ``max_mcse_mean``, ``rmse`` and ``frac_zscore_le_1.645``
    (≈ 0.9 for a calibrated Gaussian posterior).
    """
    t: dict[str, float] = {}

    def fin(a):
        a = np.asarray(a, dtype=float).ravel()
        return a[np.isfinite(a)]

    if "rhat" in maps:
        r = np.asarray(maps["rhat"]).ravel()
        t["frac_rhat_gt"] = float(np.mean(~(r <= rhat_threshold))) if r.size else float("nan")
        t["max_rhat"] = float(np.nanmax(r)) if np.isfinite(r).any() else float("nan")
    for key in ("ess_bulk", "ess_tail"):
        if key in maps:
            e = np.asarray(maps[key]).ravel()
            t[f"frac_{key}_lt"] = float(np.mean(~(e >= ess_threshold)))
            t[f"min_{key}"] = float(np.nanmin(e)) if np.isfinite(e).any() else float("nan")
    if "ess_bulk" in maps and fin(maps["ess_bulk"]).size:
        t["median_ess_bulk"] = float(np.median(fin(maps["ess_bulk"])))
    if "std" in maps:
        t["mean_std"] = float(np.mean(maps["std"]))
    if "hdi_width" in maps:
        t["mean_hdi_width"] = float(np.mean(maps["hdi_width"]))
    if "mcse_mean" in maps and fin(maps["mcse_mean"]).size:
        t["max_mcse_mean"] = float(np.max(fin(maps["mcse_mean"])))
    if "error" in maps:
        t["rmse"] = float(np.sqrt(np.mean(np.asarray(maps["error"]) ** 2)))
    if "zscore" in maps:
        t["frac_zscore_le_1.645"] = float(np.mean(np.asarray(maps["zscore"]) <= 1.645))
    t["rhat_threshold"] = rhat_threshold
    t["ess_threshold"] = ess_threshold
    return t
