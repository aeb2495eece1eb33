"""The `bayesinv` command: version, demo, run (from a file) and report, with clear errors."""

import json

import pytest
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
