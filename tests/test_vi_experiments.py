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


def test_pretrain_mean_regresses_the_image_and_keeps_the_linear_layer():
    """pretrain_mean trains only the U-Net of an encoder guide; G(mu(y)) stays its image estimate."""
    from bayesinv.flows.glow import Glow
    from bayesinv.operators.matrix import MatrixOperator, random_gaussian_matrix
    from bayesinv.priors.flow import FlowPrior
    from bayesinv.problem import InverseProblem

    # binary images: their posterior mean given 10 random projections is nonlinear in y
    x = (torch.rand(512, 1, 4, 4, generator=torch.Generator().manual_seed(2)) > 0.5).float()
    glow = Glow((1, 4, 4), levels=1, steps=1, hidden=8)
    with torch.no_grad():
        glow.encode(x[:64])  # ActNorm's data-dependent init
    prior = FlowPrior(glow)
    pb = InverseProblem(MatrixOperator(random_gaussian_matrix(10, 16, seed=1), (1, 4, 4)), prior, 0.05)
    y = pb.simulate(x, seed=3)
    w, b, _ = bench_vi.ridge_map(y, x)
    guide = bench_vi._affine_guide(pb, b, 0.1, weight=w, y_mean=float(y.mean()), y_scale=float(y.std()),
                                   cnn_channels=8, encoder=prior.flow)
    lin = guide.loc.weight.detach().clone()
    enc = [p.detach().clone() for p in guide.encoder.parameters()]
    with torch.no_grad():
        ridge_mse = float((guide.pre_mean(y) - x).pow(2).mean())
        torch.testing.assert_close(guide.pre_mean(y).flatten(1), y.flatten(1) @ w.T + b, atol=1e-4, rtol=1e-4)
    out = bench_vi.pretrain_mean(guide, y, x, steps=200, batch_size=64, lr=1e-2, seed=0)
    with torch.no_grad():
        mse = float((guide.pre_mean(y) - x).pow(2).mean())
        torch.testing.assert_close(prior.generate(guide.mean(y)), guide.pre_mean(y), atol=1e-4, rtol=1e-4)
    print(f"pretrain_mean: image MSE {ridge_mse:.4g} (ridge) -> {mse:.4g}")
    assert mse < 0.9 * ridge_mse and len(out["loss"]) == 10 and out["fit_s"] > 0
    assert torch.equal(guide.loc.weight, lin)
    assert all(torch.equal(a, b) for a, b in zip(guide.encoder.parameters(), enc, strict=True))
    with pytest.raises(ValueError, match="loss"):
        bench_vi.pretrain_mean(guide, y, x, steps=1, batch_size=4, lr=1e-3, loss="l1")


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
    # the pre-trained U-Net beats its ridge input (quick run: 35.27 vs 32.20 dB, linear z-mean
    # 25.36 dB), and the ELBO stage (covariance only) does not make the mean worse
    s = am["summary"]
    assert s["pretrained_psnr_mean"] > s["ridge_init_psnr_mean"] + 0.8
    assert s["ridge_init_psnr_mean"] > s["linear_latent_psnr_mean"] + 3.0
    assert s["amortised_psnr_mean"] > s["pretrained_psnr_mean"] - 0.5
    assert 0.0 <= s["coverage90_prior_data"] <= 1.0 and s["n_single"] == bench_vi.QUICK["n_ct"]

    sr = res["sr"]
    if sr["run"]:
        assert (tmp_path / "vi_sr.quick.png").exists()
        for k in ("bicubic_psnr", "map_psnr", "vi_psnr"):
            assert math.isfinite(sr[k])
        assert sr["vi_mean_std"] > 0 and 0.0 <= sr["vi_coverage90"] <= 1.0
        assert sr["vi_minus_map_db"] > -1.0
    assert np.isfinite(res["wall_s"])
