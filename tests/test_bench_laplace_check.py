"""benchmarks/bench_laplace_check.py in quick mode: the shipped-Glow CT posterior is not Gaussian."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import bench_laplace_check as blc  # noqa: E402


def test_quick_energy_check_flags_the_curved_glow_posterior(tmp_path):
    res = blc.main(quick=True, out_dir=tmp_path)
    saved = json.loads((tmp_path / "laplace_check.quick.json").read_text())
    assert set(saved["tasks"]) == {"ct", "deblur"}
    assert (tmp_path / "laplace_check.quick.md").read_text().startswith("# Is the latent posterior")
    for task, t in res["tasks"].items():
        ratios = [t["mean_ratio"][f"c={c:g}"] for c in blc.SCALES]
        # shrinking the Gaussian lowers the rise of U, and faster than c (U steepens outward)
        assert ratios[0] > ratios[1] > ratios[2] > 0, (task, ratios)
        assert ratios[0] / blc.SCALES[0] > ratios[2] / blc.SCALES[2], (task, ratios)
    # measured 8.8 (CT) and 3.2 (deblur) at c = 1: far from the Gaussian value 1
    assert res["tasks"]["ct"]["mean_ratio"]["c=1"] > 3.0
    assert res["tasks"]["deblur"]["mean_ratio"]["c=1"] > 1.5
