"""The `bayesinv` command: version, demo, run (from a file) and report, with clear errors."""

import json

import pytest
import torch
from typer.testing import CliRunner

from bayesinv import __version__
from bayesinv.cli import app

runner = CliRunner()


def test_version():
    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0 and __version__ in res.stdout


def test_demo_writes_figure_posterior_report_and_beats_fbp(tmp_path):
    res = runner.invoke(app, ["demo", "--out", str(tmp_path), "--size", "32", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "PSNR" in res.stdout
    for name in ("demo.png", "posterior.nc", "report.html"):
        assert (tmp_path / name).stat().st_size > 1000
    from bayesinv.demo import run_demo

    out = run_demo(tmp_path / "default", device="cpu")  # the default 64x64 job of `make demo`
    assert out["psnr_posterior_mean"] > out["psnr_fbp"] + 1.0


def test_run_config_and_report(tmp_path):
    from pathlib import Path

    cfg = Path(__file__).resolve().parents[1] / "examples" / "ct_exact.toml"
    res = runner.invoke(app, ["run", str(cfg), "--out", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    assert "PSNR" in res.stdout
    post = tmp_path / "r" / "posterior.nc"
    res = runner.invoke(app, ["report", str(post), "-o", str(tmp_path / "rep.html")])
    assert res.exit_code == 0, res.output
    assert "<img" in (tmp_path / "rep.html").read_text()


@pytest.mark.parametrize("cfg, match", [
    ({"operator": {"kind": "xray"}, "prior": {"kind": "gaussian"}, "noise": {"sigma": 0.1}}, "operator"),
    ({"operator": {"kind": "blur"}, "prior": {"kind": "gaussian"}, "noise": {"sigma": -1}}, "sigma"),
    ({"operator": {"kind": "blur", "wdth": 2}, "prior": {"kind": "gaussian"}, "noise": {"sigma": 0.1}}, "wdth"),
    ({"operator": {"kind": "blur"}, "prior": {"kind": "gaussian"}}, "noise"),
    ({"operator": {"kind": "blur"}, "prior": {"kind": "gaussian"}, "noise": {"sigma": 0.1},
      "method": {"name": "magic"}}, "method"),
])
def test_bad_run_files_give_clear_errors(tmp_path, cfg, match):
    f = tmp_path / "bad.json"
    f.write_text(json.dumps({"data": {"image": "camera", "size": 16}, **cfg}))
    res = runner.invoke(app, ["run", str(f), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2
    assert match in res.output


def test_missing_files_are_clear(tmp_path):
    res = runner.invoke(app, ["run", str(tmp_path / "nope.toml")])
    assert res.exit_code == 2 and "no such file" in res.output
    bad = tmp_path / "x.nc"
    bad.write_text("not netcdf")
    res = runner.invoke(app, ["report", str(bad)])
    assert res.exit_code == 2 and "x.nc" in res.output


@pytest.mark.slow
@pytest.mark.parametrize("name, floor", [("deblur_mcmc.toml", 18.0), ("deblur_vi.toml", 18.0)])
def test_run_files_for_mcmc_and_vi(tmp_path, name, floor):
    """`bayesinv run` with method = "mcmc" / "vi" writes a posterior and a report."""
    from pathlib import Path

    from bayesinv.infer.posterior import Posterior

    cfg = Path(__file__).resolve().parents[1] / "examples" / name
    res = runner.invoke(app, ["run", str(cfg), "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    psnr = float(res.stdout.split("PSNR")[1].split("dB")[0])
    assert psnr > floor
    post = Posterior.load(tmp_path / "posterior.nc")
    assert post.num_draws >= 64 and float(post.std.mean()) > 0
    assert (tmp_path / "report.html").stat().st_size > 10_000


def test_patchnr_run_file_beats_bicubic(tmp_path):
    """`[prior] kind = "patchnr"` with a shipped patch flow: image MAP from the run file."""
    from pathlib import Path

    from bayesinv.config import build_problem, load_truth, read_config, run_config
    from bayesinv.metrics import psnr
    from bayesinv.priors.patchnr import PatchNRPrior

    cfg = read_config(Path(__file__).resolve().parents[1] / "examples" / "sr_patchnr_map.toml")
    out = run_config(cfg, out=tmp_path, device="cpu")
    truth = load_truth(cfg)
    problem = build_problem(cfg, tuple(truth.shape[1:]))
    assert isinstance(problem.prior, PatchNRPrior) and problem.prior.n_patches == 300
    y = problem.simulate(truth, seed=cfg["seed"])
    bicubic = psnr(problem.operator.bicubic(y)[0].clamp(0, 1), truth[0])
    # measured: patchNR MAP 28.64 dB, bicubic 24.73 dB (48x48 camera, 2x, 100 Adam steps)
    assert out["psnr"] > bicubic + 3.0, (out["psnr"], bicubic)
    assert (tmp_path / "report.html").stat().st_size > 10_000


def test_pretrained_and_wpp_prior_kinds(tmp_path):
    from bayesinv.config import build_problem, run_config
    from bayesinv.data import load_image
    from bayesinv.priors.flow import FlowPrior
    from bayesinv.priors.patches import extract_patches
    from bayesinv.priors.wpp import WassersteinPatchPrior

    base = {"data": {"image": "phantom", "size": 32, "seed": 10_000},
            "operator": {"kind": "sparse_view_ct", "n_angles": 12}, "noise": {"sigma": 0.5}}
    cfg = {**base, "prior": {"kind": "pretrained", "name": "glow_phantom32"}}
    problem = build_problem(cfg, (1, 32, 32))
    assert isinstance(problem.prior, FlowPrior) and problem.prior.image_shape == (1, 32, 32)
    out = run_config({**cfg, "method": {"name": "map", "steps": 5}}, out=tmp_path / "flow", device="cpu")
    assert out["psnr"] > 20.0  # latent MAP with the phantom Glow on a held-out phantom
    wpp = build_problem({**base, "prior": {"kind": "wpp", "reference": "grass", "reference_size": 40,
                                           "weight": 10.0, "n_reference": 500, "scales": 1}}, (1, 32, 32)).prior
    assert isinstance(wpp, WassersteinPatchPrior) and wpp.weight == 10.0
    q = wpp.reference_patches(0)  # 500 of the 35 x 35 patches of the 40 x 40 grass image
    all_q = extract_patches(load_image("grass", 40)[None], 6)[0]
    assert q.shape == (500, 36) and bool((torch.cdist(q, all_q, compute_mode="donot_use_mm_for_euclid_dist").min(1).values < 1e-6).all())
    with pytest.raises(ValueError, match="flow"):
        build_problem({**base, "prior": {"kind": "patchnr", "flow": "glow_phantom32"}}, (1, 32, 32))
    with pytest.raises(ValueError, match="unknown key"):
        build_problem({**base, "prior": {"kind": "wpp", "reference": "grass", "weigth": 1.0}}, (1, 32, 32))
