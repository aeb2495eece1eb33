"""Tests of the variational-inference experiments (benchmarks/bench_vi.py).

Fast tests check the benchmark's own math against closed forms (ridge regression, the Laplace
covariance of a linear-Gaussian problem, the preconditioned affine guide's parametrisation).
The slow test runs ``bench_vi.main(quick=True)`` and checks structure, sanity and quality
thresholds that were measured on the quick run and then set with margin.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `benchmarks` is a top-level folder, not part of the package
    sys.path.insert(0, str(ROOT))

from bayesinv.testing import linear_gaussian_problem  # noqa: E402
from benchmarks import bench_vi  # noqa: E402


def test_ridge_map_matches_lstsq():
    g = torch.Generator().manual_seed(0)
    y = torch.randn(200, 5, 3, generator=g)
    w_true = torch.randn(4, 15, generator=g)
    z = y.reshape(200, -1) @ w_true.T + 0.5 + 0.01 * torch.randn(200, 4, generator=g)
    w, b, resid = bench_vi.ridge_map(y, z, alpha=1e-8)
    design = torch.cat([y.reshape(200, -1), torch.ones(200, 1)], 1).double()
    sol = torch.linalg.lstsq(design, z.double()).solution
    torch.testing.assert_close(w.double(), sol[:-1].T, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(b.double(), sol[-1], atol=1e-4, rtol=1e-4)
    assert 0.005 < resid < 0.02  # the noise level 0.01


def test_laplace_is_exact_for_linear_gaussian():
    """Gauss–Newton Laplace of a linear-Gaussian problem = the exact posterior covariance."""
    case = linear_gaussian_problem((1, 3, 3), sigma=0.2, seed=3)
    pb = case.problem
    d = 9
    z0 = torch.zeros(pb.prior.latent_shape, dtype=torch.float64)
    tril = bench_vi.laplace_scale_tril(pb, z0)
    assert torch.allclose(tril, torch.tril(tril))
    basis = torch.eye(d, dtype=torch.float64).reshape(d, *pb.prior.latent_shape)
    gen = (pb.prior.generate(basis) - pb.prior.generate(torch.zeros_like(basis))).reshape(d, d).T
    cov_x = gen @ (tril @ tril.T) @ gen.T
    torch.testing.assert_close(cov_x, case.covariance, atol=1e-8, rtol=1e-6)


def test_preconditioned_affine_guide_is_affine_in_y():
    case = linear_gaussian_problem((1, 2, 2), sigma=0.1, seed=1)
    pb = case.problem
    g = torch.Generator().manual_seed(2)
    m, d = math.prod(pb.measurement_shape), 4
    w = torch.randn(d, m, generator=g, dtype=torch.float64)
    b = torch.randn(d, generator=g, dtype=torch.float64)
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    tril = torch.linalg.cholesky(a @ a.T + torch.eye(d, dtype=torch.float64))
    guide = bench_vi._affine_guide(pb, b, 1.0, weight=w, y_mean=0.3, y_scale=2.0, scale_tril=tril).double()
    ys = torch.randn(5, *pb.measurement_shape, generator=g, dtype=torch.float64)
    torch.testing.assert_close(guide.mean(ys), ys.reshape(5, -1) @ w.T + b)
    torch.testing.assert_close(guide.scale_tril(), tril)
    # the log-det Jacobian of eps -> mu + L eps is sum(log diag L)
    t = guide.condition(ys)
    eps = torch.randn(5, *guide.event_shape, dtype=torch.float64, generator=g)
    ld = t.log_abs_det_jacobian(eps, t(eps))
    torch.testing.assert_close(ld, torch.full((5,), float(tril.diagonal().log().sum()), dtype=torch.float64))
    # single-y guides: W frozen at zero
    single = bench_vi._affine_guide(pb, b, 0.5)
    assert not single.loc.weight.requires_grad and float(single.loc.weight.abs().max()) == 0.0
    assert single.log_diag_raw.requires_grad


@pytest.mark.slow
def test_bench_vi_quick(tmp_path, monkeypatch):
    monkeypatch.setattr(bench_vi, "RESULTS_DIR", tmp_path)
    res = bench_vi.main(quick=True)
    assert (tmp_path / "vi.quick.json").exists() and (tmp_path / "vi.quick.md").exists()
    assert (tmp_path / "vi_ct.quick.png").stat().st_size > 1000

    ct = res["ct"]
    for row in ct["rows"]:
        for k in ("fbp_psnr", "map_psnr", "vi_psnr"):
            assert math.isfinite(row[k])
        assert row["vi_mean_std"] > 0
        assert 0.0 <= row["vi_coverage90"] <= 1.0
        # quality (measured on the quick run, then set with margin)
        assert row["vi_psnr"] > row["fbp_psnr"] + 2.0
        assert row["vi_minus_map_db"] > -1.0
        assert row["vi_std_error_corr"] > 0.1
    for row in ct["prior_data"]:
        assert 0.0 <= row["coverage90"] <= 1.0 and row["mean_std"] > 0

    am = res["amortised"]
    assert len(am["rows"]) == bench_vi.QUICK["n_amort_test"]
    for row in am["rows"]:
        assert math.isfinite(row["amortised_psnr"]) and math.isfinite(row["map_psnr"])
        assert 0.0 <= row["amortised_coverage90"] <= 1.0
    assert am["summary"]["std_error_corr_mean"] > 0.1
    # SVI on top of the ridge initialisation must not make the mean worse
    assert am["summary"]["amortised_psnr_mean"] > am["summary"]["ridge_init_psnr_mean"] - 0.5

    sr = res["sr"]
    if sr["run"]:
        assert (tmp_path / "vi_sr.quick.png").exists()
        for k in ("bicubic_psnr", "map_psnr", "vi_psnr"):
            assert math.isfinite(sr[k])
        assert sr["vi_mean_std"] > 0 and 0.0 <= sr["vi_coverage90"] <= 1.0
        assert sr["vi_minus_map_db"] > -1.0
    assert np.isfinite(res["wall_s"])
