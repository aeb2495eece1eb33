"""Benchmark: batched factored fast sweeping (ours) vs scikit-fmm (fast marching, per source).

Setting: 64x64 grid on [0, 1]^2, crosswell geometry with 16 sources (left edge) and 16
receivers (right edge). Timed on a constant model (where the analytic answer ``T = r / v`` gives
the accuracy of both) and on a smooth heterogeneous model. Ours solves all 16 sources in one
batched call; scikit-fmm's ``travel_time(phi, speed, dx)`` runs once per source in a loop, with
``phi = |x - x_s| - h/2`` (zero level set a half cell around the source node, so its times are
offset by ``s(x_s) h / 2``, which is added back). One run each after a warm-up call; the
ratio ours/peer is wall time (< 1 means ours is faster).

Run:  .venv/bin/python benchmarks/bench_eikonal.py   (writes benchmarks/results/eikonal.json)
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from bayesinv.operators.eikonal import Eikonal

N = 64
N_SRC = 16
V0 = 2.0
THREADS = int(os.environ.get("BENCH_THREADS", "1"))  # tiny per-step tensors: 1 thread is fastest


def _models(h: float) -> dict[str, np.ndarray]:
    z, x = np.meshgrid(np.arange(N) * h, np.arange(N) * h, indexing="ij")
    smooth = 2.0 + 0.8 * np.exp(-((z - 0.5) ** 2 + (x - 0.5) ** 2) / 0.05) + z
    return {"constant": np.full((N, N), V0), "smooth": smooth}


def _ours(op: Eikonal, v: np.ndarray) -> tuple[np.ndarray, float, float, int]:
    x = torch.tensor(v, dtype=torch.float32)[None, None]
    op(x)  # warm-up: builds the per-device stencil cache
    x.requires_grad_(True)
    t0 = time.perf_counter()
    T = op(x)
    t_fwd = time.perf_counter() - t0
    n_it = op.last_n_sweeps
    t0 = time.perf_counter()
    T.sum().backward()
    t_bwd = time.perf_counter() - t0
    return T[0].detach().double().numpy(), t_fwd, t_bwd, n_it


def _peer(skfmm, v: np.ndarray, src: np.ndarray, rec: np.ndarray, h: float):
    z, x = np.meshgrid(np.arange(N) * h, np.arange(N) * h, indexing="ij")

    def solve() -> np.ndarray:
        out = np.empty((len(src), len(rec)))
        for k, (i, j) in enumerate(src):
            phi = np.hypot(z - i * h, x - j * h) - 0.5 * h
            T = skfmm.travel_time(phi, v, dx=h, order=2) + 0.5 * h / v[i, j]
            out[k] = np.asarray(T)[rec[:, 0], rec[:, 1]]
        return out

    solve()  # warm-up
    t0 = time.perf_counter()
    out = solve()
    return out, time.perf_counter() - t0


def main(quick: bool = False) -> dict:
    """Run the benchmark (one 64×64 solve per model is already quick: ``quick`` only writes
    ``eikonal.quick.json`` instead of ``eikonal.json``, so a quick run never replaces the
    committed measurement)."""
    torch.set_num_threads(THREADS)
    h = 1.0 / (N - 1)
    op = Eikonal((1, N, N), spacing=h, geometry="crosswell", n_sources=N_SRC)
    src, rec = op.sources.numpy(), op.receivers.numpy()
    exact = np.linalg.norm((src[:, None] - rec[None]) * h, axis=-1) / V0
    try:
        import skfmm
    except ImportError:
        skfmm = None
    results: dict = {"grid": [N, N], "n_sources": N_SRC, "n_receivers": len(rec),
                     "geometry": "crosswell", "torch_threads": torch.get_num_threads(),
                     "torch": torch.__version__, "python": platform.python_version(),
                     "scheme_ours": "factored eikonal, first-order Godunov, parallel FSM, float32",
                     "peer": "scikit-fmm travel_time (order=2), one call per source",
                     "models": {}}
    for name, v in _models(h).items():
        T, t_fwd, t_bwd, n_it = _ours(op, v)
        row = {"ours_forward_s": t_fwd, "ours_backward_s": t_bwd, "ours_iterations": n_it}
        if name == "constant":
            row["ours_max_rel_error"] = float(np.abs(T - exact).max() / exact.max())
        if skfmm is None:
            row["peer"] = "peer unavailable (pip install scikit-fmm)"
        else:
            Tp, t_peer = _peer(skfmm, v, src, rec, h)
            row.update(peer_s=t_peer, ratio_ours_over_peer=t_fwd / t_peer,
                       max_rel_diff_ours_vs_peer=float(np.abs(T - Tp).max() / Tp.max()))
            if name == "constant":
                row["peer_max_rel_error"] = float(np.abs(Tp - exact).max() / exact.max())
        results["models"][name] = row
        print(f"[{name}] ours: forward {t_fwd:.3f} s ({n_it} iterations), backward "
              f"{t_bwd:.3f} s" + (f", max rel. error {row['ours_max_rel_error']:.2e}"
                                  if "ours_max_rel_error" in row else ""))
        if skfmm is None:
            print(f"[{name}] peer unavailable (scikit-fmm not installed)")
        else:
            print(f"[{name}] scikit-fmm: {row['peer_s']:.3f} s"
                  + (f", max rel. error {row['peer_max_rel_error']:.2e}"
                     if "peer_max_rel_error" in row else "")
                  + f"; ratio ours/peer = {row['ratio_ours_over_peer']:.2f}; max rel. diff "
                  f"ours vs peer {row['max_rel_diff_ours_vs_peer']:.2e}")
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(parents=True, exist_ok=True)
    path = out / ("eikonal.quick.json" if quick else "eikonal.json")  # a quick run keeps the full file
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {path}")
    return results


if __name__ == "__main__":
    main()
