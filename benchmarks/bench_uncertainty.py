r"""Benchmark: uncertainty quality of VI and MCMC posteriors (issue "Benchmarks", item 2).

For each task and method: pixel coverage of central credible intervals at 50/90/95 %,
Pearson correlation between the posterior std map and :math:`|\text{mean} - \text{truth}|`,
and simulation-based calibration (SBC, Talts et al. 2018) with its uniformity p-value.

Setting (reduced to fit a shared 2-core CPU)
--------------------------------------------
* Prior: the shipped Glow ``glow_phantom32`` (:math:`x = G(z)`, flat latent of 1024 dims).
* Tasks: ``ct`` — sparse-view CT, :class:`~bayesinv.operators.Radon` with 8 equispaced angles
  and Gaussian noise :math:`\sigma = 0.3` (as ``bench_mcmc.py``); ``deblur`` —
  :class:`~bayesinv.operators.Blur` (Gaussian kernel, std 1.5 px), :math:`\sigma = 0.05` (large
  enough that the posterior is not degenerate).
* Problems: ``K`` truths drawn **from the prior** (:math:`z \sim \mathcal N(0, I)`,
  :math:`x = G(z)`, seeded) and :math:`y = Ax + \varepsilon` (seeded). On such data the Bayesian
  model is exactly right, so a correct posterior is calibrated: coverage equals the nominal level
  and SBC ranks are uniform (in expectation over problems).
* MCMC: :func:`bayesinv.infer.mcmc.sample_posterior` — NUTS on the latent, started at the latent
  MAP, dense Gauss–Newton Laplace inverse mass matrix, tree depth capped, few chains and draws
  (see ``FULL``/``QUICK``).
* VI: :func:`bayesinv.infer.variational.fit_variational` on one ``y`` with the affine guide of
  ``bench_vi.py`` (:class:`~bayesinv.infer.variational.ConditionalAffineFlow`, preconditioned),
  warm-started at the latent MAP with ``c`` × the Laplace Cholesky factor, one fit per ``c`` in
  ``vi_shrinks`` and the best final ELBO kept (as ``bench_vi.py``); then ``n`` independent draws
  ``.posterior(y, n)``. The fit must be *converged*: the previous setting (300 steps at lr 3e-4,
  ``c`` in {0.3, 0.45, 0.6, 0.8, 1}) barely moved the guide from its start, and the grid over
  ``c`` stood in for training. Measured on the first two CT problems (scratch run, 4 particles):
  300 steps at 3e-4 from ``c = 0.6``: mean final ELBO −285, 90 % coverage 0.75, RMSE 0.0356;
  1 500 steps at 1e-3 from ``c = 0.6``: ELBO −238, coverage 0.89, RMSE 0.0338; from ``c = 1``:
  ELBO −259, coverage 0.92; 3 000 steps from ``c = 0.6``: ELBO −229, coverage 0.90 (converged).
  Deblurring, 1 500 steps at 1e-3: coverage 0.92 (``c = 0.6``) and 0.94 (``c = 1``) against 0.85
  after 300 steps at 3e-4. So the full run trains 1 500 steps at 1e-3 from ``c`` in {0.6, 1} and
  keeps the better ELBO; the choice per problem is in the JSON.

Metrics (pooled over the ``K`` problems of a task, :func:`assemble_metrics`)
---------------------------------------------------------------------------
* Coverage (:func:`bayesinv.diagnostics.calibration.coverage_curve`): fraction of pixels whose
  truth lies in :math:`[q_{(1-\alpha)/2}, q_{(1+\alpha)/2}]` of the draws, for
  :math:`\alpha \in \{0.5, 0.9, 0.95\}`.
* Error–std correlation: Pearson correlation of the pooled pixels' posterior std and
  :math:`|\bar x - x|` (and its per-problem mean, :func:`bayesinv.metrics.error_std_correlation`).
* SBC: rank :math:`r = \#\{s: \tilde x_s < x\}` of the truth among ``sbc_draws`` draws
  (:func:`~bayesinv.diagnostics.calibration.sbc_ranks`) at ``sbc_pixels`` random pixels per
  problem, pooled; Pearson :math:`\chi^2` uniformity test
  (:func:`~bayesinv.diagnostics.calibration.sbc_test`). MCMC draws are thinned (evenly spaced
  over the pooled chains) to ``sbc_draws`` so that they are roughly independent; the median bulk
  ESS per problem is recorded to judge that. **Caveat:** pixels of one image are dependent (one
  truth, one set of chains), so the ranks are not independent and the :math:`\chi^2` test, which
  assumes they are, is approximate: dependence inflates the spread of the bin counts, so the
  p-value tends to be too small even for a calibrated posterior (a small p is weaker evidence of
  miscalibration than it looks). Likewise the binomial coverage errors understate the spread.

Usage::

    python benchmarks/bench_uncertainty.py [--quick]

Writes ``benchmarks/results/uncertainty.json`` / ``.md`` (quick mode: ``uncertainty.quick.*``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
import warnings
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

_ROOT = Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

RESULTS_DIR = Path(__file__).resolve().parent / "results"
PRIOR = "glow_phantom32"
LEVELS = (0.5, 0.9, 0.95)
TASKS = {"ct": {"sigma": 0.3, "desc": "sparse-view CT, Radon 8 angles, 32 detectors, sigma 0.3"},
         "deblur": {"sigma": 0.05, "desc": "Gaussian blur std 1.5 px, sigma 0.05"}}
METHODS = ("mcmc", "vi")
PRIOR_SEED = 20_000

#: Settings per mode. ``k``: problems per task.
FULL = {"k": 6, "map_steps": 10, "num_chains": 2, "warmup": 50, "samples": 100, "max_tree_depth": 5,
        "vi_steps": 1500, "vi_lr": 1e-3, "particles": 4, "vi_shrinks": [0.6, 1.0], "vi_draws": 200,
        "sbc_draws": 39, "sbc_pixels": 128}
QUICK = {"k": 1, "map_steps": 3, "num_chains": 2, "warmup": 5, "samples": 20, "max_tree_depth": 4,
         "vi_steps": 30, "vi_lr": 3e-4, "particles": 2, "vi_shrinks": [0.3], "vi_draws": 60,
         "sbc_draws": 19, "sbc_pixels": 128}


# -- metrics ---------------------------------------------------------------------------------------
def assemble_metrics(draws: Sequence[Any], truths: Sequence[Any], *, levels: Sequence[float] = LEVELS,
                     sbc_draws: int = 39, sbc_pixels: int | None = 128, seed: int = 0) -> dict[str, Any]:
    r"""Coverage, error–std correlation and SBC of ``K`` posteriors, pooled over the problems.

    Parameters
    ----------
    draws
        ``K`` arrays/tensors of draws ``(S_k, *shape)`` (chains already pooled, in order).
    truths
        ``K`` truths of ``shape``.
    levels
        Nominal central-interval levels.
    sbc_draws
        Draws per problem used for the SBC ranks (evenly spaced indices, i.e. thinning); ranks
        lie in :math:`\{0, \dots, \text{sbc\_draws}\}`. Needs ``S_k >= sbc_draws``.
    sbc_pixels
        Random pixels per problem for SBC (``None``: all).
    seed
        Seeds the pixel subset.

    Returns
    -------
    dict
        ``coverage`` (level → empirical), ``coverage_stderr`` (binomial, independent pixels),
        ``std_error_corr`` (pooled pixels), ``std_error_corr_per_problem``, ``sbc`` (p-value,
        statistic, counts, ranks used), ``k``, ``n_pixels``.
    """
    from bayesinv.diagnostics.calibration import coverage_curve, sbc_ranks, sbc_test
    from bayesinv.metrics import error_std_correlation

    if not isinstance(draws, Sequence) or not isinstance(truths, Sequence):
        raise TypeError("draws: expected sequences of per-problem draws and truths")
    if len(draws) == 0:
        raise ValueError("draws: at least one problem is needed")
    if len(draws) != len(truths):
        raise ValueError(f"truths: expected {len(draws)} truths (one per problem), got {len(truths)}")
    if isinstance(sbc_draws, bool) or not isinstance(sbc_draws, int) or sbc_draws < 1:
        raise ValueError(f"sbc_draws: expected a positive integer, got {sbc_draws!r}")
    if sbc_pixels is not None and (isinstance(sbc_pixels, bool) or not isinstance(sbc_pixels, int)
                                   or sbc_pixels < 1):
        raise ValueError(f"sbc_pixels: expected a positive integer or None, got {sbc_pixels!r}")
    xs = [torch.as_tensor(np.asarray(d, dtype=np.float64) if not isinstance(d, Tensor) else d)
          .detach().double().cpu() for d in draws]
    ts = [torch.as_tensor(np.asarray(t, dtype=np.float64) if not isinstance(t, Tensor) else t)
          .detach().double().cpu() for t in truths]
    for i, (x, t) in enumerate(zip(xs, ts, strict=True)):
        if x.shape[1:] != t.shape:
            raise ValueError(f"truths: truth {i} has shape {tuple(t.shape)}, draws {tuple(x.shape)}")
        if x.shape[0] < max(2, sbc_draws):
            raise ValueError(f"sbc_draws: problem {i} has {x.shape[0]} draws, fewer than "
                             f"sbc_draws = {sbc_draws} (or 2)")
    # coverage: flatten every problem's pixels; draws per problem may differ, so per problem
    n_tot = sum(t.numel() for t in ts)
    inside = np.zeros(len(levels))
    for x, t in zip(xs, ts, strict=True):
        inside += coverage_curve(x.numpy(), t.numpy(), levels).empirical * t.numel()
    cov = inside / n_tot
    lv = np.asarray(levels, dtype=float)
    # error-std correlation, pooled and per problem
    means = [x.mean(0) for x in xs]
    stds = [x.std(0) for x in xs]
    err = torch.cat([(m - t).abs().flatten() for m, t in zip(means, ts, strict=True)])
    sd = torch.cat([s.flatten() for s in stds])
    pooled = 0.0 if float(err.std()) == 0 or float(sd.std()) == 0 else \
        float(torch.corrcoef(torch.stack([err, sd]))[0, 1])
    per = [error_std_correlation(m, s, t) for m, s, t in zip(means, stds, ts, strict=True)]
    # SBC on thinned draws at random pixels
    gen = np.random.default_rng(seed)
    ranks = []
    for x, t in zip(xs, ts, strict=True):
        idx = np.round(np.linspace(0, x.shape[0] - 1, sbc_draws)).astype(int)
        r = sbc_ranks(x[idx].flatten(1).numpy(), t.flatten().numpy())
        if sbc_pixels is not None and sbc_pixels < r.size:
            r = r[gen.choice(r.size, sbc_pixels, replace=False)]
        ranks.append(r)
    ranks_all = np.concatenate(ranks)
    sbc = sbc_test(ranks_all, sbc_draws)
    return {"coverage": {f"{a:g}": float(c) for a, c in zip(lv, cov, strict=True)},
            "coverage_stderr": {f"{a:g}": float(math.sqrt(a * (1 - a) / n_tot)) for a in lv},
            "std_error_corr": pooled, "std_error_corr_per_problem": per,
            "std_error_corr_mean": float(np.mean(per)), "mean_std": float(sd.mean()),
            "rmse": float(torch.cat([(m - t).flatten() for m, t in zip(means, ts, strict=True)]).pow(2).mean().sqrt()),
            "sbc": {"pvalue": sbc.pvalue, "statistic": sbc.statistic, "counts": sbc.counts.tolist(),
                    "num_draws": sbc_draws, "n_ranks": int(ranks_all.size),
                    "mean_rank_over_S": float(ranks_all.mean() / sbc_draws)},
            "k": len(xs), "n_pixels": int(n_tot)}


# -- problems --------------------------------------------------------------------------------------
def build_problem(task: str):
    """The :class:`~bayesinv.problem.InverseProblem` of ``task`` with the shipped Glow prior."""
    from bayesinv.data.pretrained import load_prior
    from bayesinv.operators import Blur, Radon
    from bayesinv.problem import GaussianNoise, InverseProblem

    if task not in TASKS:
        raise ValueError(f"task: unknown task {task!r}; expected one of {sorted(TASKS)}")
    prior = load_prior(PRIOR)
    for p in prior.parameters():
        p.requires_grad_(False)
    shape = (1, 32, 32)
    op = Radon(shape, n_angles=8) if task == "ct" else Blur(shape, "gaussian", width=1.5)
    return InverseProblem(op, prior, GaussianNoise(TASKS[task]["sigma"]))


def simulate_from_prior(problem, k: int, seed: int) -> tuple[Tensor, Tensor]:
    """``k`` truths :math:`x = G(z)`, :math:`z \\sim \\mathcal N(0, I)`, and their measurements."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        x = problem.prior.sample(k, generator=gen)
    return x, problem.simulate(x, seed=seed + 1)


def _latent_map(problem, y: Tensor, steps: int) -> Tensor:
    from bayesinv.infer.map import map_estimate

    post = map_estimate(problem, y, method="latent", optimizer="lbfgs", steps=steps, restarts=1,
                        seed=0, progress=False)
    return post.latent_samples.reshape(tuple(problem.prior.latent_shape))


def run_mcmc(problem, y: Tensor, z_map: Tensor, cfg: dict[str, Any], seed: int) -> tuple[Tensor, dict[str, Any]]:
    """NUTS draws ``(chains*draws, C, H, W)`` and sampler statistics."""
    from bayesinv.diagnostics.maps import convergence_maps
    from bayesinv.infer.mcmc import sample_posterior

    post = sample_posterior(problem, y, kernel="nuts", inverse_mass_matrix="laplace", init=z_map,
                            num_chains=cfg["num_chains"], num_samples=cfg["samples"],
                            warmup_steps=cfg["warmup"], max_tree_depth=cfg["max_tree_depth"],
                            seed=seed, chain_method="sequential", progress=False)
    s = post.samples.detach()
    ess = convergence_maps(s, ("ess_bulk",))["ess_bulk"]
    st = post.sample_stats
    return s.flatten(0, 1), {"median_ess_bulk": float(np.nanmedian(ess)),
                             "accept_prob": float(st["accept_prob"].float().mean()),
                             "divergences": int(st["diverging"].sum()),
                             "mean_leapfrog_steps": float(st["num_steps"].float().mean())}


def run_vi(problem, y: Tensor, z_map: Tensor, cfg: dict[str, Any], seed: int) -> tuple[Tensor, dict[str, Any]]:
    r"""Single-``y`` affine VI from the latent MAP; ``vi_draws`` independent draws.

    The guide starts at :math:`\mu_0 = \hat z`, :math:`L_0 = c\,\mathrm{chol}((J^\top J/\sigma^2
    + I)^{-1})`; one fit per ``c`` in ``cfg["vi_shrinks"]``, and the fit with the best final
    ELBO is kept (model selection by the objective, the truth is not used).
    """
    from bayesinv.infer.variational import fit_variational
    from benchmarks.bench_vi import _affine_guide, laplace_scale_tril

    base = laplace_scale_tril(problem, z_map)
    best, elbos = None, {}
    for c in cfg["vi_shrinks"]:
        guide = _affine_guide(problem, z_map, 0.05, scale_tril=c * base)
        with warnings.catch_warnings():  # frozen W: Pyro notes it is not registered in the param store
            warnings.filterwarnings("ignore", message=".*was not registered in the param store.*")
            vp = fit_variational(problem, y, guide=guide, mode="single", steps=cfg["vi_steps"],
                                 lr=cfg["vi_lr"], num_particles=cfg["particles"], vectorize_particles=True,
                                 lr_decay=0.1, grad_clip=10.0, val_every=max(1, cfg["vi_steps"] // 10),
                                 seed=seed, progress=False)
        elbos[str(c)] = float(vp.settings["final_elbo"])
        if best is None or elbos[str(c)] > elbos[str(best[0])]:
            best = (c, vp)
    s = best[1].posterior(y, n=cfg["vi_draws"], seed=seed).samples[0].detach()
    return s, {"final_elbo": elbos[str(best[0])], "shrink": best[0], "final_elbo_by_shrink": elbos}


# -- driver ----------------------------------------------------------------------------------------
def _check_selection(tasks: Sequence[str], methods: Sequence[str], k: int) -> None:
    if isinstance(tasks, str) or not tasks or any(t not in TASKS for t in tasks):
        raise ValueError(f"tasks: expected a non-empty list from {sorted(TASKS)}, got {tasks!r}")
    if isinstance(methods, str) or not methods or any(m not in METHODS for m in methods):
        raise ValueError(f"methods: expected a non-empty list from {list(METHODS)}, got {methods!r}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k: expected a positive number of problems per task, got {k!r}")


def run(tasks: Sequence[str] = tuple(TASKS), methods: Sequence[str] = METHODS, k: int | None = None,
        cfg: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run every (task, method) on ``k`` prior-simulated problems; returns the results per pair."""
    cfg = dict(FULL if cfg is None else cfg)
    if k is not None:
        cfg["k"] = k
    _check_selection(tasks, methods, cfg["k"])
    out: dict[str, Any] = {}
    for ti, task in enumerate(tasks):
        problem = build_problem(task)
        x_true, y_all = simulate_from_prior(problem, cfg["k"], PRIOR_SEED + 100 * ti)
        per_method: dict[str, dict[str, Any]] = {m: {"draws": [], "stats": [], "wall_s": 0.0, "cpu_s": 0.0}
                                                  for m in methods}
        map_wall = map_cpu = 0.0
        for i in range(cfg["k"]):
            y = y_all[i:i + 1]
            c0, t0 = time.process_time(), time.perf_counter()
            z_map = _latent_map(problem, y, cfg["map_steps"])
            map_wall += time.perf_counter() - t0
            map_cpu += time.process_time() - c0
            for m in methods:
                c0, t0 = time.process_time(), time.perf_counter()
                fn = run_mcmc if m == "mcmc" else run_vi
                s, st = fn(problem, y, z_map, cfg, seed=i)
                r = per_method[m]
                r["wall_s"] += time.perf_counter() - t0
                r["cpu_s"] += time.process_time() - c0
                r["draws"].append(s)
                r["stats"].append(st)
                print(f"  {task} problem {i} {m}: {time.perf_counter() - t0:.0f} s {st}", flush=True)
        for m in methods:
            r = per_method[m]
            met = assemble_metrics(r["draws"], list(x_true), sbc_draws=cfg["sbc_draws"],
                                   sbc_pixels=cfg["sbc_pixels"], seed=ti)
            out[f"{task}/{m}"] = {"task": task, "method": m, "task_desc": TASKS[task]["desc"], **met,
                                  "draws_per_problem": int(r["draws"][0].shape[0]),
                                  "per_problem_stats": r["stats"],
                                  "wall_s": r["wall_s"], "cpu_s": r["cpu_s"],
                                  "map_wall_s": map_wall, "map_cpu_s": map_cpu}
    return out


def markdown(res: dict[str, Any]) -> str:
    """The results as a Markdown table."""
    lines = [f"# Uncertainty quality (VI, MCMC){' — quick mode' if res['quick'] else ''}", "",
             f"Prior `{PRIOR}`, truths drawn from the prior (model exact, so calibrated posteriors give "
             "nominal coverage and uniform SBC ranks). Pooled over K problems per task. "
             f"Settings: `{json.dumps(res['settings'])}`. torch {res['torch']}, {res['threads']} thread(s), "
             f"{res['date']}.", "",
             "| task | method | coverage 50% | 90% | 95% | error–std corr (pooled / mean) | SBC p | K | "
             "time wall / CPU (s) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in res["results"].values():
        c = r["coverage"]
        lines.append(f"| {r['task']} | {r['method']} | {c['0.5']:.3f} | {c['0.9']:.3f} | {c['0.95']:.3f} | "
                     f"{r['std_error_corr']:.3f} / {r['std_error_corr_mean']:.3f} | {r['sbc']['pvalue']:.3g} | "
                     f"{r['k']} | {r['wall_s']:.0f} / {r['cpu_s']:.0f} |")
    se = next(iter(res["results"].values()))["coverage_stderr"]
    lines += ["", "Tasks: " + "; ".join(f"`{t}`: {d['desc']}" for t, d in TASKS.items()) + ".",
              f"Binomial coverage standard errors if pixels were independent (they are not): "
              f"{', '.join(f'{a}: {v:.3f}' for a, v in se.items())}. SBC: ranks of the truth among "
              f"{res['settings']['sbc_draws']} thinned draws at {res['settings']['sbc_pixels']} random "
              "pixels per problem, χ² uniformity test; pixels of one image are dependent, so the p-value "
              "is approximate. Times exclude the shared latent MAP (listed in the JSON); the Laplace "
              "factor is included. Median bulk ESS per MCMC problem: "
              + "; ".join(f"{r['task']}: {[round(s['median_ess_bulk']) for s in r['per_problem_stats']]}"
                          for r in res["results"].values() if r["method"] == "mcmc") + ".",
              "", f"Total wall time {res['wall_s']:.0f} s.", ""]
    return "\n".join(lines)


def main(quick: bool = False, out_dir: str | Path | None = RESULTS_DIR) -> dict[str, Any]:
    """Run the benchmark; write ``uncertainty[.quick].{json,md}`` into ``out_dir`` (``None``: no files)."""
    torch.manual_seed(0)
    cfg = dict(QUICK if quick else FULL)
    t0, c0 = time.perf_counter(), time.process_time()
    results = run(cfg=cfg)
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    res = {"benchmark": "uncertainty quality of VI and MCMC on prior-simulated problems", "quick": quick,
           "prior": PRIOR, "tasks": TASKS, "settings": cfg, "results": results,
           "wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0,
           "torch": torch.__version__, "threads": torch.get_num_threads(),
           "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
           "machine": platform.platform(), "cpu_count": os.cpu_count(),
           "load_average_end": list(load) if load else None}
    if out_dir is not None:
        d = Path(out_dir)
        d.mkdir(parents=True, exist_ok=True)
        stem = "uncertainty.quick" if quick else "uncertainty"
        (d / f"{stem}.json").write_text(json.dumps(res, indent=1, default=float) + "\n")
        (d / f"{stem}.md").write_text(markdown(res))
    print(markdown(res))
    return res


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    main(ap.parse_args().quick)
