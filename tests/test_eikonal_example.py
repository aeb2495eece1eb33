"""The velocity Glow prior and the cross-well eikonal tomography example."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from bayesinv.data.velocity import from_unit, to_unit, velocity_models
from bayesinv.flows.io import load_flow

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "bayesinv" / "data" / "weights" / "glow_velocity32.safetensors"
TRAIN_LOG = WEIGHTS.with_name("glow_velocity32.train.json")


def _load_module(rel: str, name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / rel)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def velocity_flow():
    if not WEIGHTS.exists():
        pytest.skip("glow_velocity32 weights not shipped")
    torch.set_num_threads(1)
    flow = load_flow(WEIGHTS)
    flow.eval()
    return flow


def test_shipped_velocity_glow_samples_are_layered(velocity_flow):
    with torch.no_grad():
        u = velocity_flow.sample(32, generator=torch.Generator().manual_seed(0))
    v = from_unit(u)
    assert v.shape == (32, 1, 32, 32) and bool(torch.isfinite(v).all())
    row_mean = v.mean(dim=(1, 3))  # (sample, depth)
    top, bottom = row_mean[:, :8].mean(1), row_mean[:, -8:].mean(1)
    # every sample gets faster with depth, by about 1 km/s on average (data: ~1.6 km/s)
    assert float((bottom > top).float().mean()) >= 0.9
    assert float((bottom - top).mean()) > 0.7
    # the average profile increases monotonically with depth (up to sampling noise)
    prof = row_mean.mean(0)
    assert float((prof[2:] - prof[:-2]).min()) > -0.02
    # and the samples stay in (about) the training range of velocities
    assert float(v.min()) > 0.5 and float(v.max()) < 6.0


def test_shipped_velocity_glow_likelihood_matches_its_log(velocity_flow):
    log = json.loads(TRAIN_LOG.read_text())
    gen = torch.Generator().manual_seed(1)
    u = to_unit(velocity_models(32, 32, seed=30_000))
    u = u + 0.01 * torch.randn(u.shape, generator=gen)  # the training noise level
    with torch.no_grad():
        nll = float(-velocity_flow.log_prob(u).mean())
    # fresh held-out models score like the logged validation set, far above the untrained flow
    assert abs(nll - log["final_val_nll"]) < 0.05 * abs(log["final_val_nll"])
    assert nll < log["untrained_val_nll"] - 1000


@pytest.mark.slow
def test_training_script_quick_mode(tmp_path):
    script = _load_module("scripts/train_velocity_prior.py", "train_velocity_prior")
    assert script.main(["--quick", "--out", str(tmp_path)]) == 0
    flow = load_flow(tmp_path / "glow_velocity32.safetensors")
    assert flow.config["image_shape"] == [1, 32, 32]
    log = json.loads((tmp_path / "glow_velocity32.train.json").read_text())
    assert log["steps"] == 4 and log["final_val_nll"] < log["untrained_val_nll"]
    with torch.no_grad():
        assert bool(torch.isfinite(flow.log_prob(to_unit(velocity_models(2, seed=1)))).all())


@pytest.mark.slow
def test_example_quick_mode(tmp_path):
    if not WEIGHTS.exists():
        pytest.skip("glow_velocity32 weights not shipped")
    ex = _load_module("examples/eikonal_tomography.py", "eikonal_tomography_example")
    res = ex.main(quick=True, out=tmp_path)
    assert (tmp_path / "eikonal_inversion.json").exists() and Path(res["figure"]).exists()
    p = res["mean_psnr"]
    # measured (quick, model 10_000): Tikhonov 21.87, MAP 23.00, NUTS mean 22.89, MAP+G 15.51 dB;
    # the flow prior must beat smooth Tikhonov
    assert max(p["nuts_mean"], p["map"]) > p["tikhonov"] + 0.5
    m = res["models"][0]
    nuts, lap = m["nuts"], m["laplace"]
    assert nuts["divergences"] == 0 and nuts["accept_prob"] > 0.5  # measured 0, 0.94
    # the NUTS std points to where the posterior mean is wrong (measured corr 0.53)
    assert nuts["error_std_corr"] > 0.25
    # the data shrink the prior std in and outside the ray aperture (Laplace, measured 0.57 / 0.49)
    assert lap["normalised"]["std_centre"] < 0.8
    assert lap["normalised"]["std_outside_aperture_rows"] < 0.8
    # the data constrain a handful of latent directions more than the prior (measured 9)
    assert lap["n_constrained_latent_directions"] >= 3
    # NOTE: "std larger where rays do not reach" does NOT hold here (measured low/high-coverage
    # std ratio 0.89 for NUTS, 0.78 Laplace; normalised by the prior std 0.94 / 0.83): with this
    # flow prior the largest uncertainty is the position of the mid-depth interface, where the
    # (head-wave) coverage is highest. The ratio is recorded in the JSON, not asserted.
    for k in ("ratio_low_vs_high_coverage", "ratio_outside_rows_vs_centre"):
        assert 0.0 < nuts[k] < 10.0 and 0.0 < nuts["normalised"][k] < 10.0
