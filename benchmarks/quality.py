r"""Reconstruction-quality benchmark: PSNR/SSIM mean ± std per task × method on held-out images.

Registries
----------
:data:`TASKS`
    name → :class:`Task`; ``task.build(n_images, size)`` returns a :class:`TaskData` with the
    operator, the held-out test images, the validation images (used only to tune weights), the
    noise level and the seed papers' comparable numbers.
:data:`METHODS`
    name → :class:`Method`; ``method.fn(setting, y, weight) -> x̂`` sees a :class:`Setting`
    (operator, noise σ, image domain, quick flag) and the measurements — never the truth.
    Methods with a weight grid get their weight chosen **once per task on the validation
    images** by :func:`bayesinv.baselines.select_weight` (an oracle there, but the test images
    are never used for tuning).

Register a new method (e.g. latent MAP with a trained flow prior)::

    from benchmarks.quality import register_method

    @register_method("latent_map", applies=lambda s: s.domain == "phantom")
    def latent_map(setting, y, weight=None):
        problem = InverseProblem(setting.operator, prior, GaussianNoise(setting.sigma))
        return map_estimate(problem, y).mean

Held-out data: natural-image tasks use crops of ``camera`` and ``astronaut`` drawn with seeds
``10_000``/``10_001`` (validation: ``20_000``/``20_001``); phantom tasks use
:func:`~bayesinv.data.images.ellipse_phantoms` with seed ``10_000`` (validation ``20_000``),
disjoint from the training seeds (< 10 000) that the prior-training scripts use. Noise draws
are seeded per task. Everything runs in float32 on CPU unless ``device`` is given.
"""

from __future__ import annotations

import json
import math
import platform
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from bayesinv.baselines import lasso_dct, select_weight, tikhonov, total_variation
from bayesinv.data.images import ellipse_phantoms, image_crops
from bayesinv.metrics import psnr, ssim
from bayesinv.operators import (
    MRI,
    Blur,
    CompressedSensing,
    Identity,
    Inpainting,
    LinearOperator,
    Operator,
    Radon,
    SuperResolution,
)

RESULTS_DIR = Path(__file__).resolve().parent / "results"
FLOORS_PATH = Path(__file__).resolve().parent / "floors.json"
TEST_SEED, VALIDATION_SEED = 10_000, 20_000
QUICK = {"n_images": 4, "size": 32}
FULL = {"n_images": 10, "size": 64}


# -- data structures -----------------------------------------------------------------------------
@dataclass
class Setting:
    """What a method may see: the forward model and noise level, not the ground truth."""

    task: str
    operator: Operator
    sigma: float
    domain: str  # "natural" (camera/astronaut crops) or "phantom" (ellipse phantoms)
    quick: bool

    @cached_property
    def op_norm(self) -> float:
        r""":math:`\|A\|_2` by power iteration (linear operators only)."""
        if not isinstance(self.operator, LinearOperator):
            raise TypeError(f"operator: op_norm needs a LinearOperator, got "
                            f"{type(self.operator).__name__}")
        return self.operator.operator_norm(n_iter=100)


@dataclass
class TaskData:
    """A built task: setting, held-out test images, validation images and references."""

    setting: Setting
    truths: Tensor
    validation: Tensor
    description: str
    paper: dict[str, float] = field(default_factory=dict)  # method -> reported PSNR
    paper_note: str = ""


@dataclass
class Task:
    """A registered task: ``build(n_images, size) -> TaskData``."""

    name: str
    build: Callable[[int, int, bool], TaskData]


@dataclass
class Method:
    """A registered method. ``fn(setting, y, weight) -> x̂`` (``(B, C, H, W)``).

    ``grid(setting)`` gives candidate weights (``None``: the method has no weight); the harness
    picks one on the validation images with ``refine`` rounds of log-space bisection (at most
    1 in quick mode).
    ``applies(setting)`` says whether the method is run on a task.
    """

    name: str
    fn: Callable[[Setting, Tensor, float | None], Tensor]
    grid: Callable[[Setting], Sequence[float]] | None = None
    applies: Callable[[Setting], bool] = lambda s: True
    refine: int = 2


TASKS: dict[str, Task] = {}
METHODS: dict[str, Method] = {}


def register_task(name: str):
    """Decorator: register ``build(n_images, size, quick) -> TaskData`` under ``name``."""
    def deco(build):
        TASKS[name] = Task(name, build)
        return build
    return deco


def register_method(name: str, *, grid: Callable[[Setting], Sequence[float]] | None = None,
                    applies: Callable[[Setting], bool] | None = None, refine: int = 2):
    """Decorator: register ``fn(setting, y, weight) -> x̂`` as method ``name`` in :data:`METHODS`."""
    def deco(fn):
        METHODS[name] = Method(name, fn, grid, applies or (lambda s: True), refine)
        return fn
    return deco


# -- held-out images -----------------------------------------------------------------------------
MIN_CROP_STD = 0.1


def _textured_crops(name: str, n: int, size: int, scale: float, seed: int) -> Tensor:
    """The first ``n`` of ``8n`` seeded crops whose pixel std is at least :data:`MIN_CROP_STD`
    (flat sky or black background crops make every method look alike), topped up with the
    most textured remaining ones if too few pass."""
    cand = image_crops(name, 8 * n, size, scale=scale, seed=seed)
    std = cand.flatten(1).std(dim=1)
    keep = [i for i in range(len(cand)) if float(std[i]) >= MIN_CROP_STD][:n]
    if len(keep) < n:
        rest = [i for i in torch.argsort(std, descending=True).tolist() if i not in keep]
        keep += rest[: n - len(keep)]
    return cand[keep]


def natural_images(n: int, size: int, seed: int) -> Tensor:
    """``ceil(n/2)`` camera and ``floor(n/2)`` astronaut crops ``(n, 1, size, size)``.

    The images are loaded at ``size/128`` of native resolution, so a crop spans the same scene
    extent (≈ 128 native pixels) at every ``size``; crops are seeded (``seed``, ``seed + 1``)
    and kept only if textured (see :func:`_textured_crops`)."""
    scale = size / 128
    cam = _textured_crops("camera", math.ceil(n / 2), size, scale, seed)
    if n // 2 == 0:
        return cam
    ast = _textured_crops("astronaut", n // 2, size, scale, seed + 1)
    return torch.cat([cam, ast])


def phantom_images(n: int, size: int, seed: int) -> Tensor:
    """Random-ellipse phantoms ``(n, 1, size, size)``."""
    return ellipse_phantoms(n, size, seed=seed)


def _images(domain: str, n: int, size: int, seed: int) -> Tensor:
    return natural_images(n, size, seed) if domain == "natural" else phantom_images(n, size, seed)


def _make(name: str, op: Operator, domain: str, n: int, size: int, quick: bool, *,
          sigma: float | None = None, sigma_rel: float | None = None, description: str,
          paper: dict[str, float] | None = None, paper_note: str = "") -> TaskData:
    truths = _images(domain, n, size, TEST_SEED)
    validation = _images(domain, 2, size, VALIDATION_SEED)
    if sigma is None:  # relative to the RMS of the clean validation measurements
        with torch.no_grad():
            sigma = float(sigma_rel) * float(op(validation).pow(2).mean().sqrt())
    return TaskData(Setting(name, op, float(sigma), domain, quick), truths, validation,
                    description, paper or {}, paper_note)


def measure(data: TaskData, images: Tensor, *, offset: int = 0) -> Tensor:
    r"""Seeded noisy measurements :math:`y = Ax + \sigma\varepsilon`, seed from the task name."""
    s = data.setting
    with torch.no_grad():
        clean = s.operator(images.to(s.operator.dtype))
    gen = torch.Generator().manual_seed(zlib.crc32(s.task.encode()) + offset)
    noise = torch.randn(clean.shape, generator=gen, dtype=clean.dtype).to(clean.device)
    return clean + s.sigma * noise


# -- tasks ---------------------------------------------------------------------------------------
ASIM_CS = ("Asim et al. 2020: CelebA 64×64 RGB (D = 12288), dense Gaussian A, m = 5000 ≈ D/2.5 "
           "and m = 1000 ≈ D/12; here grayscale {s}² natural crops, structured (random-sign DCT) "
           "A, m = D/{k}, σ = 0.01")


@register_task("denoise")
def _denoise(n: int, size: int, quick: bool) -> TaskData:
    return _make("denoise", Identity((1, size, size)), "natural", n, size, quick, sigma=0.1,
                 description="denoising, σ = 0.1",
                 paper={"reference: Glow (Asim)": 30.5, "reference: BM3D (Asim)": 29.9},
                 paper_note=f"Asim et al. 2020: CelebA 64×64 RGB faces, σ = 0.1; here grayscale "
                            f"{size}² camera/astronaut crops")


@register_task("inpaint50")
def _inpaint(n: int, size: int, quick: bool) -> TaskData:
    return _make("inpaint50", Inpainting((1, size, size), fraction=0.5, seed=0), "natural", n,
                 size, quick, sigma=0.01, description="inpainting, 50 % random pixels, σ = 0.01")


@register_task("cs4")
def _cs4(n: int, size: int, quick: bool) -> TaskData:
    d = size * size
    return _make("cs4", CompressedSensing((1, size, size), m=d // 4, kind="structured", seed=0),
                 "natural", n, size, quick, sigma=0.01,
                 description="compressed sensing, m = D/4 structured, σ = 0.01",
                 paper={"lasso_dct": 26.4, "reference: Glow (Asim)": 37.0},
                 paper_note=ASIM_CS.format(s=size, k=4) + " (compare with m = 5000)")


@register_task("cs16")
def _cs16(n: int, size: int, quick: bool) -> TaskData:
    d = size * size
    return _make("cs16", CompressedSensing((1, size, size), m=d // 16, kind="structured", seed=0),
                 "natural", n, size, quick, sigma=0.01,
                 description="compressed sensing, m = D/16 structured, σ = 0.01",
                 paper={"lasso_dct": 17.8, "reference: Glow (Asim)": 30.1},
                 paper_note=ASIM_CS.format(s=size, k=16) + " (compare with m = 1000)")


@register_task("deblur")
def _deblur(n: int, size: int, quick: bool) -> TaskData:
    return _make("deblur", Blur((1, size, size), "gaussian", width=1.5), "natural", n, size, quick,
                 sigma=0.01, description="deblurring, Gaussian kernel width 1.5, σ = 0.01")


@register_task("mri4")
def _mri4(n: int, size: int, quick: bool) -> TaskData:
    return _make("mri4", MRI((1, size, size), acceleration=4, mask="cartesian", seed=0), "phantom",
                 n, size, quick, sigma=0.01,
                 description="CS-MRI, 4× cartesian lines (8 % centre), σ = 0.01 per k-space value",
                 paper_note="Li et al. 2023 use brain/knee MR slices and a trained generator; "
                            "here ellipse phantoms, no number given in DESIGN.md")


@register_task("ct_lowdose")
def _ct_lowdose(n: int, size: int, quick: bool) -> TaskData:
    return _make("ct_lowdose", Radon((1, size, size), n_angles=180), "phantom", n, size, quick,
                 sigma_rel=0.05, description="low-dose CT, 180 angles, σ = 5 % of RMS sinogram",
                 paper={"reference: patchNR (Hertrich)": 33.20,
                        "reference: FBP+UNet (Hertrich)": 33.75},
                 paper_note=f"Hertrich: LoDoPaB-CT 362² slices, Poisson low-dose noise; here "
                            f"{size}² ellipse phantoms, Gaussian noise")


@register_task("ct_limited90")
def _ct_limited(n: int, size: int, quick: bool) -> TaskData:
    return _make("ct_limited90", Radon.limited_angle((1, size, size), max_angle=90.0), "phantom",
                 n, size, quick, sigma_rel=0.01,
                 description="limited-angle CT, 90 angles over [0°, 90°), σ = 1 % of RMS sinogram",
                 paper_note="Hertrich: LoDoPaB limited-angle setting; no number in DESIGN.md")


@register_task("ct_sparse30")
def _ct_sparse(n: int, size: int, quick: bool) -> TaskData:
    return _make("ct_sparse30", Radon.sparse_view((1, size, size), n_angles=30), "phantom", n,
                 size, quick, sigma_rel=0.01,
                 description="sparse-view CT, 30 angles over [0°, 180°), σ = 1 % of RMS sinogram")


@register_task("sr2")
def _sr2(n: int, size: int, quick: bool) -> TaskData:
    return _make("sr2", SuperResolution((1, size, size), factor=2), "natural", n, size, quick,
                 sigma=0.01, description="2× super-resolution (Gaussian σ = 1), σ = 0.01")


@register_task("sr4")
def _sr4(n: int, size: int, quick: bool) -> TaskData:
    return _make("sr4", SuperResolution((1, size, size), factor=4), "natural", n, size, quick,
                 sigma=0.01, description="4× super-resolution (Gaussian σ = 2), σ = 0.01",
                 paper={"reference: patchNR (Hertrich)": 28.53,
                        "reference: zero-shot patchNR (Hertrich)": 29.08},
                 paper_note=f"Hertrich: 4× SR of SiC material-microstructure textures, patch "
                            f"flow trained on the same material; here {size}² natural crops")


# -- baseline methods ----------------------------------------------------------------------------
def _linear(s: Setting) -> bool:
    return isinstance(s.operator, LinearOperator)


def _relative_grid(lo: int, hi: int) -> Callable[[Setting], list[float]]:
    r"""Weights :math:`\|A\|^2 \cdot 10^k`, ``k = lo..hi`` (one per decade): the data term
    scales with :math:`\|A\|^2`, so a relative grid fits every operator."""
    return lambda s: [s.op_norm**2 * 10.0**k for k in range(lo, hi + 1)]


def _iters(s: Setting) -> int:
    return 300 if s.quick else 1000


@register_method("pinv", applies=_linear)
def _pinv(s: Setting, y: Tensor, weight: float | None = None) -> Tensor:
    """Regularised pseudo-inverse :math:`(A^*A+10^{-6}I)^{-1}A^*y` (operator's own ``pinv``)."""
    return s.operator.pinv(y)


@register_method("fbp", applies=lambda s: isinstance(s.operator, Radon))
def _fbp(s: Setting, y: Tensor, weight: float | None = None) -> Tensor:
    """Ramp-filtered back-projection (Radon tasks)."""
    return s.operator.fbp(y)


@register_method("bicubic", applies=lambda s: isinstance(s.operator, SuperResolution))
def _bicubic(s: Setting, y: Tensor, weight: float | None = None) -> Tensor:
    """Bicubic upsampling (super-resolution tasks)."""
    return s.operator.bicubic(y)


@register_method("tikhonov", grid=_relative_grid(-6, 0), applies=_linear)
def _tikhonov(s: Setting, y: Tensor, weight: float | None) -> Tensor:
    r"""Tikhonov with :math:`L = I`, CG."""
    return tikhonov(s.operator, y, weight, kind="identity", max_iter=_iters(s))


@register_method("tikhonov_grad", grid=_relative_grid(-6, 0), applies=_linear)
def _tikhonov_grad(s: Setting, y: Tensor, weight: float | None) -> Tensor:
    r"""Tikhonov with :math:`L = \nabla` (Neumann), CG."""
    return tikhonov(s.operator, y, weight, kind="gradient", max_iter=_iters(s))


@register_method("tv", grid=_relative_grid(-6, 0), applies=_linear)
def _tv(s: Setting, y: Tensor, weight: float | None) -> Tensor:
    """Isotropic TV with box [0, 1] by PDHG (300 iterations quick, 1000 full)."""
    return total_variation(s.operator, y, weight, max_iter=_iters(s), op_norm=1.01 * s.op_norm)


@register_method("lasso_dct", grid=_relative_grid(-6, 0), applies=_linear)
def _lasso_dct(s: Setting, y: Tensor, weight: float | None) -> Tensor:
    """ℓ1 on orthonormal 2-D DCT coefficients by FISTA (Asim's Lasso-DCT baseline)."""
    return lasso_dct(s.operator, y, weight, max_iter=_iters(s), op_norm=1.01 * s.op_norm)


# -- running -------------------------------------------------------------------------------------
def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0


def evaluate_method(data: TaskData, method: Method, *, y_test: Tensor | None = None,
                    y_val: Tensor | None = None) -> dict:
    """Tune (if the method has a grid) on the validation images, then reconstruct and score the
    test images. Returns one record (a JSON-serialisable dict)."""
    s = data.setting
    y_test = measure(data, data.truths) if y_test is None else y_test
    weight, sel_seconds, sel_scores = None, 0.0, None
    if method.grid is not None:
        y_val = measure(data, data.validation, offset=1) if y_val is None else y_val
        t0 = time.perf_counter()
        sel = select_weight(lambda op, yy, w: method.fn(s, yy, w), s.operator, y_val,
                            data.validation, list(method.grid(s)),
                            refine=min(method.refine, 1) if s.quick else method.refine)
        sel_seconds = time.perf_counter() - t0
        weight, sel_scores = sel.weight, [[w, p] for w, p in sel.scores]
    t0 = time.perf_counter()
    with torch.no_grad():
        est = method.fn(s, y_test, weight)
    seconds = time.perf_counter() - t0
    est = est.detach().reshape(data.truths.shape).cpu()
    ps = [psnr(e, t) for e, t in zip(est, data.truths, strict=True)]
    ss = [ssim(e, t) for e, t in zip(est, data.truths, strict=True)]
    pm, pd = _mean_std(ps)
    sm, sd = _mean_std(ss)
    n = len(ps)
    return {
        "task": s.task, "method": method.name, "mode": "quick" if s.quick else "full",
        "n_images": n, "image_size": int(data.truths.shape[-1]), "sigma": s.sigma,
        "description": data.description, "weight": weight,
        "psnr_mean": pm, "psnr_std": pd, "ssim_mean": sm, "ssim_std": sd,
        "psnr": ps, "ssim": ss, "seconds": seconds, "seconds_per_image": seconds / n,
        "selection_seconds": sel_seconds, "selection_scores": sel_scores,
        "paper_psnr": data.paper.get(method.name), "paper_note": data.paper_note,
    }


def run(tasks: Iterable[str] | None = None, methods: Iterable[str] | None = None,
        n_images: int | None = None, quick: bool = True, *, size: int | None = None,
        write: bool = True, out_dir: Path | str = RESULTS_DIR, verbose: bool = True,
        threads: int | None = None) -> list[dict]:
    """Run ``methods`` × ``tasks`` and return the records; optionally write JSON + Markdown.

    Parameters
    ----------
    tasks, methods
        Names from :data:`TASKS` / :data:`METHODS` (default: all). A method is skipped on a
        task where ``method.applies(setting)`` is false.
    n_images, size
        Test images per task and their side (defaults: quick 4 at 32², full 10 at 64²).
    quick
        Quick mode (small images, fewer solver iterations).
    write
        Write ``quality_quick.{json,md}`` (quick mode) or ``quality.{json,md}`` and
        ``quality_full.{json,md}`` (full mode) to ``out_dir``.
    threads
        ``torch.set_num_threads`` for the run (restored afterwards). Default: 1 in quick mode
        (32² problems gain nothing from intra-op threads, and on a shared 2-core machine
        spinning threads slow everything down), torch's setting in full mode.
    """
    defaults = QUICK if quick else FULL
    n_images = defaults["n_images"] if n_images is None else int(n_images)
    size = defaults["size"] if size is None else int(size)
    task_names = list(TASKS) if tasks is None else list(tasks)
    method_names = list(METHODS) if methods is None else list(methods)
    for t in task_names:
        if t not in TASKS:
            raise ValueError(f"tasks: unknown task {t!r}; expected some of {sorted(TASKS)}")
    for m in method_names:
        if m not in METHODS:
            raise ValueError(f"methods: unknown method {m!r}; expected some of {sorted(METHODS)}")
    old_threads = torch.get_num_threads()
    if threads is not None or quick:
        torch.set_num_threads(int(threads) if threads is not None else 1)
    try:
        return _run(task_names, method_names, n_images, size, quick, write, Path(out_dir),
                    verbose)
    finally:
        torch.set_num_threads(old_threads)


def _run(task_names: list[str], method_names: list[str], n_images: int, size: int, quick: bool,
         write: bool, out: Path, verbose: bool) -> list[dict]:
    torch.manual_seed(0)
    records: list[dict] = []
    tasks_info: dict[str, dict] = {}
    t_start = time.perf_counter()
    for t in task_names:
        data = TASKS[t].build(n_images, size, quick)
        tasks_info[t] = {"description": data.description, "sigma": data.setting.sigma,
                         "operator": data.setting.operator.describe(),
                         "paper": data.paper, "paper_note": data.paper_note}
        y_test = measure(data, data.truths)
        y_val = measure(data, data.validation, offset=1)
        for m in method_names:
            method = METHODS[m]
            if not method.applies(data.setting):
                continue
            rec = evaluate_method(data, method, y_test=y_test, y_val=y_val)
            records.append(rec)
            if verbose:
                print(f"{t:>13} {m:>14}: PSNR {rec['psnr_mean']:6.2f} ± {rec['psnr_std']:4.2f}  "
                      f"SSIM {rec['ssim_mean']:.3f}  ({rec['seconds']:.2f} s + "
                      f"{rec['selection_seconds']:.1f} s tuning)", flush=True)
    total = time.perf_counter() - t_start
    if write:
        out.mkdir(parents=True, exist_ok=True)
        meta = {"mode": "quick" if quick else "full", "n_images": n_images, "image_size": size,
                "total_seconds": total, "torch": torch.__version__,
                "threads": torch.get_num_threads(), "machine": platform.machine(),
                "test_seed": TEST_SEED, "validation_seed": VALIDATION_SEED}
        text = json.dumps({"meta": meta, "tasks": tasks_info, "records": records}, indent=1)
        table = markdown_table(records, tasks_info, meta)
        # quality_{mode}.{json,md} per mode; quality.{json,md} (the table the README and the
        # docs show) only from a full run, so a quick CI run never replaces the full numbers
        for stem in ((f"quality_{meta['mode']}",) if quick else ("quality", "quality_full")):
            (out / f"{stem}.json").write_text(text)
            (out / f"{stem}.md").write_text(table)
    return records


def markdown_table(records: list[dict], tasks_info: dict[str, dict] | None = None,
                   meta: dict | None = None) -> str:
    """Markdown: one row per task × method (PSNR/SSIM mean ± std, weight, time, seed-paper
    number for the same method where one is given), then the settings and the seed papers'
    numbers per task with how their setting differs."""
    lines = ["# Reconstruction quality", ""]
    if meta:
        lines += [f"Mode: **{meta['mode']}** — {meta['n_images']} held-out test images per task "
                  f"({meta['image_size']}², seeds ≥ {meta['test_seed']}), weights tuned on 2 "
                  f"separate validation images (seed {meta['validation_seed']}); std over "
                  f"images (ddof = 1); total {meta['total_seconds']:.0f} s, "
                  f"{meta['threads']} thread(s), torch {meta['torch']}.", ""]
    lines += ["| task | method | PSNR (dB) | SSIM | weight | s / image | seed paper PSNR |",
              "|---|---|---|---|---|---|---|"]
    for r in records:
        w = "—" if r["weight"] is None else f"{r['weight']:.3g}"
        paper = "—" if r.get("paper_psnr") is None else f"{r['paper_psnr']:.1f} (see note)"
        lines.append(f"| {r['task']} | {r['method']} | {r['psnr_mean']:.2f} ± {r['psnr_std']:.2f} "
                     f"| {r['ssim_mean']:.3f} ± {r['ssim_std']:.3f} | {w} | "
                     f"{r['seconds_per_image']:.3f} | {paper} |")
    if tasks_info:
        lines += ["", "## Tasks and the seed papers' numbers", "",
                  "| task | setting | σ | seed papers (PSNR, dB) | how their setting differs |",
                  "|---|---|---|---|---|"]
        for name, info in tasks_info.items():
            paper = ", ".join(f"{k}: {v}" for k, v in info["paper"].items()) or "—"
            lines.append(f"| {name} | {info['description']} | {info['sigma']:.4g} | {paper} | "
                         f"{info['paper_note'] or '—'} |")
    return "\n".join(lines) + "\n"


# -- floors --------------------------------------------------------------------------------------
def make_floors(records: list[dict], *, psnr_margin: float = 0.5, ssim_margin: float = 0.02,
                existing: dict | None = None) -> dict:
    """Floors ``{mode: {"task/method": {"psnr": ..., "ssim": ...}}}`` = measured − margin
    (rounded down to 0.01), merged into ``existing`` (other modes are kept)."""
    floors = dict(existing or {})
    floors["psnr_margin_db"], floors["ssim_margin"] = psnr_margin, ssim_margin
    for r in records:
        table = floors.setdefault(r["mode"], {})
        table[f"{r['task']}/{r['method']}"] = {
            "psnr": math.floor((r["psnr_mean"] - psnr_margin) * 100) / 100,
            "ssim": math.floor((r["ssim_mean"] - ssim_margin) * 1000) / 1000,
        }
    return floors


def check_floors(records: list[dict], floors: dict) -> list[str]:
    """Compare records with their recorded floors; return one message per violation.

    A record fails when its mean PSNR or SSIM is below the floor of its mode and
    ``task/method`` key, or is not a number. Records without a floor are not checked.
    An empty list means every checked number is at or above its floor.
    """
    if not isinstance(floors, dict):
        raise TypeError(f"floors: expected a dict, got {type(floors).__name__}")
    failures = []
    for r in records:
        floor = floors.get(r["mode"], {}).get(f"{r['task']}/{r['method']}")
        if floor is None:
            continue
        for metric in ("psnr", "ssim"):
            value = r[f"{metric}_mean"]
            if metric in floor and not (value >= floor[metric]):  # NaN fails too
                failures.append(f"{r['task']}/{r['method']} ({r['mode']}): {metric.upper()} "
                                f"{value:.4g} is below its floor {floor[metric]:.4g}")
    return failures


def load_floors(path: Path | str = FLOORS_PATH) -> dict:
    """Read ``floors.json`` (an empty dict if it does not exist)."""
    p = Path(path)
    return json.loads(p.read_text()) if p.exists() else {}
