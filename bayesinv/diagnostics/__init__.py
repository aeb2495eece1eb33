"""Diagnostics of posteriors: pixelwise maps, calibration, figures, HTML report, ArviZ I/O.

Only :mod:`.arviz_io` imports ArviZ. The heavy modules (ArviZ, matplotlib) are imported
lazily on first use of their names, so ``import bayesinv.diagnostics`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

from .calibration import (
    CoverageResult,
    SBCResult,
    ZScoreResult,
    coverage_curve,
    posterior_calibration,
    sbc_ranks,
    sbc_test,
    zscore_check,
)
from .maps import (
    convergence_maps,
    error_map,
    ess_map,
    hdi_map,
    mcse_mean_map,
    posterior_maps,
    rhat_map,
    summary_table,
    zscore_map,
)

_LAZY = {
    "to_inference_data": "arviz_io", "save_posterior": "arviz_io", "load_posterior": "arviz_io",
    "arviz_rhat": "arviz_io", "arviz_ess": "arviz_io", "arviz_mcse": "arviz_io",
    "arviz_hdi": "arviz_io",
    "posterior_panel": "plots", "coverage_plot": "plots", "sbc_histogram": "plots",
    "zscore_histogram": "plots", "trace_plot": "plots", "rank_plot": "plots",
    "loss_curve": "plots", "save_png": "plots", "png_bytes": "plots",
    "uq_report": "report", "diagnostic_warnings": "report",
}

__all__ = [
    "CoverageResult", "SBCResult", "ZScoreResult", "coverage_curve", "posterior_calibration",
    "sbc_ranks", "sbc_test", "zscore_check", "convergence_maps", "ess_map", "error_map",
    "hdi_map", "mcse_mean_map", "posterior_maps", "rhat_map", "summary_table", "zscore_map",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
