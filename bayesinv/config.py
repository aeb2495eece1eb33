"""Problems and methods from a configuration file (TOML or JSON), for ``bayesinv run``.

A run file names the data, the operator, the prior, the noise and the method; every key of a
table other than ``kind``/``name`` is passed to the constructor or method as a keyword::

    seed = 0
    out = "run_out"

    [data]                # an embedded image or phantom (bayesinv.data)
    image = "phantom"     # or "camera", "brick", ... (IMAGE_NAMES)
    size = 64

    [operator]
    kind = "radon"        # see OPERATORS
    n_angles = 30

    [prior]
    kind = "gaussian"     # see PRIORS
    std = 0.25
    length_scale = 2.0

    [noise]
    sigma = 0.02

    [method]
    name = "exact"        # "map", "mcmc", "vi" or "exact"
    num_samples = 64

Prior kinds (``[prior] kind``): ``"gaussian"`` (:meth:`GaussianPrior.stationary`), ``"flow"`` (a
flow saved with :func:`bayesinv.flows.io.save_flow`: ``path = "..."``), ``"pretrained"`` (a
shipped flow prior: ``name = "glow_phantom32"``), ``"patchnr"`` (a shipped patch flow as patchNR
regulariser: ``flow = "patchnr_ct"``, ``weight``, ``n_patches``, ``pad``, ``replace``) and
``"wpp"`` (a Wasserstein patch prior whose reference patches come from an embedded image:
``reference = "grass"``, ``reference_size``, ``weight``, ``patch_size``, ...). Patch priors are
energy priors, so ``method = "map"`` runs image MAP (Adam on pixels) on them.

Unknown kinds, missing tables and wrong keys give a ``ValueError`` naming the table and key.
"""

from __future__ import annotations

import importlib
import inspect
import json
import tomllib
from pathlib import Path
from typing import Any

import torch

#: operator kind -> (module, class, factory method or None)
OPERATORS: dict[str, tuple[str, str, str | None]] = {
    "identity": ("bayesinv.operators.denoise", "Identity", None),
    "inpainting": ("bayesinv.operators.mask", "Inpainting", None),
    "cs": ("bayesinv.operators.compressed_sensing", "CompressedSensing", None),
    "blur": ("bayesinv.operators.blur", "Blur", None),
    "sr": ("bayesinv.operators.blur", "SuperResolution", None),
    "mri": ("bayesinv.operators.mri", "MRI", None),
    "radon": ("bayesinv.operators.tomography", "Radon", None),
    "limited_angle_ct": ("bayesinv.operators.tomography", "Radon", "limited_angle"),
    "sparse_view_ct": ("bayesinv.operators.tomography", "Radon", "sparse_view"),
    "eikonal": ("bayesinv.operators.eikonal", "Eikonal", None),
}

#: prior kind -> (module, class or function, factory method or None)
PRIORS: dict[str, tuple[str, str, str | None]] = {
    "gaussian": ("bayesinv.priors.gaussian", "GaussianPrior", "stationary"),
    "flow": ("bayesinv.priors.flow", "FlowPrior", "from_file"),
    "pretrained": ("bayesinv.data.pretrained", "load_prior", None),
    "patchnr": ("bayesinv.config", "patchnr_prior", None),
    "wpp": ("bayesinv.config", "wpp_prior", None),
}

#: prior kinds whose image shape is fixed by the prior itself (not passed from ``[data]``)
_SHAPED_PRIORS = ("flow", "pretrained")


def patchnr_prior(image_shape: tuple[int, int, int], flow: str, weight: float = 1.0, *,
                  n_patches: int | None = 40_000, pad: int = 0, seed: int | None = None,
                  replace: bool = True):
    """``[prior] kind = "patchnr"``: :class:`~bayesinv.priors.patchnr.PatchNRPrior` with the shipped
    patch flow ``flow`` (:func:`bayesinv.data.pretrained.available`, e.g. ``"patchnr_ct"``)."""
    from .data.pretrained import load_flow_weights
    from .priors.patchnr import PatchNRPrior

    if not isinstance(flow, str) or not flow.startswith("patchnr"):
        raise ValueError(f"[prior] flow: expected the name of a shipped patch flow ('patchnr_ct', "
                         f"'patchnr_natural'), got {flow!r}")
    return PatchNRPrior(load_flow_weights(flow), image_shape, weight, n_patches=n_patches, pad=pad,
                        seed=seed, replace=replace)


def wpp_prior(image_shape: tuple[int, int, int], reference: str, weight: float = 1.0, *,
              reference_size: int | None = None, reference_crop: float = 1.0, patch_size: int = 6,
              n_reference: int = 10_000, scales: int = 2, inner_steps: int = 10,
              inner_lr: float = 1.0, seed: int = 0):
    """``[prior] kind = "wpp"``: :class:`~bayesinv.priors.wpp.WassersteinPatchPrior` whose
    reference patches are those of the embedded image ``reference`` (``"grass"``, ``"brick"``, ...;
    :func:`bayesinv.data.load_image` with ``reference_size`` / ``reference_crop``)."""
    from .data import load_image
    from .priors.wpp import WassersteinPatchPrior

    ref = load_image(reference, size=reference_size, crop=reference_crop)
    return WassersteinPatchPrior(ref, image_shape, weight, patch_size=patch_size, n_reference=n_reference,
                                 scales=scales, inner_steps=inner_steps, inner_lr=inner_lr, seed=seed)

METHODS = ("map", "mcmc", "vi", "exact")


def read_config(path: str | Path) -> dict[str, Any]:
    """Read a TOML (``.toml``) or JSON (``.json``) run file into a dictionary."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config: no such file {str(path)!r}")
    text = path.read_text()
    try:
        if path.suffix == ".json":
            cfg = json.loads(text)
        else:
            cfg = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"config: {str(path)!r} is not valid {path.suffix[1:] or 'TOML'}: {err}") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"config: expected a table at the top of {str(path)!r}")
    return cfg


def _resolve(table: dict[str, Any], registry: dict[str, tuple[str, str, str | None]],
             section: str, key: str = "kind"):
    if key not in table:
        raise ValueError(f"[{section}]: missing key {key!r}; expected one of {sorted(registry)}")
    kind = table[key]
    if kind not in registry:
        raise ValueError(f"[{section}] {key}: unknown value {kind!r}; expected one of {sorted(registry)}")
    module, cls_name, factory = registry[kind]
    cls = getattr(importlib.import_module(module), cls_name)
    return getattr(cls, factory) if factory else cls


def _call(fn, kwargs: dict[str, Any], section: str, *args):
    params = inspect.signature(fn).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(kwargs) - set(params))
        if unknown:
            raise ValueError(f"[{section}]: unknown key(s) {unknown}; accepted: "
                             f"{sorted(k for k in params if k not in ('self', 'cls'))}")
    return fn(*args, **kwargs)


def load_truth(cfg: dict[str, Any]) -> torch.Tensor:
    """The ground-truth image ``(1, 1, H, W)`` named by the ``[data]`` table."""
    from .data import IMAGE_NAMES, ellipse_phantoms, load_image

    data = dict(cfg.get("data", {"image": "phantom"}))
    image = data.pop("image", "phantom")
    size = data.pop("size", 64)
    seed = data.pop("seed", cfg.get("seed", 0))
    if image == "phantom":
        return _call(ellipse_phantoms, {"size": size, "seed": seed, **data}, "data", 1)
    if image not in IMAGE_NAMES:
        raise ValueError(f"[data] image: unknown value {image!r}; expected 'phantom' or one of "
                         f"{list(IMAGE_NAMES)}")
    return _call(load_image, {"size": size, **data}, "data", image)[None]


def build_problem(cfg: dict[str, Any], image_shape: tuple[int, int, int]):
    """Build the :class:`~bayesinv.InverseProblem` of a run file for images of ``image_shape``."""
    from .problem import InverseProblem

    for section in ("operator", "prior", "noise"):
        if section not in cfg or not isinstance(cfg[section], dict):
            raise ValueError(f"config: missing table [{section}]")
    op_cfg = {k: v for k, v in cfg["operator"].items() if k != "kind"}
    operator = _call(_resolve(cfg["operator"], OPERATORS, "operator"), op_cfg, "operator", image_shape)
    pr_cfg = {k: v for k, v in cfg["prior"].items() if k != "kind"}
    factory = _resolve(cfg["prior"], PRIORS, "prior")
    if cfg["prior"]["kind"] in _SHAPED_PRIORS:
        prior = _call(factory, pr_cfg, "prior")
    else:
        prior = _call(factory, pr_cfg, "prior", image_shape)
    if "sigma" not in cfg["noise"]:
        raise ValueError("[noise]: missing key 'sigma'")
    return InverseProblem(operator, prior, noise=cfg["noise"]["sigma"])


def run_config(cfg: dict[str, Any], *, device: str | None = None, out: str | Path | None = None,
               seed: int | None = None) -> dict[str, Any]:
    """Simulate the data of a run file, run its method, and write posterior, figure and report."""
    from ._checks import resolve_device
    from .metrics import psnr

    seed = int(cfg.get("seed", 0) if seed is None else seed)
    dev = resolve_device(device or cfg.get("device", "auto"))
    out = Path(out or cfg.get("out", "run_out"))
    out.mkdir(parents=True, exist_ok=True)
    truth = load_truth(cfg).to(dev)
    problem = build_problem(cfg, tuple(truth.shape[1:])).to(dev)
    y = problem.simulate(truth, seed=seed)
    method_cfg = dict(cfg.get("method", {"name": "map"}))
    name = method_cfg.pop("name", "map")
    if name not in METHODS:
        raise ValueError(f"[method] name: unknown value {name!r}; expected one of {list(METHODS)}")
    if name == "map":
        from .infer.map import map_estimate as fn
    elif name == "exact":
        from .infer.exact import exact_gaussian_posterior as fn
    elif name == "mcmc":
        from .infer.mcmc import sample_posterior as fn
    else:
        from .infer.variational import fit_variational as fn
    n_draws = method_cfg.pop("num_samples", 100) if name == "vi" else None
    kwargs = {"seed": seed, "truth": truth[0], **method_cfg}
    posterior = _call(fn, kwargs, "method", problem, y)
    if name == "vi":  # a fitted variational posterior: draw from it
        posterior = posterior.posterior(y, n=int(n_draws), truth=truth[0])
    posterior.save(out / "posterior.nc")
    from .diagnostics.report import uq_report

    uq_report(posterior, out / "report.html", title=f"bayesinv run: {name}")
    return {"psnr": psnr(posterior.point_estimate, truth[0].cpu()), "method": name,
            "files": [str(out / "posterior.nc"), str(out / "report.html")]}
