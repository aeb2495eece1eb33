r"""Flow weights shipped with bayesinv (``bayesinv/data/weights/``), loaded without a network.

Each model ``NAME`` is three files produced by ``python scripts/train_priors.py`` (the one
command that regenerates them, a few minutes on 2 CPU cores):

* ``NAME.safetensors`` — the weights;
* ``NAME.json`` — the flow class and constructor kwargs with the size and SHA-256 of the
  weights (:func:`bayesinv.flows.io.save_flow`; verified on every load);
* ``NAME.train.json`` — the training log (:meth:`bayesinv.flows.train.TrainResult.to_json`:
  held-out NLL and bits/dim, steps, wall time) plus the data recipe.

All the models are maximum-likelihood flows fitted to data with Gaussian dequantisation
noise :math:`\sigma = 0.01` (see the script), so their densities are smooth.

Examples
--------
>>> from bayesinv.data.pretrained import available, load_prior
>>> sorted(available())
['glow_natural32', 'glow_phantom32', 'glow_velocity32', 'patchnr_ct', 'patchnr_natural']
>>> load_prior("glow_phantom32").sample(2).shape
torch.Size([2, 1, 32, 32])
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

__all__ = ["WEIGHTS_DIR", "available", "load_flow_weights", "load_prior", "training_log", "weight_files"]

#: Folder of the shipped weights.
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"

_MODELS: dict[str, str] = {
    "glow_phantom32": (
        "Glow (3 levels x 3 steps, hidden 48) on 32x32 random-ellipse CT phantoms "
        "(training seeds 0..3999, validation seeds 5000..5255; >= 10000 held out); image prior "
        "with a flat latent of 1024 dimensions (use load_prior)."
    ),
    "glow_natural32": (
        "Glow (3 levels x 6 steps, hidden 128) on 32x32 grayscale crops of 12 bundled natural "
        "photographs (bayesinv.data.NATURAL_TRAIN_NAMES, 3 scales, 8 dihedral copies); "
        "'rocket' is the validation image, 'camera' and 'astronaut' are held out; image prior "
        "with a flat latent of 1024 dimensions (use load_prior)."
    ),
    "patchnr_ct": (
        "patchNR PatchFlow on 6x6 patches (5 blocks, subnets 2x128) of 64x64 ellipse phantoms "
        "(training seeds 0..199, validation seeds 5000..5031; >= 10000 held out); patch "
        "regulariser for CT."
    ),
    "patchnr_natural": (
        "patchNR PatchFlow on 6x6 patches (5 blocks, subnets 2x256) of the 'astronaut' image at "
        "256x256 with its 8 dihedral copies; 'camera' is held out (validation, super-resolution "
        "tests)."
    ),
    "glow_velocity32": (
        "Glow (3 levels x 2 steps, hidden 32) on 32x32 layered/faulted velocity models in unit "
        "scale (bayesinv.data.velocity, training seed 0, validation seed 5000; >= 10000 held "
        "out), trained by scripts/train_velocity_prior.py; prior for eikonal tomography."
    ),
}
_IMAGE_FLOWS = ("glow_phantom32", "glow_natural32", "glow_velocity32")


def available() -> dict[str, str]:
    """Names of the shipped models with a one-line description each."""
    return dict(_MODELS)


def _check_name(name: object) -> str:
    if not isinstance(name, str):
        raise TypeError(f"name: expected a model name (str), got {type(name).__name__}")
    if name not in _MODELS:
        raise ValueError(f"name: unknown pretrained model {name!r}; available: {sorted(_MODELS)}")
    return name


def weight_files(name: str) -> dict[str, Path]:
    """Paths of the ``weights``, ``config`` and ``log`` files of model ``name``."""
    name = _check_name(name)
    return {"weights": WEIGHTS_DIR / f"{name}.safetensors", "config": WEIGHTS_DIR / f"{name}.json",
            "log": WEIGHTS_DIR / f"{name}.train.json"}


def load_flow_weights(name: str, map_location: Any = None) -> nn.Module:
    """The shipped flow ``name`` in eval mode (checksum verified by :func:`~bayesinv.flows.io.load_flow`).

    Parameters
    ----------
    name
        One of :func:`available`.
    map_location
        Optional device to move the flow to.

    Raises
    ------
    ValueError
        For an unknown ``name`` or missing/corrupted files (naming the file).
    """
    from ..flows.io import load_flow  # validates map_location, naming it

    files = weight_files(name)
    flow = load_flow(files["weights"], files["config"], map_location=map_location)
    return flow.eval()


def load_prior(name: str, map_location: Any = None):  # -> FlowPrior (lazy import)
    """The shipped image flow ``name`` as a :class:`~bayesinv.priors.flow.FlowPrior` (eval mode).

    Patch flows (``patchnr_*``) are regularisers on patches, not image priors with a latent;
    they raise ``ValueError`` here (use :func:`load_flow_weights`).
    """
    from ..priors.flow import FlowPrior

    name = _check_name(name)
    if name not in _IMAGE_FLOWS:
        raise ValueError(f"name: {name!r} is a patch flow, not an image flow; load it with "
                         f"load_flow_weights({name!r}) (image flows: {list(_IMAGE_FLOWS)})")
    return FlowPrior(load_flow_weights(name, map_location)).eval()


def training_log(name: str) -> dict[str, Any]:
    """The training log of model ``name`` (held-out NLL, bits/dim, steps, wall time, settings)."""
    path = weight_files(name)["log"]
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{path}: training log not found (run scripts/train_priors.py)") from None
