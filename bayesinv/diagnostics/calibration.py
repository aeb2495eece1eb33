r"""Calibration checks of posterior uncertainty: coverage, simulation-based calibration, z-scores.

All functions take plain arrays/tensors of draws ``(..., S, *pixels)`` and truths, so they work
for any method. They answer "do the credible intervals mean what they say?":

* :func:`coverage_curve` — empirical coverage of central credible intervals vs nominal level;
* :func:`sbc_ranks` / :func:`sbc_test` — simulation-based calibration (Talts et al. 2018);
* :func:`zscore_check` — distribution of standardised errors vs :math:`\mathcal N(0, 1)`.

Pixels of one image are not independent, so the binomial standard errors and the tests
below are exact only for independent units (pixels of *different* simulated problems);
for pixels of one image they are a guide (nominal errors understate the true spread).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats

from .maps import _image as _np  # array/tensor -> float64 ndarray, TypeError naming the argument

#: Nominal levels of the default coverage curve.
DEFAULT_LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)


def _draws_truth(samples: Any, truth: Any) -> tuple[np.ndarray, np.ndarray]:
    """Draws as ``(S, N)`` (pooled over any leading chain axis) and truth as ``(N,)``.

    ``samples`` is ``(S, *shape)``, ``(chain, draw, *shape)`` with ``truth`` of ``shape``.
    """
    x = _np(samples, "samples")
    t = _np(truth, "truth")
    if x.ndim < 1 or x.shape[x.ndim - t.ndim:] != t.shape or x.ndim == t.ndim:
        raise ValueError(f"truth: shape {t.shape} does not match the trailing axes of samples "
                         f"{x.shape}")
    lead = x.ndim - t.ndim
    s = int(np.prod(x.shape[:lead]))
    if s < 2:
        raise ValueError(f"samples: at least 2 draws needed, got {s}")
    return x.reshape(s, -1), t.reshape(-1)


@dataclass
class CoverageResult:
    """Nominal vs empirical coverage with binomial standard errors ``sqrt(p(1-p)/n)``."""

    levels: np.ndarray
    empirical: np.ndarray
    stderr: np.ndarray
    n: int

    def as_dict(self) -> dict[str, Any]:
        return {"levels": self.levels.tolist(), "empirical": self.empirical.tolist(),
                "stderr": self.stderr.tolist(), "n": self.n}


def coverage_curve(samples: Any, truth: Any, levels: Sequence[float] = DEFAULT_LEVELS
                   ) -> CoverageResult:
    r"""Empirical coverage of central credible intervals.

    For each nominal level :math:`\alpha`, the central interval of each pixel is
    :math:`[q_{(1-\alpha)/2}, q_{(1+\alpha)/2}]` (type-7 sample quantiles of the draws) and the
    empirical coverage is the fraction of pixels whose truth lies inside. Under calibration
    the count is Binomial(:math:`N`, :math:`\alpha`) for independent pixels, so the standard
    error is :math:`\sqrt{\alpha(1-\alpha)/N}` (e.g. Gelman et al., *BDA3*, §6).

    Parameters
    ----------
    samples
        Draws ``(S, *shape)`` or ``(chain, draw, *shape)``; several problems may be stacked in
        ``shape`` (e.g. ``(problems, C, H, W)``) with ``truth`` of the same ``shape``.
    truth
        True values of ``shape``.
    levels
        Nominal levels in (0, 1).
    """
    x, t = _draws_truth(samples, truth)
    lv = np.asarray(levels, dtype=float)
    if lv.ndim != 1 or lv.size == 0 or not ((lv > 0) & (lv < 1)).all():
        raise ValueError(f"levels: expected levels in (0, 1), got {levels!r}")
    lo = np.quantile(x, (1 - lv) / 2, axis=0)  # (L, N)
    hi = np.quantile(x, (1 + lv) / 2, axis=0)
    inside = (lo <= t) & (t <= hi)
    n = t.size
    return CoverageResult(levels=lv, empirical=inside.mean(axis=1),
                          stderr=np.sqrt(lv * (1 - lv) / n), n=n)


def sbc_ranks(samples: Any, truth: Any) -> np.ndarray:
    r"""Rank statistics of the truth among posterior draws (Talts et al. 2018, Alg. 1).

    :math:`r = \#\{s : \tilde x_s < x\} \in \{0, \dots, S\}` per pixel. If the posterior is
    correct (truth drawn from the prior, data from the likelihood, draws from the exact
    posterior) :math:`r` is uniform on :math:`\{0, \dots, S\}`. Draws should be (nearly)
    independent: thin MCMC chains to about their ESS first (Talts et al., §4).

    Parameters
    ----------
    samples
        ``(S, *shape)`` or ``(chain, draw, *shape)`` draws (chains are pooled).
    truth
        ``shape``. Stack many simulated problems along a leading axis of ``shape``.

    Returns
    -------
    numpy.ndarray
        Integer ranks of ``truth``'s shape.
    """
    x, t = _draws_truth(samples, truth)
    return (x < t).sum(axis=0).reshape(_np(truth, "truth").shape)


@dataclass
class SBCResult:
    """Histogram of SBC ranks and Pearson's chi-square test of uniformity."""

    counts: np.ndarray
    edges: np.ndarray
    num_draws: int
    statistic: float
    pvalue: float
    n: int
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"counts": self.counts.tolist(), "edges": self.edges.tolist(),
                "num_draws": self.num_draws, "statistic": self.statistic,
                "pvalue": self.pvalue, "n": self.n}


def sbc_test(ranks: Any, num_draws: int, num_bins: int | None = None) -> SBCResult:
    r"""Chi-square test that SBC ranks are uniform on :math:`\{0, \dots, S\}`.

    The :math:`S + 1` possible ranks are grouped into ``num_bins`` bins of (as nearly as
    possible) equal width; the expected count of a bin is :math:`N \cdot w_b/(S + 1)` for a bin
    holding :math:`w_b` rank values. Pearson's statistic
    :math:`\chi^2 = \sum_b (O_b - E_b)^2/E_b` is compared with :math:`\chi^2_{B-1}`
    (:func:`scipy.stats.chisquare`). Default ``num_bins``: the largest divisor of :math:`S+1`
    not above :math:`\min(20, N/5)` (Talts et al. 2018 suggest ~20 bins with at least ~5 counts
    each). Over-confident posteriors give a U-shaped histogram, biased ones a slope,
    over-dispersed ones a hump.
    """
    r = np.asarray(_np(ranks, "ranks")).ravel()
    if isinstance(num_draws, bool) or not isinstance(num_draws, (int, np.integer)) or num_draws < 1:
        raise ValueError(f"num_draws: expected a positive integer, got {num_draws!r}")
    if r.size == 0:
        raise ValueError("ranks: empty")
    if (r < 0).any() or (r > num_draws).any() or (r != np.round(r)).any():
        raise ValueError(f"ranks: expected integers in [0, {num_draws}]")
    n = r.size
    values = num_draws + 1
    if num_bins is None:
        cap = max(2, min(20, n // 5, values))
        num_bins = max(d for d in range(1, cap + 1) if values % d == 0)
        if num_bins < 2:
            num_bins = min(cap, values)
    if isinstance(num_bins, bool) or not isinstance(num_bins, (int, np.integer)) or \
            not 2 <= num_bins <= values:
        raise ValueError(f"num_bins: expected an integer in [2, {values}], got {num_bins!r}")
    edges = np.floor(np.linspace(0, values, num_bins + 1)).astype(int)  # integer rank edges
    counts = np.histogram(r, bins=edges - 0.5)[0]
    widths = np.diff(edges)
    expected = n * widths / values
    chi = stats.chisquare(counts, expected)
    return SBCResult(counts=counts, edges=edges, num_draws=int(num_draws),
                     statistic=float(chi.statistic), pvalue=float(chi.pvalue), n=n)


@dataclass
class ZScoreResult:
    """Fraction of |z| within 1.645 (nominal 0.9) and a KS test of z against N(0, 1)."""

    fraction_within: float
    nominal: float
    stderr: float
    ks_statistic: float
    ks_pvalue: float
    n: int

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def zscore_check(mean: Any, std: Any, truth: Any, *, threshold: float = 1.6448536269514722
                 ) -> ZScoreResult:
    r"""Standardised errors :math:`z = (\hat x - x)/\sigma` against :math:`\mathcal N(0, 1)`.

    For a calibrated Gaussian posterior :math:`z \sim \mathcal N(0, 1)`, so
    :math:`P(|z| \le 1.645) = 0.9`; the KS test (:func:`scipy.stats.kstest`) checks the whole
    distribution. With :math:`S` draws the sample mean adds variance, :math:`z` has sd
    :math:`\approx\sqrt{1 + 1/S}` (negligible for :math:`S \gtrsim 100`). Pixels with zero
    std are left out.
    """
    m, s, t = _np(mean, "mean").ravel(), _np(std, "std").ravel(), _np(truth, "truth").ravel()
    if not (m.shape == s.shape == t.shape):
        raise ValueError(f"std: shapes of mean {m.shape}, std {s.shape} and truth {t.shape} differ")
    ok = s > 0
    if not ok.any():
        raise ValueError("std: all standard deviations are zero (a point estimate?)")
    z = (m[ok] - t[ok]) / s[ok]
    nominal = float(2 * stats.norm.cdf(threshold) - 1)
    ks = stats.kstest(z, "norm")
    return ZScoreResult(fraction_within=float(np.mean(np.abs(z) <= threshold)), nominal=nominal,
                        stderr=float(np.sqrt(nominal * (1 - nominal) / z.size)),
                        ks_statistic=float(ks.statistic), ks_pvalue=float(ks.pvalue), n=int(z.size))


def posterior_calibration(posterior, levels: Sequence[float] = DEFAULT_LEVELS) -> dict[str, Any]:
    """Coverage curve and z-score check of one :class:`Posterior` with a known truth.

    Returns a dict with ``"coverage"`` (:class:`CoverageResult`) and ``"zscore"``
    (:class:`ZScoreResult`), the form :func:`bayesinv.diagnostics.report.uq_report` accepts.
    """
    if posterior.truth is None:
        raise ValueError("posterior: the truth is unknown; calibration needs posterior.truth")
    if posterior.num_chains * posterior.num_draws < 2:
        raise ValueError("posterior: calibration needs at least 2 draws (a point estimate has none)")
    return {"coverage": coverage_curve(posterior.samples, posterior.truth, levels),
            "zscore": zscore_check(posterior.samples.mean(dim=(0, 1)),
                                   posterior.samples.flatten(0, 1).std(dim=0), posterior.truth)}
