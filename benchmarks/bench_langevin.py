r"""Benchmark: ULA/MALA iterations per second, ours vs the plain-torch loop a user would write.

Issue "Benchmarks", item 3. The named peer is deepinv's ``ULA``, but **deepinv cannot be
installed here**: deepinv 0.5.0 requires torchvision, the only torchvision wheel that installs
beside ``torch 2.13.0+cpu`` is 0.28.0, and ``import torchvision`` then fails with
``RuntimeError: operator torchvision::nms does not exist`` (that wheel is built against the CUDA
torch). The peer is therefore deepinv's ULA iteration written as the minimal plain-torch loop
(no Pyro, no bookkeeping), with autograd on the *same* potential:

.. math::

    x_{k+1} = x_k - \delta\nabla U(x_k) + \sqrt{2\delta}\,\xi_k,\qquad \xi_k\sim\mathcal N(0, I)

(Roberts & Tweedie 1996; Durmus & Moulines 2017), and for MALA the same proposal :math:`x'`
accepted with probability :math:`\min(1, e^{U(x) - U(x')} q(x\mid x')/q(x'\mid x))`,
:math:`\log q(x'\mid x) = -\|x' - x + \delta\nabla U(x)\|^2/(4\delta)`.

**Problem**: patchNR CT as in :mod:`benchmarks.bench_patchnr_peer` — one held-out 64×64 ellipse
phantom (seed ``10_000``), sparse-view CT with 30 angles, :math:`\sigma = 1` (5.5% of the clean
sinogram's maximum), the shipped ``patchnr_ct`` flow, reflect padding 4 — with the reference
sampling weight :math:`\lambda = 6000` (Hertrich et al., seed paper 004; DESIGN.md §4), potential
:math:`U(x) = \tfrac{1}{2\sigma^2}\|Ax - y\|^2 + \lambda R(x)`
(:meth:`bayesinv.InverseProblem.potential`), started at the FBP clipped to [0, 1].

* **ULA**: reference step :math:`\delta = 2\cdot10^{-7}`, :math:`N_p = 1000` random patches per
  evaluation (a fresh draw per gradient, as in our MAP).
* **MALA**: all patches (:math:`N_p` = ``None``: a deterministic potential, which the MH ratio
  needs), fixed step :math:`\delta = 1.5\cdot10^{-6}` (chosen so that both acceptances and
  rejections occur from this start), no warm-up adaptation (the peer has none).

Variants timed (same number of iterations, interleaved, after one untimed warm-up each; medians
of ``repeats`` runs, and the best run as ``timeit`` reports it; CPU time ``time.process_time``
is the fair clock on a shared machine, wall time is reported too). On the shared 2-core machine
the run-to-run spread is about ±10%, so ratios within 0.9-1.1 mean "no measurable difference":

* ``ours_sample_posterior`` — :func:`bayesinv.infer.mcmc.sample_posterior` (the user entry point:
  validation, seeding, per-draw statistics, draws stored), ``num_chains=1, warmup_steps=0``;
* ``ours_kernel`` — our :class:`~bayesinv.infer.kernels.ULA` / ``MALA`` Pyro ``MCMCKernel``
  driven directly (``setup`` then ``sample``);
* ``ours_pyro_mcmc`` (ULA only) — the kernel through ``pyro.infer.MCMC``;
* ``peer`` — :func:`peer_ula` / :func:`peer_mala`.

``ratio = ours_iterations_per_s / peer_iterations_per_s`` (1 = no overhead; > 1: we are faster).
Each side evaluates one potential gradient per iteration (ours: one more at ``setup``).

**Sanity asserts.** The random streams align exactly: both draw, per iteration, the proposal noise
and then the patch positions of the new gradient from torch's global generator, in the same order
(MALA: then one ``torch.rand((), float64)``). So (1) the kernel driven directly and the peer
seeded alike give the *same chain* (max abs difference asserted ≤ 1e-5; measured: bitwise
equal), and (2) ``sample_posterior`` with ``seed=s`` equals the peer seeded with the chain seed
that ``sample_posterior`` derives (``numpy.random.SeedSequence(s).spawn(1)`` →
``pyro.set_rng_seed``, replicated here). (Before, ``sample_posterior`` evaluated
:math:`\nabla U(x_0)` twice per chain — the kernel's ``setup`` cached it for its own copy of
the initial value while the chain loop passed another copy — and matched the peer only after a
shift by one evaluation; found by this benchmark, now fixed and tested in ``tests/test_mcmc.py``.)
The mean potential over the chain is compared too.

Usage::

    python benchmarks/bench_langevin.py [--quick]

Writes ``benchmarks/results/langevin.json`` and ``.md`` (quick mode: ``langevin.quick.*``).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

if __package__ in (None, ""):  # run as a script: make the `benchmarks` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._peers import (  # noqa: E402
    DEEPINV_UNAVAILABLE,
    TEST_SEED,
    patchnr_ct_problem,
    ratio_word,
    write_results,
)

RESULTS_DIR = Path(__file__).resolve().parent / "results"
NAME = "langevin"
DEEPINV_NOTE = DEEPINV_UNAVAILABLE + (" Peer: deepinv's ULA/MALA iteration as a minimal "
                                      "plain-torch loop on the same potential.")
SIZE, N_ANGLES, SIGMA, PAD = 64, 30, 1.0, 4
LAM = 6000.0
ULA_STEP, ULA_PATCHES = 2e-7, 1000
MALA_STEP, MALA_PATCHES = 1.5e-6, None
SEED = 0
FULL = {"ula_iters": 100, "mala_iters": 30, "repeats": 5}
QUICK = {"ula_iters": 20, "mala_iters": 6, "repeats": 1}

Potential = Callable[[Tensor], Tensor]


# -- the peer loops --------------------------------------------------------------------------------
def _check_args(x0: Tensor, step: float, n_iter: int) -> None:
    if not isinstance(x0, Tensor) or not bool(torch.isfinite(x0).all()):
        raise ValueError("x0: expected a finite tensor")
    if isinstance(step, bool) or not isinstance(step, (int, float)) or not (math.isfinite(step) and step > 0):
        raise ValueError(f"step: expected a positive finite number, got {step!r}")
    if isinstance(n_iter, bool) or not isinstance(n_iter, int) or n_iter < 1:
        raise ValueError(f"n_iter: expected a positive int, got {n_iter!r}")


def _grad(potential: Potential, x: Tensor) -> tuple[Tensor, Tensor]:
    x = x.detach().requires_grad_(True)
    u = potential(x)
    (g,) = torch.autograd.grad(u, x)
    return u.detach(), g


def peer_ula(potential: Potential, x0: Tensor, step: float, n_iter: int) -> tuple[Tensor, Tensor]:
    r"""Plain ULA, :math:`x \leftarrow x - \delta\nabla U(x) + \sqrt{2\delta}\,\xi`.

    Returns the chain ``(n_iter, *x0.shape)`` and :math:`U` at each iterate ``(n_iter,)`` (the
    value computed for the next step's gradient, as a user loop has it for free: :math:`U(x_k)`
    is evaluated at iteration ``k + 1``; the last one costs one extra evaluation).
    """
    _check_args(x0, step, n_iter)
    x = x0.detach().clone()
    chain, energies = [], []
    u, g = _grad(potential, x)
    for _ in range(n_iter):
        x = x - step * g + math.sqrt(2.0 * step) * torch.randn_like(x)
        u, g = _grad(potential, x)
        chain.append(x)
        energies.append(u)
    return torch.stack(chain), torch.stack(energies)


def peer_mala(potential: Potential, x0: Tensor, step: float, n_iter: int) -> tuple[Tensor, Tensor, Tensor]:
    r"""Plain MALA with a fixed step. Returns the chain, :math:`U` of each kept state and the
    acceptance probabilities ``(n_iter,)``."""
    _check_args(x0, step, n_iter)

    def log_q(to: Tensor, frm: Tensor, g_frm: Tensor) -> Tensor:
        return -(to - frm + step * g_frm).pow(2).sum() / (4.0 * step)

    x = x0.detach().clone()
    u, g = _grad(potential, x)
    chain, energies, probs = [], [], []
    for _ in range(n_iter):
        xp = x - step * g + math.sqrt(2.0 * step) * torch.randn_like(x)
        up, gp = _grad(potential, xp)
        log_alpha = float(u - up + log_q(x, xp, gp) - log_q(xp, x, g))
        a = 0.0 if math.isnan(log_alpha) else math.exp(min(log_alpha, 0.0))
        if float(torch.rand((), dtype=torch.float64)) < a:
            x, u, g = xp, up, gp
        chain.append(x)
        energies.append(u)
        probs.append(a)
    return torch.stack(chain), torch.stack(energies), torch.tensor(probs, dtype=torch.float64)


def sample_posterior_chain_seed(seed: int) -> int:
    """The seed :func:`~bayesinv.infer.mcmc.sample_posterior` gives chain 0 (replicated:
    ``numpy.random.SeedSequence(seed).spawn(1)``, first uint32 word)."""
    return int(np.random.SeedSequence(seed).spawn(1)[0].generate_state(1, dtype=np.uint32)[0])


# -- problem and runners -----------------------------------------------------------------------------
def build(n_patches: int | None, lam: float = LAM):
    """The problem, measurement, start, truth and the scalar potential ``U(x)`` for ``(C, H, W)``."""
    _, op, truth, y, problem = patchnr_ct_problem(SIZE, N_ANGLES, SIGMA, lam, n_patches, PAD)
    with torch.no_grad():
        x0 = op.init_estimate(y)[0].clamp(0, 1)

    def potential(x: Tensor) -> Tensor:
        return problem.potential(x[None], y, space="image").sum()

    return problem, y, x0, truth, potential


def _clock(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def run_sample_posterior(kind: str, problem, y: Tensor, x0: Tensor, step: float, n: int):
    from bayesinv.infer.mcmc import sample_posterior

    post = sample_posterior(problem, y, kernel=kind, num_chains=1, num_samples=n, warmup_steps=0,
                            init=x0, step_size=step, adapt_step_size=False, seed=SEED,
                            progress=False)
    return post.samples[0], -post.sample_stats["lp"][0], None


def run_kernel(kind: str, potential: Potential, x0: Tensor, step: float, n: int, seed: int):
    from bayesinv.infer.kernels import MALA, ULA

    pot = lambda p: potential(p["x"])  # noqa: E731
    kernel = ULA(pot, step) if kind == "ula" else MALA(pot, step, adapt_step_size=False)
    torch.manual_seed(seed)
    kernel.initial_params = {"x": x0}
    kernel.setup(0)
    params = kernel.initial_params  # the object setup cached the gradient for
    chain, energies = [], []
    for _ in range(n):
        params = kernel.sample(params)
        chain.append(params["x"])
        energies.append(kernel.last_stats["potential_energy"])
    kernel.cleanup()
    return torch.stack(chain), torch.tensor(energies), None


def run_pyro_mcmc(potential: Potential, x0: Tensor, step: float, n: int, seed: int):
    from pyro.infer import MCMC

    from bayesinv.infer.kernels import ULA

    kernel = ULA(lambda p: potential(p["x"]), step)
    torch.manual_seed(seed)
    mcmc = MCMC(kernel, num_samples=n, warmup_steps=0, initial_params={"x": x0},
                disable_progbar=True)
    mcmc.run()
    return mcmc.get_samples()["x"], None, None


def run_peer(kind: str, potential: Potential, x0: Tensor, step: float, n: int, seed: int):
    """The peer loop seeded with ``seed``."""
    torch.manual_seed(seed)
    if kind == "ula":
        return (*peer_ula(potential, x0, step, n), None)
    return peer_mala(potential, x0, step, n)


def _max_rel(a: Tensor, b: Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-12))


def bench_kernel(kind: str, n: int, repeats: int) -> dict[str, Any]:
    """Time the variants for ``kind`` in ``("ula", "mala")`` and check the chains agree."""
    from bayesinv.metrics import psnr

    step, n_patches = (ULA_STEP, ULA_PATCHES) if kind == "ula" else (MALA_STEP, MALA_PATCHES)
    problem, y, x0, truth, potential = build(n_patches)
    chain_seed = sample_posterior_chain_seed(SEED)
    variants: dict[str, Callable[[int], Any]] = {
        "ours_sample_posterior": lambda m: run_sample_posterior(kind, problem, y, x0, step, m),
        "ours_kernel": lambda m: run_kernel(kind, potential, x0, step, m, chain_seed),
        "peer": lambda m: run_peer(kind, potential, x0, step, m, chain_seed),
    }
    if kind == "ula":
        variants["ours_pyro_mcmc"] = lambda m: run_pyro_mcmc(potential, x0, step, m, chain_seed)
    for fn in variants.values():  # untimed warm-up (first-call allocations)
        fn(3)
    wall: dict[str, list[float]] = {k: [] for k in variants}
    cpu: dict[str, list[float]] = {k: [] for k in variants}
    outputs: dict[str, Any] = {}
    names = list(variants)
    for r in range(repeats):
        for name in (names if r % 2 == 0 else names[::-1]):
            out, w, c = _clock(lambda: variants[name](n))  # noqa: B023 - called at once
            wall[name].append(w)
            cpu[name].append(c)
            outputs.setdefault(name, out)
    peer_chain, peer_u, peer_probs = outputs["peer"]
    checks: dict[str, Any] = {}
    for name in names:
        if name == "peer":
            continue
        chain, u, _ = outputs[name]
        ref_chain, ref_u = peer_chain, peer_u
        chain = chain.reshape(peer_chain.shape)
        checks[name] = {"compared_with": "peer",
                        "chain_max_abs_diff": float((chain - ref_chain).abs().max()),
                        "chain_max_rel_diff": _max_rel(chain, ref_chain)}
        if u is not None:
            mu, mref = float(u.double().mean()), float(ref_u.double().mean())
            checks[name]["mean_potential"] = mu
            checks[name]["mean_potential_rel_diff"] = abs(mu - mref) / abs(mref)
    checks["peer_mean_potential"] = float(peer_u.double().mean())
    for name, c in checks.items():
        if isinstance(c, dict) and not c["chain_max_abs_diff"] <= 1e-5:
            raise AssertionError(f"{kind}: {name} and the peer chain differ for the same seed: {c}")
    res: dict[str, Any] = {
        "iterations": n, "repeats": repeats, "step_size": step, "lambda": LAM,
        "n_patches": n_patches, "seed": SEED, "chain_seed": chain_seed,
    }
    for name in names:
        res[name] = {"iters_per_s_cpu": n / statistics.median(cpu[name]),
                     "iters_per_s_wall": n / statistics.median(wall[name]),
                     "iters_per_s_cpu_best": n / min(cpu[name]),
                     "cpu_s": cpu[name], "wall_s": wall[name]}
    for name in names:
        if name != "peer":
            res[f"ratio_{name}_over_peer_cpu"] = res[name]["iters_per_s_cpu"] / res["peer"]["iters_per_s_cpu"]
            res[f"ratio_{name}_over_peer_wall"] = res[name]["iters_per_s_wall"] / res["peer"]["iters_per_s_wall"]
            res[f"ratio_{name}_over_peer_cpu_best"] = (res[name]["iters_per_s_cpu_best"]
                                                        / res["peer"]["iters_per_s_cpu_best"])
    res["checks"] = checks
    res["psnr_start"] = psnr(x0, truth[0])
    res["psnr_last_draw"] = psnr(peer_chain[-1], truth[0])
    res["psnr_chain_mean"] = psnr(peer_chain.mean(0), truth[0])
    if peer_probs is not None:
        res["peer_acceptance_rate"] = float(peer_probs.mean())
    return res


def main(quick: bool = False, out_dir: str | Path | None = RESULTS_DIR) -> dict[str, Any]:
    """Run the benchmark; returns the result dict and writes ``langevin[.quick].{json,md}`` to
    ``out_dir`` (``None``: nothing written)."""
    torch.set_num_threads(1)
    cfg = dict(QUICK if quick else FULL)
    t0 = time.perf_counter()
    ula = bench_kernel("ula", cfg["ula_iters"], cfg["repeats"])
    print(f"  ULA: ours/peer (cpu) = {ula['ratio_ours_sample_posterior_over_peer_cpu']:.3f}", flush=True)
    mala = bench_kernel("mala", cfg["mala_iters"], cfg["repeats"])
    print(f"  MALA: ours/peer (cpu) = {mala['ratio_ours_sample_posterior_over_peer_cpu']:.3f}", flush=True)
    result: dict[str, Any] = {
        "benchmark": "ULA/MALA iterations per second: ours (sample_posterior, kernels, "
                     "pyro.infer.MCMC) vs a plain-torch loop (deepinv-style ULA)",
        "quick": quick, "deepinv": DEEPINV_NOTE, "config": cfg,
        "problem": {"image": f"{SIZE}x{SIZE} ellipse phantom, seed {TEST_SEED}",
                    "operator": f"Radon.sparse_view, {N_ANGLES} angles", "sigma": SIGMA,
                    "lambda": LAM, "pad": PAD, "flow": "patchnr_ct (5 blocks, subnets 2x128)",
                    "init": "FBP clipped to [0, 1]"},
        "ula": ula, "mala": mala,
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "machine": platform.platform(), "processor": platform.processor() or platform.machine(),
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "wall_time_s": time.perf_counter() - t0,
    }
    result["verdict"] = verdict(result)
    write_results(result, out_dir, NAME, quick, markdown)
    return result


def verdict(r: dict[str, Any]) -> str:
    """One sentence per kernel: what the ratios of ``sample_posterior`` say."""
    parts = []
    for kind in ("ula", "mala"):
        k = r[kind]
        med, best = (k["ratio_ours_sample_posterior_over_peer_cpu"],
                     k["ratio_ours_sample_posterior_over_peer_cpu_best"])
        word = ratio_word(best) if ratio_word(best) == ratio_word(med) else ratio_word(1.0)  # disagreeing: noise
        parts.append(f"{kind.upper()}: sample_posterior/peer = {med:.2f} it/s (cpu, median; best "
                     f"run {best:.2f}), {word}.")
    return " ".join(parts)


def markdown(r: dict[str, Any]) -> str:
    """The result as a short Markdown page."""
    lines = [f"# ULA / MALA iterations per second ({'quick' if r['quick'] else 'full'} mode)", "",
             f"> {r['deepinv']}", "",
             f"Problem: {r['problem']['image']}, {r['problem']['operator']}, σ = {SIGMA}, "
             f"patchNR prior {r['problem']['flow']} with λ = {LAM:g}, pad {PAD}, start "
             f"{r['problem']['init']}. torch {r['torch']}, {r['threads']} thread, "
             f"{r['machine']}, {r['date']}.", "",
             "| kernel | variant | it/s (cpu, median) | it/s (wall) | ratio ours/peer (cpu) | "
             "ratio (cpu, best run) | ratio (wall) | max abs chain diff vs peer |",
             "|---|---|---|---|---|---|---|---|"]
    for kind in ("ula", "mala"):
        k = r[kind]
        for name in ("ours_sample_posterior", "ours_kernel", "ours_pyro_mcmc", "peer"):
            if name not in k:
                continue
            v = k[name]
            ratio = k.get(f"ratio_{name}_over_peer_cpu")
            ratio_w = k.get(f"ratio_{name}_over_peer_wall")
            ratio_b = k.get(f"ratio_{name}_over_peer_cpu_best")
            diff = k["checks"].get(name, {}).get("chain_max_abs_diff")
            lines.append(f"| {kind.upper()} (δ = {k['step_size']:g}, N_p = {k['n_patches'] or 'all'}, "
                         f"{k['iterations']} it.) | {name} | {v['iters_per_s_cpu']:.2f} | "
                         f"{v['iters_per_s_wall']:.2f} | {'—' if ratio is None else f'{ratio:.3f}'} | "
                         f"{'—' if ratio_b is None else f'{ratio_b:.3f}'} | "
                         f"{'—' if ratio_w is None else f'{ratio_w:.3f}'} | "
                         f"{'—' if diff is None else f'{diff:.1e}'} |")
    lines += ["", f"**Verdict.** {verdict(r)}"]
    lines += ["", f"MALA peer acceptance rate: {r['mala'].get('peer_acceptance_rate', float('nan')):.2f}. "
              "Chains of ours and the peer are identical for the same seed (asserted, "
              "sample_posterior included). Ratios > 1 mean we are faster, < 1 is our per-iteration "
              "overhead (statistics, checks, stored draws); run-to-run spread on the shared "
              "machine is about ±10%."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="few iterations (well under a minute)")
    args = ap.parse_args()
    res = main(quick=args.quick)
    print(json.dumps({k: {kk: vv for kk, vv in res[k].items() if kk.startswith("ratio")}
                      for k in ("ula", "mala")}, indent=1))
