"""The quality benchmark harness: records, tables, floors and the CLI, on one tiny task."""

import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `benchmarks` is a top-level folder, not part of the package
    sys.path.insert(0, str(ROOT))

from benchmarks import quality  # noqa: E402
from benchmarks.run import discover_benches, main  # noqa: E402

FIELDS = {"task", "method", "mode", "n_images", "image_size", "sigma", "weight", "psnr_mean",
          "psnr_std", "ssim_mean", "ssim_std", "psnr", "ssim", "seconds", "selection_seconds",
          "paper_psnr", "paper_note"}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("results")
    records = quality.run(["denoise"], ["pinv", "tikhonov_grad"], n_images=2, quick=True,
                          size=16, out_dir=out, verbose=False)
    return records, out


def test_records_have_fields_and_sane_values(tiny_run):
    records, out = tiny_run
    assert [r["method"] for r in records] == ["pinv", "tikhonov_grad"]
    for r in records:
        assert FIELDS <= set(r)
        assert r["task"] == "denoise" and r["mode"] == "quick" and r["n_images"] == 2
        assert len(r["psnr"]) == len(r["ssim"]) == 2
        assert abs(r["psnr_mean"] - sum(r["psnr"]) / 2) < 1e-9
    pinv, tik = records
    assert pinv["weight"] is None and tik["weight"] > 0
    # denoising with sigma = 0.1: the noisy image itself has PSNR ~20 dB
    assert 19.0 < pinv["psnr_mean"] < 21.0
    assert tik["psnr_mean"] > pinv["psnr_mean"] + 1.0  # smoothing helps
    saved = json.loads((out / "quality_quick.json").read_text())
    assert saved["records"] == json.loads(json.dumps(records))
    assert not (out / "quality.json").exists()  # a quick run never replaces the full table
    md = (out / "quality_quick.md").read_text()
    assert "| denoise | tikhonov_grad |" in md and "Glow (Asim): 30.5" in md


def test_weight_is_tuned_on_validation_not_test(tiny_run):
    records, _ = tiny_run
    data = quality.TASKS["denoise"].build(2, 16, True)
    assert not torch.equal(data.validation, data.truths[: len(data.validation)])
    sel = records[1]["selection_scores"]
    assert records[1]["weight"] == max(sel, key=lambda ws: ws[1])[0]


def test_floor_check_fails_above_and_passes_below(tiny_run):
    records, _ = tiny_run
    floors = quality.make_floors(records, psnr_margin=0.5)
    assert quality.check_floors(records, floors) == []
    key = "denoise/tikhonov_grad"
    raised = json.loads(json.dumps(floors))
    raised["quick"][key]["psnr"] = records[1]["psnr_mean"] + 0.01
    failures = quality.check_floors(records, raised)
    assert len(failures) == 1 and key in failures[0] and "PSNR" in failures[0]
    raised["quick"][key]["psnr"] = records[1]["psnr_mean"] - 0.01
    raised["quick"][key]["ssim"] = records[1]["ssim_mean"] + 0.001
    assert "SSIM" in quality.check_floors(records, raised)[0]
    nan = [dict(records[0], psnr_mean=float("nan"))]
    assert quality.check_floors(nan, floors)  # NaN never passes
    assert quality.check_floors(records, {"full": floors["quick"]}) == []  # other mode: unchecked
    with pytest.raises(TypeError, match="floors"):
        quality.check_floors(records, [1, 2])


def test_cli_writes_floors_then_fails_when_a_floor_is_raised(tmp_path):
    floors = tmp_path / "floors.json"
    args = ["--quick", "--only", "quality", "--tasks", "denoise", "--methods", "pinv",
            "--n-images", "2", "--size", "16", "--out", str(tmp_path / "res"),
            "--floors", str(floors), "--bench-dir", str(tmp_path)]
    assert main(args + ["--write-floors"]) == 0
    assert main(args + ["--check-floors"]) == 0
    table = json.loads(floors.read_text())
    table["quick"]["denoise/pinv"]["psnr"] += 5.0
    floors.write_text(json.dumps(table))
    assert main(args + ["--check-floors"]) == 1
    assert "denoise | pinv" in (tmp_path / "res" / "summary.quick.md").read_text()


def test_bench_discovery_runs_main_and_skips_others(tmp_path):
    (tmp_path / "bench_good.py").write_text(
        "def main(quick: bool) -> dict:\n    return {'quick': quick, 'value': 1.5}\n")
    (tmp_path / "bench_nomain.py").write_text("X = 1\n")
    (tmp_path / "bench_argv.py").write_text("def main(argv=None) -> dict:\n    return {}\n")
    (tmp_path / "bench_broken.py").write_text(
        "def main(quick: bool) -> dict:\n    raise RuntimeError('boom')\n")
    found = discover_benches(tmp_path)
    assert callable(found["bench_good"]) and "no main" in found["bench_nomain"]
    assert "quick" in found["bench_argv"]  # main(argv) is not called with quick=
    out = tmp_path / "res"
    status = main(["--quick", "--only", "good,bench_nomain", "--out", str(out),
                   "--bench-dir", str(tmp_path)])
    assert status == 0
    summary = (out / "summary.quick.md").read_text()
    assert "bench_good" in summary and "1.5" in summary and "no main" in summary
    assert not (out / "summary.md").exists()  # a quick run never writes the full summary
    assert main(["--quick", "--only", "broken", "--out", str(out),
                 "--bench-dir", str(tmp_path)]) == 1
    assert "FAILED: RuntimeError: boom" in (out / "summary.quick.md").read_text()


def test_unknown_names_raise():
    with pytest.raises(ValueError, match="tasks"):
        quality.run(["nope"], write=False)
    with pytest.raises(ValueError, match="methods"):
        quality.run(["denoise"], ["nope"], write=False)
