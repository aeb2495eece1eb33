"""HTML UQ report and figures: self-contained, escaped, small, rendered by a real browser."""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from bayesinv.diagnostics import calibration, plots
from bayesinv.diagnostics.maps import posterior_maps, summary_table
from bayesinv.diagnostics.report import MAX_BYTES, diagnostic_warnings, uq_report
from bayesinv.infer.posterior import Posterior

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)


def _markov(shift: float = 0.0) -> Posterior:
    g = torch.Generator().manual_seed(0)
    truth = torch.linspace(0, 1, 12)[None, :, None].expand(1, 12, 12).clone()
    draws = truth + 0.1 * torch.randn(4, 60, 1, 12, 12, generator=g)
    draws = draws + shift * torch.arange(4.0)[:, None, None, None, None]
    return Posterior(
        samples=draws, method="nuts", kind="markov", truth=truth, observed=torch.randn(70, generator=g),
        latent_samples=torch.randn(4, 60, 5, generator=g),
        sample_stats={"diverging": torch.arange(240).reshape(4, 60) % 50 == 0,
                      "accept_prob": torch.full((4, 60), 0.85), "tree_depth": torch.full((4, 60), 3)},
        settings={"num_warmup": 100, "loss_history": list(np.linspace(5.0, 1.0, 300)),
                  "comment": "<script>alert('x')</script> & more"},
        seed=11, timings={"warmup_s": 1.5, "sampling_s": 3.0},
        problem={"operator": {"name": "Blur<b>", "in_shape": [1, 12, 12]},
                 "prior": {"name": "GaussianPrior"}, "noise": {"name": "GaussianNoise", "sigma": 0.1}})


def _images(text: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)]


@pytest.fixture(scope="module")
def markov_report(tmp_path_factory):
    post = _markov(shift=0.3)
    cal = calibration.posterior_calibration(post)
    rng = np.random.default_rng(0)
    cal["sbc"] = calibration.sbc_test(rng.integers(0, 50, 400), num_draws=49)
    path = tmp_path_factory.mktemp("report") / "report.html"
    uq_report(post, path, calibration=cal, title="Test <report>")
    return path


def test_report_self_contained(markov_report):
    text = markov_report.read_text(encoding="utf-8")
    assert os.path.getsize(markov_report) < MAX_BYTES
    pngs = _images(text)
    assert len(pngs) >= 7  # loss, maps, z-scores, trace, rank, coverage, SBC
    assert all(p.startswith(b"\x89PNG\r\n\x1a\n") and len(p) > 1000 for p in pngs)
    assert "<table class='diagnostics'>" in text and "id='diagnostics'" in text
    # no scripts, no external resources; user text escaped
    assert "<script" not in text.lower()
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; more" in text
    assert "Blur&lt;b&gt;" in text and "Test &lt;report&gt;" in text
    assert not re.search(r'(src|href)\s*=\s*["\'](?!data:)', text)
    assert "http://" not in text and "https://" not in text
    # content: problem, settings summarised (no 300-value list), seed, timings, warnings
    assert "[300 numbers: first 5, last 1]" in text
    assert "GaussianNoise" in text and "warmup_s [s]" in text and ">11<" in text
    assert "R-hat &gt; 1.01" in text  # shifted chains flagged
    assert "5 divergent transitions" in text
    assert "over-confident" not in text.split("Calibration")[0]


def test_report_point_and_vi_warnings(tmp_path):
    g = torch.Generator().manual_seed(1)
    point = Posterior(samples=torch.rand(1, 1, 1, 8, 8, generator=g), method="map", kind="point",
                      observed=torch.rand(1, 8, 8, generator=g),
                      settings={"loss_history": [3.0, 2.0, 1.0] * 10})
    path = uq_report(point, tmp_path / "map.html")
    text = path.read_text(encoding="utf-8")
    assert "MAP is a point estimate: no uncertainty" in text
    assert "R-hat" not in text.split("<h2>Diagnostics</h2>")[1].split("</table>")[0]
    assert len(_images(text)) == 2  # loss curve + maps

    vi = Posterior(samples=torch.rand(1, 50, 1, 8, 8, generator=g), method="vi", kind="independent")
    warnings = diagnostic_warnings(vi, summary_table(posterior_maps(vi)))
    assert any("R-hat does not apply" in w and "under-estimate the variance" in w for w in warnings)
    mala = Posterior(samples=torch.rand(2, 20, 1, 4, 4, generator=g), method="mala", kind="markov",
                     sample_stats={"accept_prob": torch.full((2, 20), 0.05)})
    assert any("MALA acceptance 0.05 < 0.2" in w for w in
               diagnostic_warnings(mala, summary_table(posterior_maps(mala))))


def test_report_bad_arguments(tmp_path):
    with pytest.raises(TypeError, match="posterior"):
        uq_report("nope", tmp_path / "r.html")
    with pytest.raises(ValueError, match="path"):
        uq_report(_markov(), tmp_path / "missing" / "r.html")
    with pytest.raises(TypeError, match="calibration"):
        uq_report(_markov(), tmp_path / "r.html", calibration=[1])


def test_figures_save_png(tmp_path):
    post = _markov()
    m = posterior_maps(post)
    cov = calibration.coverage_curve(post.samples, post.truth)
    sbc = calibration.sbc_test(np.arange(100) % 20, num_draws=19)
    figs = [plots.posterior_panel(post, m), plots.coverage_plot(cov), plots.sbc_histogram(sbc),
            plots.trace_plot(post, [(0, 1, 2)], latents=[0, 1]), plots.rank_plot(post, maps=m),
            plots.zscore_histogram(m["zscore"]), plots.loss_curve([3, 2, 1])]
    for i, fig in enumerate(figs):
        assert isinstance(fig, Figure)
        plots.save_png(fig, tmp_path / f"f{i}.png", dpi=50)
        assert (tmp_path / f"f{i}.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (CI installs it: apt-get install chromium)")
def test_report_renders_in_headless_chromium(markov_report, tmp_path):
    args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
            "--no-first-run", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}"]
    url = markov_report.resolve().as_uri()
    dom = subprocess.run([*args, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    out = dom.stdout
    assert out.count('src="data:image/png;base64,') >= 7
    assert '<table class="diagnostics">' in out and "fraction of pixels with R-hat" in out
    shot = tmp_path / "shot.png"
    res = subprocess.run([*args, "--window-size=1200,2000", f"--screenshot={shot}", url],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert shot.stat().st_size > 10_000
