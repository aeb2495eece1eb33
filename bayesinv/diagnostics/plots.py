"""Figures of posterior diagnostics (matplotlib, Agg; no pyplot state, no ArviZ plots).

Every function returns a :class:`matplotlib.figure.Figure`; :func:`save_png` writes one and
:func:`png_bytes` renders one for embedding. Figures are built with the object-oriented API
(``Figure()`` + Agg canvas), so nothing depends on a display or pyplot's global state.
Trace and rank plots are drawn here directly (rank plots after Vehtari et al. 2021, §4)
rather than through ArviZ, which keeps ArviZ confined to :mod:`.arviz_io`.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .maps import posterior_maps

#: Panel titles and colour maps of :func:`posterior_panel`.
_PANELS = (
    ("truth", "truth", "gray"),
    ("measurement", "measurement y", "gray"),
    ("estimate", "point estimate", "gray"),
    ("mean", "posterior mean", "gray"),
    ("std", "posterior std", "magma"),
    ("hdi_width", "HDI width", "magma"),
    ("error", "error (estimate − truth)", "RdBu_r"),
    ("zscore", "|error| / std", "viridis"),
    ("rhat", "R-hat", "inferno"),
    ("ess_bulk", "bulk ESS", "viridis"),
)


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _np(a: Any) -> np.ndarray:
    if hasattr(a, "detach"):
        a = a.detach().cpu().double().numpy()
    return np.asarray(a, dtype=float)


def _display(img: np.ndarray, rgb_ok: bool) -> tuple[np.ndarray, bool]:
    """(C, H, W) -> something imshow can draw: RGB for 3 channels where allowed, else the mean."""
    if img.ndim == 2:
        return img, False
    if img.shape[0] == 3 and rgb_ok:
        return np.clip(np.moveaxis(img, 0, -1), 0, 1), True
    return img.mean(axis=0), False


def _show(ax, img: np.ndarray, title: str, cmap: str, *, rgb_ok: bool = False,
          symmetric: bool = False, vmin: float | None = None, vmax: float | None = None) -> None:
    data, is_rgb = _display(img, rgb_ok)
    kw: dict[str, Any] = {}
    if not is_rgb:
        finite = data[np.isfinite(data)]
        if symmetric and finite.size:
            lim = float(np.max(np.abs(finite))) or 1.0
            kw.update(vmin=-lim, vmax=lim)
        if vmin is not None:
            kw["vmin"] = vmin
        if vmax is not None:
            kw["vmax"] = vmax
        kw["cmap"] = cmap
    im = ax.imshow(data, interpolation="nearest", **kw)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    if not is_rgb:
        ax.figure.colorbar(im, ax=ax, shrink=0.8)


def _measurement_panel(ax, y: np.ndarray, image_shape: tuple[int, ...]) -> None:
    """An image when ``y`` is image-shaped, |y| for complex pairs, else a line plot."""
    if y.ndim >= 2 and y.shape[-1] == 2 and y.ndim >= 3:  # complex stored as (..., 2)
        y = np.hypot(y[..., 0], y[..., 1])
        title = "|measurement y|"
    else:
        title = "measurement y"
    if y.ndim == 3 and y.shape[1] > 1 and y.shape[2] > 1:
        _show(ax, y, title, "gray", rgb_ok=True)
    elif y.ndim == 2 and min(y.shape) > 1:
        _show(ax, y, title, "gray")
    else:
        flat = y.ravel()
        ax.plot(np.arange(flat.size), flat, lw=0.6)
        ax.set_title(f"{title} ({flat.size} values)", fontsize=9)
        ax.tick_params(labelsize=7)


def posterior_panel(posterior, maps: dict[str, np.ndarray] | None = None, *,
                    hdi_prob: float = 0.9, ncols: int = 4) -> Figure:
    """Standard panel: truth, measurement, estimate, mean, std, error, |error|/std, R-hat, ESS.

    Panels appear only where they apply (e.g. no std/R-hat for a MAP point estimate, no
    R-hat for independent draws, no error without a truth).
    """
    maps = posterior_maps(posterior, hdi_prob=hdi_prob) if maps is None else maps
    items: list[tuple[str, Any, str, str]] = []
    if posterior.truth is not None:
        items.append(("truth", _np(posterior.truth), "truth", "gray"))
    if posterior.observed is not None:
        items.append(("measurement", _np(posterior.observed), "measurement y", "gray"))
    for key, title, cmap in _PANELS[2:]:
        if key in maps and not (key == "mean" and posterior.kind == "point"):
            items.append((key, maps[key], title, cmap))
    n = len(items)
    ncols = max(1, min(ncols, n))
    nrows = -(-n // ncols)
    fig = _figure(3.0 * ncols, 2.7 * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    image_vals = [v for k, v, _, _ in items if k in ("truth", "estimate", "mean")]
    lo = min(float(np.nanmin(v)) for v in image_vals) if image_vals else None
    hi = max(float(np.nanmax(v)) for v in image_vals) if image_vals else None
    for ax, (key, val, title, cmap) in zip(axes, items, strict=False):
        if key == "measurement":
            _measurement_panel(ax, val, posterior.image_shape)
        elif key in ("truth", "estimate", "mean"):
            _show(ax, val, title, cmap, rgb_ok=True, vmin=lo, vmax=hi)
        elif key == "error":
            _show(ax, val, title, cmap, symmetric=True)
        elif key == "rhat":
            _show(ax, val, title, cmap, vmin=1.0)
        else:
            _show(ax, val, title, cmap)
    for ax in axes[n:]:
        ax.set_axis_off()
    fig.suptitle(f"{posterior.method} ({posterior.kind}): {posterior.num_chains} chain(s) × "
                 f"{posterior.num_draws} draw(s)", fontsize=10)
    return fig


def coverage_plot(coverage) -> Figure:
    """Empirical vs nominal coverage of central intervals, with ±2 binomial standard errors."""
    lv, emp, se = np.asarray(coverage.levels), np.asarray(coverage.empirical), np.asarray(coverage.stderr)
    fig = _figure(3.6, 3.4)
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="ideal")
    ax.fill_between(lv, lv - 2 * se, lv + 2 * se, color="0.85", label="±2 s.e.")
    ax.plot(lv, emp, "o-", ms=3, label="empirical")
    ax.set_xlabel("nominal level")
    ax.set_ylabel("empirical coverage")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, loc="upper left")
    ax.set_title(f"coverage ({coverage.n} values)", fontsize=9)
    return fig


def sbc_histogram(sbc) -> Figure:
    """SBC rank histogram with the 99% band of a uniform histogram (Talts et al. 2018, Fig. 1)."""
    from scipy import stats

    counts = np.asarray(sbc.counts)
    edges = np.asarray(sbc.edges)
    widths = np.diff(edges)
    expected = sbc.n * widths / (sbc.num_draws + 1)
    fig = _figure(4.0, 3.0)
    ax = fig.subplots()
    lo = stats.binom.ppf(0.005, sbc.n, widths / (sbc.num_draws + 1))
    hi = stats.binom.ppf(0.995, sbc.n, widths / (sbc.num_draws + 1))
    ax.bar(edges[:-1], counts, width=widths, align="edge", color="C0", edgecolor="white",
           alpha=0.85, zorder=2)
    ax.step(np.r_[edges[:-1], edges[-1]], np.r_[expected, expected[-1]], where="post", color="k",
            lw=0.8, zorder=3)
    ax.fill_between(np.r_[edges[:-1], edges[-1]], np.r_[lo, lo[-1]], np.r_[hi, hi[-1]],
                    step="post", color="0.6", alpha=0.35, label="99% band (uniform)", zorder=1)
    ax.set_xlabel(f"rank of truth among {sbc.num_draws} draws")
    ax.set_ylabel("count")
    ax.set_title(f"SBC ranks: χ² p = {sbc.pvalue:.3g}", fontsize=9)
    ax.legend(fontsize=7)
    return fig


def zscore_histogram(zscores: Any) -> Figure:
    """Histogram of |error|/std against the half-normal density of a calibrated posterior."""
    from scipy import stats

    z = np.abs(_np(zscores)).ravel()
    z = z[np.isfinite(z)]
    fig = _figure(3.6, 3.0)
    ax = fig.subplots()
    if z.size:
        top = max(4.0, float(np.quantile(z, 0.99)))
        ax.hist(z, bins=40, range=(0, top), density=True, color="C0", alpha=0.7, label="|z|")
        g = np.linspace(0, top, 200)
        ax.plot(g, 2 * stats.norm.pdf(g), "k-", lw=1, label="half-normal")
        ax.axvline(1.645, color="C3", lw=0.8, ls="--", label="1.645 (90%)")
        ax.legend(fontsize=7)
    ax.set_xlabel("|estimate − truth| / std")
    ax.set_title("z-scores", fontsize=9)
    return fig


def _pick_pixels(image_shape: tuple[int, ...], pixels: Sequence[tuple[int, int, int]] | None,
                 maps: dict[str, np.ndarray] | None, k: int) -> list[tuple[int, int, int]]:
    if pixels is not None:
        return [tuple(int(i) for i in p) for p in pixels]  # type: ignore[misc]
    if maps is not None and "rhat" in maps and np.isfinite(maps["rhat"]).any():
        flat = np.where(np.isfinite(maps["rhat"]), maps["rhat"], -np.inf).ravel()
        idx = np.argsort(flat)[::-1][:k]  # worst-mixing pixels first
    else:
        idx = np.linspace(0, int(np.prod(image_shape)) - 1, k).astype(int)
    return [tuple(int(v) for v in np.unravel_index(i, image_shape)) for i in idx]


def _series(posterior, pixels, latents) -> list[tuple[str, np.ndarray]]:
    x = _np(posterior.samples)
    out = [(f"x[{c},{i},{j}]", x[:, :, c, i, j]) for c, i, j in pixels]
    if posterior.latent_samples is not None and latents:
        z = _np(posterior.latent_samples).reshape(posterior.num_chains, posterior.num_draws, -1)
        out += [(f"z[{k}]", z[:, :, k]) for k in latents if 0 <= k < z.shape[2]]
    return out


def trace_plot(posterior, pixels: Sequence[tuple[int, int, int]] | None = None,
               latents: Sequence[int] | None = (0,), *, maps: dict[str, np.ndarray] | None = None,
               k: int = 3) -> Figure:
    """Trace (value vs draw, one line per chain) and pooled histogram of chosen pixels/latents.

    Without ``pixels``, the ``k`` pixels with the largest R-hat (or evenly spaced ones).
    """
    series = _series(posterior, _pick_pixels(posterior.image_shape, pixels, maps, k), latents)
    fig = _figure(7.0, 1.6 * len(series) + 0.4)
    axes = fig.subplots(len(series), 2, squeeze=False, width_ratios=[3, 1])
    for (name, s), (a_tr, a_h) in zip(series, axes, strict=True):
        for c in range(s.shape[0]):
            a_tr.plot(s[c], lw=0.5, alpha=0.8)
            a_h.hist(s[c], bins=30, histtype="step", density=True)
        a_tr.set_ylabel(name, fontsize=8)
        a_tr.tick_params(labelsize=7)
        a_h.tick_params(labelsize=7)
    axes[-1, 0].set_xlabel("draw")
    fig.suptitle("traces (one colour per chain)", fontsize=9)
    return fig


def rank_plot(posterior, pixels: Sequence[tuple[int, int, int]] | None = None,
              latents: Sequence[int] | None = (0,), *, maps: dict[str, np.ndarray] | None = None,
              k: int = 3, bins: int = 20) -> Figure:
    """Rank plots: histograms per chain of the ranks of the pooled draws (Vehtari et al. 2021).

    For well-mixed chains every chain's histogram is flat; shifted or unequal histograms show
    chains exploring different regions.
    """
    from scipy import stats

    series = _series(posterior, _pick_pixels(posterior.image_shape, pixels, maps, k), latents)
    fig = _figure(7.0, 1.5 * len(series) + 0.4)
    axes = fig.subplots(len(series), 1, squeeze=False)[:, 0]
    for (name, s), ax in zip(series, axes, strict=True):
        r = stats.rankdata(s.ravel()).reshape(s.shape)
        edges = np.linspace(0, s.size, bins + 1)
        for c in range(s.shape[0]):
            h = np.histogram(r[c], bins=edges)[0]
            ax.step(edges[:-1], h + c * 1.2 * (s.shape[1] / bins), where="post", lw=0.8)
            ax.axhline(c * 1.2 * (s.shape[1] / bins) + s.shape[1] / bins, color="0.6", lw=0.5, ls=":")
        ax.set_ylabel(name, fontsize=8)
        ax.set_yticks([])
        ax.tick_params(labelsize=7)
    axes[-1].set_xlabel("rank (all chains pooled); one offset histogram per chain")
    fig.suptitle("rank plots", fontsize=9)
    return fig


def loss_curve(history: Sequence[float], title: str = "objective") -> Figure:
    """A small plot of an optimisation history (log scale when positive)."""
    h = np.asarray(list(history), dtype=float)
    fig = _figure(3.6, 2.6)
    ax = fig.subplots()
    ax.plot(np.arange(h.size), h, lw=0.8)
    if h.size and np.all(h[np.isfinite(h)] > 0):
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_title(title, fontsize=9)
    ax.tick_params(labelsize=7)
    return fig


def png_bytes(fig: Figure, dpi: int = 80) -> bytes:
    """Render ``fig`` to PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def save_png(fig: Figure, path: str | os.PathLike, dpi: int = 100) -> None:
    """Write ``fig`` as a PNG file."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path: expected a file path, got {type(path).__name__}")
    fig.savefig(os.fspath(path), format="png", dpi=dpi)
