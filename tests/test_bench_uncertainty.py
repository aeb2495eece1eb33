"""Tests of benchmarks/bench_uncertainty.py: metric assembly on exact Gaussian posteriors, bad inputs."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import bench_uncertainty as bu  # noqa: E402

K, SHAPE, S = 6, (1, 16, 16), 200


def _gaussian_case(seed: int = 0, std_scale: float = 1.0):
    """K problems with an exact Gaussian posterior N(m, s^2) per pixel.

    The truth is drawn from the posterior itself and the draws independently from it (scaled by
    ``std_scale``): with ``std_scale = 1`` truth and draws are exchangeable, i.e. exactly the
    situation of a correct posterior on prior-simulated data.
    """
    g = torch.Generator().manual_seed(seed)
    draws, truths = [], []
    for _ in range(K):
        m = torch.randn(SHAPE, generator=g, dtype=torch.float64)
        s = 0.05 + torch.rand(SHAPE, generator=g, dtype=torch.float64)  # varying std map
        truths.append(m + s * torch.randn(SHAPE, generator=g, dtype=torch.float64))
        draws.append(m + std_scale * s * torch.randn((S, *SHAPE), generator=g, dtype=torch.float64))
    return draws, truths


def test_exact_gaussian_is_calibrated():
    draws, truths = _gaussian_case()
    res = bu.assemble_metrics(draws, truths, sbc_draws=39, sbc_pixels=128, seed=0)
    n = K * math.prod(SHAPE)
    assert res["n_pixels"] == n and res["k"] == K
    for level in (0.5, 0.9, 0.95):
        se = math.sqrt(level * (1 - level) / n)
        # independent pixels here: binomial error + the finite-S quantile error (~1/S)
        assert abs(res["coverage"][f"{level:g}"] - level) < 4 * se + 1.0 / S, (level, res["coverage"])
    assert res["sbc"]["pvalue"] > 0.01
    assert res["sbc"]["n_ranks"] == K * 128
    assert abs(res["sbc"]["mean_rank_over_S"] - 0.5) < 0.05
    # the std map varies and |error| ~ std * |N(0,1)|: positive correlation (0.52 in theory for s ~ U(0.05, 1.05))
    assert 0.2 < res["std_error_corr"] < 0.7
    assert len(res["std_error_corr_per_problem"]) == K


def test_overconfident_posterior_is_detected():
    draws, truths = _gaussian_case(std_scale=0.5)
    res = bu.assemble_metrics(draws, truths, sbc_draws=39, sbc_pixels=128)
    # P(|Z| <= 1.645 * 0.5) = 0.59 for nominal 0.9; P(|Z| <= 0.674 * 0.5) = 0.26 for 0.5
    assert res["coverage"]["0.9"] < 0.7
    assert res["coverage"]["0.5"] < 0.35
    assert res["coverage"]["0.95"] < 0.75
    assert res["sbc"]["pvalue"] < 1e-6  # U-shaped rank histogram
    counts = np.asarray(res["sbc"]["counts"])
    assert counts[0] + counts[-1] > 4 * counts[len(counts) // 2]


def test_mcmc_like_chains_are_thinned_for_sbc():
    """Draws given in chain order: SBC uses evenly spaced draws, all pixels when sbc_pixels=None."""
    draws, truths = _gaussian_case(seed=3)
    res = bu.assemble_metrics(draws, truths, sbc_draws=19, sbc_pixels=None)
    assert res["sbc"]["num_draws"] == 19 and res["sbc"]["n_ranks"] == K * math.prod(SHAPE)
    assert res["sbc"]["pvalue"] > 0.01


def test_bad_inputs_name_the_argument():
    draws, truths = _gaussian_case()
    with pytest.raises(ValueError, match="tasks"):
        bu.run(tasks=["mri"], methods=["vi"], k=1)
    with pytest.raises(ValueError, match="tasks"):
        bu.run(tasks=[], methods=["vi"], k=1)
    with pytest.raises(ValueError, match="methods"):
        bu.run(tasks=["ct"], methods=["langevin"], k=1)
    with pytest.raises(ValueError, match="k"):
        bu.run(tasks=["ct"], methods=["vi"], k=0)
    with pytest.raises(ValueError, match="task"):
        bu.build_problem("inpaint")
    with pytest.raises(ValueError, match="draws"):
        bu.assemble_metrics([], [])
    with pytest.raises(ValueError, match="truths"):
        bu.assemble_metrics(draws, truths[:-1])
    with pytest.raises(ValueError, match="truths"):
        bu.assemble_metrics(draws[:1], [truths[0][0]])
    with pytest.raises(ValueError, match="sbc_draws"):
        bu.assemble_metrics(draws, truths, sbc_draws=S + 1)
    with pytest.raises(ValueError, match="sbc_draws"):
        bu.assemble_metrics(draws, truths, sbc_draws=0)
    with pytest.raises(ValueError, match="sbc_pixels"):
        bu.assemble_metrics(draws, truths, sbc_pixels=0)
