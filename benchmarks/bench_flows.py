r"""Benchmark: Glow throughput (images/s), bayesinv vs normflows, same architecture.

Both flows are multiscale Glow (Kingma & Dhariwal 2018) with the shipped prior's size
(``glow_phantom32``: ``L = 3`` levels, ``K = 3`` steps, 48 hidden channels):
per level ``squeeze → K × (ActNorm → invertible 1×1 conv (LU) → affine coupling)`` then split;
coupling subnets ``conv3×3 → ReLU → conv1×1 → ReLU → conv3×3`` in both (normflows'
``ConvNet2d`` with ``kernel_size=(3, 1, 3)``). The peer is built as in normflows' Glow example:
``GlowBlock`` + ``Squeeze`` per level, ``Merge`` between levels, ``DiagGaussian`` bases,
``MultiscaleFlow`` on top (normflows 1.7.3, ``split_mode="channel"``, ``scale_map="sigmoid"``,
``use_lu=True``).

Three workloads per image shape (``1×32×32``; ``3×32×32`` in full mode), batch 64, float32:

* ``log_prob``: :math:`\log p(x)` of a batch (normalizing direction), no grad — what a prior
  evaluation costs;
* ``train``: ``log_prob`` + backward of the mean NLL — one MLE training step without the
  optimizer;
* ``generate``: :math:`x = G(z)` (generative direction), no grad — what sampling costs.

Timing: ``torch.set_num_threads(threads)`` (default 1: on a CPU shared by several processes one
thread per process gives the least noisy, fairest comparison; the thread count is recorded).
After a warm-up (which also runs normflows' data-dependent ActNorm initialisation), ours and the
peer are timed **interleaved** for ``rounds`` rounds of ``reps`` calls each; the median
per-call CPU time of this process (``time.process_time``, which a busy shared machine disturbs
far less than wall clock) and the median wall time are reported, with the ratio
``ours/peer`` of images per second (> 1: ours is faster).

Usage::

    python benchmarks/bench_flows.py [--quick] [--threads 1] [--profile]

Writes ``benchmarks/results/flows.json`` (quick mode: ``flows.quick.json``).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

RESULTS = Path(__file__).resolve().parent / "results" / "flows.json"
ARCH = {"levels": 3, "steps": 3, "hidden": 48}
BATCH = 64
WORKLOADS = ("log_prob", "train", "generate")


def build_ours(shape: tuple[int, int, int], levels: int, steps: int, hidden: int) -> nn.Module:
    """Our :class:`~bayesinv.flows.glow.Glow` of the given size."""
    from bayesinv.flows.glow import Glow

    return Glow(shape, levels=levels, steps=steps, hidden=hidden, seed=0)


def build_normflows(shape: tuple[int, int, int], levels: int, steps: int, hidden: int) -> nn.Module:
    """normflows' multiscale Glow as in its Glow example (``MultiscaleFlow``, unconditional).

    Level ``i = 0`` is the coarsest (``C·2^(L+1)`` channels at ``H/2^L``), as in the example.
    """
    import normflows as nf

    c, h, w = shape
    q0, merges, flows = [], [], []
    for i in range(levels):
        level = [nf.flows.GlowBlock(c * 2 ** (levels + 1 - i), hidden, split_mode="channel",
                                    scale=True, scale_map="sigmoid", use_lu=True)
                 for _ in range(steps)]
        level.append(nf.flows.Squeeze())
        flows.append(level)
        if i > 0:
            merges.append(nf.flows.Merge())
            latent = (c * 2 ** (levels - i), h // 2 ** (levels - i), w // 2 ** (levels - i))
        else:
            latent = (c * 2 ** (levels + 1), h // 2 ** levels, w // 2 ** levels)
        q0.append(nf.distributions.DiagGaussian(latent))
    return nf.MultiscaleFlow(q0, flows, merges, class_cond=False)


def _workloads(flow: nn.Module, peer: bool, x: torch.Tensor) -> dict[str, Callable[[], Any]]:
    if peer:
        def log_prob():
            return flow.log_prob(x, None)

        def generate():
            return flow.sample(x.shape[0])[0]
    else:
        def log_prob():
            return flow.log_prob(x)

        def generate():
            return flow.sample(x.shape[0])

    def nograd(fn):
        def run():
            with torch.no_grad():
                return fn()
        return run

    def train():
        flow.zero_grad(set_to_none=True)
        loss = -log_prob().mean()
        loss.backward()
        return loss

    return {"log_prob": nograd(log_prob), "train": train, "generate": nograd(generate)}


def _time(fn: Callable[[], Any], reps: int) -> tuple[float, float]:
    c0, t0 = time.process_time(), time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.process_time() - c0) / reps, (time.perf_counter() - t0) / reps


def bench_shape(shape: tuple[int, int, int], *, reps: int, rounds: int, warmup: int,
                batch: int = BATCH) -> dict[str, Any]:
    """Interleaved timing of ours vs normflows on one image shape; returns the measured numbers."""
    gen = torch.Generator().manual_seed(0)
    x = torch.rand((batch, *shape), generator=gen)
    ours = build_ours(shape, **ARCH)
    peer = build_normflows(shape, **ARCH)
    n_params = {"ours": sum(p.numel() for p in ours.parameters()),
                "normflows": sum(p.numel() for p in peer.parameters())}
    with torch.no_grad():
        peer.log_prob(x, None)  # data-dependent ActNorm initialisation of normflows
    loads = {"ours": _workloads(ours, False, x), "normflows": _workloads(peer, True, x)}
    out: dict[str, Any] = {"shape": list(shape), "batch": batch, "n_parameters": n_params}
    for wl in WORKLOADS:
        for who in loads:
            for _ in range(warmup):
                loads[who][wl]()
        cpu: dict[str, list[float]] = {"ours": [], "normflows": []}
        wall: dict[str, list[float]] = {"ours": [], "normflows": []}
        for _ in range(rounds):
            for who in loads:
                c, w = _time(loads[who][wl], reps)
                cpu[who].append(c)
                wall[who].append(w)
        res = {}
        for who in loads:
            c, w = statistics.median(cpu[who]), statistics.median(wall[who])
            res[who] = {"cpu_s_per_call": c, "wall_s_per_call": w,
                        "images_per_s_cpu": batch / c, "images_per_s_wall": batch / w}
        res["ratio_ours_over_peer_cpu"] = res["ours"]["images_per_s_cpu"] / res["normflows"]["images_per_s_cpu"]
        res["ratio_ours_over_peer_wall"] = res["ours"]["images_per_s_wall"] / res["normflows"]["images_per_s_wall"]
        out[wl] = res
    return out


def profile_ours(shape: tuple[int, int, int], workload: str, *, reps: int = 3, top: int = 12) -> list[dict]:
    """torch.profiler table of our Glow on ``workload``: the ops with the most self CPU time."""
    from torch.profiler import ProfilerActivity, profile

    x = torch.rand((BATCH, *shape), generator=torch.Generator().manual_seed(0))
    flow = build_ours(shape, **ARCH)
    fn = _workloads(flow, False, x)[workload]
    fn()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(reps):
            fn()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    return [{"op": e.key, "self_cpu_ms_per_call": e.self_cpu_time_total / 1e3 / reps,
             "share": e.self_cpu_time_total / total, "calls_per_call": e.count / reps}
            for e in events[:top]]


def main(quick: bool = False, *, threads: int = 1, profile: bool = True,
         out: str | Path | None = "default") -> dict[str, Any]:
    """Run the benchmark; ``quick``: 1×32×32 only, fewer repetitions. Returns the results dict.

    ``out``: the JSON file (``"default"``: ``results/flows.json``, or ``results/flows.quick.json``
    in quick mode so that a quick run never overwrites the full numbers; ``None``: not written).
    """
    import normflows

    torch.set_num_threads(threads)
    shapes = [(1, 32, 32)] if quick else [(1, 32, 32), (3, 32, 32)]
    reps, rounds, warmup = (2, 3, 1) if quick else (5, 5, 5)
    t0 = time.perf_counter()
    runs = [bench_shape(s, reps=reps, rounds=rounds, warmup=warmup) for s in shapes]
    result: dict[str, Any] = {
        "benchmark": "Glow throughput, bayesinv vs normflows (same L, K, hidden)",
        "quick": quick, "architecture": ARCH, "batch": BATCH, "dtype": "float32",
        "threads": threads, "reps_per_round": reps, "rounds": rounds,
        "torch": torch.__version__, "normflows": normflows.__version__,
        "machine": platform.platform(), "processor": platform.processor(),
        "runs": runs,
    }
    slow = [(r["shape"], wl) for r in runs for wl in WORKLOADS if r[wl]["ratio_ours_over_peer_cpu"] < 1.0]
    if profile and slow:
        shape, wl = slow[0]
        result["profile"] = {"shape": shape, "workload": wl,
                             "top_ops": profile_ours(tuple(shape), wl, reps=2 if quick else 3)}
    result["wall_time_s"] = time.perf_counter() - t0
    if out == "default":
        out = RESULTS.with_suffix(".quick.json") if quick else RESULTS
    if out is not None:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")
    for r in runs:
        print(f"shape {tuple(r['shape'])}, batch {BATCH}, {threads} thread(s)")
        for wl in WORKLOADS:
            o, p = r[wl]["ours"], r[wl]["normflows"]
            print(f"  {wl:9s} ours {o['images_per_s_cpu']:8.1f} img/s  normflows "
                  f"{p['images_per_s_cpu']:8.1f} img/s  (cpu time)  ours/peer = "
                  f"{r[wl]['ratio_ours_over_peer_cpu']:.2f} (wall {r[wl]['ratio_ours_over_peer_wall']:.2f})")
    return result


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-profile", action="store_true")
    a = ap.parse_args()
    main(a.quick, threads=a.threads, profile=not a.no_profile)
