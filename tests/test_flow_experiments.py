"""Flow-prior experiments: latent MAP with the shipped Glow, and the three flow benchmarks.

Fast tests: latent MAP with the shipped ``glow_phantom32`` prior beats the blurred input on a
held-out phantom; the normflows peer of ``benchmarks/bench_flows.py`` has our Glow's size.
Slow tests (``-m slow``): each benchmark's quick mode runs and writes its results with the
expected fields and finite headline numbers (quality floors are the harness's job).
"""

import json
import math
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `benchmarks` is a top-level folder, not part of the package
    sys.path.insert(0, str(ROOT))

WEIGHTS = ROOT / "bayesinv" / "data" / "weights" / "glow_phantom32.safetensors"
needs_weights = pytest.mark.skipif(not WEIGHTS.exists(),
                                   reason="shipped glow_phantom32 weights absent (scripts/train_priors.py)")


def _finite(*values: float) -> bool:
    return all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)


# -- fast ------------------------------------------------------------------------------------------
@needs_weights
def test_latent_map_with_shipped_glow_beats_blurred_input():
    """Held-out phantom (seed 10 000), Gaussian blur std 1.5, sigma 0.01; plain latent MAP by
    L-BFGS (2 outer steps, <= 40 iterations) from z = 0. Measured: y 24.65 dB, MAP 29.21 dB
    (+4.57 dB); asserted: +3 dB."""
    from bayesinv.data.images import ellipse_phantoms
    from bayesinv.data.pretrained import load_prior
    from bayesinv.infer.map import map_estimate
    from bayesinv.metrics import psnr
    from bayesinv.operators import Blur
    from bayesinv.problem import GaussianNoise, InverseProblem

    torch.manual_seed(0)
    prior = load_prior("glow_phantom32")
    problem = InverseProblem(Blur((1, 32, 32), "gaussian", width=1.5), prior, GaussianNoise(0.01))
    x = ellipse_phantoms(1, 32, seed=10_000)
    y = problem.simulate(x, seed=10_000)
    post = map_estimate(problem, y, method="latent", optimizer="lbfgs", steps=2, seed=0, progress=False)
    p_y = psnr(y[0].clamp(0, 1), x[0])
    p_map = psnr(post.mean.clamp(0, 1), x[0])
    assert p_map >= p_y + 3.0, (p_y, p_map)
    assert post.settings["final_objective"] < post.settings["loss_history"][0]


def test_normflows_peer_has_our_architecture():
    """Same subnets, 1x1 convs and ActNorms: the parameter counts differ exactly by normflows'
    trainable base distributions (a location and a log-scale per latent entry, 2·D)."""
    pytest.importorskip("normflows")
    from benchmarks.bench_flows import ARCH, build_normflows, build_ours

    for shape in [(1, 16, 16), (3, 16, 16)]:
        ours, peer = build_ours(shape, **ARCH), build_normflows(shape, **ARCH)
        n_ours = sum(p.numel() for p in ours.parameters())
        n_peer = sum(p.numel() for p in peer.parameters())
        assert n_peer - n_ours == 2 * math.prod(shape)
        x = torch.rand((2, *shape), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            assert torch.isfinite(ours.log_prob(x)).all() and torch.isfinite(peer.log_prob(x, None)).all()


# -- slow: each benchmark's quick mode ----------------------------------------------------------------
@pytest.mark.slow
def test_bench_flows_quick(tmp_path):
    pytest.importorskip("normflows")
    from benchmarks.bench_flows import WORKLOADS, main

    out = tmp_path / "flows.json"
    res = main(quick=True, out=out, profile=False)
    saved = json.loads(out.read_text())
    assert saved["runs"][0]["shape"] == [1, 32, 32] and saved["batch"] == 64
    for wl in WORKLOADS:
        r = res["runs"][0][wl]
        assert _finite(r["ours"]["images_per_s_cpu"], r["normflows"]["images_per_s_cpu"],
                       r["ratio_ours_over_peer_cpu"], r["ratio_ours_over_peer_wall"])
        assert r["ours"]["images_per_s_cpu"] > 0


@pytest.mark.slow
@needs_weights
def test_bench_latent_map_quick(tmp_path):
    from benchmarks.bench_latent_map import main

    res = main(quick=True, out_dir=tmp_path)
    saved = json.loads((tmp_path / "latent_map.quick.json").read_text())
    assert (tmp_path / "latent_map.quick.md").read_text().startswith("# Latent MAP")
    assert set(saved["tasks"]) == {"mri4x", "deblur", "cs_m128", "cs_m256"}
    for name, task in res["tasks"].items():
        methods = task["methods"]
        assert {"latent_map", "tikhonov", "tv"} <= set(methods)
        if name in ("mri4x", "deblur"):
            assert {"latent_map_gaussianized", "latent_map_gaussianized_tau_val",
                    "latent_map_gaussianized_warm"} <= set(methods)
            scan = task["tau_scan_validation"]
            assert set(scan["factors"]) == {"0.85", "1.0"}
            best = max(scan["factors"].values(), key=lambda v: v["val_psnr"])
            assert methods["latent_map_gaussianized_tau_val"]["scale_tau"] == pytest.approx(best["scale_tau"])
            # started at the plain MAP, the layer keeps that latent's norm: RMS == its own tau
            warm = methods["latent_map_gaussianized_warm"]
            assert warm["latent_norm_over_sqrt_D"] == pytest.approx(warm["scale_tau"], rel=1e-4)
            plain_rms = methods["latent_map"]["latent_norm_over_sqrt_D"]
            assert warm["scale_tau"] == pytest.approx(plain_rms, rel=1e-3)
            # Li et al.'s baselines: same tau as the layer; beta is the validation-best of the grid
            g = methods["latent_map_gaussianized"]
            for key in ("latent_map_li_unregularised", "latent_map_li_spherical", "latent_map_li_density"):
                assert methods[key]["scale_tau"] == g["scale_tau"]
            sph = methods["latent_map_li_spherical"]["latent_norm_over_sqrt_D"]
            assert sph == pytest.approx([g["scale_tau"]] * task["n_test"], rel=1e-4)
            dens = methods["latent_map_li_density"]
            assert set(dens["beta_scan_validation"]) == {"0.0", "1.0"}
            assert dens["beta_scan_validation"][str(dens["beta"])] == max(dens["beta_scan_validation"].values())
            assert methods["image_map"]["steps"] == 1 and len(methods["image_map"]["psnr"]) == task["n_test"]
        for m in methods.values():
            assert len(m["psnr"]) == task["n_test"]
            assert _finite(m["psnr_mean"], m["psnr_std"], m["ssim_mean"], m["ssim_std"])


def test_bench_latent_map_rejects_bad_prior_weights(tmp_path):
    from benchmarks.bench_latent_map import load_glow_prior

    with pytest.raises(ValueError, match="prior_weights"):
        load_glow_prior(tmp_path / "missing.safetensors")
    (tmp_path / "flow.pt").write_bytes(b"")
    with pytest.raises(ValueError, match="prior_weights: expected an existing .safetensors"):
        load_glow_prior(tmp_path / "flow.pt")


@pytest.mark.slow
def test_bench_latent_map_with_another_glow(tmp_path):
    """The larger experimental Glow (4 quick training steps) runs the Gaussianization tasks only
    and writes its own ``.prior-<name>`` files next to, not over, the shipped prior's."""
    import subprocess

    from benchmarks.bench_latent_map import main

    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "train_priors.py"), "--quick",
                           "--only", "glow_phantom32_large", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = main(quick=True, out_dir=tmp_path, prior_weights=tmp_path / "glow_phantom32_large.safetensors")
    saved = json.loads((tmp_path / "latent_map.prior-glow_phantom32_large.quick.json").read_text())
    assert not (tmp_path / "latent_map.quick.json").exists()
    assert saved["prior"] == "glow_phantom32_large" and saved["prior_parameters"] == 594_528
    assert set(res["tasks"]) == {"mri4x", "deblur"}
    md = (tmp_path / "latent_map.prior-glow_phantom32_large.quick.md").read_text()
    assert md.startswith("# Latent MAP with the Glow prior (`glow_phantom32_large`, not shipped")
    assert "a 595k-parameter Glow" in md
    for task in res["tasks"].values():
        g = task["methods"]["latent_map_gaussianized"]
        assert _finite(g["psnr_mean"], task["methods"]["latent_map"]["psnr_mean"], g["scale_tau"])


@pytest.mark.slow
@needs_weights
def test_bench_mcmc_quick(tmp_path):
    from benchmarks.bench_mcmc import main

    out = tmp_path / "mcmc.json"
    res = main(quick=True, out=out)
    saved = json.loads(out.read_text())
    assert saved["criteria"] == {"rhat_lt": 1.01, "ess_bulk_gt": 400}
    for key in ("ours_latent_nuts", "peer_pixel_nuts"):
        r = res[key]
        assert 0.0 <= r["frac_rhat_lt_1.01"] <= 1.0 and 0.0 <= r["frac_ess_bulk_gt_400"] <= 1.0
        assert _finite(r["ess_bulk_median"], r["wall_s"], r["ess_bulk_median_per_s"],
                       r["posterior_mean_psnr"])
    assert res["ours_latent_nuts"]["chains"] == 2
    assert _finite(res["ess_per_s_ratio_ours_over_peer"])


def test_bench_latent_map_tasks_carry_their_noise_level():
    from benchmarks.bench_latent_map import build_tasks, main

    for sigma in (0.01, 0.05):
        for task in build_tasks(2, 1, cs=False, sigma=sigma):
            assert task.sigma == sigma and f"sigma {sigma:g}" in task.description
            with torch.no_grad():
                resid = task.y_test - task.operator(task.x_test)
            assert abs(float(resid.std()) / sigma - 1.0) < 0.1
    with pytest.raises(ValueError, match="sigma"):
        main(quick=True, sigma=-0.1, out_dir=None)


@needs_weights
def test_bench_latent_map_restarts_keep_the_best_of_independent_seeds():
    """Gaussianized restarts (Li et al.'s "seeds") start at fresh draws; the best start per
    image wins, so three starts never end above the first one alone (which they include)."""
    from bayesinv.gaussianize.layer import GaussianizationLayer
    from bayesinv.problem import GaussianNoise, InverseProblem
    from benchmarks.bench_latent_map import batched_latent_map, build_tasks, load_glow_prior

    prior, _ = load_glow_prior(None)
    task = build_tasks(1, 1, cs=False)[1]  # deblurring, one image
    problem = InverseProblem(task.operator, prior, GaussianNoise(task.sigma))
    g = GaussianizationLayer.for_prior(prior, scale=0.6, patch_size=4, ica=False)
    _, one = batched_latent_map(problem, task.y_test, gaussianize=g, iters=2, restarts=1)
    _, three = batched_latent_map(problem, task.y_test, gaussianize=g, iters=2, restarts=3)
    assert three["restarts"] == 3 and len(three["evaluations_per_restart"]) == 3
    assert all(b <= a + 1e-6 * abs(a) for a, b in zip(one["objective"], three["objective"], strict=True))
    assert any(b < a - 1e-3 * abs(a) for a, b in zip(one["objective"], three["objective"], strict=True))


@needs_weights
def test_bench_latent_map_li_baselines_objectives():
    """Li et al.'s Glow baselines: the beta term is the image-space negative log-density
    -log p_X(G(w)) (less D/2 log 2 pi, through the flow's change of variables), the spherical
    latent has norm tau sqrt(D), and the scaled latent is tau v."""
    from bayesinv.problem import GaussianNoise, InverseProblem
    from benchmarks.bench_latent_map import (
        ScaledLatent,
        SphericalLatent,
        build_tasks,
        latent_objective,
        load_glow_prior,
    )

    prior, _ = load_glow_prior(None)
    task = build_tasks(2, 1, cs=False)[0]
    problem = InverseProblem(task.operator, prior, GaussianNoise(task.sigma))
    d = prior.latent_shape[0]
    v = 0.6 * torch.randn((2, d), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        fit = latent_objective(problem, task.y_test, gamma=0.0)(v)
        dens = latent_objective(problem, task.y_test, gamma=0.0, beta=0.3)(v)
        both = latent_objective(problem, task.y_test, gamma=0.5, beta=0.3)(v)
        neg_log_density = -prior.log_prob(prior.generate(v)) - 0.5 * d * math.log(2 * math.pi)
        nll = problem.negative_log_likelihood(prior.generate(v), task.y_test)
    assert torch.allclose(fit, nll)
    assert torch.allclose((dens - fit) / 0.3, neg_log_density, rtol=1e-4)
    assert torch.allclose(both - dens, 0.5 * v.pow(2).sum(1), rtol=1e-4)
    assert torch.allclose(ScaledLatent(0.6)(v), 0.6 * v)
    w = SphericalLatent(0.6)(3.0 * v)
    assert torch.allclose(w.norm(dim=1), torch.full((2,), 0.6 * math.sqrt(d)))
    assert torch.allclose(w, SphericalLatent(0.6)(v), atol=1e-6)  # scale-free in v


def test_bench_latent_map_run_config_names_each_variant():
    from benchmarks.bench_latent_map import FULL, PRIOR, QUICK, REFERENCE, SIGMA, run_config

    cfg, stem = run_config(False, SIGMA, PRIOR, False)
    assert cfg == FULL and stem == "latent_map"
    cfg, stem = run_config(False, SIGMA, PRIOR, True)
    assert stem == "latent_map.lbfgs510x3" and cfg["cs"] is False
    assert {k: cfg[k] for k in REFERENCE} == REFERENCE == {
        "iters_plain": 510, "iters_gauss": 510, "restarts_plain": 3, "restarts_gauss": 3,
        "variants": False, "image_map_steps": 26}
    cfg, stem = run_config(True, 0.05, "glow_big", True)
    assert stem == "latent_map.prior-glow_big.sigma0.05.lbfgs510x3.quick"
    assert cfg["iters_plain"] == QUICK["iters_plain"] and cfg["restarts_gauss"] == 3
    assert run_config(True, SIGMA, PRIOR, False)[1] == "latent_map.quick"


def test_bench_latent_map_model_error_simulates_data_the_model_cannot_fit():
    """With a forward-model error the data depart from the model's prediction by far more than
    the noise (residual std 1.4σ for ε = 0.2; without one, 1σ); the run is named after the error."""
    from benchmarks.bench_latent_map import PRIOR, SIGMA, build_tasks, coil_sensitivity, run_config

    coil = coil_sensitivity((1, 4, 5), 0.2)
    assert torch.allclose(coil[0, :, 0], torch.full((4,), 0.8))
    assert torch.allclose(coil[0, :, -1], torch.full((4,), 1.2))
    exact = build_tasks(2, 1, cs=False)
    wrong = build_tasks(2, 1, cs=False, model_error=0.2)
    for a, b in zip(exact, wrong, strict=True):
        assert a.name == b.name and torch.equal(a.x_test, b.x_test)
        assert "model error 0.2" in b.description and "model error" not in a.description
        with torch.no_grad():
            misfit_a = float((a.y_test - a.operator(a.x_test)).std()) / SIGMA
            misfit_b = float((b.y_test - b.operator(b.x_test)).std()) / SIGMA
        assert abs(misfit_a - 1.0) < 0.1 and misfit_b > 1.25, (a.name, misfit_a, misfit_b)
    cfg, stem = run_config(False, SIGMA, PRIOR, False, 0.2)
    assert stem == "latent_map.model-error0.2" and cfg["cs"] is False
    for bad in (-0.1, 1.0, float("nan")):
        with pytest.raises(ValueError, match="model_error"):
            build_tasks(1, 1, cs=False, model_error=bad)
    with pytest.raises(ValueError, match="model_error"):
        build_tasks(1, 1, cs=True, model_error=0.2)


def test_bench_latent_map_natural_domain_holds_out_the_prior_training_images():
    """The natural domain's test and validation crops are 32×32, textured, seeded, distinct from
    each other and from images of ``NATURAL_TRAIN_NAMES`` (``glow_natural32``'s training set);
    the run is named after the domain and rejects an unknown one."""
    from bayesinv.data import NATURAL_TRAIN_NAMES
    from benchmarks.bench_latent_map import (
        SIGMA,
        build_tasks,
        held_out_images,
        main,
        run_config,
    )

    assert not {"camera", "astronaut", "rocket"} & set(NATURAL_TRAIN_NAMES)
    x_test, x_val = held_out_images("natural", 4, 2)
    assert x_test.shape == (4, 1, 32, 32) and x_val.shape == (2, 1, 32, 32)
    assert torch.equal(x_test, held_out_images("natural", 4, 2)[0])
    assert float(x_test.flatten(1).std(1).min()) >= 0.1  # textured, not flat sky
    assert float((x_test[:, None] - x_val[None]).abs().flatten(2).amax(2).min()) > 0.0
    phantom_test, _ = held_out_images("phantom", 4, 2)
    assert not torch.equal(x_test, phantom_test)
    for task in build_tasks(2, 1, cs=False, domain="natural"):
        assert torch.equal(task.x_test, held_out_images("natural", 2, 1)[0])
    cfg, stem = run_config(False, SIGMA, "glow_natural32", False, 0.0, "natural")
    assert stem == "latent_map.natural" and cfg["cs"] is False  # the domain's shipped Glow
    assert run_config(True, SIGMA, "glow_big", False, 0.0, "natural")[1] == \
        "latent_map.prior-glow_big.natural.quick"
    assert run_config(False, SIGMA, "glow_natural32", False)[1] == "latent_map.prior-glow_natural32"
    for bad in (lambda: held_out_images("faces", 1, 1), lambda: main(quick=True, out_dir=None, domain="faces")):
        with pytest.raises(ValueError, match="domain"):
            bad()


def test_bench_latent_map_verdict_words_follow_the_paired_standard_error():
    """"ahead"/"behind" need a mean per-image difference beyond one paired standard error;
    a run with non-finite objectives is counted as diverged and flagged in the report."""
    from benchmarks.bench_latent_map import _diverged, paired_outcome

    assert paired_outcome([2.0, 3.0, 4.0], [1.0, 1.0, 1.0])[0] == "ahead"
    outcome, mean, se = paired_outcome([1.0, 2.0, 0.5, 1.5], [1.1, 1.5, 0.9, 1.6])
    assert outcome == "tied" and mean == pytest.approx(-0.025) and se > abs(mean)
    assert paired_outcome([0.0, 0.0], [1.0, 1.2])[0] == "behind"
    assert _diverged({"objective": [1.0, float("inf"), float("nan")]}) == 2
    assert _diverged({"objective": [1.0]}) == 0 and _diverged({}) == 0
