r"""Benchmark: time and peak memory vs image size for MAP, VI sampling and MCMC steps.

Issue "Benchmarks", item 4 ("Scaling"). One problem at every size: **2× super-resolution** of
scikit-image's ``camera`` (native 512×512, resized to ``n×n`` by
:func:`bayesinv.data.images.load_image`), :class:`~bayesinv.operators.blur.SuperResolution`
(factor 2, Gaussian anti-aliasing of width 1), Gaussian noise :math:`\sigma = 0.01`, and the
shipped **patchNR** prior ``patchnr_natural`` (:func:`bayesinv.data.pretrained.load_flow_weights`;
6×6 patches, 5 blocks, subnets 2×256) as a :class:`~bayesinv.priors.patchnr.PatchNRPrior` with
the reference super-resolution weight :math:`\lambda = \lambda_{\rm ref}/(2\sigma^2)`
(:func:`~bayesinv.priors.patchnr.reference_settings`, :math:`\lambda_{\rm ref} = 0.15`). The
number of random patches per evaluation (MAP) grows with the image, :math:`N_p = \rho N` with
``PATCHES_PER_PIXEL`` :math:`\rho = 1/4` (the reference CT setting, 40 000 patches on 362², is
0.31 per pixel), so the Monte-Carlo error of :math:`R(x)` per pixel stays the same across sizes;
with a fixed :math:`N_p` the prior's cost would not grow at all.

Methods, :math:`N = n^2` pixels:

* ``map`` — :func:`bayesinv.infer.map.map_estimate` (``method="image"``, Adam, reference
  learning rate 0.005, ``tol = 0`` so no early stop) from bicubic; **time per iteration** = median
  of the intervals between consecutive ``callback`` calls (one Adam step = one potential and
  gradient evaluation), the first iteration excluded.
* ``vi`` — :meth:`bayesinv.infer.variational.VariationalPosterior.posterior` with ``n = 100``
  from the default guide (:func:`~bayesinv.infer.variational.default_guide`: a
  :class:`~bayesinv.flows.conditional.ConditionalGlow`, 2 levels × 4 steps, 32 hidden channels,
  image context ``y``): **time per 100 draws** (median of ``repeats`` calls after a warm-up
  draw). The guide is **untrained**: a draw is one generative pass whose cost does not depend on
  the weights, so training would not change the timing. The dense
  :class:`~bayesinv.infer.variational.ConditionalAffineFlow` is not used: its Cholesky factor
  has :math:`N^2` entries (275 GB of float32 at 512²), it is meant for small problems; the
  convolutional ConditionalGlow accepts any size divisible by 4.
* ``mcmc`` — :func:`bayesinv.infer.mcmc.sample_posterior` with ``kernel="mala"``
  (:class:`~bayesinv.infer.kernels.MALA`, one chain, ``init="pinv"`` = bicubic, default step
  ``0.5/L`` adapted by dual averaging during the warm-up): **time per MALA step** = median of
  the intervals between consecutive ``hook_fn`` calls after ``warmup`` steps (one step = one
  potential and gradient evaluation at the proposal plus the Metropolis–Hastings test). Here
  the prior uses **all** patches (stride 1, ``n_patches=None``, :math:`\approx N` patches):
  the Metropolis–Hastings test needs a deterministic potential. With random patches the
  estimate of :math:`\lambda R(x)` at the same ``x`` varies by ~10³ nats between evaluations
  (measured at 64², :math:`N_p = 1024`), so every proposal is rejected (mean acceptance
  ~1e-85, the step adapted down to 1e-13); with all patches the acceptance is ~0.9 after a
  20-step warm-up. MALA steps are therefore ~4× the cost of a MAP iteration at the same size.

Each (method, size) runs in its own fresh single-threaded subprocess (``OMP_NUM_THREADS=1``,
``torch.set_num_threads(1)``), as ``benchmarks/bench_wpp_memory.py`` does: after a warm-up
(the same call on a 16×16 problem, so lazy imports and one-time initialisation — torch.optim's
first step costs ~1.4 s and ~90 MB — are not counted) the freed heap is handed
back (``gc.collect``, ``malloc_trim``), the resident set is read (``VmRSS``), the kernel's
peak-RSS counter is reset (``/proc/self/clear_refs`` ← 5) and the measured call runs; **peak
extra memory** = ``VmHWM − VmRSS`` before the call (fallback when the counter cannot be reset:
``ru_maxrss`` minus the RSS before, an upper bound).

**Allocator caveat**: the peak is resident memory, so it includes what glibc's allocator keeps.
Buffers below its (dynamically raised, at most 32 MB) ``mmap`` threshold come from the heap and
can stay resident; larger ones are ``mmap``-ed and given back at once. Measured with
``MALLOC_MMAP_THRESHOLD_=1048576`` (a fixed threshold), MAP at 256² peaks at 425 MB instead of
844 MB (CPU time 1.6 s instead of 0.9 s per iteration, page faults), so the memory exponents
fitted from mid sizes to 512² (where every activation is over 32 MB) come out below 1; the
tensors themselves grow like :math:`N`.

**Clocks**: wall time (``time.perf_counter``) and process CPU time (``time.process_time``);
single-threaded, the two agree on an idle machine, and on a shared one (other jobs competing for
the cores) the CPU time is the fairer clock. The load average before each measurement is stored.

**Growth rate**: for each method the least-squares slope :math:`a` of :math:`\log t` (of the CPU time, and of
:math:`\log m`) against :math:`\log N` over the sizes, :math:`t \propto N^a`
(:func:`fit_exponent`). Linear cost in the pixels is :math:`a = 1`.

Sizes: 64, 128, 256, 512 (``quick``: 64 and 128 with fewer steps, well under a minute).

Usage::

    python benchmarks/bench_scaling.py [--quick]

Writes ``benchmarks/results/scaling.json`` and ``scaling.md`` (quick mode: ``scaling.quick.json``
/ ``scaling.quick.md``, so a quick run never overwrites the full numbers).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parents[1]

METHODS = ("map", "vi", "mcmc")
FULL_SIZES = (64, 128, 256, 512)
QUICK_SIZES = (64, 128)
#: Sizes must be divisible by this: 2× super-resolution and the guide's 2 Glow levels (2²).
SIZE_MULTIPLE = 4
MIN_SIZE = 16
IMAGE = "camera"
PRIOR = "patchnr_natural"
SIGMA = 0.01
FACTOR = 2
PATCHES_PER_PIXEL = 0.25
#: Adam learning rate of the MAP (the reference deblurring value; the super-resolution one, 0.03,
#: overshoots in the first steps from bicubic). The cost per step does not depend on it.
MAP_LR = 0.005
N_DRAWS = 100
#: Steps per (method, size): MAP iterations, VI repeats (of 100 draws), MALA warm-up/steps.
FULL = {"map_steps": 8, "vi_repeats": 3, "mcmc_warmup": 2, "mcmc_steps": 4, "n_draws": N_DRAWS}
QUICK = {"map_steps": 3, "vi_repeats": 1, "mcmc_warmup": 1, "mcmc_steps": 2, "n_draws": N_DRAWS}
UNITS = {"map": "s / iteration", "vi": f"s / {N_DRAWS} draws", "mcmc": "s / MALA step"}
LABELS = {"map": "MAP (patchNR, Adam)", "vi": f"VI sampling ({N_DRAWS} draws, ConditionalGlow)",
          "mcmc": "MCMC (MALA, patchNR)"}


# ------------------------------------------------------------------------------ validation
def check_sizes(sizes: object) -> tuple[int, ...]:
    """Validate image sides: positive ints ≥ ``MIN_SIZE``, divisible by ``SIZE_MULTIPLE``, distinct."""
    if isinstance(sizes, (int, np.integer)) and not isinstance(sizes, bool):
        sizes = (sizes,)
    try:
        vals = tuple(sizes)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"sizes: expected a sequence of ints, got {type(sizes).__name__}") from None
    if not vals:
        raise ValueError("sizes: expected at least one image size")
    out = []
    for s in vals:
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)):
            raise TypeError(f"sizes: expected ints, got {s!r}")
        s = int(s)
        if s < MIN_SIZE or s % SIZE_MULTIPLE:
            raise ValueError(f"sizes: each size must be a multiple of {SIZE_MULTIPLE} (2x "
                             f"super-resolution and 2 Glow levels) and >= {MIN_SIZE}, got {s}")
        out.append(s)
    if len(set(out)) != len(out):
        raise ValueError(f"sizes: expected distinct sizes, got {vals}")
    return tuple(out)


def check_method(method: object) -> str:
    """Validate a method name (one of :data:`METHODS`)."""
    if not isinstance(method, str) or method not in METHODS:
        raise ValueError(f"method: expected one of {METHODS}, got {method!r}")
    return method


def _check_count(value: object, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}: expected an int, got {value!r}")
    if int(value) < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value}")
    return int(value)


# ------------------------------------------------------------------------------ growth rate
def fit_exponent(n_pixels: Sequence[float], values: Sequence[float]) -> float:
    r"""Least-squares slope :math:`a` of :math:`\log v = a \log N + b` (so :math:`v \propto N^a`).

    Parameters
    ----------
    n_pixels
        Problem sizes :math:`N` (pixels), positive, at least two distinct.
    values
        Measured times or memories, positive and finite, one per size.
    """
    n = np.asarray(n_pixels, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    if n.ndim != 1 or n.size < 2:
        raise ValueError(f"n_pixels: expected a 1-D sequence of at least 2 sizes, got shape {n.shape}")
    if v.shape != n.shape:
        raise ValueError(f"values: expected {n.size} values (one per size), got shape {v.shape}")
    if not np.all(np.isfinite(n)) or np.any(n <= 0) or np.unique(n).size < 2:
        raise ValueError("n_pixels: expected positive finite sizes, at least two distinct")
    if not np.all(np.isfinite(v)) or np.any(v <= 0):
        raise ValueError(f"values: expected positive finite values, got {v.tolist()}")
    slope, _ = np.polyfit(np.log(n), np.log(v), 1)
    return float(slope)


# ------------------------------------------------------------------------------ peak memory
def _status(field: str) -> int | None:
    """A ``/proc/self/status`` field in bytes (``None`` off Linux)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class PeakMemory:
    """Extra resident memory at the peak of a code block (``VmHWM − VmRSS`` before it).

    Use as ``with PeakMemory() as pm: ...``; afterwards ``pm.extra_bytes`` (``None`` when
    neither the kernel counter nor ``ru_maxrss`` can tell) and ``pm.source``.
    """

    def __enter__(self) -> PeakMemory:
        gc.collect()
        try:  # hand freed heap back, so its reuse cannot hide the peak
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass
        self.base = _status("VmRSS")
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset VmHWM to the current RSS
            self.hwm_ok = self.base is not None
        except OSError:
            self.hwm_ok = False
        self.maxrss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return self

    def __exit__(self, *exc: object) -> None:
        self.extra_bytes: int | None = None
        self.source = "none"
        hwm = _status("VmHWM")
        if self.hwm_ok and hwm is not None:
            self.extra_bytes, self.source = max(hwm - self.base, 0), "VmHWM"
            return
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        if self.base is not None and maxrss > self.maxrss0:
            self.extra_bytes, self.source = max(maxrss - self.base, 0), "ru_maxrss"


# ------------------------------------------------------------------------------ the problem
def build_problem(size: int, all_patches: bool = False) -> tuple[Any, torch.Tensor, torch.Tensor]:
    """2× SR of ``camera`` at ``size × size`` with the shipped patchNR prior: ``(problem, y, x)``.

    The prior uses :func:`n_patches` random patches per evaluation, or every patch (stride 1,
    a deterministic potential) with ``all_patches``.
    """
    from bayesinv.data.images import load_image
    from bayesinv.data.pretrained import load_flow_weights
    from bayesinv.operators.blur import SuperResolution
    from bayesinv.priors.patchnr import PatchNRPrior, reference_settings
    from bayesinv.problem import InverseProblem

    (size,) = check_sizes((size,))
    x = load_image(IMAGE, size=size)
    shape = tuple(x.shape)
    ref = reference_settings("superresolution", sigma=SIGMA)
    prior = PatchNRPrior(load_flow_weights(PRIOR), shape, weight=ref["weight"],
                         n_patches=None if all_patches else n_patches(size), pad=ref["pad"])
    problem = InverseProblem(SuperResolution(shape, FACTOR), prior, noise=SIGMA)
    y = problem.simulate(x[None], seed=0)[0]
    return problem, y, x


def n_patches(size: int) -> int:
    """Random patches per prior evaluation, :math:`\\rho N`."""
    return int(round(PATCHES_PER_PIXEL * size * size))


def _clock() -> tuple[float, float]:
    """``(wall, process CPU)`` seconds now (CPU: all threads of this process; here one)."""
    return time.perf_counter(), time.process_time()


def _median_interval(stamps: list[tuple[float, float]], skip: int) -> tuple[float, float]:
    """Median wall and CPU differences of consecutive ``_clock`` stamps from index ``skip`` on."""
    a = np.asarray(stamps[skip:], dtype=np.float64).reshape(-1, 2)
    d = np.diff(a, axis=0)
    if d.shape[0] == 0:
        raise ValueError("steps: too few steps to time an interval (need at least 3)")
    return float(np.median(d[:, 0])), float(np.median(d[:, 1]))


def _run_map(problem: Any, y: torch.Tensor, steps: int) -> dict[str, Any]:
    from bayesinv.infer.map import map_estimate

    steps = _check_count(steps, "steps", minimum=3)
    stamps = [_clock()]
    post = map_estimate(problem, y, method="image", optimizer="adam", steps=steps, lr=MAP_LR,
                        tol=0.0, seed=0, progress=False,
                        callback=lambda i, loss, x: stamps.append(_clock()))
    total = time.perf_counter() - stamps[0][0]
    hist = post.settings["loss_history"]
    wall, cpu = _median_interval(stamps, 1)
    return {"time_s": wall, "cpu_s": cpu, "steps": len(stamps) - 1, "total_s": total,
            "objective_first": float(hist[0]), "objective_last": float(hist[-1])}


def _run_vi(problem: Any, y: torch.Tensor, repeats: int, n_draws: int) -> dict[str, Any]:
    from bayesinv.infer.variational import VariationalGuide, VariationalPosterior, default_guide

    repeats = _check_count(repeats, "repeats")
    n_draws = _check_count(n_draws, "n_draws")
    flow = default_guide(problem, seed=0).eval()
    guide = VariationalGuide(problem, flow)
    post = VariationalPosterior(problem, guide, history={"loss": []}, settings={"trained": False},
                                seed=0, timings={}, y=y)
    times, cpus = [], []
    for r in range(repeats):
        t0, c0 = _clock()
        res = post.posterior(n=n_draws, seed=r)
        t1, c1 = _clock()
        times.append(t1 - t0)
        cpus.append(c1 - c0)
        if tuple(res.samples.shape) != (1, n_draws, *problem.image_shape):
            raise RuntimeError(f"vi: unexpected sample shape {tuple(res.samples.shape)}")
        if not bool(torch.isfinite(res.samples).all()):
            raise RuntimeError("vi: non-finite draws")
        del res
    return {"time_s": float(statistics.median(times)), "cpu_s": float(statistics.median(cpus)),
            "repeats": repeats, "n_draws": n_draws, "all_s": times, "all_cpu_s": cpus,
            "guide": flow.config,
            "guide_parameters": sum(p.numel() for p in flow.parameters())}


def _run_mcmc(problem: Any, y: torch.Tensor, warmup: int, steps: int) -> dict[str, Any]:
    from bayesinv.infer.mcmc import sample_posterior

    warmup = _check_count(warmup, "warmup", minimum=1)
    steps = _check_count(steps, "steps", minimum=2)
    stamps: list[tuple[float, float]] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # low acceptance of a short chain
        post = sample_posterior(problem, y, kernel="mala", num_chains=1, num_samples=steps,
                                warmup_steps=warmup, init="pinv", seed=0, progress=False,
                                hook_fn=lambda k, p, stage, i: stamps.append(_clock()))
    acc = post.sample_stats["accept_prob"].double().mean().item()
    # stamps[warmup - 1] ends the last warm-up step: the following intervals are sampling steps
    wall, cpu = _median_interval(stamps, warmup - 1)
    return {"time_s": wall, "cpu_s": cpu, "warmup": warmup, "steps": steps,
            "total_s": post.timings["total_s"], "mean_accept_prob": acc,
            "final_step_size": post.settings["final_step_size"][0]}


def measure(method: str, size: int, *, map_steps: int = FULL["map_steps"],
            vi_repeats: int = FULL["vi_repeats"], n_draws: int = N_DRAWS,
            mcmc_warmup: int = FULL["mcmc_warmup"], mcmc_steps: int = FULL["mcmc_steps"]) -> dict[str, Any]:
    """Time and peak extra memory of one (method, size) **in this process**.

    :func:`measure_subprocess` runs this in a fresh single-threaded process (what the benchmark
    reports); in-process, memory already held by the process can hide part of the peak.

    Returns
    -------
    dict
        ``method``, ``size``, ``n_pixels``, ``time_s`` (per iteration / per ``n_draws`` draws /
        per MALA step, see :data:`UNITS`), ``peak_extra_bytes`` and ``memory_source``, plus
        method-specific details.
    """
    method = check_method(method)
    (size,) = check_sizes((size,))
    map_steps = _check_count(map_steps, "map_steps", minimum=3)  # >= 2 timed intervals
    vi_repeats = _check_count(vi_repeats, "vi_repeats")
    n_draws = _check_count(n_draws, "n_draws")
    mcmc_warmup = _check_count(mcmc_warmup, "mcmc_warmup")
    mcmc_steps = _check_count(mcmc_steps, "mcmc_steps", minimum=2)
    steps = {"map": lambda p, y: _run_map(p, y, map_steps),
             "vi": lambda p, y: _run_vi(p, y, vi_repeats, n_draws),
             "mcmc": lambda p, y: _run_mcmc(p, y, mcmc_warmup, mcmc_steps)}
    warm = {"map": lambda p, y: _run_map(p, y, 3), "vi": lambda p, y: _run_vi(p, y, 1, 2),
            "mcmc": lambda p, y: _run_mcmc(p, y, 1, 2)}
    # warm-up: the same code path on a tiny problem (lazy imports and one-time initialisation,
    # e.g. of torch.optim, must not count), then the measured call at full size
    exact = method == "mcmc"  # MALA needs a deterministic potential: all patches
    warm[method](*build_problem(MIN_SIZE, exact)[:2])
    torch.manual_seed(0)
    problem, y, _ = build_problem(size, exact)

    def run() -> dict[str, Any]:
        return steps[method](problem, y)

    load = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    with PeakMemory() as pm:
        rec = run()
    t, c = rec.pop("time_s"), rec.pop("cpu_s")
    if not (math.isfinite(t) and t > 0 and math.isfinite(c) and c > 0):
        raise RuntimeError(f"{method} at {size}: invalid time {t} (CPU {c})")
    return {"method": method, "size": size, "n_pixels": size * size, "time_s": t, "cpu_s": c,
            "unit": UNITS[method], "peak_extra_bytes": pm.extra_bytes, "load_average": load,
            "memory_source": pm.source, "rss_before_bytes": pm.base,
            "n_patches": None if method == "vi" else problem.prior.n_patches, **rec}


def measure_subprocess(method: str, size: int, timeout: float = 3600, **kwargs: int) -> dict[str, Any]:
    """:func:`measure` in a fresh single-threaded subprocess; returns its record."""
    method = check_method(method)
    (size,) = check_sizes((size,))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", method, str(size),
           json.dumps(kwargs)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"bench_scaling: {method} at {size} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------ the benchmark
def _config(quick: bool) -> dict[str, int]:
    return dict(QUICK if quick else FULL)


def run(sizes: Sequence[int] = FULL_SIZES, methods: Sequence[str] = METHODS, *,
        cfg: dict[str, int] | None = None, subprocesses: bool = True,
        verbose: bool = True) -> dict[str, Any]:
    """Measure every (method, size) and fit the growth exponents; returns records and fits."""
    sizes = check_sizes(sizes)
    if isinstance(methods, str):
        methods = (methods,)
    methods = tuple(check_method(m) for m in methods)
    if not methods:
        raise ValueError("methods: expected at least one method")
    cfg = dict(FULL if cfg is None else cfg)
    kw = {"map_steps": cfg["map_steps"], "vi_repeats": cfg["vi_repeats"], "n_draws": cfg["n_draws"],
          "mcmc_warmup": cfg["mcmc_warmup"], "mcmc_steps": cfg["mcmc_steps"]}
    records = []
    for m in methods:
        for s in sizes:
            t0 = time.perf_counter()
            rec = measure_subprocess(m, s, **kw) if subprocesses else measure(m, s, **kw)
            rec["wall_s"] = time.perf_counter() - t0
            records.append(rec)
            if verbose:
                mb = rec["peak_extra_bytes"]
                print(f"{m:5s} {s:4d}²: {rec['time_s']:.4g} {rec['unit']} (CPU "
                      f"{rec['cpu_s']:.4g}), peak extra "
                      f"{'n/a' if mb is None else f'{mb / 1e6:.1f} MB'} ({rec['wall_s']:.1f} s)",
                      flush=True)
    return {"records": records, "growth": growth_rates(records)}


def growth_rates(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per method: exponents of time and peak memory in :math:`N` (``None`` with < 2 sizes)."""
    out: dict[str, dict[str, Any]] = {}
    for m in METHODS:
        rows = sorted((r for r in records if r["method"] == m), key=lambda r: r["n_pixels"])
        if not rows:
            continue
        n = [r["n_pixels"] for r in rows]
        t_exp = fit_exponent(n, [r["time_s"] for r in rows]) if len(rows) >= 2 else None
        c_exp = fit_exponent(n, [r["cpu_s"] for r in rows]) if len(rows) >= 2 else None
        mem = [r["peak_extra_bytes"] for r in rows]
        m_exp = (fit_exponent(n, mem) if len(rows) >= 2 and all(v is not None and v > 0 for v in mem)
                 else None)
        out[m] = {"time_exponent": t_exp, "cpu_time_exponent": c_exp, "memory_exponent": m_exp,
                  "sizes": [r["size"] for r in rows],
                  "statement": (f"{LABELS[m]}: time ∝ N^{_fmt(t_exp)} (CPU time ∝ "
                                f"N^{_fmt(c_exp)}), peak memory ∝ N^{_fmt(m_exp)}")}
    return out


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}"


def markdown(results: dict[str, Any]) -> str:
    """The results as a Markdown page: the table and the fitted exponents."""
    meta = results["meta"]
    lines = [f"# Scaling with image size ({'quick' if results['quick'] else 'full'} mode)", "",
             f"2× super-resolution of `{IMAGE}` (n×n), σ = {SIGMA}, patchNR prior `{PRIOR}` "
             f"({PATCHES_PER_PIXEL} random patches per pixel and evaluation for MAP, all patches "
             f"for MALA, whose Metropolis test needs a deterministic potential); one fresh "
             f"single-threaded process per row. torch {meta['torch']}, {meta['threads']} thread, "
             f"{meta['machine']}, {meta['date']}.", "",
             "| method | size | N | time (wall) | CPU time | unit | peak extra memory (MB) |",
             "|---|---|---|---|---|---|---|"]
    for r in results["records"]:
        mb = r["peak_extra_bytes"]
        lines.append(f"| {r['method']} | {r['size']}² | {r['n_pixels']} | {r['time_s']:.4g} | "
                     f"{r['cpu_s']:.4g} | {r['unit']} | {'n/a' if mb is None else f'{mb / 1e6:.1f}'} |")
    lines += ["", "Growth rates (least-squares slope of log value vs log N over the sizes; on a "
              "shared machine the process CPU time is the more reliable clock — the load "
              "average of each row is in the JSON):", ""]
    lines += [f"* {g['statement']}" for g in results["growth"].values()]
    cfg = results["config"]
    lines += ["", f"Steps: MAP {cfg['map_steps']} Adam iterations (median interval, first "
              f"excluded); VI median of {cfg['vi_repeats']} call(s) of `posterior(n={cfg['n_draws']})` "
              f"(untrained guide: cost does not depend on training); MALA {cfg['mcmc_warmup']} "
              f"warm-up + {cfg['mcmc_steps']} timed steps (median interval).", ""]
    return "\n".join(lines)


def assemble(res: dict[str, Any], *, quick: bool, cfg: dict[str, int], sizes: Sequence[int],
             wall_s: float | None = None) -> dict[str, Any]:
    """The results dict of a :func:`run` output, with the settings and the machine."""
    return {
        "benchmark": "scaling", "quick": bool(quick), "sizes": list(sizes),
        "methods": sorted({r["method"] for r in res["records"]}, key=METHODS.index),
        "config": dict(cfg), "image": IMAGE, "prior": PRIOR, "sigma": SIGMA, "factor": FACTOR,
        "patches_per_pixel_map": PATCHES_PER_PIXEL, "patches_mcmc": "all (stride 1)",
        "map_lr": MAP_LR, "units": UNITS, **res,
        "summary": {m: g["statement"] for m, g in res["growth"].items()},
        "meta": {"torch": torch.__version__, "threads": 1, "machine": platform.machine(),
                 "platform": platform.platform(), "processor": platform.processor(),
                 "cpu_count": os.cpu_count(),
                 "load_average_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
                 "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
                 "total_wall_s": wall_s},
    }


def write_results(results: dict[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``scaling.json``/``scaling.md`` (quick: ``scaling.quick.*``); returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = "scaling.quick" if results["quick"] else "scaling"
    paths = (out / f"{stem}.json", out / f"{stem}.md")
    paths[0].write_text(json.dumps(results, indent=2) + "\n")
    paths[1].write_text(markdown(results))
    return paths


def main(quick: bool = False, out_dir: str | Path | None = RESULTS_DIR) -> dict[str, Any]:
    """Run the benchmark; write ``scaling[.quick].{json,md}`` to ``out_dir`` (``None``: no files).

    Full mode: sizes 64, 128, 256, 512; ``quick``: 64 and 128 with fewer steps (a quick run never
    overwrites the full results).
    """
    cfg = _config(quick)
    sizes = QUICK_SIZES if quick else FULL_SIZES
    t0 = time.perf_counter()
    res = run(sizes, METHODS, cfg=cfg)
    results = assemble(res, quick=quick, cfg=cfg, sizes=sizes, wall_s=time.perf_counter() - t0)
    for line in results["summary"].values():
        print(line)
    if out_dir is not None:
        js, md = write_results(results, out_dir)
        print(f"wrote {js} and {md}")
    return results


def _child(argv: list[str]) -> None:
    method, size, kwargs = argv[0], int(argv[1]), json.loads(argv[2])
    torch.set_num_threads(1)
    print(json.dumps(measure(method, size, **kwargs)))


if __name__ == "__main__":
    if str(ROOT) not in sys.path:  # run as a script: make the repository importable
        sys.path.insert(0, str(ROOT))
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(sys.argv[2:])
    else:
        ap = argparse.ArgumentParser(description="Time and peak memory vs image size.")
        ap.add_argument("--quick", action="store_true", help="sizes 64 and 128, fewer steps")
        main(ap.parse_args().quick)
