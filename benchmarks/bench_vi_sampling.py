"""Benchmark: drawing 100 posterior samples of a 64x64 image from a ConditionalGlow guide (CPU).

Setting: denoising (``A = I``) of a 1x64x64 image under a stationary Gaussian prior
(``latent_shape = (1, 64, 64)``), ``y`` simulated from the prior. The guide is the default
:class:`~bayesinv.flows.conditional.ConditionalGlow` of :func:`bayesinv.infer.variational.fit_variational`
(:func:`~bayesinv.infer.variational.default_guide`: 2 levels, 4 steps per level, 32 hidden
channels, image context; the full run also times ConditionalGlow's own default, 128 hidden
channels) — **untrained**: sampling
cost does not depend on the weights, so timing an untrained guide is fair. Timed after a
warm-up call, median of ``repeats`` runs, wall time and process CPU time (all threads; on a
shared machine the CPU time is the better guide to the unloaded wall time x threads):

* ``flow_sample_s``: ``ConditionalGlow.sample(y, 100)`` — the conditional flow's generative pass;
* ``posterior_s``: ``VariationalPosterior.posterior(y, n=100)`` — the same through the Pyro
  ``ConditionalTransformedDistribution``, plus ``x = G(z)`` and the ``Posterior`` object.

Target: ``posterior_s < 1 s`` on CPU.

Run:  .venv/bin/python benchmarks/bench_vi_sampling.py [--quick]
      (writes benchmarks/results/vi_sampling.json)
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from bayesinv.flows.conditional import ConditionalGlow
from bayesinv.infer.variational import VariationalGuide, VariationalPosterior, default_guide
from bayesinv.operators.denoise import Identity
from bayesinv.priors.gaussian import GaussianPrior
from bayesinv.problem import InverseProblem

SHAPE = (1, 64, 64)
N_SAMPLES = 100
TARGET_S = 1.0
THREADS = int(os.environ.get("BENCH_THREADS", "2"))


def _median_time(fn, repeats: int) -> tuple[float, float]:
    """Median wall and process-CPU seconds of ``fn()`` after one warm-up call."""
    fn()  # warm-up
    wall, cpu = [], []
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return statistics.median(wall), statistics.median(cpu)


def _time_guide(problem: InverseProblem, y: torch.Tensor, flow: ConditionalGlow, repeats: int) -> dict:
    flow.eval()
    guide = VariationalGuide(problem, flow)
    post = VariationalPosterior(problem, guide, history={"loss": [], "monitor_steps": [], "monitor_loss": [],
                                                         "monitor": "none"},
                                settings={"mode": "single", "trained": False}, seed=0, timings={}, y=y[0])

    def flow_sample() -> None:
        flow.sample(y, N_SAMPLES)

    def posterior() -> None:
        res = post.posterior(n=N_SAMPLES, seed=0)
        assert res.samples.shape == (1, N_SAMPLES, *SHAPE)

    (fw, fc), (pw, pc) = _median_time(flow_sample, repeats), _median_time(posterior, repeats)
    return {"guide_config": flow.config, "n_parameters": sum(p.numel() for p in flow.parameters()),
            "flow_sample_s": fw, "flow_sample_cpu_s": fc, "posterior_s": pw, "posterior_cpu_s": pc,
            "meets_target": pw < TARGET_S}


def main(quick: bool = False) -> dict:
    """Time 100 draws from an (untrained) ConditionalGlow guide; write results/vi_sampling.json
    (``quick``: vi_sampling.quick.json)."""
    torch.set_num_threads(THREADS)
    repeats = 2 if quick else 5
    prior = GaussianPrior.stationary(SHAPE, std=0.2, length_scale=3.0)
    problem = InverseProblem(Identity(SHAPE), prior, noise=0.05)
    y = problem.simulate(prior.sample(1, generator=torch.Generator().manual_seed(0)), seed=1)
    guides = {"default_guide": default_guide(problem, seed=0)}
    if not quick:
        guides["conditional_glow_hidden128"] = ConditionalGlow(SHAPE, problem.measurement_shape, levels=2, seed=0)
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    timed = {name: _time_guide(problem, y, flow, repeats) for name, flow in guides.items()}
    main_row = timed["default_guide"]
    results = {
        "image_shape": list(SHAPE), "n_samples": N_SAMPLES, "untrained": True, "repeats": repeats,
        "target_s": TARGET_S, "posterior_s": main_row["posterior_s"], "meets_target": main_row["meets_target"],
        "guides": timed, "threads": torch.get_num_threads(), "quick": quick,
        "load_average_before": list(load) if load else None,
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpu_count": os.cpu_count(), "torch": torch.__version__},
    }
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(parents=True, exist_ok=True)
    path = out / ("vi_sampling.quick.json" if quick else "vi_sampling.json")  # quick keeps the full file
    path.write_text(json.dumps(results, indent=2) + "\n")
    for name, row in timed.items():
        print(f"{name}: 100 draws of a 64x64 image: flow {row['flow_sample_s']:.3f} s "
              f"(cpu {row['flow_sample_cpu_s']:.3f}), posterior() {row['posterior_s']:.3f} s "
              f"(cpu {row['posterior_cpu_s']:.3f}); target < {TARGET_S} s")
    print(f"load average before: {load}; wrote {path}")
    return results


if __name__ == "__main__":
    main(quick="--quick" in sys.argv[1:])
