r"""Benchmark: NUTS on the latent of the shipped Glow prior vs plain Pyro NUTS in pixel space.

Issue criterion "MCMC". Problem: sparse-view CT of one held-out ``32×32`` ellipse phantom
(seed ``10_000``), :class:`~bayesinv.operators.Radon` with ``N_ANGLES`` equispaced angles in
``[0°, 180°)`` and 32 detectors, Gaussian noise :math:`\sigma` = ``SIGMA`` on the sinogram
(about 3.5% of its peak, 8.7), prior ``glow_phantom32`` (:math:`x = G(z)`, flat ``z`` of 1024 dims).

* **Ours** — :func:`bayesinv.infer.mcmc.sample_posterior` with ``kernel="nuts"`` on the latent
  posterior :math:`U(z) = \tfrac{1}{2\sigma^2}\|A G(z) - y\|^2 + \tfrac12\|z\|^2`, 4 chains
  (sequential), started at the latent MAP, preconditioned by the fixed dense Gauss–Newton
  Laplace covariance at the MAP (``inverse_mass_matrix="laplace"``:
  :math:`(J^\top J/\sigma^2 + I)^{-1}`, one Jacobian and a 1024² Cholesky, timed with the
  sampling), step size adapted in warm-up; image draws :math:`x = G(z)`.
* **Peer** — Pyro's ``NUTS(potential_fn=...)`` driven by ``pyro.infer.MCMC`` on the *same
  posterior* parametrised in pixel space,
  :math:`U(x) = \tfrac{1}{2\sigma^2}\|A x - y\|^2 - \log p_G(x)` with the flow's exact density
  :math:`\log p_G(x) = \log\mathcal N(G^{-1}(x)) + \log|\det\nabla G^{-1}(x)|`, started at the
  same MAP image :math:`G(\hat z)`, the same warm-up adaptation and tree-depth cap.

Diagnostics: pixelwise rank-normalised split :math:`\hat R` and bulk ESS
(:func:`bayesinv.diagnostics.maps.convergence_maps`, equal to ArviZ per pixel); reported: the
fraction of pixels with :math:`\hat R < 1.01`, with bulk ESS > 400, and with both; the median
and 5% quantile of the ESS map; wall and CPU time (``time.process_time``: on a shared CPU the
fair clock) of the sampling (warm-up included, MAP excluded), and median-pixel bulk ESS per
second. The ratio ``ours/peer`` of ESS per second is printed.

Sizes are chosen to fit a shared 2-core CPU: the tree depth is capped (``MAX_TREE_DEPTH``), and
there are too few draws per chain in quick mode for ESS > 400 to be reachable (quick mode checks
the plumbing, not the criterion).

Usage::

    python benchmarks/bench_mcmc.py [--quick]

Writes ``benchmarks/results/mcmc.json`` (quick mode: ``mcmc.quick.json``).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results" / "mcmc.json"
TEST_SEED = 10_000
N_ANGLES = 8
SIGMA = 0.3
MAX_TREE_DEPTH = 5
PRIOR = "glow_phantom32"
FULL = {"num_chains": 4, "warmup": 150, "samples": 1000, "peer_chains": 2, "peer_warmup": 50,
        "peer_samples": 60, "map_steps": 10}
QUICK = {"num_chains": 2, "warmup": 10, "samples": 10, "peer_chains": 2, "peer_warmup": 5,
         "peer_samples": 5, "map_steps": 3}


def build_problem():
    """Sparse-view CT problem, its truth and one seeded measurement."""
    from bayesinv.data.images import ellipse_phantoms
    from bayesinv.data.pretrained import load_prior
    from bayesinv.operators import Radon
    from bayesinv.problem import GaussianNoise, InverseProblem

    prior = load_prior(PRIOR)
    for p in prior.parameters():
        p.requires_grad_(False)
    op = Radon((1, 32, 32), n_angles=N_ANGLES)
    problem = InverseProblem(op, prior, GaussianNoise(SIGMA))
    truth = ellipse_phantoms(1, 32, seed=TEST_SEED)
    y = problem.simulate(truth, seed=TEST_SEED)
    return problem, truth, y


def summarise(samples: torch.Tensor, seconds: float, cpu_seconds: float,
              truth: torch.Tensor) -> dict[str, Any]:
    """Convergence maps → fractions, ESS quantiles, ESS/s; plus posterior-mean PSNR."""
    from bayesinv.diagnostics.maps import convergence_maps
    from bayesinv.metrics import psnr

    maps = convergence_maps(samples, ("rhat", "ess_bulk"))
    rhat, ess = maps["rhat"].ravel(), maps["ess_bulk"].ravel()
    finite = np.isfinite(rhat) & np.isfinite(ess)
    med = float(np.median(ess[finite])) if finite.any() else float("nan")
    mean = samples.mean(dim=(0, 1))
    return {
        "chains": int(samples.shape[0]), "draws_per_chain": int(samples.shape[1]),
        "frac_rhat_lt_1.01": float(np.mean(rhat < 1.01)),
        "frac_ess_bulk_gt_400": float(np.mean(ess > 400)),
        "frac_both": float(np.mean((rhat < 1.01) & (ess > 400))),
        "rhat_median": float(np.nanmedian(rhat)), "rhat_max": float(np.nanmax(rhat)),
        "ess_bulk_median": med, "ess_bulk_q05": float(np.nanquantile(ess, 0.05)),
        "ess_bulk_min": float(np.nanmin(ess)),
        "wall_s": seconds, "cpu_s": cpu_seconds,
        "ess_bulk_median_per_s": med / seconds, "ess_bulk_median_per_cpu_s": med / cpu_seconds,
        "ess_bulk_q05_per_s": float(np.nanquantile(ess, 0.05)) / seconds,
        "posterior_mean_psnr": psnr(mean.clamp(0, 1), truth[0]),
        "posterior_std_mean": float(samples.std(dim=(0, 1)).mean()),
    }


def run_ours(problem, y, truth, cfg: dict[str, Any]) -> tuple[dict[str, Any], torch.Tensor]:
    """NUTS on latents with :func:`~bayesinv.infer.mcmc.sample_posterior` (MAP init)."""
    from bayesinv.infer.map import map_estimate
    from bayesinv.infer.mcmc import sample_posterior
    from bayesinv.metrics import psnr

    t0 = time.perf_counter()
    mp = map_estimate(problem, y, method="latent", steps=cfg["map_steps"], seed=0, progress=False)
    t_map = time.perf_counter() - t0
    z_map = mp.latent_samples[0, 0]
    c0, t0 = time.process_time(), time.perf_counter()
    post = sample_posterior(problem, y, kernel="nuts", num_chains=cfg["num_chains"],
                            num_samples=cfg["samples"], warmup_steps=cfg["warmup"], init=z_map,
                            max_tree_depth=MAX_TREE_DEPTH, seed=0, chain_method="sequential",
                            inverse_mass_matrix="laplace", progress=False)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    res = summarise(post.samples, wall, cpu, truth)
    stats = post.sample_stats
    res.update({
        "map_s": t_map, "map_psnr": psnr(mp.mean.clamp(0, 1), truth[0]),
        "mean_accept_prob": float(stats["accept_prob"].float().mean()),
        "divergences": int(stats["diverging"].sum()),
        "mean_leapfrog_steps": float(stats["num_steps"].float().mean()),
        "final_step_size": post.settings["final_step_size"],
        "inverse_mass_matrix": post.settings["inverse_mass_matrix"],
        "init_s_including_laplace": post.timings["init_s"],
    })
    return res, mp.mean


def run_peer(problem, y, truth, x_map: torch.Tensor, cfg: dict[str, Any]) -> dict[str, Any]:
    """Plain Pyro NUTS with ``potential_fn`` on the pixel-space posterior (same init as ours)."""
    import pyro
    from pyro.infer import MCMC, NUTS

    def potential(params: dict[str, torch.Tensor]) -> torch.Tensor:
        return problem.potential(params["x"][None], y, space="image").sum()

    chains, step_sizes = [], []
    c0, t0 = time.process_time(), time.perf_counter()
    for c in range(cfg["peer_chains"]):
        pyro.set_rng_seed(100 + c)
        kernel = NUTS(potential_fn=potential, step_size=1e-3, adapt_step_size=True,
                      adapt_mass_matrix=True, full_mass=False, max_tree_depth=MAX_TREE_DEPTH,
                      target_accept_prob=0.8)

        mcmc = MCMC(kernel, num_samples=cfg["peer_samples"], warmup_steps=cfg["peer_warmup"],
                    initial_params={"x": x_map.clone()}, disable_progbar=True)
        mcmc.run()
        chains.append(mcmc.get_samples()["x"].detach())
        step_sizes.append(float(kernel.step_size))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    samples = torch.stack(chains)  # (chain, draw, C, H, W)
    res = summarise(samples, wall, cpu, truth)
    res["final_step_size"] = step_sizes
    return res


def markdown(result: dict[str, Any]) -> str:
    """The result as a Markdown table (ours vs peer)."""
    lines = [f"# MCMC: {result['benchmark']}" + (" (quick mode)" if result["quick"] else ""), "",
             f"Operator {result['operator']}, σ = {result['sigma']}, prior `{result['prior']}`, "
             f"tree depth ≤ {result['max_tree_depth']}; criteria: R-hat < "
             f"{result['criteria']['rhat_lt']} and bulk ESS > {result['criteria']['ess_bulk_gt']} "
             "per pixel. Settings: `" + json.dumps(result["config"]) + "`.", "",
             "| sampler | chains × draws | R-hat < 1.01 (% px) | ESS > 400 (% px) | both (% px) | "
             "median ESS | 5% ESS | wall (s) | CPU (s) | median ESS / CPU s | mean PSNR (dB) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for label, key in (("ours: NUTS on latents", "ours_latent_nuts"),
                       ("peer: Pyro NUTS on pixels", "peer_pixel_nuts")):
        r = result[key]
        lines.append(f"| {label} | {r['chains']} × {r['draws_per_chain']} | "
                     f"{100 * r['frac_rhat_lt_1.01']:.1f} | {100 * r['frac_ess_bulk_gt_400']:.1f} | "
                     f"{100 * r['frac_both']:.1f} | {r['ess_bulk_median']:.0f} | {r['ess_bulk_q05']:.0f} | "
                     f"{r['wall_s']:.0f} | {r['cpu_s']:.0f} | {r['ess_bulk_median_per_cpu_s']:.3f} | "
                     f"{r['posterior_mean_psnr']:.2f} |")
    lines += ["", f"ESS per second, ours/peer: {result['ess_per_s_ratio_ours_over_peer']:.2f} wall, "
              f"{result['ess_per_cpu_s_ratio_ours_over_peer']:.2f} per CPU second.", ""]
    return "\n".join(lines)


def main(quick: bool = False, *, out: str | Path | None = "default") -> dict[str, Any]:
    """Run the benchmark (``quick``: 2 short chains each); returns the results dict.

    ``out``: the JSON file (``"default"``: ``results/mcmc.json``, or ``results/mcmc.quick.json``
    in quick mode so that a quick run never overwrites the full numbers; ``None``: not written).
    """
    cfg = dict(QUICK if quick else FULL)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    problem, truth, y = build_problem()
    ours, x_map = run_ours(problem, y, truth, cfg)
    print(f"  ours (NUTS on z): {ours['wall_s']:.0f} s, median bulk ESS {ours['ess_bulk_median']:.0f}, "
          f"R-hat<1.01 on {100 * ours['frac_rhat_lt_1.01']:.0f}% px", flush=True)
    peer = run_peer(problem, y, truth, x_map, cfg)
    ratio = ours["ess_bulk_median_per_s"] / peer["ess_bulk_median_per_s"] \
        if peer["ess_bulk_median_per_s"] > 0 else math.inf
    ratio_cpu = ours["ess_bulk_median_per_cpu_s"] / peer["ess_bulk_median_per_cpu_s"] \
        if peer["ess_bulk_median_per_cpu_s"] > 0 else math.inf
    result = {
        "benchmark": "NUTS on Glow latents vs Pyro NUTS in pixel space (sparse-view CT 32x32)",
        "quick": quick, "prior": PRIOR, "operator": f"Radon, {N_ANGLES} angles, 32 detectors",
        "sigma": SIGMA, "max_tree_depth": MAX_TREE_DEPTH, "config": cfg,
        "criteria": {"rhat_lt": 1.01, "ess_bulk_gt": 400},
        "ours_latent_nuts": ours, "peer_pixel_nuts": peer,
        "ess_per_s_ratio_ours_over_peer": ratio, "ess_per_cpu_s_ratio_ours_over_peer": ratio_cpu,
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "machine": platform.platform(), "wall_time_s": time.perf_counter() - t0,
    }
    if out == "default":
        out = RESULTS.with_suffix(".quick.json") if quick else RESULTS
    if out is not None:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")
        path.with_suffix(".md").write_text(markdown(result))
    for name, r in (("ours: NUTS on latents", ours), ("peer: Pyro NUTS on pixels", peer)):
        print(f"{name}: {r['chains']}x{r['draws_per_chain']} draws, {r['wall_s']:.0f} s wall "
              f"({r['cpu_s']:.0f} s cpu); R-hat<1.01: {100 * r['frac_rhat_lt_1.01']:.1f}% px, "
              f"ESS>400: {100 * r['frac_ess_bulk_gt_400']:.1f}% px, both {100 * r['frac_both']:.1f}%; "
              f"median ESS {r['ess_bulk_median']:.1f} -> {r['ess_bulk_median_per_s']:.3f} ESS/s; "
              f"posterior-mean PSNR {r['posterior_mean_psnr']:.2f} dB")
    print(f"ESS/s ratio ours/peer: {ratio:.1f} (per CPU second: {ratio_cpu:.1f})")
    return result


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    main(ap.parse_args().quick)
