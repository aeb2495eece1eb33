r"""MCMC posterior sampling: NUTS/HMC on latents, MALA/ULA on images.

:func:`sample_posterior` draws Markov chains from :math:`p(x \mid y)` of an
:class:`~bayesinv.InverseProblem`:

* ``kernel="nuts"`` / ``"hmc"`` (Hoffman & Gelman 2014; Neal 2011), Pyro's kernels on the latent
  :math:`z` of a :class:`~bayesinv.priors.LatentPrior`, with the potential
  :math:`U(z) = \tfrac{1}{2\sigma^2}\|A(G(z)) - y\|^2 + \tfrac12\|z\|^2`
  (:meth:`InverseProblem.potential` with ``space="latent"``), started at the latent MAP; the
  image draws are :math:`x = G(z)`. A flow makes this posterior well conditioned (DESIGN §4).
* ``kernel="mala"`` / ``"ula"`` (:mod:`bayesinv.infer.kernels`) on the image :math:`x` with
  :math:`U(x) = \tfrac{1}{2\sigma^2}\|A(x) - y\|^2 - \log p(x)`, for any prior (patch priors),
  started at the image MAP.

The chains are driven step by step by our own loop (the same ``setup``/``sample`` protocol as
Pyro's ``MCMC._SingleSampler``), which gives per-draw sample statistics (Pyro 1.9.2's ``MCMC``
has no ``get_extra_fields``), a NaN guard, thinning, and exact checkpoint/resume: the chain
position, the kernel's adaptation state (step size, dual-averaging state, mass matrix) and the
RNG states are written atomically (temporary file + ``os.replace``) as safetensors with JSON
metadata — no pickle. Each chain ``c`` is seeded independently from ``seed`` (NumPy
``SeedSequence(seed).spawn``), so sequential and parallel (forked processes) runs give the same
draws.

NUTS/HMC checkpoints are written at the end of warm-up and every ``checkpoint_every`` draws
afterwards (a run interrupted during warm-up redoes the warm-up, which is deterministic, so the
result is the same); MALA/ULA checkpoints every ``checkpoint_every`` iterations, warm-up
included.
"""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing as mp
import os
import random
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import torch
from pyro.infer.mcmc import HMC, NUTS
from safetensors.torch import load_file, save_file
from torch import Tensor

from .._checks import as_tensor, check_choice, check_int, check_positive
from ..flows.train import _tensor_digest
from ..priors.base import LatentPrior
from ..problem import GaussianNoise, InverseProblem
from ._progress import progress_bar
from .kernels import MALA, ULA, check_preconditioner
from .posterior import Posterior

KERNELS = ("nuts", "hmc", "mala", "ula")
CHAIN_METHODS = ("sequential", "parallel")
_FORMAT = "bayesinv-mcmc-checkpoint-1"
LOW_ACCEPTANCE = 0.01  #: mean acceptance below this warns (the step size is the usual cause)
_STAT_KEYS = {"nuts": ("accept_prob", "step_size", "diverging", "num_steps", "tree_depth", "lp"),
              "hmc": ("accept_prob", "step_size", "diverging", "num_steps", "lp"),
              "mala": ("accept_prob", "step_size", "diverging", "lp"),
              "ula": ("step_size", "diverging", "lp")}

HookFn = Callable[[Any, dict[str, Tensor], str, int], None]


@dataclass
class _Spec:
    """Everything a chain needs (shared by the sequential and the forked runners)."""

    problem: InverseProblem
    y: Tensor
    kernel: str
    site: str
    init: Tensor
    num_samples: int
    warmup_steps: int
    thin: int
    step_size: float | None
    adapt_step_size: bool
    adapt_mass_matrix: bool
    dense_mass: bool
    inverse_mass: Tensor | None
    max_tree_depth: int
    num_steps: int | None
    target_accept_prob: float | None
    jit_compile: bool
    preconditioner: float | Tensor | None
    checkpoint: Path | None
    checkpoint_every: int
    hook_fn: HookFn | None
    progress: bool | None


def sample_posterior(
    problem: InverseProblem,
    y: Tensor,
    *,
    kernel: str = "nuts",
    num_chains: int = 4,
    num_samples: int = 500,
    warmup_steps: int = 500,
    init: str | Tensor = "map",
    step_size: float | None = None,
    adapt_step_size: bool = True,
    target_accept_prob: float | None = None,
    adapt_mass_matrix: bool | None = None,
    dense_mass: bool = False,
    inverse_mass_matrix: str | Tensor | None = None,
    max_tree_depth: int = 10,
    num_steps: int | None = None,
    jit_compile: bool = False,
    preconditioner: float | Tensor | None = None,
    thin: int = 1,
    seed: int = 0,
    chain_method: str = "sequential",
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 100,
    progress: bool | None = None,
    truth: Tensor | None = None,
    store: str | os.PathLike | None = None,
    chunk_size: int = 256,
    hook_fn: HookFn | None = None,
) -> Posterior:
    r"""Draw MCMC chains from the posterior of ``problem`` given one measurement ``y``.

    Parameters
    ----------
    problem
        The :class:`~bayesinv.InverseProblem`.
    y
        One measurement, ``measurement_shape`` or ``(1, *measurement_shape)``.
    kernel
        ``"nuts"`` or ``"hmc"`` (Pyro, on the latent ``z``; needs a LatentPrior), ``"mala"`` or
        ``"ula"`` (ours, on the image ``x``; any prior).
    num_chains, num_samples, warmup_steps
        Chains, kept draws per chain (after thinning) and warm-up iterations per chain.
    init
        ``"map"`` (latent MAP for NUTS/HMC, image MAP for MALA/ULA), ``"prior"`` (a prior draw
        per chain), ``"zeros"``, ``"pinv"`` (the operator's ``init_estimate``; image kernels),
        or a tensor in the sampled space (``latent_shape`` or ``image_shape``, optionally with
        a leading ``num_chains`` axis).
    step_size
        Initial (adapted) or fixed step. Defaults: 1.0 for NUTS/HMC (then adapted), for MALA
        ``0.5 / L`` with :math:`L` estimated from the gradient at the start, for ULA required
        (reference with patchNR on CT: 2e-7 with :math:`\lambda = 6000`).
    adapt_step_size, target_accept_prob
        Warm-up step-size adaptation by dual averaging (NUTS/HMC/MALA) toward the target
        acceptance (0.8 for NUTS/HMC, 0.574 for MALA).
    adapt_mass_matrix, dense_mass, max_tree_depth, num_steps, jit_compile
        Passed to Pyro's NUTS/HMC (``adapt_mass_matrix`` defaults to True, or to False when
        ``inverse_mass_matrix`` is given). ``num_steps``: HMC leapfrog steps (default 10); as in Pyro
        the trajectory length ``step_size x num_steps`` is what stays fixed while the step is
        adapted. ``jit_compile``: Pyro 1.9.2 only JIT-traces *models*, not a ``potential_fn``,
        so with our potential it is recorded but has no effect.
    inverse_mass_matrix
        NUTS/HMC: ``None`` (Pyro's: identity, adapted in warm-up windows if
        ``adapt_mass_matrix``), ``"laplace"``: the dense Gauss–Newton Laplace covariance
        :math:`(J^\top J/\sigma^2 + I)^{-1}` at the first chain's start (the latent MAP with
        ``init="map"``; :func:`~bayesinv.infer.laplace.latent_laplace_covariance`, Gaussian
        noise only), or a ``(D, D)`` SPD tensor. It preconditions the sampler so the posterior
        is near-isotropic in its coordinates — in ``D = 1024`` latent dimensions windowed
        adaptation from a few hundred draws cannot estimate a dense matrix — and is kept fixed
        (the step size is still adapted).
    preconditioner
        Fixed scalar or diagonal :math:`M` for MALA/ULA.
    thin
        Keep every ``thin``-th iteration after warm-up.
    seed
        Seeds every chain (independently, reproducibly).
    chain_method
        ``"sequential"``, or ``"parallel"``: one forked process per chain (one torch thread
        each) when the machine has more than one core and the problem is on the CPU (falls
        back to sequential otherwise; ``settings["chain_method_used"]`` says which ran). Each
        chain has its own seed, so the draws are the same either way (bitwise in the tests;
        on large problems multi-threaded reductions in the sequential run may differ in the
        last bits). Pyro's own multi-process ``MCMC`` is not used because it cannot return
        per-draw statistics or checkpoint; the kernels still work with ``pyro.infer.MCMC``.
    checkpoint, checkpoint_every
        A directory for resumable checkpoints (created; reused on a later call with the same
        settings), and the cadence in iterations.
    progress
        Progress bar (``None``: when stderr is a terminal).
    truth
        Ground truth ``(C, H, W)`` for reports.
    store
        A directory: image draws are streamed to ``samples.npy`` (memory-mapped, written in
        chunks of ``chunk_size`` draws) with ``index.json``; the returned posterior's samples are
        backed by that file instead of memory.
    hook_fn
        ``hook_fn(kernel, params, stage, i)`` after every iteration (as in ``pyro.infer.MCMC``);
        ``stage`` is ``"Warmup [c]"`` or ``"Sample [c]"``.

    Returns
    -------
    Posterior
        Kind ``"markov"``: ``samples`` ``(chain, draw, C, H, W)``, ``latent_samples`` for
        NUTS/HMC, ``sample_stats`` of shape ``(chain, draw)``: ``accept_prob`` (MH acceptance
        probability; for NUTS Pyro's mean over the tree), ``step_size``, ``diverging``, ``lp``
        (:math:`-U` of the kept state, up to a constant) and, for NUTS/HMC, ``num_steps``
        (leapfrog steps = gradient evaluations); NUTS also ``tree_depth`` (derived as
        :math:`\lceil\log_2(\text{num\_steps} + 1)\rceil`). Timings: total, MAP/init,
        image generation and per-chain wall time (``chain_{c}_s``).
    """
    if not isinstance(problem, InverseProblem):
        raise TypeError(f"problem: expected an InverseProblem, got {type(problem).__name__}")
    check_choice(kernel, "kernel", KERNELS)
    num_chains = check_int(num_chains, "num_chains")
    num_samples = check_int(num_samples, "num_samples")
    warmup_steps = check_int(warmup_steps, "warmup_steps", minimum=0)
    thin = check_int(thin, "thin")
    seed = check_int(seed, "seed", minimum=0)
    max_tree_depth = check_int(max_tree_depth, "max_tree_depth")
    checkpoint_every = check_int(checkpoint_every, "checkpoint_every")
    chunk_size = check_int(chunk_size, "chunk_size")
    check_choice(chain_method, "chain_method", CHAIN_METHODS)
    if num_steps is not None:
        num_steps = check_int(num_steps, "num_steps")
    if step_size is not None:
        step_size = check_positive(step_size, "step_size")
    if target_accept_prob is not None and not 0.0 < float(target_accept_prob) < 1.0:
        raise ValueError(f"target_accept_prob: expected a number in (0, 1), got {target_accept_prob!r}")
    latent = kernel in ("nuts", "hmc")
    if latent and not isinstance(problem.prior, LatentPrior):
        raise ValueError(f"kernel: {kernel!r} samples the latent z and needs a LatentPrior, but the "
                         f"prior is {type(problem.prior).__name__}; use kernel='mala' or 'ula'")
    if kernel == "ula" and step_size is None:
        raise ValueError("step_size: ULA needs a fixed step (reference with patchNR on CT: 2e-7)")
    if not latent:
        preconditioner = check_preconditioner(preconditioner, tuple(problem.image_shape))
    if inverse_mass_matrix is not None and not latent:
        raise ValueError("inverse_mass_matrix: only for kernel='nuts'/'hmc' (use preconditioner "
                         "for MALA/ULA)")
    if isinstance(inverse_mass_matrix, str):
        check_choice(inverse_mass_matrix, "inverse_mass_matrix", ("laplace",))
    elif inverse_mass_matrix is not None and not isinstance(inverse_mass_matrix, Tensor):
        raise TypeError(f"inverse_mass_matrix: expected None, 'laplace' or a (D, D) tensor, got "
                        f"{type(inverse_mass_matrix).__name__}")
    if adapt_mass_matrix is None:
        adapt_mass_matrix = inverse_mass_matrix is None
    y = problem.check_measurement(y)
    if y.shape[0] != 1:
        raise ValueError(f"y: expected one measurement, got a batch of {y.shape[0]}")
    truth_t = None
    if truth is not None:
        from .._checks import as_image_batch

        truth_t = as_image_batch(truth, "truth", problem.image_shape)[0]

    site = "z" if latent else "x"
    t_start = time.perf_counter()
    inits = _initial_values(problem, y, site, init, num_chains, seed)
    inverse_mass = _inverse_mass(problem, inverse_mass_matrix, inits[0]) if latent else None
    t_init = time.perf_counter() - t_start
    settings: dict[str, Any] = {
        "kernel": kernel, "num_chains": num_chains, "num_samples": num_samples,
        "warmup_steps": warmup_steps, "init": init if isinstance(init, str) else "tensor",
        "step_size": step_size, "adapt_step_size": adapt_step_size,
        "target_accept_prob": target_accept_prob, "adapt_mass_matrix": adapt_mass_matrix,
        "dense_mass": dense_mass or inverse_mass is not None,
        "inverse_mass_matrix": inverse_mass_matrix if isinstance(inverse_mass_matrix, str) or
        inverse_mass_matrix is None else "tensor",
        "max_tree_depth": max_tree_depth, "num_steps": num_steps,
        "jit_compile": jit_compile, "thin": thin, "chain_method": chain_method,
        "space": "latent" if latent else "image",
        "preconditioner": None if preconditioner is None else
        (float(preconditioner) if isinstance(preconditioner, (int, float)) or
         (isinstance(preconditioner, Tensor) and preconditioner.dim() == 0) else "diagonal"),
    }
    init_hash = hashlib.sha256(torch.stack(inits).detach().cpu().numpy().tobytes()).hexdigest()
    mass_hash = None if inverse_mass is None else \
        hashlib.sha256(inverse_mass.detach().cpu().numpy().tobytes()).hexdigest()
    key = json.dumps({**settings, "seed": seed, "problem": problem.describe(), "init_sha256": init_hash,
                      "inverse_mass_sha256": mass_hash,
                      "y_sha256": hashlib.sha256(y.detach().cpu().numpy().tobytes()).hexdigest()},
                     sort_keys=True, default=str)
    ckpt = None if checkpoint is None else Path(checkpoint)
    if ckpt is not None:
        _prepare_checkpoint_dir(ckpt, key)
    spec = _Spec(problem=problem, y=y, kernel=kernel, site=site, init=inits[0],
                 num_samples=num_samples, warmup_steps=warmup_steps, thin=thin,
                 step_size=step_size, adapt_step_size=adapt_step_size,
                 adapt_mass_matrix=adapt_mass_matrix,
                 dense_mass=dense_mass or inverse_mass is not None, inverse_mass=inverse_mass,
                 max_tree_depth=max_tree_depth, num_steps=num_steps,
                 target_accept_prob=target_accept_prob, jit_compile=jit_compile,
                 preconditioner=preconditioner, checkpoint=ckpt,
                 checkpoint_every=checkpoint_every, hook_fn=hook_fn, progress=progress)
    seeds = _chain_seeds(seed, num_chains)
    # forked workers share the problem without pickling it; CUDA cannot be used after fork
    parallel = (chain_method == "parallel" and num_chains > 1 and (os.cpu_count() or 1) > 1
                and "fork" in mp.get_all_start_methods() and y.device.type == "cpu")
    settings["chain_method_used"] = "parallel" if parallel else "sequential"
    sink = _ImageSink(problem, (num_chains, num_samples), latent, store, chunk_size, y.dtype)
    rng_before = _get_rng_state()
    try:
        if parallel:
            results = _run_parallel(spec, inits, seeds)
            for c, r in enumerate(results):
                sink.write(c, r)
        else:
            results = []
            for c in range(num_chains):
                results.append(_run_chain(spec, c, inits[c], seeds[c]))
                sink.write(c, results[-1])  # with store, image draws leave memory chain by chain
    except BaseException:
        sink.abort()
        raise
    finally:
        _set_rng_state(rng_before)  # leave the caller's global RNG streams as they were

    stats = {k: torch.stack([r["stats"][k] for r in results]) for k in results[0]["stats"]}
    samples = sink.finish(settings)
    draws = torch.stack([r["draws"] for r in results]) if latent else None
    if "diverging" in stats:
        stats["diverging"] = stats["diverging"].bool()
    settings["final_step_size"] = [r["final_step_size"] for r in results]
    _warn_low_acceptance(kernel, stats, settings["final_step_size"])
    timings = {"total_s": time.perf_counter() - t_start, "init_s": t_init, "images_s": sink.seconds,
               **{f"chain_{c}_s": r["wall_s"] for c, r in enumerate(results)}}
    return Posterior(samples=samples, method=kernel, kind="markov",
                     latent_samples=draws, sample_stats=stats,
                     observed=y[0], truth=truth_t, settings=settings, seed=seed, timings=timings,
                     problem=problem.describe())


def _warn_low_acceptance(kernel: str, stats: dict[str, Tensor], step_sizes: list[float]) -> None:
    """``RuntimeWarning`` for each chain whose mean acceptance probability is below 1 %."""
    if "accept_prob" not in stats:  # ULA accepts every proposal
        return
    rates = stats["accept_prob"].double().mean(dim=1)
    for c, rate in enumerate(rates.tolist()):
        if rate < LOW_ACCEPTANCE:
            warnings.warn(
                f"{kernel}: chain {c} accepted {100 * rate:.2g}% of its proposals (mean acceptance "
                f"probability {rate:.3g}) with step_size={step_sizes[c]:.3g}; the chain barely "
                "moved, so its draws are not a posterior sample. Likely cause: the step size is "
                "too large (lower step_size, or leave it to the warm-up adaptation)",
                RuntimeWarning, stacklevel=3)


# -- initial values ------------------------------------------------------------------------------
def _initial_values(problem: InverseProblem, y: Tensor, site: str, init: str | Tensor,
                    num_chains: int, seed: int) -> list[Tensor]:
    shape = tuple(problem.prior.latent_shape) if site == "z" else tuple(problem.image_shape)
    dtype, device = y.dtype, y.device
    if isinstance(init, Tensor):
        v = as_tensor(init, "init").to(device=device, dtype=dtype)
        if tuple(v.shape) == shape:
            v = v.expand(num_chains, *shape)
        if tuple(v.shape) != (num_chains, *shape):
            raise ValueError(f"init: expected shape {shape} or {(num_chains, *shape)} for the "
                             f"{'latent' if site == 'z' else 'image'}, got {tuple(init.shape)}")
        if not bool(torch.isfinite(v).all()):
            raise ValueError("init: contains NaN/inf")
        return [v[c].detach().clone() for c in range(num_chains)]
    if not isinstance(init, str):
        raise TypeError(f"init: expected a string or a tensor, got {type(init).__name__}")
    check_choice(init, "init", ("map", "prior", "zeros", "pinv"))
    if init == "map":
        from .map import map_estimate

        post = map_estimate(problem, y, method="latent" if site == "z" else "image",
                            seed=seed, progress=False)
        v = post.latent_samples[0, 0] if site == "z" else post.samples[0, 0]
        v = v.to(device=device, dtype=dtype)
        return [v.clone() for _ in range(num_chains)]
    if init == "zeros":
        return [y.new_zeros(shape) for _ in range(num_chains)]
    if init == "pinv":
        if site == "z":
            raise ValueError("init: 'pinv' is for image kernels (mala/ula); use 'map' for latents")
        with torch.no_grad():
            v = problem.operator.init_estimate(y).reshape(shape).to(dtype)
        return [v.clone() for _ in range(num_chains)]
    gen = torch.Generator().manual_seed(seed)
    if site == "z":
        return [torch.randn(shape, generator=gen, dtype=dtype).to(device) for _ in range(num_chains)]
    try:
        with torch.no_grad():
            return [problem.prior.sample(1, generator=gen)[0].to(device=device, dtype=dtype)
                    for _ in range(num_chains)]
    except NotImplementedError:
        raise ValueError(f"init: 'prior' needs a prior that can be sampled; "
                         f"{type(problem.prior).__name__} cannot — use 'map' or 'pinv'") from None


def _chain_seeds(seed: int, num_chains: int) -> list[int]:
    return [int(s.generate_state(1, dtype=np.uint32)[0]) for s in
            np.random.SeedSequence(seed).spawn(num_chains)]


# -- kernels ---------------------------------------------------------------------------------------
class _CountingPotential:
    """:math:`U` of one site as Pyro kernels want it, counting evaluations (= gradient steps)."""

    def __init__(self, problem: InverseProblem, y: Tensor, site: str) -> None:
        self.problem, self.y, self.site = problem, y, site
        self.space = "latent" if site == "z" else "image"
        self.calls = 0

    def __call__(self, params: dict[str, Tensor]) -> Tensor:
        self.calls += 1
        return self.problem.potential(params[self.site][None], self.y, space=self.space).sum()


def _make_kernel(spec: _Spec, potential: _CountingPotential, resume: dict[str, Any] | None):
    """Build the kernel; with ``resume`` (a post-warm-up NUTS/HMC state) adaptation is off."""
    if spec.kernel in ("nuts", "hmc"):
        opts: dict[str, Any] = dict(
            potential_fn=potential, step_size=spec.step_size or 1.0,
            adapt_step_size=spec.adapt_step_size, adapt_mass_matrix=spec.adapt_mass_matrix,
            full_mass=spec.dense_mass, jit_compile=spec.jit_compile, ignore_jit_warnings=True,
            target_accept_prob=spec.target_accept_prob or 0.8)
        if resume is not None:
            opts.update(step_size=resume["step_size"], adapt_step_size=False,
                        adapt_mass_matrix=False)
        if spec.kernel == "nuts":
            return NUTS(max_tree_depth=spec.max_tree_depth, **opts)
        return HMC(num_steps=spec.num_steps or 10, **opts)
    if spec.kernel == "ula":
        return ULA(potential, spec.step_size, preconditioner=spec.preconditioner)
    step = spec.step_size if spec.step_size is not None else _mala_default_step(potential, spec.init)
    return MALA(potential, step, adapt_step_size=spec.adapt_step_size,
                target_accept_prob=spec.target_accept_prob or 0.574,
                preconditioner=spec.preconditioner)


def _inverse_mass(problem: InverseProblem, choice: str | Tensor | None, z0: Tensor) -> Tensor | None:
    """The fixed dense inverse mass matrix for NUTS/HMC (``None``: Pyro's default)."""
    if choice is None:
        return None
    d = math.prod(problem.prior.latent_shape)
    if isinstance(choice, str):  # "laplace"
        from .laplace import latent_laplace_covariance

        if not isinstance(problem.noise, GaussianNoise):
            raise ValueError("inverse_mass_matrix: 'laplace' needs Gaussian noise; pass a (D, D) "
                             "tensor instead")
        m = latent_laplace_covariance(problem, z0)
    else:
        m = choice.detach().to(torch.float64)
        if tuple(m.shape) != (d, d):
            raise ValueError(f"inverse_mass_matrix: expected a ({d}, {d}) matrix, got {tuple(m.shape)}")
        if not bool(torch.isfinite(m).all()) or not torch.allclose(m, m.T, rtol=1e-6, atol=1e-10):
            raise ValueError("inverse_mass_matrix: expected a finite symmetric matrix")
        if torch.linalg.cholesky_ex(m).info != 0:
            raise ValueError("inverse_mass_matrix: expected a positive definite matrix")
    return m.to(device=z0.device, dtype=z0.dtype).contiguous()


def _mala_default_step(potential: _CountingPotential, x0: Tensor) -> float:
    r"""``0.5 / L`` with :math:`L \approx \|\nabla U(x_0 + h) - \nabla U(x_0)\| / \|h\|`."""
    from .kernels import potential_and_grad

    h = 1e-3 * (x0.abs().mean() + 1e-3) * torch.ones_like(x0)
    _, g0 = potential_and_grad(potential, x0, potential.site)
    _, g1 = potential_and_grad(potential, x0 + h, potential.site)
    potential.calls = 0
    lip = float((g1 - g0).norm() / h.norm())
    return 0.5 / lip if math.isfinite(lip) and lip > 0 else 1e-3


def _kernel_state(kernel: Any) -> tuple[dict[str, Any], dict[str, Tensor]]:
    if isinstance(kernel, (MALA, ULA)):
        return kernel.get_state(), {}
    tensors = {}
    names = []
    for i, (sites, inv_mass) in enumerate(kernel.inverse_mass_matrix.items()):
        tensors[f"inverse_mass_matrix_{i}"] = inv_mass.detach().contiguous()
        names.append(list(sites))
    state = {"step_size": float(kernel.step_size), "mass_sites": names,
             "accept_cnt": kernel._accept_cnt, "mean_accept_prob": kernel._mean_accept_prob,
             "divergences": list(kernel._divergences),
             "sampling_iterations": max(kernel._t - kernel._warmup_steps, 0)}
    return state, tensors


def _restore_kernel(kernel: Any, state: dict[str, Any], tensors: dict[str, Tensor]) -> None:
    if isinstance(kernel, (MALA, ULA)):
        kernel.set_state(state)
        return
    value = {tuple(sites): tensors[f"inverse_mass_matrix_{i}"]
             for i, sites in enumerate(state["mass_sites"])}
    kernel.mass_matrix_adapter.inverse_mass_matrix = value
    kernel._accept_cnt = state["accept_cnt"]
    kernel._mean_accept_prob = state["mean_accept_prob"]
    kernel._divergences = list(state["divergences"])
    # resumed with warmup_steps=0: _t counts sampling iterations, as after warm-up originally
    kernel._warmup_steps = 0
    kernel._t = state["sampling_iterations"]


# -- one chain ---------------------------------------------------------------------------------------
def _run_chain(spec: _Spec, chain: int, init: Tensor, chain_seed: int) -> dict[str, Any]:
    """Drive one chain step by step (``setup`` then ``sample``), with stats and checkpoints."""
    latent = spec.kernel in ("nuts", "hmc")
    keys = _STAT_KEYS[spec.kernel]
    total_sampling = spec.num_samples * spec.thin
    n_iter = spec.warmup_steps + total_sampling
    path = None if spec.checkpoint is None else spec.checkpoint / f"chain_{chain}.safetensors"
    saved = _load_checkpoint(path) if path is not None and path.exists() else None
    if saved is not None and saved["meta"]["done"]:
        return _result_from_checkpoint(saved, keys)

    pyro.set_rng_seed(chain_seed)
    potential = _CountingPotential(spec.problem, spec.y, spec.site)
    draws: list[Tensor] = []
    stats: dict[str, list[float]] = {k: [] for k in keys}
    start_iter = 0
    wall_before = 0.0
    resume_state = None
    if saved is not None:
        meta, tensors = saved["meta"], saved["tensors"]
        start_iter = meta["iteration"]
        wall_before = meta["wall_s"]
        params = {spec.site: tensors["position"].to(device=init.device, dtype=init.dtype)}
        if meta["num_draws"]:
            draws = list(tensors["draws"].to(device=init.device, dtype=init.dtype).unbind(0))
        stats = {k: tensors[f"stat_{k}"].tolist() if meta["num_draws"] else [] for k in keys}
        resume_state = meta["kernel"]
        mass = {k[len("kernel_"):]: v.to(init.device) for k, v in tensors.items()
                if k.startswith("kernel_")}
    kernel = _make_kernel(spec, potential, resume_state if latent else None)
    if saved is not None:
        kernel.initial_params = params
        kernel.setup(max(spec.warmup_steps - start_iter, 0) if latent else spec.warmup_steps)
        _restore_kernel(kernel, resume_state, mass)
        _set_rng_state(saved["rng"])
    else:
        params = {spec.site: init.detach().clone()}
        kernel.initial_params = params
        kernel.setup(spec.warmup_steps)
        if latent and spec.inverse_mass is not None:
            kernel.mass_matrix_adapter.inverse_mass_matrix = {(spec.site,): spec.inverse_mass}
            if spec.adapt_step_size:  # a reasonable first step for the new metric
                kernel._adapter.reset_step_size_adaptation(params)
    if not latent:  # the Langevin kernels cache (x0, U, ∇U) from setup on their own copy of x0
        params = {spec.site: kernel.initial_params[spec.site]}
    t0 = time.perf_counter()
    desc = f"{spec.kernel.upper()} chain {chain}"
    with progress_bar(n_iter, desc, spec.progress) as bar, pyro.validation_enabled(False):
        bar.update(start_iter)
        for it in range(start_iter, n_iter):
            warm = it < spec.warmup_steps
            calls_before = potential.calls
            acc_before = _pyro_accept_sum(kernel) if latent else None
            div_before = len(kernel._divergences) if latent else 0
            params = kernel.sample(params)
            if latent:
                step_stats = _pyro_step_stats(kernel, potential.calls - calls_before, acc_before,
                                              div_before)
            else:
                step_stats = dict(kernel.last_stats)
            step_stats["lp"] = -float(step_stats.pop("potential_energy"))
            if not math.isfinite(step_stats["lp"]):
                raise FloatingPointError(
                    f"{spec.kernel}: the potential became non-finite at iteration {it} of chain "
                    f"{chain} (step_size={step_stats['step_size']:.3g}); likely cause: the step "
                    "size is too large, or lambda / 1/sigma^2 make the potential too stiff")
            k_sample = it - spec.warmup_steps
            if not warm and (k_sample + 1) % spec.thin == 0:
                draws.append(params[spec.site].detach().clone())
                for k in keys:
                    stats[k].append(float(step_stats[k]))
            bar.update()
            if spec.hook_fn is not None:
                stage = f"Warmup [{chain}]" if warm else f"Sample [{chain}]"
                spec.hook_fn(kernel, params, stage, it if warm else k_sample)
            done_iter = it + 1
            if path is not None and done_iter < n_iter and (
                    (done_iter % spec.checkpoint_every == 0 and (not latent or done_iter >= spec.warmup_steps))
                    or (latent and done_iter == spec.warmup_steps)):
                _save_checkpoint(path, spec, kernel, params, draws, stats, done_iter,
                                 wall_before + time.perf_counter() - t0, done=False)
    wall = wall_before + time.perf_counter() - t0
    kernel_final_step = float(kernel.step_size)
    kernel.cleanup()
    result = {"draws": torch.stack(draws).cpu(),
              "stats": {k: torch.tensor(v, dtype=torch.float64) for k, v in stats.items()},
              "wall_s": wall, "final_step_size": kernel_final_step}
    if path is not None:
        _save_checkpoint(path, spec, None, params, draws, stats, n_iter, wall, done=True,
                         final_step_size=kernel_final_step)
    return result


def _pyro_accept_sum(kernel: Any) -> tuple[int, float]:
    t, w = kernel._t, kernel._warmup_steps
    n = t - w if t > w else t
    return n, kernel._mean_accept_prob


def _pyro_step_stats(kernel: Any, n_grad: int, before: tuple[int, float],
                     div_before: int) -> dict[str, float]:
    """Per-draw stats of Pyro's HMC/NUTS from its running means (private attributes, Pyro 1.9.2).

    The acceptance statistic of draw ``n`` is :math:`n\\,\\bar a_n - (n-1)\\,\\bar a_{n-1}` of
    the running mean the kernel keeps; the running mean restarts at the end of warm-up.
    """
    n0, m0 = before
    t, w = kernel._t, kernel._warmup_steps
    n = t - w if t > w else t
    m = kernel._mean_accept_prob
    accept = m if n == 1 else n * m - n0 * m0
    stats = {"accept_prob": min(max(accept, 0.0), 1.0), "step_size": float(kernel.step_size),
             "diverging": float(len(kernel._divergences) > div_before),
             "num_steps": float(n_grad), "potential_energy": float(kernel._potential_energy_last)}
    stats["tree_depth"] = float(math.ceil(math.log2(n_grad + 1))) if n_grad > 0 else 0.0
    return stats


# -- parallel chains ---------------------------------------------------------------------------------
def _run_parallel(spec: _Spec, inits: list[Tensor], seeds: list[int]) -> list[dict[str, Any]]:
    """One forked process per chain; results come back as safetensors files (no pickle)."""
    ctx = mp.get_context("fork")
    with tempfile.TemporaryDirectory(prefix="bayesinv-mcmc-") as tmp:
        procs = []
        for c in range(len(inits)):
            p = ctx.Process(target=_worker, args=(spec, c, inits[c], seeds[c], tmp), daemon=True)
            p.start()
            procs.append(p)
        for p in procs:
            p.join()
        results = []
        for c in range(len(inits)):
            err = Path(tmp) / f"error_{c}.json"
            if err.exists():
                info = json.loads(err.read_text())
                exc = {"FloatingPointError": FloatingPointError, "ValueError": ValueError}.get(
                    info["type"], RuntimeError)
                raise exc(f"chain {c}: {info['message']}")
            f = Path(tmp) / f"result_{c}.safetensors"
            if not f.exists():
                raise RuntimeError(f"chain {c}: the worker process died (exit code {procs[c].exitcode})")
            tensors = {k: v.clone() for k, v in load_file(str(f)).items()}
            meta = json.loads((Path(tmp) / f"result_{c}.json").read_text())
            results.append({"draws": tensors["draws"],
                            "stats": {k[5:]: v for k, v in tensors.items() if k.startswith("stat_")},
                            "wall_s": meta["wall_s"], "final_step_size": meta["final_step_size"]})
    return results


def _worker(spec: _Spec, c: int, init: Tensor, chain_seed: int, tmp: str) -> None:
    torch.set_num_threads(1)
    try:
        res = _run_chain(spec, c, init, chain_seed)
        tensors = {"draws": res["draws"].contiguous(),
                   **{f"stat_{k}": v.contiguous() for k, v in res["stats"].items()}}
        save_file(tensors, os.path.join(tmp, f"result_{c}.safetensors"))
        Path(tmp, f"result_{c}.json").write_text(json.dumps(
            {"wall_s": res["wall_s"], "final_step_size": res["final_step_size"]}))
    except BaseException as e:  # report to the parent, which re-raises
        Path(tmp, f"error_{c}.json").write_text(json.dumps({"type": type(e).__name__,
                                                            "message": str(e)}))
    finally:
        os._exit(0)


# -- images --------------------------------------------------------------------------------------------
class _ImageSink:
    """Collects image draws ``(chain, draw, C, H, W)``: ``G(z)`` in chunks, optionally on disk.

    With ``store`` the images go to ``store/samples.npy`` (a memory-mapped ``.npy``, written
    chunk by chunk, renamed into place when complete) plus ``store/index.json``; otherwise to
    one in-memory tensor.
    """

    def __init__(self, problem: InverseProblem, lead: tuple[int, int], latent: bool,
                 store: str | os.PathLike | None, chunk: int, dtype: torch.dtype) -> None:
        self.problem, self.latent, self.chunk, self.dtype = problem, latent, chunk, dtype
        self.shape = (*lead, *problem.image_shape)
        self.seconds = 0.0
        self.store = None if store is None else Path(store)
        if self.store is not None:
            self.store.mkdir(parents=True, exist_ok=True)
            np_dtype = torch.empty((), dtype=dtype).numpy().dtype
            self.out: Tensor | np.ndarray = np.lib.format.open_memmap(
                self.store / "samples.npy.tmp", mode="w+", dtype=np_dtype, shape=self.shape)
        else:
            self.out = torch.empty(self.shape, dtype=dtype)

    def write(self, c: int, result: dict[str, Any]) -> None:
        t0 = time.perf_counter()
        draws = result["draws"]
        for s in range(0, draws.shape[0], self.chunk):
            block = draws[s:s + self.chunk]
            if self.latent:
                with torch.no_grad():
                    block = self.problem.prior.generate(block.to(self.problem.device)).cpu()
            block = block.reshape(-1, *self.problem.image_shape).to(self.dtype)
            if isinstance(self.out, np.ndarray):
                self.out[c, s:s + self.chunk] = block.numpy()
            else:
                self.out[c, s:s + self.chunk] = block
        if not self.latent and self.store is not None:
            result["draws"] = None  # the image draws now live on disk only
        self.seconds += time.perf_counter() - t0

    def abort(self) -> None:
        """Drop a partial store (the checkpoint, if any, keeps the progress)."""
        if self.store is not None and isinstance(self.out, np.ndarray):
            del self.out
            (self.store / "samples.npy.tmp").unlink(missing_ok=True)

    def finish(self, settings: dict[str, Any]) -> Tensor:
        if not isinstance(self.out, np.ndarray):
            return self.out
        assert self.store is not None
        self.out.flush()
        del self.out
        final = self.store / "samples.npy"
        os.replace(self.store / "samples.npy.tmp", final)
        settings["store"] = str(final)
        _atomic_write_text(self.store / "index.json", json.dumps(
            {"format": "npy", "file": "samples.npy", "dims": ["chain", "draw", "channel", "row", "col"],
             "shape": list(self.shape), "dtype": str(self.dtype).replace("torch.", ""),
             "settings": settings}, default=str, indent=1))
        return torch.from_numpy(np.load(final, mmap_mode="r+"))


# -- checkpoints ---------------------------------------------------------------------------------------
def _prepare_checkpoint_dir(path: Path, key: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    run = path / "run.json"
    if run.exists():
        old = json.loads(run.read_text())
        if old.get("format") != _FORMAT or old.get("key") != key:
            raise ValueError(f"checkpoint: {path} holds a run with different settings, seed or "
                             "problem; use a new directory")
    else:
        _atomic_write_text(run, json.dumps({"format": _FORMAT, "key": key}))


def _save_checkpoint(path: Path, spec: _Spec, kernel: Any, params: dict[str, Tensor],
                     draws: list[Tensor], stats: dict[str, list[float]], iteration: int,
                     wall_s: float, *, done: bool, final_step_size: float | None = None) -> None:
    tensors: dict[str, Tensor] = {"position": params[spec.site].detach().cpu().contiguous()}
    if draws:
        tensors["draws"] = torch.stack(draws).cpu().contiguous()
        for k, v in stats.items():
            tensors[f"stat_{k}"] = torch.tensor(v, dtype=torch.float64)
    rng = _get_rng_state()
    tensors["rng_torch"] = rng.pop("torch")
    kernel_state: dict[str, Any] | None = None
    if kernel is not None:
        kernel_state, ktensors = _kernel_state(kernel)
        tensors.update({f"kernel_{k}": v.cpu() for k, v in ktensors.items()})
    meta = {"format": _FORMAT, "iteration": iteration, "num_draws": len(draws), "done": done,
            "wall_s": wall_s, "kernel": kernel_state, "rng": rng, "final_step_size": final_step_size,
            "sha256": _tensor_digest(tensors)}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={"json": json.dumps(meta)})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a chain checkpoint; ``ValueError`` naming the file if it is damaged or foreign.

    The SHA-256 of the tensor bytes recorded at save time (same digest as the training
    checkpoints, :func:`bayesinv.flows.train._tensor_digest`) is verified, so a bit flip in
    the data is caught rather than silently resumed from.
    """
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads(f.metadata()["json"])
        if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
            raise ValueError("not a bayesinv MCMC checkpoint")
        # fresh (aligned) copies: BLAS results can depend on the alignment of memory-mapped data
        tensors = {k: v.clone() for k, v in load_file(str(path)).items()}
        if _tensor_digest(tensors) != meta.get("sha256"):
            raise ValueError("SHA-256 of the tensor data does not match the one recorded (corrupted)")
        rng = dict(meta["rng"])
        rng["torch"] = tensors["rng_torch"]
    except Exception as exc:  # safetensors, json and key errors all mean "bad file"
        raise ValueError(f"checkpoint: {str(path)!r} is not a valid bayesinv MCMC checkpoint "
                         f"(truncated or corrupted?): {exc}") from exc
    return {"meta": meta, "tensors": tensors, "rng": rng}


def _result_from_checkpoint(saved: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    t = saved["tensors"]
    return {"draws": t["draws"], "stats": {k: t[f"stat_{k}"] for k in keys},
            "wall_s": saved["meta"]["wall_s"], "final_step_size": saved["meta"]["final_step_size"]}


def _get_rng_state() -> dict[str, Any]:
    """torch (CPU), NumPy and Python RNG states; JSON-serialisable except the torch tensor."""
    st = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "numpy": [st[0], st[1].tolist(), int(st[2]), int(st[3]), float(st[4])],
            "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]]}


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    p = state["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
