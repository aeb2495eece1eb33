"""One self-contained HTML page of uncertainty-quantification results for a Posterior.

:func:`uq_report` writes a single HTML file: inline CSS, PNG figures embedded as base64
``data:`` URIs, no scripts and no external assets, so it can be mailed or archived as is.
All text that comes from the posterior (names, settings, provenance) is HTML-escaped.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import plots
from .maps import posterior_maps, summary_table

#: Largest report written; figures are re-rendered at lower resolution until it fits.
MAX_BYTES = 5 * 1024 * 1024

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;
max-width:1100px;color:#222;line-height:1.4;padding:0 1em}
h1{font-size:1.6em;margin-bottom:0.2em}h2{font-size:1.25em;border-bottom:1px solid #ddd;
padding-bottom:0.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:0.5em 0;font-size:0.9em}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f3f3f3}td.num{text-align:right;font-family:ui-monospace,monospace}
.warn{background:#fff4e5;border-left:4px solid #f0a030;padding:0.4em 0.8em;margin:0.3em 0}
.ok{background:#eef8ee;border-left:4px solid #4a4;padding:0.4em 0.8em;margin:0.3em 0}
figure{margin:0.8em 0}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:0.85em;color:#555}.meta{color:#666;font-size:0.9em}
code{font-family:ui-monospace,monospace;font-size:0.9em}
"""

_MAX_LIST = 12  # lists longer than this are summarised, not printed


# ---------------------------------------------------------------------------------------------
# small HTML helpers (everything escaped)
# ---------------------------------------------------------------------------------------------
def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _fmt(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        v = float(v)
        if not math.isfinite(v):
            return str(v)
        return f"{v:.4g}"
    return str(v)


def _is_number_list(v: Any) -> bool:
    return isinstance(v, (list, tuple)) and len(v) > 0 and all(
        isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)


def _compact(v: Any) -> Any:
    """Replace long lists/arrays by a short description (settings may hold loss histories)."""
    if hasattr(v, "tolist") and not isinstance(v, (int, float)):
        v = v.tolist()
    if isinstance(v, dict):
        return {str(k): _compact(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        if len(v) > _MAX_LIST:
            if _is_number_list(v):
                return f"[{len(v)} numbers: first {_fmt(v[0])}, last {_fmt(v[-1])}]"
            return f"[list of {len(v)} items]"
        return [_compact(x) for x in v]
    return v


def _kv_table(d: dict[str, Any], cls: str = "") -> str:
    if not d:
        return "<p class='meta'>(none)</p>"
    rows = []
    for k, v in d.items():
        v = _compact(v)
        if isinstance(v, dict):
            cell = _kv_table(v)
        elif isinstance(v, (list, tuple)):
            cell = f"<code>{_e(json.dumps(v, default=str))}</code>"
        else:
            num = isinstance(v, (int, float)) and not isinstance(v, bool)
            cell = f"<span class='{'num' if num else ''}'>{_e(_fmt(v))}</span>"
        rows.append(f"<tr><th>{_e(k)}</th><td>{cell}</td></tr>")
    return f"<table class='{_e(cls)}'>" + "".join(rows) + "</table>"


def _img(png: bytes, alt: str, caption: str = "") -> str:
    data = base64.b64encode(png).decode("ascii")
    cap = f"<figcaption>{_e(caption)}</figcaption>" if caption else ""
    return f"<figure><img src=\"data:image/png;base64,{data}\" alt=\"{_e(alt)}\">{cap}</figure>"


# ---------------------------------------------------------------------------------------------
# content
# ---------------------------------------------------------------------------------------------
def _stat_summary(posterior) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in posterior.sample_stats.items():
        v = value.detach().cpu().double().numpy() if hasattr(value, "detach") else np.asarray(value, float)
        if key == "diverging":
            out["divergences"] = f"{int(v.sum())} of {v.size} draws ({100 * v.mean():.2f}%)"
        elif v.size:
            out[f"{key} (mean)"] = float(np.nanmean(v))
            if key in ("tree_depth", "num_steps"):
                out[f"{key} (max)"] = float(np.nanmax(v))
    return out


def diagnostic_warnings(posterior, table: dict[str, float]) -> list[str]:
    """Plain-word warnings about what the diagnostics show (empty when nothing is wrong)."""
    w: list[str] = []
    method = str(posterior.method).lower()
    nd = posterior.num_chains * posterior.num_draws
    if not bool(np.isfinite(posterior.samples.detach().cpu().numpy()).all()):
        w.append("The draws contain NaN or infinite values: the sampler diverged somewhere; "
                 "the maps are unreliable.")
    if posterior.kind == "point":
        w.append("MAP is a point estimate: no uncertainty. Std, HDI, R-hat and ESS maps do not "
                 "apply; use a variational or MCMC method for uncertainty.")
    elif posterior.kind == "independent":
        if "vi" in method or "variational" in method or "svi" in method or "flow" in method:
            w.append("VI: independent draws from a fitted approximation. R-hat does not apply, "
                     "and variational posteriors (reverse KL) may under-estimate the variance.")
        else:
            w.append("Independent draws: R-hat (a between-chain check) does not apply.")
        if nd < 100:
            w.append(f"Only {nd} draws: the std and HDI maps carry Monte-Carlo error of roughly "
                     f"{100 / math.sqrt(2 * nd):.0f}% (std) and more for the HDI bounds.")
    if posterior.kind == "markov" and posterior.num_chains < 2:
        w.append("A single chain: R-hat needs at least 2 chains; run several chains to check "
                 "convergence.")
    rt = table.get("rhat_threshold", 1.01)
    et = table.get("ess_threshold", 400)
    if table.get("frac_rhat_gt", 0) > 0:
        w.append(f"{100 * table['frac_rhat_gt']:.1f}% of pixels have R-hat > {rt:g} "
                 f"(max {table.get('max_rhat', float('nan')):.3f}): the chains disagree, so they "
                 "have not converged or mixed. Run longer, or improve the sampler/initialisation.")
    if posterior.kind == "markov":
        for key, word in (("ess_bulk", "bulk"), ("ess_tail", "tail")):
            frac = table.get(f"frac_{key}_lt", 0)
            if frac > 0:
                w.append(f"{100 * frac:.1f}% of pixels have {word} ESS < {et:g} (min "
                         f"{table.get(f'min_{key}', float('nan')):.1f}): too few effective draws "
                         f"for reliable {'means and stds' if word == 'bulk' else 'interval bounds'}."
                         " Run longer chains.")
    stats = posterior.sample_stats
    if "diverging" in stats:
        nd_div = int(stats["diverging"].sum())
        if nd_div > 0:
            w.append(f"{nd_div} divergent transitions: the sampler met regions of high "
                     "curvature it cannot integrate; results may be biased. Lower the step size "
                     "(raise target_accept_prob) or reparametrise.")
    if "accept_prob" in stats:
        acc = float(stats["accept_prob"].double().mean())
        if "mala" in method:
            if acc < 0.2:
                w.append(f"MALA acceptance {acc:.2f} < 0.2: the step size is too large "
                         "(optimal ≈ 0.57, Roberts & Rosenthal 1998).")
            elif acc > 0.9:
                w.append(f"MALA acceptance {acc:.2f} > 0.9: the step size is very small, the "
                         "chain moves slowly (optimal ≈ 0.57).")
        elif any(m in method for m in ("nuts", "hmc")) and acc < 0.6:
            w.append(f"Mean acceptance {acc:.2f} < 0.6 for HMC/NUTS (target ≈ 0.8): the step "
                     "size is too large for this posterior.")
    if "tree_depth" in stats:
        max_depth = posterior.settings.get("max_tree_depth", 10)
        try:
            hits = float((stats["tree_depth"].double() >= float(max_depth)).double().mean())
        except (TypeError, ValueError):
            hits = 0.0
        if hits > 0.01:
            w.append(f"{100 * hits:.1f}% of NUTS iterations hit the maximum tree depth "
                     f"{max_depth}: trajectories are cut short; sampling is inefficient.")
    if "ula" in method and "mala" not in method:
        w.append("ULA has no Metropolis correction: its stationary law is biased by the step "
                 "size; compare with a smaller step or MALA.")
    return w


def _history_figures(settings: dict[str, Any], dpi: int) -> list[tuple[str, bytes]]:
    figs = []
    for key, value in settings.items():
        if hasattr(value, "tolist"):
            value = value.tolist()
        if _is_number_list(value) and len(value) > _MAX_LIST:
            figs.append((key, plots.png_bytes(plots.loss_curve(value, title=str(key)), dpi=dpi)))
    return figs[:3]


def _calibration_html(calibration: dict[str, Any], dpi: int) -> str:
    parts = []
    cov = calibration.get("coverage")
    if cov is not None:
        parts.append(_img(plots.png_bytes(plots.coverage_plot(cov), dpi=dpi), "coverage curve",
                          "Empirical coverage of central credible intervals vs nominal level "
                          "(shaded: ±2 binomial standard errors)."))
        rows = "".join(
            f"<tr><td class='num'>{lv:.2f}</td><td class='num'>{em:.3f}</td>"
            f"<td class='num'>{se:.3f}</td><td>{_e(_coverage_verdict(lv, em, se))}</td></tr>"
            for lv, em, se in zip(cov.levels, cov.empirical, cov.stderr, strict=True))
        parts.append("<table class='coverage'><tr><th>nominal</th><th>empirical</th>"
                     f"<th>s.e.</th><th>verdict</th></tr>{rows}</table>")
    sbc = calibration.get("sbc")
    if sbc is not None:
        parts.append(_img(plots.png_bytes(plots.sbc_histogram(sbc), dpi=dpi), "SBC rank histogram",
                          f"Simulation-based calibration: χ² = {sbc.statistic:.1f}, "
                          f"p = {sbc.pvalue:.3g} over {sbc.n} ranks."))
        verdict = ("consistent with a calibrated posterior" if sbc.pvalue > 0.01 else
                   "NOT uniform: the posterior is mis-calibrated (U shape: over-confident; "
                   "hump: under-confident; slope: biased)")
        parts.append(f"<p>SBC ranks: {_e(verdict)} (p = {_e(_fmt(sbc.pvalue))}).</p>")
    z = calibration.get("zscore")
    if z is not None:
        parts.append(_kv_table({"fraction |z| ≤ 1.645": z.fraction_within,
                                "nominal": z.nominal, "standard error": z.stderr,
                                "KS statistic vs N(0,1)": z.ks_statistic,
                                "KS p-value": z.ks_pvalue, "pixels": z.n}, "zscore"))
    return "".join(parts) or "<p class='meta'>(no calibration results given)</p>"


def _coverage_verdict(level: float, emp: float, se: float) -> str:
    if emp < level - 3 * se:
        return "over-confident (intervals too narrow)"
    if emp > level + 3 * se:
        return "under-confident (intervals too wide)"
    return "ok"


def _build(posterior, title: str, calibration: dict[str, Any] | None, hdi_prob: float, dpi: int,
           maps: dict[str, np.ndarray], table: dict[str, float],
           trace_pixels: Sequence[tuple[int, int, int]] | None) -> str:
    warnings = diagnostic_warnings(posterior, table)
    now = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    body = [f"<h1>{_e(title)}</h1>",
            f"<p class='meta'>{_e(posterior.method)} · kind {_e(posterior.kind)} · "
            f"{posterior.num_chains} chain(s) × {posterior.num_draws} draw(s) · image "
            f"{_e('×'.join(map(str, posterior.image_shape)))} · generated {_e(now)}</p>"]
    body.append("<h2>Warnings</h2>")
    if warnings:
        body += [f"<div class='warn'>{_e(x)}</div>" for x in warnings]
    else:
        body.append("<div class='ok'>No problems detected by the diagnostics.</div>")
    prob = posterior.problem or {}
    body.append("<h2>Problem</h2>")
    body.append(_kv_table({k: prob[k] for k in ("operator", "prior", "noise") if k in prob}
                          | {k: v for k, v in prob.items() if k not in ("operator", "prior", "noise")}))
    body.append("<h2>Method and settings</h2>")
    body.append(_kv_table({"method": posterior.method, "kind": posterior.kind,
                           "seed": posterior.seed, **{f"setting: {k}": v
                                                      for k, v in posterior.settings.items()}}))
    for key, png in _history_figures(posterior.settings, dpi):
        body.append(_img(png, f"{key} curve", f"{key} (from the method's settings)"))
    body.append("<h2>Timings</h2>")
    body.append(_kv_table({f"{k} [s]": v for k, v in posterior.timings.items()}))
    body.append("<h2>Maps</h2>")
    body.append(_img(plots.png_bytes(plots.posterior_panel(posterior, maps, hdi_prob=hdi_prob), dpi=dpi),
                     "posterior maps", f"Pixelwise maps (HDI at {hdi_prob:.0%}; R-hat: rank-"
                     "normalised split R-hat; ESS: bulk ESS, Vehtari et al. 2021)."))
    if "zscore" in maps:
        body.append(_img(plots.png_bytes(plots.zscore_histogram(maps["zscore"]), dpi=dpi),
                         "z-score histogram", "|estimate − truth| / std over pixels; a calibrated "
                         "Gaussian posterior follows the half-normal curve (90% below 1.645)."))
    body.append("<h2>Diagnostics</h2>")
    diag = {k: v for k, v in table.items() if k not in ("rhat_threshold", "ess_threshold")}
    labels = {"frac_rhat_gt": f"fraction of pixels with R-hat > {table['rhat_threshold']:g}",
              "max_rhat": "max R-hat",
              "frac_ess_bulk_lt": f"fraction with bulk ESS < {table['ess_threshold']:g}",
              "frac_ess_tail_lt": f"fraction with tail ESS < {table['ess_threshold']:g}",
              "min_ess_bulk": "min bulk ESS", "min_ess_tail": "min tail ESS",
              "median_ess_bulk": "median bulk ESS", "mean_std": "mean posterior std",
              "mean_hdi_width": f"mean {hdi_prob:.0%} HDI width",
              "max_mcse_mean": "max MCSE of the mean", "rmse": "RMSE of the estimate",
              "frac_zscore_le_1.645": "fraction of |error|/std ≤ 1.645 (0.9 if calibrated)"}
    rows = {labels.get(k, k): v for k, v in diag.items()}
    rows.update(_stat_summary(posterior))
    body.append("<div id='diagnostics'>" + _kv_table(rows, "diagnostics") + "</div>")
    if posterior.kind == "markov" and posterior.num_draws >= 4:
        body.append("<h2>Traces and ranks</h2>")
        body.append(_img(plots.png_bytes(plots.trace_plot(posterior, trace_pixels, maps=maps), dpi=dpi),
                         "trace plot", "Traces of the worst-mixing pixels (largest R-hat) and a latent."))
        body.append(_img(plots.png_bytes(plots.rank_plot(posterior, trace_pixels, maps=maps), dpi=dpi),
                         "rank plot", "Rank plots: flat histograms for every chain mean good mixing."))
    if calibration:
        body.append("<h2>Calibration</h2>")
        body.append(_calibration_html(calibration, dpi))
    return ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>"
            + "\n".join(body) + "</body></html>\n")


def uq_report(posterior, path: str | os.PathLike, calibration: dict[str, Any] | None = None, *,
              title: str = "Uncertainty quantification report", hdi_prob: float = 0.9,
              dpi: int = 80, trace_pixels: Sequence[tuple[int, int, int]] | None = None) -> Path:
    """Write one self-contained HTML report of ``posterior`` to ``path``.

    Parameters
    ----------
    posterior
        A :class:`~bayesinv.infer.posterior.Posterior`.
    path
        Output ``.html`` file (written atomically).
    calibration
        Optional results to include: ``{"coverage": CoverageResult, "sbc": SBCResult,
        "zscore": ZScoreResult}`` (any subset), e.g. from
        :func:`bayesinv.diagnostics.calibration.posterior_calibration`.
    title, hdi_prob, dpi
        Page title, HDI probability of the maps, figure resolution (lowered automatically until
        the file is below :data:`MAX_BYTES`).
    trace_pixels
        ``(c, i, j)`` pixels for the trace/rank plots (default: the largest R-hat).

    Returns
    -------
    pathlib.Path
        The written file.
    """
    from ..infer.posterior import Posterior

    if not isinstance(posterior, Posterior):
        raise TypeError(f"posterior: expected a Posterior, got {type(posterior).__name__}")
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path: expected a file path, got {type(path).__name__}")
    if calibration is not None and not isinstance(calibration, dict):
        raise TypeError(f"calibration: expected a dict, got {type(calibration).__name__}")
    if not isinstance(dpi, int) or dpi < 20:
        raise ValueError(f"dpi: expected an integer >= 20, got {dpi!r}")
    path = Path(path)
    if not path.parent.exists():
        raise ValueError(f"path: folder {str(path.parent)!r} does not exist")
    maps = posterior_maps(posterior, hdi_prob=hdi_prob)
    table = summary_table(maps)
    while True:
        text = _build(posterior, title, calibration, hdi_prob, dpi, maps, table, trace_pixels)
        if len(text.encode("utf-8")) < MAX_BYTES or dpi <= 20:
            break
        dpi = max(20, int(dpi * 0.7))
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path
