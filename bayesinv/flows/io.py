"""Saving and loading flows: safetensors weights + a JSON config sidecar (no pickle).

Layout for ``save_flow(flow, "prior.safetensors")``:

* ``prior.safetensors`` — the ``state_dict`` (parameters and buffers, including ActNorm's
  ``initialized`` flags);
* ``prior.json`` — ``{"format": "bayesinv-flow", "format_version": 1, "class": "Glow",
  "config": {...constructor kwargs...}, "dtype": "float32", "weights": {"file":
  "prior.safetensors", "size": <bytes>, "sha256": "<hex>"}}``.

:func:`load_flow` rebuilds the architecture from a fixed registry of bayesinv flow classes
(never an arbitrary import), checks the format version, the file size and SHA-256 of the
weights and that the stored tensors match the architecture exactly, and raises a
``ValueError`` naming the offending file otherwise. Both files are written atomically
(temporary file in the same folder, then ``os.replace``).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from .._checks import resolve_device

__all__ = ["save_flow", "load_flow", "flow_classes", "FORMAT_VERSION"]

FORMAT = "bayesinv-flow"
FORMAT_VERSION = 1


def flow_classes() -> dict[str, type[nn.Module]]:
    """The registry of flow classes :func:`load_flow` can rebuild, by class name."""
    from .conditional import ConditionalGlow
    from .glow import Glow
    from .patch import PatchFlow

    return {"Glow": Glow, "PatchFlow": PatchFlow, "ConditionalGlow": ConditionalGlow}


def _config_path(path: Path, config_path: str | os.PathLike | None) -> Path:
    return Path(config_path) if config_path is not None else path.with_suffix(".json")


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; shipped files must be readable
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_flow(flow: nn.Module, path: str | os.PathLike,
              config_path: str | os.PathLike | None = None) -> Path:
    """Save ``flow`` to ``path`` (safetensors) and its config to ``config_path``.

    Parameters
    ----------
    flow
        An instance of a registered flow class (:func:`flow_classes`) with a ``config`` dict
        of its constructor kwargs.
    path
        Weights file, conventionally ``*.safetensors``.
    config_path
        JSON sidecar; default ``path.with_suffix(".json")``.

    Returns
    -------
    Path
        The config path.
    """
    registry = flow_classes()
    name = type(flow).__name__
    if registry.get(name) is not type(flow):
        raise TypeError(f"flow: expected one of {sorted(registry)}, got {name}")
    path = Path(path)
    cpath = _config_path(path, config_path)
    if cpath.resolve() == path.resolve():
        raise ValueError(f"config_path: must differ from the weights path {path}")
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in flow.state_dict().items()}
    floats = {str(v.dtype).removeprefix("torch.") for v in tensors.values() if v.is_floating_point()}
    data = st_save(tensors, metadata={"format": FORMAT, "class": name})
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "class": name,
        "config": flow.config,
        "dtype": floats.pop() if len(floats) == 1 else "mixed",
        "weights": {"file": path.name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()},
    }
    _atomic_write(path, data)
    _atomic_write(cpath, (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode())
    return cpath


def load_flow(path: str | os.PathLike, config_path: str | os.PathLike | None = None,
              map_location: str | torch.device | None = None) -> nn.Module:
    """Rebuild a flow saved by :func:`save_flow` and load its weights.

    Raises
    ------
    ValueError
        Naming the file, when the config is missing/unreadable/of another format or version,
        names an unknown class or bad kwargs, or when the weights are missing, truncated,
        corrupted (checksum) or do not match the architecture.
    """
    if map_location is not None:
        try:
            map_location = resolve_device(map_location)
        except ValueError as exc:
            raise ValueError(f"map_location: {exc}") from None
    path = Path(path)
    cpath = _config_path(path, config_path)
    try:
        meta = json.loads(cpath.read_text())
    except FileNotFoundError:
        raise ValueError(f"{cpath}: flow config file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{cpath}: not a valid JSON flow config ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{cpath}: not a bayesinv flow config (format != {FORMAT!r})")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{cpath}: unsupported format_version {meta.get('format_version')!r}; "
                         f"expected {FORMAT_VERSION}")
    registry = flow_classes()
    cls = registry.get(meta.get("class"))  # type: ignore[arg-type]
    if cls is None:
        raise ValueError(f"{cpath}: unknown flow class {meta.get('class')!r}; expected one of {sorted(registry)}")
    weights = meta.get("weights")
    config = meta.get("config")
    if not isinstance(weights, dict) or not isinstance(config, dict):
        raise ValueError(f"{cpath}: missing 'weights' or 'config' entries")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ValueError(f"{path}: flow weights file not found") from None
    if len(data) != weights.get("size"):
        raise ValueError(f"{path}: weights file has {len(data)} bytes but {cpath.name} records "
                         f"{weights.get('size')} (truncated or replaced)")
    if hashlib.sha256(data).hexdigest() != weights.get("sha256"):
        raise ValueError(f"{path}: SHA-256 checksum mismatch with {cpath.name} (corrupted file)")
    try:
        tensors = st_load(data)
    except Exception as e:  # noqa: BLE001 - any parse failure (SafetensorError, ...) is corruption
        raise ValueError(f"{path}: not a readable safetensors file ({e})") from None
    try:
        flow = cls(**config)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{cpath}: config does not build a {cls.__name__} ({e})") from None
    expected = flow.state_dict()
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise ValueError(f"{path}: weights do not match the {cls.__name__} config in {cpath.name} "
                         f"(missing {missing[:5]}, unexpected {extra[:5]})")
    for k, v in expected.items():
        if tuple(tensors[k].shape) != tuple(v.shape):
            raise ValueError(f"{path}: tensor {k!r} has shape {tuple(tensors[k].shape)} but the "
                             f"config in {cpath.name} needs {tuple(v.shape)}")
    floats = {t.dtype for t in tensors.values() if t.is_floating_point()}
    if len(floats) == 1:
        flow = flow.to(floats.pop())
    flow.load_state_dict(tensors, strict=True)
    if map_location is not None:
        flow = flow.to(map_location)
    return flow
