"""Benchmark: vectorised pixelwise R-hat + bulk ESS + tail ESS vs looping ArviZ over pixels.

Draws are AR(1) chains (phi = 0.5, a typical MCMC autocorrelation) of shape
(4 chains, 1000 draws, 1, size, size). Ours: :func:`bayesinv.diagnostics.maps.convergence_maps`
on every pixel. ArviZ: ``arviz.rhat(method="rank")``, ``arviz.ess(method="bulk")`` and
``arviz.ess(method="tail")`` called per pixel on a random subset of pixels; its full-image time
is extrapolated linearly from the subset (ArviZ's per-pixel cost does not depend on the image
size), and the agreement between the two is reported on that subset.

Ours runs twice: on one thread (``workers=1``: the per-core speed-up, CPU time against CPU
time) and with pixel chunks spread over ``--workers`` threads (default: every core the process
may use, as ``convergence_maps`` does by default: the wall-clock speed-up a user sees). The
ArviZ loop is inherently serial (one Python call per pixel). Times are reported as wall clock
and as CPU time of this process (``time.process_time``); on a shared machine the CPU time is
the fair per-core comparison. Both sides are timed ``--repeat``
times and the minimum is reported (the least-disturbed run; other load only adds time).

Usage::

    python benchmarks/bench_diagnostics.py [--size 64] [--quick] [--subset 200] [--threads 1]
                                           [--repeat 3]

Writes (updates) ``benchmarks/results/diagnostics.json``, one entry per image size (``--quick``:
``diagnostics.quick.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path


def markdown(runs: dict) -> str:
    """The runs of every image size as one Markdown table (ours / looping ArviZ)."""
    lines = ["# Pixelwise diagnostics: vectorised vs looping ArviZ", "",
             "Rank R-hat + bulk ESS + tail ESS of every pixel, AR(1) draws (φ = 0.5); ArviZ "
             "timed per pixel on a subset and extrapolated linearly; minimum of `repeat` runs. "
             "Speed-up = ArviZ time / our time: per core (CPU time, one thread each) and wall "
             "clock with our pixel chunks on every core (ArviZ's loop is serial).", "",
             "| image | chains × draws | ours 1 thread (s) | ours, threads (s) | ArviZ loop, "
             "extrapolated (s) | speed-up per core | speed-up wall (threads) | max rel. error |",
             "|---|---|---|---|---|---|---|---|"]
    for key, r in sorted(runs.items(), key=lambda kv: kv[1]["pixels"]):
        par = r.get("ours_parallel_wall_s")
        par_s = f"{par:.2f} ({r.get('workers')})" if par else "–"
        sp_par = f"{r['speedup_wall_parallel']:.1f}×" if r.get("speedup_wall_parallel") else "–"
        err = max(r["max_rel_error_vs_arviz"].values())
        lines.append(f"| {key} | {r['chains']} × {r['draws']} | {r['ours_cpu_s']:.2f} | {par_s} | "
                     f"{r['arviz_extrapolated_cpu_s']:.1f} | {r['speedup_cpu']:.1f}× | {sp_par} | "
                     f"{err:.1e} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None, quick: bool = False) -> dict:
    """Run the benchmark; ``quick=True`` is the same as passing ``--quick``."""
    if quick:
        argv = [*(argv or []), "--quick"]
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=64, help="image side (pixels)")
    ap.add_argument("--chains", type=int, default=4)
    ap.add_argument("--draws", type=int, default=1000)
    ap.add_argument("--subset", type=int, default=200, help="pixels timed with ArviZ")
    ap.add_argument("--quick", action="store_true", help="32×32 image, 50 ArviZ pixels")
    ap.add_argument("--threads", type=int, default=1, help="BLAS/OpenMP threads (set before import)")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per side; the minimum is kept")
    ap.add_argument("--workers", type=int, default=None,
                    help="threads for the parallel run of ours (default: all usable cores)")
    ap.add_argument("--out", default=None,
                    help="JSON file (default results/diagnostics.json, quick: diagnostics.quick.json)")
    args = ap.parse_args(argv)
    if args.out is None:  # a quick run never updates the full measurement
        args.out = str(Path(__file__).parent / "results"
                       / ("diagnostics.quick.json" if args.quick else "diagnostics.json"))
    if args.quick:
        args.size, args.subset = min(args.size, 32), min(args.subset, 50)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(args.threads)

    import numpy as np

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from bayesinv.diagnostics import arviz_io, maps

    rng = np.random.default_rng(0)
    npix = args.size * args.size
    e = rng.standard_normal((args.chains, args.draws, npix))
    x = np.empty_like(e)
    x[:, 0] = e[:, 0] / np.sqrt(1 - 0.25)
    for t in range(1, args.draws):
        x[:, t] = 0.5 * x[:, t - 1] + e[:, t]
    cube = x.reshape(args.chains, args.draws, 1, args.size, args.size)

    if args.repeat < 1:
        ap.error("--repeat: expected a positive integer")
    workers = args.workers or maps.default_workers()
    maps.convergence_maps(cube[..., :2, :2])  # warm-up (imports, FFT plans)
    t_ours = c_ours = t_par = float("inf")
    for _ in range(args.repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        ours = maps.convergence_maps(cube, workers=1)
        t_ours = min(t_ours, time.perf_counter() - t0)
        c_ours = min(c_ours, time.process_time() - c0)
        t0 = time.perf_counter()
        par = maps.convergence_maps(cube, workers=workers)
        t_par = min(t_par, time.perf_counter() - t0)
    identical = all(np.array_equal(ours[k], par[k], equal_nan=True) for k in ours)

    subset = rng.choice(npix, size=min(args.subset, npix), replace=False)
    arviz_io.arviz_rhat(x[:, :, 0])  # warm-up
    t_sub = c_sub = float("inf")
    for _ in range(args.repeat):
        ref = {"rhat": [], "ess_bulk": [], "ess_tail": []}
        t0, c0 = time.perf_counter(), time.process_time()
        for i in subset:
            ref["rhat"].append(arviz_io.arviz_rhat(x[:, :, i]))
            ref["ess_bulk"].append(arviz_io.arviz_ess(x[:, :, i], "bulk"))
            ref["ess_tail"].append(arviz_io.arviz_ess(x[:, :, i], "tail"))
        t_sub = min(t_sub, time.perf_counter() - t0)
        c_sub = min(c_sub, time.process_time() - c0)
    t_arviz = t_sub / len(subset) * npix
    c_arviz = c_sub / len(subset) * npix

    err = {}
    for k, v in ref.items():
        got = ours[k].ravel()[subset]
        v = np.asarray(v)
        err[k] = float(np.max(np.abs(got - v) / np.abs(v)))
    result = {
        "image": [1, args.size, args.size], "chains": args.chains, "draws": args.draws,
        "pixels": npix, "threads": args.threads, "repeat": args.repeat,
        "ours_wall_s": t_ours, "ours_cpu_s": c_ours, "workers": workers,
        "ours_parallel_wall_s": t_par, "parallel_identical_to_serial": identical,
        "arviz_subset_pixels": int(len(subset)), "arviz_subset_wall_s": t_sub,
        "arviz_subset_cpu_s": c_sub, "arviz_extrapolated_wall_s": t_arviz,
        "arviz_extrapolated_cpu_s": c_arviz,
        "speedup_wall": t_arviz / t_ours, "speedup_cpu": c_arviz / c_ours,
        "speedup_wall_parallel": t_arviz / t_par,
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "max_rel_error_vs_arviz": err, "fraction_rhat_gt_1.01": float(np.mean(ours["rhat"] > 1.01)),
        "median_ess_bulk": float(np.median(ours["ess_bulk"])),
        "note": ("ArviZ time extrapolated linearly from the subset of pixels; CPU time "
                 "(process_time, single thread) is robust to other load on the machine; "
                 "times are the minimum over `repeat` runs of each side"),
        "python": platform.python_version(), "machine": platform.machine(),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    runs = {}
    if out.exists():  # keep the runs of other sizes
        try:
            runs = json.loads(out.read_text()).get("runs", {})
        except (json.JSONDecodeError, AttributeError):
            runs = {}
    runs[f"{args.size}x{args.size}"] = result
    out.write_text(json.dumps({"benchmark": "pixelwise R-hat + bulk ESS + tail ESS", "runs": runs},
                              indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(runs))
    print(f"{args.size}x{args.size} px, {args.chains}x{args.draws} draws, {args.threads} thread(s), "
          f"min of {args.repeat} run(s)")
    print(f"  ours (all {npix} px):   wall {t_ours:8.2f} s   cpu {c_ours:8.2f} s   (1 thread)")
    print(f"  ours, {workers} threads:      wall {t_par:8.2f} s   (identical maps: {identical})")
    print(f"  ArviZ loop ({len(subset)} px):  wall {t_sub:8.2f} s   cpu {c_sub:8.2f} s")
    print(f"  ArviZ, all pixels (extrapolated linearly): wall {t_arviz:8.2f} s   cpu {c_arviz:8.2f} s")
    print(f"  speed-up: wall {t_arviz / t_ours:6.1f}x   cpu {c_arviz / c_ours:6.1f}x   "
          f"wall with {workers} threads {t_arviz / t_par:6.1f}x   "
          f"(load average {result['load_average_1min']})")
    print(f"  max relative error vs ArviZ:   {err}")
    print(f"  wrote {out}")
    return result


if __name__ == "__main__":
    main()
