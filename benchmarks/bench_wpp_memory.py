"""Benchmark: peak memory and time of one Wasserstein-patch-prior energy + gradient evaluation.

Setting: :class:`~bayesinv.priors.wpp.WassersteinPatchPrior` with 6×6 patches, 2 scales,
10,000 reference patches per scale (from a 256×256 crop of ``gravel``), ``inner_steps = 1``
(the peak does not depend on the number of ascent steps, which reuse the same buffers; the
reference's 10 take about 11/2 times as long), on a 256×256 and a 512×512 image (``gravel`` itself). Each size runs in its
own subprocess (single-threaded): after a warm-up evaluation (without ascent steps) the kernel's peak-RSS counter is
reset (``/proc/self/clear_refs`` ← 5, Linux) and one ``energy(x).sum().backward()`` is
measured as ``VmHWM − VmRSS`` (the extra resident memory at the peak); ``ru_maxrss`` minus the
RSS before the measured call is reported too (an upper bound of the same quantity when the
counter cannot be reset). The unchunked ``N × M`` float32 cost matrix it avoids is given for
comparison. ``quick`` uses 2,000 reference patches.

Run:  .venv/bin/python benchmarks/bench_wpp_memory.py [--quick]
(writes benchmarks/results/wpp_memory.json)
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

SIZES = (256, 512)
CHUNK = 1024

_CHILD = textwrap.dedent("""
    import json, resource, sys, time, torch
    torch.set_num_threads(1)
    from bayesinv.data.images import load_image
    from bayesinv.priors.wpp import WassersteinPatchPrior

    def status(field):
        for line in open('/proc/self/status'):
            if line.startswith(field):
                return int(line.split()[1]) * 1024

    size, m, inner, chunk = (int(a) for a in sys.argv[1:5])
    tex = load_image('gravel', size=None)                      # 512 x 512
    ref = tex[:, 256:, :256]
    img = tex if size == 512 else tex[:, :size, :size]
    prior = WassersteinPatchPrior(ref, (1, size, size), 1.0, patch_size=6, n_reference=m,
                                  scales=2, inner_steps=inner, chunk_size=chunk)
    x = img[None].clone().requires_grad_(True)
    prior.inner_steps = 0
    prior.energy(x).sum().backward()                            # warm-up (no ascent: cheap)
    prior.inner_steps = inner
    x.grad = None
    import ctypes, gc
    gc.collect()
    ctypes.CDLL('libc.so.6').malloc_trim(0)  # hand freed heap back, so reuse cannot hide the peak
    base = status('VmRSS')
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
        hwm_ok = True
    except OSError:
        hwm_ok = False
    maxrss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t0 = time.perf_counter()
    prior.energy(x).sum().backward()
    wall = time.perf_counter() - t0
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    n = (size - 5) ** 2
    print(json.dumps({
        'size': size, 'n_reference': m, 'inner_steps': inner, 'chunk_size': chunk,
        'n_image_patches_scale0': n,
        'peak_extra_bytes_hwm': (status('VmHWM') - base) if hwm_ok else None,
        'peak_extra_bytes_maxrss': max(maxrss - base, 0) if maxrss > maxrss0 else None,
        'rss_before_bytes': base,
        'full_cost_matrix_bytes': prior.cost_matrix_bytes(n),
        'energy_grad_seconds': wall,
    }))
""")


def measure(size: int, n_reference: int, inner_steps: int, chunk_size: int = CHUNK) -> dict:
    """Run one measurement in a fresh single-threaded subprocess and return its record."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", _CHILD, str(size), str(n_reference),
                          str(inner_steps), str(chunk_size)], capture_output=True, text=True,
                         env=env, cwd=Path(__file__).resolve().parents[1], timeout=1800)
    if out.returncode != 0:
        raise RuntimeError(f"bench_wpp_memory: size {size} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(quick: bool = False) -> dict:
    # one inner step: the ascent steps run one after another on the same buffers, so the peak
    # does not depend on their number (the reference's 10 steps take ~11/2 times as long)
    m, inner = (2000, 1) if quick else (10_000, 1)
    runs = [measure(s, m, inner) for s in SIZES]
    results = {
        "benchmark": "wpp_memory",
        "quick": quick,
        "torch": torch.__version__,
        "machine": platform.machine(),
        "threads": 1,
        "runs": runs,
        "summary": {f"{r['size']}x{r['size']}": {
            "peak_extra_MB": round((r["peak_extra_bytes_hwm"] or r["peak_extra_bytes_maxrss"] or 0) / 1e6, 1),
            "full_cost_matrix_MB": round(r["full_cost_matrix_bytes"] / 1e6, 1),
            "seconds": round(r["energy_grad_seconds"], 2)} for r in runs},
    }
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    # a quick run (2 000 reference patches) never replaces the full measurement
    (out / ("wpp_memory.quick.json" if quick else "wpp_memory.json")).write_text(
        json.dumps(results, indent=2) + "\n")
    print(json.dumps(results["summary"], indent=2))
    return results


if __name__ == "__main__":
    main(quick="--quick" in sys.argv[1:])
