"""Diagnostics: netCDF round trip, pixelwise maps vs ArviZ, calibration on exact posteriors."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import torch

from bayesinv.diagnostics import arviz_io, calibration, maps
from bayesinv.infer.exact import exact_gaussian_posterior
from bayesinv.infer.posterior import Posterior
from bayesinv.testing import linear_gaussian_problem


# ---------------------------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------------------------
def _ar1(chains: int, draws: int, npix: int, phi: float, seed: int) -> np.ndarray:
    """AR(1) chains x_t = phi x_{t-1} + e_t, shape (chains, draws, npix)."""
    rng = np.random.default_rng(seed)
    e = rng.standard_normal((chains, draws, npix))
    x = np.zeros_like(e)
    x[:, 0] = e[:, 0] / np.sqrt(1 - phi**2)
    for t in range(1, draws):
        x[:, t] = phi * x[:, t - 1] + e[:, t]
    return x


def _markov_posterior(dtype=torch.float32) -> Posterior:
    g = torch.Generator().manual_seed(3)
    return Posterior(
        samples=torch.randn(3, 7, 2, 4, 5, generator=g, dtype=dtype), method="nuts", kind="markov",
        latent_samples=torch.randn(3, 7, 6, generator=g, dtype=torch.float64),
        sample_stats={"diverging": torch.rand(3, 7, generator=g) < 0.2,
                      "accept_prob": torch.rand(3, 7, generator=g, dtype=torch.float64),
                      "step_size": torch.full((3, 7), 0.05),
                      "tree_depth": torch.randint(0, 6, (3, 7), generator=g)},
        observed=torch.randn(11, 2, generator=g), truth=torch.rand(2, 4, 5, generator=g),
        settings={"num_warmup": 50, "target_accept_prob": 0.8, "nested": {"a": [1, 2.5, None]},
                  "loss_history": [3.0, 2.0, 1.5], "name": "x<y>&'z'"},
        seed=7, timings={"warmup_s": 1.25, "sampling_s": 2.5},
        problem={"operator": {"name": "Blur", "in_shape": [2, 4, 5]}, "prior": {"name": "Gaussian"},
                 "noise": {"name": "GaussianNoise", "sigma": 0.05}})


def _assert_same(p: Posterior, q: Posterior) -> None:
    for name in ("samples", "point_estimate", "latent_samples", "observed", "truth"):
        a, b = getattr(p, name), getattr(q, name)
        if a is None:
            assert b is None, name
        else:
            assert a.dtype == b.dtype and torch.equal(a, b), name
    assert p.sample_stats.keys() == q.sample_stats.keys()
    for k in p.sample_stats:
        assert p.sample_stats[k].dtype == q.sample_stats[k].dtype, k
        assert torch.equal(p.sample_stats[k], q.sample_stats[k]), k
    for name in ("method", "kind", "settings", "seed", "timings", "problem"):
        assert getattr(p, name) == getattr(q, name), name


# ---------------------------------------------------------------------------------------------
# netCDF
# ---------------------------------------------------------------------------------------------
def test_inference_data_layout():
    p = _markov_posterior()
    idata = arviz_io.to_inference_data(p)
    assert idata.posterior["x"].dims == ("chain", "draw", "channel", "row", "col")
    assert idata.posterior["z"].dims == ("chain", "draw", "z_dim_0")
    assert set(idata.sample_stats.data_vars) == {"diverging", "accept_prob", "step_size", "tree_depth"}
    assert idata.observed_data["y"].shape == (11, 2)
    assert set(idata.constant_data.data_vars) == {"truth", "point_estimate"}
    assert idata.posterior.attrs["method"] == '"nuts"'
    assert p.to_arviz().posterior["x"].shape == (3, 7, 2, 4, 5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_netcdf_round_trip(tmp_path, dtype):
    p = _markov_posterior(dtype)
    f = tmp_path / "post.nc"
    p.save(f)
    q = Posterior.load(f)
    _assert_same(p, q)
    # overwrite in place (atomic replace) and no temporary files left behind
    p.save(f)
    _assert_same(p, Posterior.load(f))
    assert os.listdir(tmp_path) == ["post.nc"]


def test_netcdf_round_trip_minimal_point(tmp_path):
    p = Posterior(samples=torch.rand(1, 1, 1, 3, 3), method="map", kind="point")
    f = tmp_path / "map.nc"
    arviz_io.save_posterior(p, f)
    _assert_same(p, arviz_io.load_posterior(f))


def test_load_rejects_bad_files(tmp_path):
    good = tmp_path / "good.nc"
    _markov_posterior().save(good)
    raw = good.read_bytes()
    (tmp_path / "trunc.nc").write_bytes(raw[: len(raw) // 2])
    (tmp_path / "noise.nc").write_bytes(np.random.default_rng(0).bytes(4000))
    (tmp_path / "text.nc").write_text("this is not netCDF")
    for name in ("trunc.nc", "noise.nc", "text.nc", "missing.nc"):
        with pytest.raises(ValueError, match=name):
            Posterior.load(tmp_path / name)

    import h5netcdf

    with h5netcdf.File(tmp_path / "foreign.nc", "w") as fh:  # valid netCDF, no posterior
        fh.dimensions = {"t": 3}
        fh.create_variable("temperature", ("t",), data=np.arange(3.0))
    with pytest.raises(ValueError, match="foreign.nc.*'x'"):
        Posterior.load(tmp_path / "foreign.nc")
    with h5netcdf.File(tmp_path / "wrongdims.nc", "w") as fh:
        grp = fh.create_group("posterior")
        grp.dimensions = {"a": 2, "b": 3}
        grp.create_variable("x", ("a", "b"), data=np.zeros((2, 3)))
        grp.attrs["method"] = '"nuts"'
        grp.attrs["kind"] = '"markov"'
    with pytest.raises(ValueError, match="wrongdims.nc.*dims"):
        Posterior.load(tmp_path / "wrongdims.nc")


def test_save_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="path"):
        arviz_io.save_posterior(_markov_posterior(), tmp_path / "nope" / "p.nc")
    with pytest.raises(TypeError, match="posterior"):
        arviz_io.save_posterior("not a posterior", tmp_path / "p.nc")
    with pytest.raises(TypeError, match="path"):
        arviz_io.load_posterior(3)


# ---------------------------------------------------------------------------------------------
# pixelwise maps vs ArviZ
# ---------------------------------------------------------------------------------------------
def _rel(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    assert np.array_equal(np.isnan(a), np.isnan(b))
    ok = ~np.isnan(a)
    return float(np.max(np.abs(a[ok] - b[ok]) / np.maximum(np.abs(b[ok]), 1e-300), initial=0.0))


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # ArviZ on the constant pixel
@pytest.mark.parametrize("chains,draws,phi", [(4, 300, 0.8), (3, 151, 0.3), (2, 9, 0.0)])
def test_rhat_ess_mcse_match_arviz(chains, draws, phi):
    x = _ar1(chains, draws, 10, phi, seed=draws)
    x += 1.5 * np.arange(chains)[:, None, None] * (np.arange(10) % 2)[None, None, :]  # R-hat > 1
    x[:, :, 2] = np.round(x[:, :, 2] * 2)  # many ties
    x[:, :, 3] = 0.25  # constant pixel
    cube = x.reshape(chains, draws, 1, 2, 5)
    got = maps.convergence_maps(cube, maps.CONVERGENCE_QUANTITIES, chunk_size=3)
    ref = {
        "rhat": [arviz_io.arviz_rhat(x[:, :, i]) for i in range(10)],
        "ess_bulk": [arviz_io.arviz_ess(x[:, :, i], "bulk") for i in range(10)],
        "ess_tail": [arviz_io.arviz_ess(x[:, :, i], "tail") for i in range(10)],
        "ess_mean": [arviz_io.arviz_ess(x[:, :, i], "mean") for i in range(10)],
        "mcse_mean": [arviz_io.arviz_mcse(x[:, :, i], "mean") for i in range(10)],
    }
    for key, values in ref.items():
        assert _rel(got[key].ravel(), np.array(values)) < 1e-8, key
    if draws > 100:  # the shifted chains are flagged, the others are not
        rhat = got["rhat"].ravel()
        assert (rhat[[1, 5, 7, 9]] > 1.2).all() and (rhat[[0, 2, 4, 6, 8]] < 1.1).all()
    # the single-purpose functions agree with the shared pass
    assert np.array_equal(maps.rhat_map(cube), got["rhat"], equal_nan=True)
    assert np.array_equal(maps.ess_map(cube, "tail"), got["ess_tail"], equal_nan=True)


def test_threaded_chunks_give_bitwise_the_serial_maps():
    x = _ar1(4, 120, 37, 0.6, seed=3)
    x[:, :, 5] = np.round(x[:, :, 5])  # ties
    x[1, 7, 11] = np.nan  # a NaN pixel inside one chunk
    with pytest.warns(RuntimeWarning, match="NaN"):
        serial = maps.convergence_maps(x, maps.CONVERGENCE_QUANTITIES, chunk_size=5, workers=1)
    with pytest.warns(RuntimeWarning, match="NaN"):
        threaded = maps.convergence_maps(x, maps.CONVERGENCE_QUANTITIES, chunk_size=5, workers=3)
    for k in maps.CONVERGENCE_QUANTITIES:
        assert np.array_equal(serial[k], threaded[k], equal_nan=True), k
    lo1, hi1 = maps.hdi_map(x[:, :, :5], 0.9, chunk_size=2, workers=1)
    lo3, hi3 = maps.hdi_map(x[:, :, :5], 0.9, chunk_size=2, workers=3)
    assert np.array_equal(lo1, lo3) and np.array_equal(hi1, hi3)


def test_ess_long_autocorrelation_uses_fft_fallback():
    x = _ar1(4, 400, 3, 0.97, seed=1)  # Geyer truncation beyond the direct lag windows
    got = maps.ess_map(x, "bulk")
    ref = np.array([arviz_io.arviz_ess(x[:, :, i], "bulk") for i in range(3)])
    assert _rel(got, ref) < 1e-8
    assert (got < 100).all()


def test_nan_pixels_and_short_chains():
    x = _ar1(2, 50, 4, 0.5, seed=2)
    x[0, 3, 1] = np.nan
    r = maps.rhat_map(x)
    assert np.isnan(r[1]) and np.isfinite(r[[0, 2, 3]]).all()
    assert np.isnan(maps.rhat_map(x[:1])).all()  # one chain: no R-hat
    assert np.isnan(maps.ess_map(x[:, :3], "bulk")).all()  # < 4 draws


@pytest.mark.parametrize("prob", [0.9, 0.5])
def test_hdi_matches_arviz(prob):
    x = _ar1(2, 250, 6, 0.2, seed=5)
    x[:, :, 0] = np.exp(x[:, :, 0])  # skewed: HDI differs from the central interval
    lo, hi = maps.hdi_map(x, prob, chunk_size=4)
    for i in range(6):
        rl, rh = arviz_io.arviz_hdi(x[:, :, i], prob)
        assert lo[i] == rl and hi[i] == rh
    q = np.quantile(x[:, :, 0].ravel(), [(1 - prob) / 2, (1 + prob) / 2])
    assert hi[0] - lo[0] < q[1] - q[0]


def test_maps_bad_inputs():
    x = np.zeros((2, 10, 3))
    with pytest.raises(ValueError, match="hdi_prob"):
        maps.hdi_map(x, 1.5)
    with pytest.raises(ValueError, match="method"):
        maps.ess_map(x, "median")
    with pytest.raises(ValueError, match="chunk_size"):
        maps.rhat_map(x, chunk_size=0)
    with pytest.raises(ValueError, match="workers"):
        maps.rhat_map(x, workers=0)
    with pytest.raises(ValueError, match="which"):
        maps.convergence_maps(x, ("rhat", "bogus"))
    with pytest.raises(TypeError, match="samples"):
        maps.rhat_map([1, 2, 3])
    with pytest.raises(ValueError, match="truth"):
        maps.error_map(np.zeros((1, 2, 2)), np.zeros((1, 3, 3)))


def test_posterior_maps_by_kind():
    g = torch.Generator().manual_seed(0)
    truth = torch.rand(1, 6, 6, generator=g)
    point = Posterior(samples=truth[None, None] + 0.1, method="map", kind="point", truth=truth)
    m = maps.posterior_maps(point)
    assert set(m) == {"estimate", "error", "abs_error"}
    np.testing.assert_allclose(m["error"], 0.1, atol=1e-6)

    draws = truth + 0.2 * torch.randn(1, 400, 1, 6, 6, generator=g)
    indep = Posterior(samples=draws, method="vi", kind="independent", truth=truth)
    m = maps.posterior_maps(indep)
    assert "rhat" not in m and {"std", "hdi_width", "ess_bulk", "zscore"} <= set(m)
    np.testing.assert_allclose(m["std"], 0.2, rtol=0.2)
    assert abs(np.median(m["ess_bulk"]) - 400) < 120  # independent draws: ESS ≈ S

    markov = Posterior(samples=draws.reshape(4, 100, 1, 6, 6), method="nuts", kind="markov",
                       truth=truth)
    m = maps.posterior_maps(markov)
    assert m["rhat"].shape == (1, 6, 6) and np.nanmax(m["rhat"]) < 1.05
    t = maps.summary_table(m)
    assert t["frac_rhat_gt"] <= 0.5 and 0.8 < t["frac_zscore_le_1.645"] <= 1.0


def test_vectorised_maps_cover_every_pixel_and_match_arviz_on_a_sample():
    """32×32 pixels, 4×1000 draws: every pixel gets a finite R-hat/ESS, and a random sample of
    pixels agrees with ArviZ (the speed-up is measured in ``benchmarks/bench_diagnostics.py``)."""
    x = _ar1(4, 1000, 32 * 32, 0.5, seed=0).reshape(4, 1000, 1, 32, 32)
    out = maps.convergence_maps(x)
    assert np.isfinite(out["ess_tail"]).all() and np.isfinite(out["rhat"]).all()
    flat = x.reshape(4, 1000, -1)
    for p in np.random.default_rng(0).choice(32 * 32, size=3, replace=False):
        r, c = divmod(int(p), 32)
        assert abs(out["rhat"][0, r, c] - arviz_io.arviz_rhat(flat[:, :, p])) < 1e-8


# ---------------------------------------------------------------------------------------------
# calibration on an exact linear-Gaussian posterior
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def exact_posteriors():
    """5 simulated problems (1×8×8) with 100 exact (perturb-and-optimise) draws each."""
    out = []
    for seed in range(5):
        case = linear_gaussian_problem((1, 8, 8), seed=seed)
        out.append(exact_gaussian_posterior(case.problem, case.y, num_samples=100, seed=100 + seed,
                                            truth=case.truth))
    return out


@pytest.fixture(scope="module")
def many_problems():
    """600 simulated 1×4×4 problems, 99 exact draws each (Cholesky of the closed form).

    One pixel per problem (pixel ``i % 16``) is kept, so the ranks/z-scores are independent
    (pixels of one image are correlated, which would void the χ²/KS tests).
    """
    draws, truths = [], []
    for i in range(600):
        case = linear_gaussian_problem((1, 4, 4), seed=1000 + i)
        chol = torch.linalg.cholesky(case.covariance)
        g = torch.Generator().manual_seed(i)
        d = case.mean + (chol @ torch.randn(16, 99, generator=g, dtype=torch.float64)).T
        draws.append(d[:, i % 16])
        truths.append(case.truth.reshape(-1)[i % 16])
    return torch.stack(draws, dim=1), torch.stack(truths)  # (99, 600), (600,)


def _stack(posts, scale=1.0):
    draws = torch.stack([p.samples[0].double() for p in posts], dim=1)  # (S, problems, C, H, W)
    mean = draws.mean(dim=0, keepdim=True)
    return mean + scale * (draws - mean), torch.stack([p.truth.double() for p in posts])


def _shrink(draws, scale):
    mean = draws.mean(dim=0, keepdim=True)
    return mean + scale * (draws - mean)


def test_coverage_exact_and_overconfident(exact_posteriors):
    draws, truth = _stack(exact_posteriors)
    cov = calibration.coverage_curve(draws, truth)
    assert cov.n == 320
    assert (np.abs(cov.empirical - cov.levels) < 3.5 * cov.stderr + 0.01).all(), cov
    bad = calibration.coverage_curve(*_stack(exact_posteriors, 0.5))
    assert bad.empirical[-2] < 0.9 - 6 * bad.stderr[-2]  # 90% intervals cover far less
    assert (bad.empirical < cov.empirical).all()


def test_zscore_exact_and_overconfident(many_problems):
    draws, truth = many_problems
    z = calibration.zscore_check(draws.mean(0), draws.std(0), truth)
    assert abs(z.fraction_within - 0.9) < 3.5 * z.stderr and z.ks_pvalue > 0.01, z
    d2 = _shrink(draws, 0.5)
    z2 = calibration.zscore_check(d2.mean(0), d2.std(0), truth)
    assert z2.fraction_within < 0.75 and z2.ks_pvalue < 1e-6, z2


def test_sbc_detects_overconfidence(many_problems):
    """SBC (Talts et al. 2018) over 600 problems: exact draws pass, halved spread fails."""
    draws, truth = many_problems
    good = calibration.sbc_test(calibration.sbc_ranks(draws, truth), num_draws=99)
    bad = calibration.sbc_test(calibration.sbc_ranks(_shrink(draws, 0.5), truth), num_draws=99)
    assert good.n == 600 and good.counts.sum() == 600 and len(good.counts) == 20
    assert good.pvalue > 0.01 and bad.pvalue < 0.01, (good.pvalue, bad.pvalue)
    # U shape: the outer bins of the over-confident histogram are over-full
    assert bad.counts[0] > 2 * good.counts[0] and bad.counts[-1] > 2 * good.counts[-1]


def test_posterior_calibration_and_bad_inputs(exact_posteriors):
    res = calibration.posterior_calibration(exact_posteriors[0])
    assert set(res) == {"coverage", "zscore"}
    with pytest.raises(ValueError, match="truth"):
        calibration.coverage_curve(np.zeros((10, 4)), np.zeros(5))
    with pytest.raises(ValueError, match="levels"):
        calibration.coverage_curve(np.zeros((10, 4)), np.zeros(4), levels=[0.5, 1.0])
    with pytest.raises(ValueError, match="ranks"):
        calibration.sbc_test(np.array([0, 5, 12]), num_draws=10)
    with pytest.raises(ValueError, match="num_draws"):
        calibration.sbc_test(np.array([0, 1]), num_draws=0)
    with pytest.raises(ValueError, match="num_bins"):
        calibration.sbc_test(np.array([0, 1]), num_draws=9, num_bins=50)
    with pytest.raises(ValueError, match="posterior"):
        calibration.posterior_calibration(Posterior(samples=torch.zeros(1, 1, 1, 2, 2),
                                                    method="map", kind="point"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match="std"):
            calibration.zscore_check(np.zeros(3), np.zeros(3), np.zeros(3))
