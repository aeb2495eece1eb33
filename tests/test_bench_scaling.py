"""Tests of benchmarks/bench_scaling.py: the measurements, the growth-rate fit, bad inputs."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `benchmarks` is a top-level folder, not part of the package
    sys.path.insert(0, str(ROOT))

from benchmarks import bench_scaling as bs  # noqa: E402

#: Minimal steps: 3 MAP iterations (2 timed), 10 VI draws, 1 MALA warm-up step + 2 timed.
TINY = {"map_steps": 3, "vi_repeats": 1, "n_draws": 10, "mcmc_warmup": 1, "mcmc_steps": 2}
SIZES = (64, 128)


@pytest.fixture(scope="module")
def small_run() -> dict:
    """All three methods at the two smallest sizes, in-process (the subprocess path is tested
    separately; one process keeps the test fast)."""
    return bs.run(SIZES, bs.METHODS, cfg=TINY, subprocesses=False, verbose=False)


# ------------------------------------------------------------------------------ growth fit
@pytest.mark.parametrize("exponent", [1.0, 0.5, 1.5])
def test_fit_exponent_recovers_power_law(exponent: float) -> None:
    n = [s * s for s in bs.FULL_SIZES]
    values = [3.7e-3 * v**exponent for v in n]
    assert bs.fit_exponent(n, values) == pytest.approx(exponent, abs=1e-9)


def test_fit_exponent_is_least_squares_slope() -> None:
    # log v = a log N + b + e with a zero-mean residual orthogonal to log N: slope stays a
    n = np.array([4096.0, 16384.0, 65536.0, 262144.0])
    ln = np.log(n)
    e = np.array([1.0, -1.0, -1.0, 1.0]) * 0.1  # sum 0 and sum(e * (ln - mean)) = 0 here
    assert abs(float(np.sum(e * (ln - ln.mean())))) < 1e-12
    values = np.exp(0.8 * ln - 2.0 + e)
    assert bs.fit_exponent(n, values) == pytest.approx(0.8, abs=1e-9)


@pytest.mark.parametrize(("n", "v", "match"), [
    ([4096], [1.0], "n_pixels"),
    ([4096, 4096], [1.0, 2.0], "n_pixels"),
    ([4096, -1], [1.0, 2.0], "n_pixels"),
    ([4096, 16384], [1.0], "values"),
    ([4096, 16384], [1.0, 0.0], "values"),
    ([4096, 16384], [1.0, math.nan], "values"),
])
def test_fit_exponent_bad_input(n: list, v: list, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        bs.fit_exponent(n, v)


# ------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("sizes", [(64, 130), (8,), (), (64, 64)])
def test_bad_sizes_raise(sizes: tuple) -> None:
    with pytest.raises(ValueError, match="sizes"):
        bs.check_sizes(sizes)


def test_bad_size_and_method_in_measure_and_run() -> None:
    with pytest.raises(ValueError, match="sizes"):
        bs.measure("map", 66)  # not a multiple of 4 (2x SR + 2 Glow levels)
    with pytest.raises(ValueError, match="method"):
        bs.measure("lbfgs", 64)
    with pytest.raises(ValueError, match="method"):
        bs.run((64,), ("map", "nuts"), cfg=TINY, subprocesses=False, verbose=False)
    with pytest.raises(ValueError, match="sizes"):
        bs.measure_subprocess("vi", 102)  # even, but not a multiple of 4
    with pytest.raises(TypeError, match="sizes"):
        bs.check_sizes((64.0,))
    with pytest.raises(ValueError, match="map_steps"):
        bs.measure("map", 64, map_steps=2)  # fewer than 3 steps leaves < 2 timed intervals
    with pytest.raises(ValueError, match="mcmc_steps"):
        bs.measure("mcmc", 64, mcmc_steps=1)
    with pytest.raises(TypeError, match="n_draws"):
        bs.measure("vi", 64, n_draws=1.5)


# ------------------------------------------------------------------------------ measurements
def test_records_positive_and_finite(small_run: dict) -> None:
    recs = small_run["records"]
    assert [(r["method"], r["size"]) for r in recs] == [(m, s) for m in bs.METHODS for s in SIZES]
    for r in recs:
        assert r["n_pixels"] == r["size"] ** 2
        assert math.isfinite(r["time_s"]) and r["time_s"] > 0
        assert math.isfinite(r["cpu_s"]) and r["cpu_s"] > 0
        # CPU time is at most (threads x wall time); in-process runs use torch's thread count
        assert r["cpu_s"] < (torch.get_num_threads() + 0.5) * r["time_s"] + 0.05
        assert r["memory_source"] == "VmHWM"
        assert r["peak_extra_bytes"] is not None and r["peak_extra_bytes"] > 0
        assert r["unit"] == bs.UNITS[r["method"]]
    by = {(r["method"], r["size"]): r for r in recs}
    # MAP really optimises: the potential decreases over the iterations (lr 0.005 from bicubic)
    for s in SIZES:
        assert by["map", s]["objective_last"] < by["map", s]["objective_first"]
        assert by["map", s]["n_patches"] == bs.n_patches(s) == s * s // 4
        assert by["mcmc", s]["n_patches"] is None  # all patches: deterministic potential
        assert by["vi", s]["n_draws"] == TINY["n_draws"]
    # all-patch MALA at 128² holds 4x the patches of 64²: its peak memory grows accordingly
    ratio = by["mcmc", 128]["peak_extra_bytes"] / by["mcmc", 64]["peak_extra_bytes"]
    assert 2.0 < ratio < 8.0


def test_growth_rates_match_records(small_run: dict) -> None:
    growth = small_run["growth"]
    assert set(growth) == set(bs.METHODS)
    for m, g in growth.items():
        rows = [r for r in small_run["records"] if r["method"] == m]
        n = [r["n_pixels"] for r in rows]
        expect = math.log(rows[1]["time_s"] / rows[0]["time_s"]) / math.log(n[1] / n[0])
        assert g["time_exponent"] == pytest.approx(expect, abs=1e-9)
        expect_cpu = math.log(rows[1]["cpu_s"] / rows[0]["cpu_s"]) / math.log(n[1] / n[0])
        assert g["cpu_time_exponent"] == pytest.approx(expect_cpu, abs=1e-9)
        assert g["memory_exponent"] is not None and math.isfinite(g["memory_exponent"])
        assert f"N^{g['time_exponent']:.2f}" in g["statement"]


def test_results_files_quick_never_overwrite_full(small_run: dict, tmp_path) -> None:
    res = bs.assemble(small_run, quick=True, cfg=TINY, sizes=SIZES, wall_s=1.0)
    js, md = bs.write_results(res, tmp_path)
    assert (js.name, md.name) == ("scaling.quick.json", "scaling.quick.md")
    assert not (tmp_path / "scaling.json").exists()
    loaded = json.loads(js.read_text())
    assert loaded["meta"]["torch"] and loaded["meta"]["threads"] == 1 and loaded["meta"]["date"]
    text = md.read_text()
    assert "| method | size |" in text and "| mcmc | 128² |" in text
    for g in small_run["growth"].values():
        assert g["statement"] in text
    full = bs.assemble(small_run, quick=False, cfg=TINY, sizes=SIZES)
    assert bs.write_results(full, tmp_path)[0].name == "scaling.json"


def test_subprocess_path() -> None:
    rec = bs.measure_subprocess("map", 64, map_steps=3)
    assert rec["method"] == "map" and rec["size"] == 64 and rec["steps"] == 3
    assert math.isfinite(rec["time_s"]) and rec["time_s"] > 0
    assert rec["peak_extra_bytes"] is not None and rec["peak_extra_bytes"] > 0
