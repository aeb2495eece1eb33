"""Pieces shared by the peer benchmarks (bench_patchnr_peer.py, bench_langevin.py).

Both measure patchNR on the same held-out sparse-view CT problem, against peers written because
deepinv cannot be imported here (:data:`DEEPINV_UNAVAILABLE`), and word and write their results
the same way.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: Why deepinv is not the peer (checked on this machine's package index).
DEEPINV_UNAVAILABLE = (
    "deepinv not used: deepinv 0.5.0 requires torchvision; the only torchvision wheel that "
    "installs beside torch 2.13.0+cpu is 0.28.0, and `import torchvision` then fails with "
    "`RuntimeError: operator torchvision::nms does not exist` (the wheel is built against the "
    "CUDA torch).")

TEST_SEED = 10_000


def patchnr_ct_problem(size: int, n_angles: int, sigma: float, lam: float,
                       n_patches: int | None, pad: int):
    """Shipped ``patchnr_ct`` flow, sparse-view Radon, one held-out phantom and its measurement.

    Returns ``(flow, op, truth, y, problem)``; ``y`` is simulated with seed ``TEST_SEED + 1``.
    """
    from bayesinv.data.images import ellipse_phantoms
    from bayesinv.data.pretrained import load_flow_weights
    from bayesinv.operators.tomography import Radon
    from bayesinv.priors.patchnr import PatchNRPrior
    from bayesinv.problem import InverseProblem

    flow = load_flow_weights("patchnr_ct")
    op = Radon.sparse_view((1, size, size), n_angles=n_angles)
    truth = ellipse_phantoms(1, size, seed=TEST_SEED)
    problem = InverseProblem(op, PatchNRPrior(flow, (1, size, size), lam, n_patches=n_patches,
                                              pad=pad), noise=sigma)
    y = problem.simulate(truth, seed=TEST_SEED + 1)
    return flow, op, truth, y, problem


def ratio_word(ratio: float | None) -> str:
    """Plain words for an ours/peer speed ratio (±10% is run-to-run noise here)."""
    if ratio is None:
        return "not measured"
    if ratio > 1.1:
        return "we are faster"
    if ratio < 0.9:
        return "the peer is faster"
    return "parity within the ±10% run-to-run noise"


def write_results(result: dict[str, Any], out_dir: str | Path | None, name: str, quick: bool,
                  markdown: Callable[[dict[str, Any]], str]) -> None:
    """``<name>.json`` and ``<name>.md`` in ``out_dir`` (``<name>.quick.*`` in quick mode)."""
    if out_dir is None:
        return
    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    stem = f"{name}.quick" if quick else name
    (d / f"{stem}.json").write_text(json.dumps(result, indent=1, default=str))
    (d / f"{stem}.md").write_text(markdown(result))
