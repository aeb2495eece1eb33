r"""Maximum-likelihood training of density models (normalizing flows), resumable bit-for-bit.

Any ``torch.nn.Module`` with ``log_prob(x) -> (B,)`` can be trained: the loss is the negative
log-likelihood per example,

.. math::

    \mathcal L(\theta) = -\frac{1}{B}\sum_{b=1}^{B} \log p_\theta(x_b),
    \qquad \log p_\theta(x) = \log p_Z(f_\theta(x)) + \log\left|\det \frac{\partial f_\theta}{\partial x}\right|

(change of variables; Dinh et al. 2017, "Density estimation using Real NVP"; Kingma & Dhariwal
2018, "Glow"), minimised with Adam (Kingma & Ba 2015). Patch flows (patchNR, Altekrüger,
Hertrich et al. 2023) are trained the same way on flattened patches, drawn each step by a
sampler; zero-shot super-resolution trains on the low-resolution image's own patches and their
8 dihedral copies (:func:`dihedral_augment`).

**Units.** NLL is reported in nats per example, of the density on the data *as the model sees
it*. Bits per dimension are

.. math::

    \mathrm{bpd} = \frac{\mathrm{NLL}}{D \ln 2} + o,

with :math:`D` the number of elements of one example and the offset :math:`o = 0` for
continuous data. With ``dequantize="uniform"`` the data are 8-bit intensities scaled to
:math:`[0, 1]` (levels :math:`k/256`) and dequantised as :math:`x + u/256`,
:math:`u \sim \mathcal U[0, 1)^D` (Theis et al. 2016, "A note on the evaluation of generative
models"); then :math:`o = \log_2 256 = 8`, because the density on :math:`[0, 256)^D` is
:math:`256^{-D}` times the density on :math:`[0, 1)^D`. This is the discrete 8-bit bits/dim of
the Real NVP and Glow papers (an upper bound on the discrete code length): a model that is
uniform on :math:`[0, 1]^D` scores exactly 8.

**Reproducibility.** All randomness of the loop (batch indices, dequantisation noise, the
generator handed to a sampler) comes from one CPU ``torch.Generator`` seeded with ``seed``;
randomness inside the model (dropout) comes from the global torch RNG, which is forked (the
caller's state is restored afterwards) and seeded from ``seed``. Checkpoints store the model,
the optimizer, both RNG states and the histories, so *train n steps, stop, resume in a new
process with a fresh model object up to m steps* reproduces the uninterrupted m-step run
exactly (same device and torch build).

**Checkpoints** are one safetensors file, no pickle: tensors ``model/<name>``,
``optim/<i>/<key>``, ``rng/*``, ``history/*``; everything else (step, optimizer
hyperparameters, settings, a SHA-256 of the tensor bytes) is JSON in the safetensors header
metadata. Writes are atomic (temporary file in the same directory, ``fsync``, ``os.replace``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import struct
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
from torch import Tensor, nn

from .._checks import (
    as_image_batch,
    as_tensor,
    check_choice,
    check_finite,
    check_int,
    check_positive,
    resolve_device,
)
from ..infer._progress import check_loss_finite, progress_bar

__all__ = [
    "TrainResult",
    "bits_per_dim",
    "dequantize_uniform",
    "dihedral_augment",
    "load_checkpoint",
    "save_checkpoint",
    "train_flow",
]

LEVELS = 256  # 8-bit data: levels k / 256 on [0, 1]
FORMAT = "bayesinv.train_checkpoint"
VERSION = 1
DEQUANTIZE = ("uniform",)
_MODEL_SEED_OFFSET = 1_000_003  # global-RNG seed = seed + offset (decorrelated from the loop's stream)
_VAL_SEED_OFFSET = 1  # validation dequantisation noise: fixed, from seed + 1, same at every evaluation

Sampler = Callable[[int, torch.Generator], Tensor]
PatchSampler = Callable[[Tensor, int, torch.Generator], Tensor]

_HINT = (
    "learning rate too high (lower lr or set grad_clip), data not normalised (scale images to "
    "[0, 1] or standardise), or unbounded coupling scales (bound log-scales, e.g. s = c*tanh(.))"
)


# --------------------------------------------------------------------------------------- units
def bits_per_dim(nll: float, dim: int, *, levels: int | None = None) -> float:
    r"""Bits per dimension of an NLL in nats per example: :math:`\mathrm{NLL}/(D\ln 2) + \log_2 L`.

    Parameters
    ----------
    nll
        Negative log-likelihood in nats per example (density on the data as modelled).
    dim
        :math:`D`, the number of elements of one example.
    levels
        ``None`` for continuous data (offset 0); ``L`` (e.g. 256) when the data are ``L``-level
        intensities scaled to :math:`[0, 1]` and dequantised by :math:`\mathcal U[0, 1/L)` noise,
        which gives the discrete bits/dim on the ``0..L-1`` scale (offset :math:`\log_2 L`).
    """
    dim = check_int(dim, "dim")
    offset = 0.0 if levels is None else math.log2(check_int(levels, "levels", minimum=2))
    return float(nll) / (dim * math.log(2.0)) + offset


def dequantize_uniform(x: Tensor, generator: torch.Generator, *, levels: int = LEVELS) -> Tensor:
    r"""Uniform dequantisation :math:`x + u/L`, :math:`u \sim \mathcal U[0, 1)` elementwise.

    The noise is drawn on the generator's device (CPU for the training loop) in ``x``'s dtype
    and moved to ``x``'s device, so the values do not depend on where the model runs.
    """
    u = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=generator.device)
    return x + u.to(x.device) / levels


# -------------------------------------------------------------------------------- augmentation
def dihedral_augment(images: Tensor) -> Tensor:
    r"""The 8 images of the dihedral group :math:`D_4` (4 rotations by 90° × optional flip).

    Parameters
    ----------
    images
        ``(B, C, H, W)`` (or ``(C, H, W)``, ``(H, W)``) with ``H == W``. For non-square images
        augment the square *patches* instead: the dihedral copies of the patches of an image are
        the patches of its dihedral copies.

    Returns
    -------
    Tensor
        ``(8B, C, H, W)``; block ``g`` (rows ``g*B .. g*B + B - 1``) is
        :math:`\mathrm{rot90}^{g \bmod 4}` of the input for ``g < 4`` and of its left-right
        mirror for ``g >= 4``. Block 0 is the input itself. Used to enlarge the training set of
        a patch flow trained on one low-resolution image (zero-shot SR, Hertrich et al.).
    """
    x = as_image_batch(images, "images")
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(
            f"images: dihedral copies need square images (H == W), got H, W = {tuple(x.shape[-2:])}; "
            "augment square patches instead"
        )
    mirror = torch.flip(x, dims=(-1,))
    copies = [torch.rot90(base, k, dims=(-2, -1)) for base in (x, mirror) for k in range(4)]
    return torch.cat(copies, dim=0)


# ------------------------------------------------------------------------------------- result
@dataclass
class TrainResult:
    """Outcome of :func:`train_flow`: histories, final/best NLL (nats/example) and bits/dim.

    ``train_loss[i]`` is the minibatch NLL of step ``i + 1``; ``val_nll[j]`` the held-out NLL
    after step ``val_steps[j]``. ``bits_per_dim`` follows the convention of the module docstring
    with offset ``bits_offset`` (8 for dequantised 8-bit data, else 0).
    """

    steps: int
    start_step: int
    dim: int
    batch_size: int
    lr: float
    weight_decay: float
    dequantize: str | None
    seed: int
    bits_offset: float
    train_loss: list[float] = field(default_factory=list)
    val_steps: list[int] = field(default_factory=list)
    val_nll: list[float] = field(default_factory=list)
    final_train_nll: float = float("nan")
    final_val_nll: float | None = None
    best_val_nll: float | None = None
    best_val_step: int | None = None
    wall_time_s: float = 0.0
    device: str = "cpu"
    checkpoint: str | None = None

    @property
    def final_nll(self) -> float:
        """Held-out NLL at the end when validation data were given, else the training NLL."""
        return self.final_val_nll if self.final_val_nll is not None else self.final_train_nll

    @property
    def best_nll(self) -> float:
        """Best held-out NLL (or, without validation data, the final training NLL)."""
        return self.best_val_nll if self.best_val_nll is not None else self.final_train_nll

    def bpd(self, nll: float) -> float:
        """Bits/dim of an NLL value with this run's ``dim`` and offset."""
        return float(nll) / (self.dim * math.log(2.0)) + self.bits_offset

    @property
    def bits_per_dim(self) -> float:
        """Bits/dim of :attr:`final_nll`."""
        return self.bpd(self.final_nll)

    @property
    def best_bits_per_dim(self) -> float:
        """Bits/dim of :attr:`best_nll`."""
        return self.bpd(self.best_nll)

    def to_json(self, path: str | os.PathLike | None = None, *, indent: int | None = 1) -> str:
        """The training log as JSON (shipped beside the weights); written to ``path`` if given."""
        d = asdict(self)
        d.update(
            final_nll=self.final_nll,
            best_nll=self.best_nll,
            bits_per_dim=self.bits_per_dim,
            best_bits_per_dim=self.best_bits_per_dim,
            nll_unit="nats per example",
            bits_per_dim_convention=(
                "NLL / (dim * ln 2) + bits_offset; bits_offset = log2(256) = 8 for 8-bit data in "
                "[0, 1] dequantised with U[0, 1/256) noise (discrete 8-bit bits/dim), else 0"
            ),
        )
        text = json.dumps(_json_safe(d), indent=indent, allow_nan=False)
        if path is not None:
            _atomic_write(Path(path), text.encode())
        return text


def _json_safe(obj: Any) -> Any:
    """Replace non-finite floats by ``None`` so the log is strict JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


# ------------------------------------------------------------------------------- checkpointing
@dataclass
class Checkpoint:
    """Decoded training checkpoint (see :func:`load_checkpoint`)."""

    path: Path
    step: int
    model_state: dict[str, Tensor]
    optimizer_state: dict[str, Any]
    generator_state: Tensor
    torch_rng_state: Tensor
    cuda_rng_state: Tensor | None
    train_loss: list[float]
    val_steps: list[int]
    val_nll: list[float]
    config: dict[str, Any]
    best_val_nll: float | None = None
    best_val_step: int | None = None


def _atomic_write(path: Path, payload: bytes) -> None:
    """Write ``payload`` to ``path`` atomically: temp file in the same directory, fsync, replace.

    On any failure the temporary file is removed and an existing ``path`` is left untouched.
    """
    directory = path.parent if str(path.parent) else Path(".")
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.chmod(tmp, _file_mode(path))  # mkstemp makes 0600 files; keep the usual permissions
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:  # make the rename itself durable (not possible on every platform)
        dfd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def _file_mode(path: Path) -> int:
    """Permissions of the file being replaced, else those a plain ``open`` would give."""
    try:
        return path.stat().st_mode & 0o777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def _tensor_digest(tensors: dict[str, Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and raw bytes of ``tensors`` in sorted-name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _encode_optimizer(state: dict[str, Any], tensors: dict[str, Tensor]) -> dict[str, Any]:
    """Split ``optimizer.state_dict()`` into safetensors entries and a JSON-able skeleton."""
    encoded_state = []
    for idx, per_param in state["state"].items():
        entry: dict[str, Any] = {}
        for key, value in per_param.items():
            if isinstance(value, Tensor):
                name = f"optim/{idx}/{key}"
                tensors[name] = value.detach().cpu().clone().contiguous()
                entry[key] = {"__tensor__": name}
            else:
                entry[key] = value
        encoded_state.append([int(idx), entry])
    return {"state": encoded_state, "param_groups": state["param_groups"]}


def _decode_optimizer(encoded: dict[str, Any], tensors: dict[str, Tensor]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for idx, entry in encoded["state"]:
        state[int(idx)] = {
            k: (tensors[v["__tensor__"]] if isinstance(v, dict) and "__tensor__" in v else v)
            for k, v in entry.items()
        }
    return {"state": state, "param_groups": encoded["param_groups"]}


def save_checkpoint(
    path: str | os.PathLike,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    step: int,
    generator: torch.Generator,
    train_loss: list[float],
    val_steps: list[int],
    val_nll: list[float],
    config: dict[str, Any],
    best_val_nll: float | None = None,
    best_val_step: int | None = None,
    cuda_device: torch.device | None = None,
) -> Path:
    """Write a training checkpoint (safetensors + JSON metadata, atomically). Returns the path.

    The global torch RNG state saved is the current one (call inside the training RNG fork);
    with ``cuda_device`` the CUDA RNG state of that device is saved too.
    """
    path = Path(path)
    tensors: dict[str, Tensor] = {
        f"model/{k}": v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()
    }
    optim_meta = _encode_optimizer(optimizer.state_dict(), tensors)
    tensors["rng/generator"] = generator.get_state().clone()
    tensors["rng/torch"] = torch.get_rng_state().clone()
    if cuda_device is not None:
        tensors["rng/cuda"] = torch.cuda.get_rng_state(cuda_device).clone()
    tensors["history/train_loss"] = torch.tensor(train_loss, dtype=torch.float64)
    tensors["history/val_steps"] = torch.tensor(val_steps, dtype=torch.int64)
    tensors["history/val_nll"] = torch.tensor(val_nll, dtype=torch.float64)
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "step": int(step),
        "model_class": type(model).__name__,
        "config": config,
        "optimizer_class": type(optimizer).__name__,
        "optimizer": optim_meta,
        "best_val_nll": best_val_nll,
        "best_val_step": best_val_step,
        "torch_version": torch.__version__,
        "sha256": _tensor_digest(tensors),
    }
    payload = safetensors.torch.save(tensors, metadata={"bayesinv": json.dumps(meta)})
    _atomic_write(path, payload)
    return path


def _read_header(data: bytes) -> dict[str, Any]:
    if len(data) < 8:
        raise ValueError(f"file is {len(data)} bytes long, shorter than a safetensors header")
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8:
        raise ValueError(f"header claims {n} bytes but only {len(data) - 8} follow (truncated)")
    return json.loads(data[8 : 8 + n])


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read and validate a checkpoint written by :func:`save_checkpoint`.

    Raises
    ------
    ValueError
        Naming the file, when it is truncated, corrupted (digest mismatch) or not a bayesinv
        training checkpoint.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"checkpoint: cannot read {str(path)!r}: {exc}") from exc
    try:
        header = _read_header(data)
        meta = json.loads(header.get("__metadata__", {}).get("bayesinv", "null"))
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise ValueError("no bayesinv training metadata in the header")
        if meta.get("version") != VERSION:
            raise ValueError(f"unsupported checkpoint version {meta.get('version')!r} (expected {VERSION})")
        tensors = safetensors.torch.load(data)
        digest = _tensor_digest(tensors)
        if digest != meta.get("sha256"):
            raise ValueError("SHA-256 of the tensor data does not match the one recorded (corrupted)")
        model_state = {k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}
        optimizer_state = _decode_optimizer(meta["optimizer"], tensors)
        return Checkpoint(
            path=path,
            step=int(meta["step"]),
            model_state=model_state,
            optimizer_state=optimizer_state,
            generator_state=tensors["rng/generator"],
            torch_rng_state=tensors["rng/torch"],
            cuda_rng_state=tensors.get("rng/cuda"),
            train_loss=tensors["history/train_loss"].tolist(),
            val_steps=[int(s) for s in tensors["history/val_steps"].tolist()],
            val_nll=tensors["history/val_nll"].tolist(),
            config=dict(meta["config"]),
            best_val_nll=meta.get("best_val_nll"),
            best_val_step=meta.get("best_val_step"),
        )
    except Exception as exc:  # safetensors, json, struct and key errors all mean "bad file"
        raise ValueError(
            f"checkpoint: {str(path)!r} is not a valid bayesinv training checkpoint "
            f"(truncated or corrupted?): {exc}"
        ) from exc


def _restore(ckpt: Checkpoint, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Load model and optimizer state from ``ckpt``; mismatches raise ``ValueError`` naming the file."""
    own = model.state_dict()
    missing = sorted(set(own) - set(ckpt.model_state))
    unexpected = sorted(set(ckpt.model_state) - set(own))
    bad = [k for k in own if k in ckpt.model_state and own[k].shape != ckpt.model_state[k].shape]
    if missing or unexpected or bad:
        raise ValueError(
            f"checkpoint: {str(ckpt.path)!r} does not fit this model "
            f"(missing {missing[:5]}, unexpected {unexpected[:5]}, shape mismatch {bad[:5]})"
        )
    model.load_state_dict(ckpt.model_state, strict=True)
    state = ckpt.optimizer_state
    fresh = optimizer.state_dict()["param_groups"]
    if len(fresh) != len(state["param_groups"]) or any(
        len(a["params"]) != len(b["params"]) for a, b in zip(fresh, state["param_groups"], strict=False)
    ):
        raise ValueError(f"checkpoint: {str(ckpt.path)!r} optimizer state does not fit this model's parameters")
    for cur, saved in zip(fresh, state["param_groups"], strict=True):  # JSON turned tuples (betas) into lists
        for k, v in saved.items():
            if isinstance(cur.get(k), tuple) and isinstance(v, list):
                saved[k] = tuple(v)
    try:
        optimizer.load_state_dict(state)
    except (ValueError, KeyError, RuntimeError) as exc:
        raise ValueError(f"checkpoint: {str(ckpt.path)!r} optimizer state cannot be loaded: {exc}") from exc


# ---------------------------------------------------------------------------------- the loop
def _train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: Tensor,
    *,
    step: int,
    grad_clip: float | None,
    lr: float,
) -> float:
    r"""One Adam step on :math:`-\frac1B\sum_b \log p_\theta(x_b)`; returns the loss before the step.

    Kept separate from the loop so a data-parallel wrapper can replace it. The loss and the
    gradient norm are checked (one host sync) *before* the parameters change, so a blow-up
    leaves the model at its last finite state.
    """
    optimizer.zero_grad(set_to_none=True)
    logp = model.log_prob(batch)
    if not isinstance(logp, Tensor) or logp.shape != (batch.shape[0],):
        shape = tuple(logp.shape) if isinstance(logp, Tensor) else type(logp).__name__
        raise ValueError(
            f"model: log_prob must return one value per example, shape ({batch.shape[0]},); got {shape}"
        )
    loss = -logp.mean()
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if grads:
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.detach()) for g in grads]))
    else:
        norm = loss.new_zeros(())
    loss_value, norm_value = torch.stack([loss.detach(), norm.to(loss.dtype)]).tolist()
    return _checked_update(optimizer, grads, loss_value, norm_value, step=step, grad_clip=grad_clip,
                           lr=lr, caller="train_flow")


def _checked_update(
    optimizer: torch.optim.Optimizer,
    grads: list[Tensor],
    loss_value: float,
    norm_value: float,
    *,
    step: int,
    grad_clip: float | None,
    lr: float,
    caller: str,
) -> float:
    r"""Check loss and gradient norm, clip to ``grad_clip`` (:math:`g \leftarrow g\,c/\|g\|`), step.

    Raises ``FloatingPointError`` naming ``caller`` and the step before the parameters change.
    Returns ``loss_value``.
    """
    check_loss_finite(loss_value, step, caller, f"{_HINT}; lr={lr:g}")
    if not math.isfinite(norm_value):
        raise FloatingPointError(
            f"{caller}: the gradient norm became {norm_value} at step {step} (loss {loss_value:.4g}); "
            f"likely cause: {_HINT}; lr={lr:g}"
        )
    if grad_clip is not None and norm_value > grad_clip:
        for g in grads:
            g.mul_(grad_clip / (norm_value + 1e-12))
    optimizer.step()
    return loss_value


def _as_data(value: object, name: str) -> Tensor:
    if isinstance(value, (list, tuple)) or not isinstance(value, (Tensor, np.ndarray)):
        raise TypeError(
            f"{name}: expected a tensor/array of examples (N, ...) or a callable "
            f"sampler(batch_size, generator), got {type(value).__name__}"
        )
    x = as_tensor(value, name)
    if x.dim() < 2 or x.shape[0] < 1:
        raise ValueError(f"{name}: expected a batch of examples (N, ...) with N >= 1, got shape {tuple(x.shape)}")
    return check_finite(x, name)


def _check_unit_range(x: Tensor, name: str) -> None:
    lo, hi = float(x.min()), float(x.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(
            f"{name}: dequantize='uniform' expects 8-bit data scaled to [0, 1] (levels k/256), "
            f"got values in [{lo:.4g}, {hi:.4g}]"
        )


@torch.no_grad()
def _evaluate(model: nn.Module, val: Tensor, batch_size: int, dequantize: str | None, seed: int) -> float:
    """Mean held-out NLL (nats/example) in eval mode; fixed dequantisation noise (seed + 1)."""
    gen = torch.Generator().manual_seed(seed + _VAL_SEED_OFFSET)
    was_training = model.training
    model.eval()
    total = 0.0
    try:
        for start in range(0, val.shape[0], batch_size):
            xb = val[start : start + batch_size]
            if dequantize == "uniform":
                xb = dequantize_uniform(xb, gen)
            total += float(-model.log_prob(xb).double().sum())
    finally:
        model.train(was_training)
    return total / val.shape[0]


def train_flow(
    model: nn.Module,
    data: Tensor | np.ndarray | Sampler,
    *,
    steps: int,
    batch_size: int,
    lr: float = 1e-4,
    weight_decay: float = 0.0,
    dequantize: str | None = None,
    val_data: Tensor | np.ndarray | None = None,
    val_every: int = 500,
    val_batch_size: int | None = None,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 1000,
    resume: bool = True,
    seed: int = 0,
    device: str | torch.device | None = "auto",
    progress: bool | None = None,
    grad_clip: float | None = None,
    patch_sampler: PatchSampler | None = None,
) -> TrainResult:
    r"""Train ``model`` by maximum likelihood with Adam; resumable exactly from a checkpoint.

    Parameters
    ----------
    model
        Any ``nn.Module`` with ``log_prob(x) -> (B,)`` (a flow, a patch flow, ...). Trained in
        place and moved to ``device``; its train/eval mode is restored at the end.
    data
        Either a tensor/array of examples ``(N, ...)`` (images ``(N, C, H, W)`` or flattened
        patches ``(N, D)``), from which each step draws ``batch_size`` indices uniformly with
        replacement; or a callable ``sampler(batch_size, generator) -> (batch_size, ...)`` (e.g.
        random patches of a few images), called with the loop's CPU ``torch.Generator``; it must
        draw all its randomness from that generator for runs to be reproducible and resumable.
    steps
        Total number of optimisation steps, counting those already in a resumed checkpoint.
    batch_size
        Examples per step.
    lr, weight_decay
        Adam learning rate (1e-4, patchNR's) and L2 weight decay (``torch.optim.Adam``).
    dequantize
        ``None`` (continuous data) or ``"uniform"``: 8-bit data in :math:`[0, 1]` get
        :math:`\mathcal U[0, 1/256)` noise each step, and bits/dim get the +8 offset (module
        docstring). Validation data are dequantised with fixed noise (seed ``seed + 1``).
    val_data
        Held-out examples ``(M, ...)``; the mean NLL is recorded every ``val_every`` steps and at
        the last step (in eval mode, without gradients, in chunks of ``val_batch_size``,
        default ``batch_size``).
    checkpoint
        Path of the checkpoint file (safetensors), written atomically every
        ``checkpoint_every`` steps and at the end; ``None``: no checkpoints.
    resume
        If ``checkpoint`` exists, continue from it (model, optimizer, RNG states, histories);
        otherwise start afresh and overwrite it.
    seed
        Seed of the loop's generator (batch indices, dequantisation noise, sampler) and of the
        forked global RNG the model may use.
    device
        ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda:N"``; see
        :func:`bayesinv._checks.resolve_device`.
    progress
        Progress bar with the running NLL (``None``: only when stderr is a terminal).
    grad_clip
        Clip the global gradient norm to this value (``None``: no clipping).
    patch_sampler
        With tensor ``data`` (e.g. images), draw each batch as
        ``patch_sampler(data, batch_size, generator)`` instead of indexing ``data`` (random
        patches drawn from the images every step).

    Returns
    -------
    TrainResult
        Loss history (nats/example per step), validation history, final and best NLL and
        bits/dim (``bits_per_dim = NLL / (D ln 2) + 8·[dequantize == "uniform"]``), wall time.

    Raises
    ------
    FloatingPointError
        When the loss or the gradient norm becomes NaN/inf, naming the step and likely causes
        (the parameters are not updated with the bad gradient).
    ValueError, TypeError
        For bad arguments, naming the argument; non-finite data name ``data``; a bad checkpoint
        names the file.
    """
    steps, batch_size, lr, weight_decay, val_every, checkpoint_every, val_batch_size, seed, grad_clip = (
        _check_train_args(
            model, steps=steps, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
            dequantize=dequantize, val_every=val_every, checkpoint_every=checkpoint_every,
            val_batch_size=val_batch_size, seed=seed, grad_clip=grad_clip, resume=resume,
        )
    )
    if patch_sampler is not None and not callable(patch_sampler):
        raise TypeError(f"patch_sampler: expected a callable (data, batch_size, generator), got {type(patch_sampler).__name__}")
    params = _trainable_params(model)
    dev = resolve_device(device)
    dtype = params[0].dtype

    sampler: Sampler | None = None
    x_data: Tensor | None = None
    if callable(data) and not isinstance(data, (Tensor, np.ndarray)):
        if patch_sampler is not None:
            raise ValueError("patch_sampler: only used with tensor data; data is already a sampler")
        sampler = data
    else:
        x_data = _as_data(data, "data").to(device=dev, dtype=dtype)
        if dequantize == "uniform":
            _check_unit_range(x_data, "data")
    x_val = _prepare_val_data(
        val_data, dev, dtype, dequantize, None if patch_sampler is not None else x_data
    )

    data_kind = "sampler" if sampler is not None else ("patch_sampler" if patch_sampler else "tensor")
    run, optimizer, gen, cuda_dev, ckpt_path = _start_run(
        model, params, dev, checkpoint=checkpoint, batch_size=batch_size, lr=lr,
        weight_decay=weight_decay, dequantize=dequantize, seed=seed, grad_clip=grad_clip, data_kind=data_kind,
        x_val=x_val, val_every=val_every, val_batch_size=val_batch_size, checkpoint_every=checkpoint_every,
        caller="train_flow",
    )

    def draw(step: int) -> Tensor:
        if sampler is not None:
            xb = sampler(batch_size, gen)
            if not isinstance(xb, Tensor):
                raise TypeError(f"data: the sampler must return a tensor, got {type(xb).__name__}")
            if xb.dim() < 2 or xb.shape[0] != batch_size:
                raise ValueError(
                    f"data: the sampler must return ({batch_size}, ...) batches, got shape {tuple(xb.shape)}"
                )
            xb = xb.to(device=dev, dtype=dtype)
        elif patch_sampler is not None:
            xb = patch_sampler(x_data, batch_size, gen)
            if not isinstance(xb, Tensor) or xb.dim() < 2 or xb.shape[0] != batch_size:
                got = tuple(xb.shape) if isinstance(xb, Tensor) else type(xb).__name__
                raise ValueError(f"patch_sampler: must return ({batch_size}, ...) batches, got {got}")
            xb = xb.to(device=dev, dtype=dtype)
        else:
            idx = torch.randint(x_data.shape[0], (batch_size,), generator=gen)
            xb = x_data[idx.to(dev)]
        if dequantize == "uniform":
            xb = dequantize_uniform(xb, gen)
        return xb

    def save(step: int) -> None:
        run.save(ckpt_path, step, model=model, optimizer=optimizer, generator=gen, cuda_device=cuda_dev)

    t0 = time.perf_counter()
    with _model_rng(seed, cuda_dev):
        if ckpt_path is not None and resume and ckpt_path.exists():
            run.resume(
                load_checkpoint(ckpt_path), model, optimizer, gen, cuda_dev, lr=lr, weight_decay=weight_decay
            )


        def one_step(step: int) -> float:
            xb = draw(step)
            run.note_dim(xb)
            try:
                return _train_step(model, optimizer, xb, step=step, grad_clip=grad_clip, lr=lr)
            except FloatingPointError:
                if not bool(torch.isfinite(xb).all()):
                    raise ValueError(
                        f"data: the batch of step {step} contains NaN/inf values (from the sampler)"
                    ) from None
                raise

        run.loop(steps, model, one_step, save=None if ckpt_path is None else save,
                 desc="train flow", progress=progress)

    if run.dim is None:  # resumed a finished run whose checkpoint holds no dim record
        run.dim = int(np.prod(draw(0).shape[1:]))
    return run.result(steps, t0=t0, device=dev, checkpoint=ckpt_path)


# ------------------------------------------------------------- pieces shared with the DDP trainer
def _check_train_args(
    model: nn.Module,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    dequantize: str | None,
    val_every: int,
    checkpoint_every: int,
    val_batch_size: int | None,
    seed: int,
    grad_clip: float | None,
    resume: bool,
) -> tuple[int, int, float, float, int, int, int, int, float | None]:
    """Validate the arguments common to :func:`train_flow` and ``train_flow_ddp``.

    Returns ``(steps, batch_size, lr, weight_decay, val_every, checkpoint_every,
    val_batch_size, seed, grad_clip)`` normalised; bad values raise naming the argument.
    """
    if not isinstance(model, nn.Module) or not callable(getattr(model, "log_prob", None)):
        raise TypeError(f"model: expected an nn.Module with a log_prob(x) method, got {type(model).__name__}")
    steps = check_int(steps, "steps")
    batch_size = check_int(batch_size, "batch_size")
    lr = check_positive(lr, "lr")
    weight_decay = check_positive(weight_decay, "weight_decay", allow_zero=True)
    if dequantize is not None:
        check_choice(dequantize, "dequantize", DEQUANTIZE)
    val_every = check_int(val_every, "val_every")
    checkpoint_every = check_int(checkpoint_every, "checkpoint_every")
    val_batch_size = check_int(val_batch_size if val_batch_size is not None else batch_size, "val_batch_size")
    seed = check_int(seed, "seed", minimum=0)
    if grad_clip is not None:
        grad_clip = check_positive(grad_clip, "grad_clip")
    if not isinstance(resume, bool):
        raise TypeError(f"resume: expected a bool, got {resume!r}")
    return steps, batch_size, lr, weight_decay, val_every, checkpoint_every, val_batch_size, seed, grad_clip


def _trainable_params(model: nn.Module) -> list[nn.Parameter]:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model: has no trainable parameters")
    return params


def _prepare_val_data(
    val_data: Tensor | np.ndarray | None,
    dev: torch.device,
    dtype: torch.dtype,
    dequantize: str | None,
    x_data: Tensor | None,
) -> Tensor | None:
    """Held-out examples on ``dev``; checked against ``x_data``'s example shape when given."""
    if val_data is None:
        return None
    x_val = _as_data(val_data, "val_data").to(device=dev, dtype=dtype)
    if dequantize == "uniform":
        _check_unit_range(x_val, "val_data")
    if x_data is not None and x_val.shape[1:] != x_data.shape[1:]:
        raise ValueError(
            f"val_data: examples of shape {tuple(x_val.shape[1:])} do not match data's {tuple(x_data.shape[1:])}"
        )
    return x_val


def _start_run(
    model: nn.Module,
    params: list[nn.Parameter],
    dev: torch.device,
    *,
    checkpoint: str | os.PathLike | None,
    batch_size: int,
    lr: float,
    weight_decay: float,
    dequantize: str | None,
    seed: int,
    grad_clip: float | None,
    data_kind: str,
    x_val: Tensor | None,
    val_every: int,
    val_batch_size: int,
    checkpoint_every: int,
    caller: str,
) -> tuple[_Run, torch.optim.Optimizer, torch.Generator, torch.device | None, Path | None]:
    """Move ``model`` to ``dev`` in train mode; make the optimizer, the loop's generator, the config.

    Returns ``(run, optimizer, generator, cuda_device, checkpoint_path)``; ``cuda_device`` is the
    indexed CUDA device whose RNG is forked and checkpointed (``None`` on the CPU).
    """
    model.to(dev)
    was_training = model.training
    model.train()
    optimizer = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    config = {  # the same keys for train_flow and train_flow_ddp: checkpoints are interchangeable
        "batch_size": batch_size,
        "lr": lr,
        "weight_decay": weight_decay,
        "dequantize": dequantize,
        "seed": seed,
        "grad_clip": grad_clip,
        "data": data_kind,
    }
    cuda_dev = dev if dev.type == "cuda" else None
    if cuda_dev is not None and cuda_dev.index is None:
        cuda_dev = torch.device("cuda", torch.cuda.current_device())
    ckpt_path = Path(checkpoint) if checkpoint is not None else None
    run = _Run(config=config, was_training=was_training, batch_size=batch_size, lr=lr,
               weight_decay=weight_decay, dequantize=dequantize, seed=seed, x_val=x_val,
               val_every=val_every, val_batch_size=val_batch_size, checkpoint_every=checkpoint_every,
               caller=caller)
    return run, optimizer, gen, cuda_dev, ckpt_path


@contextlib.contextmanager
def _model_rng(seed: int, cuda_dev: torch.device | None) -> Iterator[None]:
    """Fork the global torch (and CUDA) RNG and seed it with ``seed + _MODEL_SEED_OFFSET``."""
    fork_devices = [cuda_dev.index] if cuda_dev is not None else []
    with torch.random.fork_rng(devices=fork_devices):
        torch.default_generator.manual_seed(seed + _MODEL_SEED_OFFSET)
        if cuda_dev is not None:
            with torch.cuda.device(cuda_dev):
                torch.cuda.manual_seed(seed + _MODEL_SEED_OFFSET)
        yield


@dataclass
class _Run:
    """Bookkeeping of one training run: histories, best held-out NLL, ``dim``, resume point."""

    config: dict[str, Any]
    was_training: bool
    batch_size: int
    lr: float
    weight_decay: float
    dequantize: str | None
    seed: int
    x_val: Tensor | None = None
    val_every: int = 500
    val_batch_size: int = 1
    checkpoint_every: int = 1000
    caller: str = "train_flow"
    train_loss: list[float] = field(default_factory=list)
    val_steps: list[int] = field(default_factory=list)
    val_nll: list[float] = field(default_factory=list)
    best: tuple[float, int] | None = None
    start_step: int = 0
    dim: int | None = None

    def resume(
        self,
        ckpt: Checkpoint,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        gen: torch.Generator,
        cuda_dev: torch.device | None,
        *,
        lr: float,
        weight_decay: float,
        warn: bool = True,
        stacklevel: int = 4,
    ) -> None:
        """Restore model, optimizer, generator, RNG states and histories from ``ckpt``."""
        _restore(ckpt, model, optimizer)
        if warn:
            _warn_config_change(ckpt, self.config, stacklevel=stacklevel)
        for group in optimizer.param_groups:  # the arguments of this call win
            group["lr"], group["weight_decay"] = lr, weight_decay
        gen.set_state(ckpt.generator_state)
        torch.set_rng_state(ckpt.torch_rng_state)
        if cuda_dev is not None and ckpt.cuda_rng_state is not None:
            torch.cuda.set_rng_state(ckpt.cuda_rng_state, cuda_dev)
        self.start_step = ckpt.step
        self.train_loss, self.val_steps, self.val_nll = ckpt.train_loss, ckpt.val_steps, ckpt.val_nll
        if ckpt.best_val_nll is not None:
            self.best = (float(ckpt.best_val_nll), int(ckpt.best_val_step))
        self.dim = ckpt.config.get("dim")
        if self.dim is not None:
            self.config["dim"] = self.dim

    def save(
        self,
        path: Path,
        step: int,
        *,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        generator: torch.Generator,
        cuda_device: torch.device | None,
    ) -> None:
        """Write the checkpoint of ``step`` (see :func:`save_checkpoint`)."""
        best = self.best
        save_checkpoint(
            path, model=model, optimizer=optimizer, step=step, generator=generator,
            train_loss=self.train_loss, val_steps=self.val_steps, val_nll=self.val_nll, config=self.config,
            best_val_nll=None if best is None else best[0], best_val_step=None if best is None else best[1],
            cuda_device=cuda_device,
        )

    def note_dim(self, xb: Tensor) -> None:
        """Record :math:`D` (elements of one example) from the first batch."""
        if self.dim is None:
            self.dim = int(np.prod(xb.shape[1:]))
            self.config["dim"] = self.dim

    def loop(
        self,
        steps: int,
        model: nn.Module,
        one_step: Callable[[int], float],
        *,
        save: Callable[[int], None] | None,
        desc: str,
        progress: bool | None,
    ) -> None:
        """Steps ``start_step + 1 .. steps`` (``one_step(step) -> loss``) with a progress bar.

        The model's train/eval mode is restored at the end, also on errors.
        """
        bar = progress_bar(steps, desc, progress)
        bar.update(min(self.start_step, steps))
        try:
            for step in range(self.start_step + 1, steps + 1):
                loss = one_step(step)
                self.end_step(step, steps, loss, bar, model=model, save=save)
        finally:
            bar.close()
            model.train(self.was_training)

    def end_step(
        self,
        step: int,
        steps: int,
        loss: float,
        bar: Any,
        *,
        model: nn.Module,
        save: Callable[[int], None] | None,
    ) -> None:
        """Record the loss of ``step``; validate, checkpoint and update the bar when due."""
        self.train_loss.append(loss)
        if self.x_val is not None and (step % self.val_every == 0 or step == steps):
            v = _evaluate(model, self.x_val, self.val_batch_size, self.dequantize, self.seed)
            if not math.isfinite(v):
                raise FloatingPointError(
                    f"{self.caller}: held-out NLL is {v} at step {step}; val_data may lie outside "
                    f"the model's support, or {_HINT}"
                )
            self.val_steps.append(step)
            self.val_nll.append(v)
            if self.best is None or v < self.best[0]:
                self.best = (v, step)
        if save is not None and (step % self.checkpoint_every == 0 or step == steps):
            save(step)
        bar.update(1)
        if step % 10 == 0 or step == steps:
            bar.set_postfix(nll=f"{loss:.4g}")

    def result(
        self, steps: int, *, t0: float, device: torch.device, checkpoint: Path | None
    ) -> TrainResult:
        """The :class:`TrainResult` of the run (``dim`` must be known)."""
        tail = self.train_loss[-min(len(self.train_loss), 50):]
        best = self.best
        return TrainResult(
            steps=max(steps, self.start_step),
            start_step=self.start_step,
            dim=self.dim,
            batch_size=self.batch_size,
            lr=self.lr,
            weight_decay=self.weight_decay,
            dequantize=self.dequantize,
            seed=self.seed,
            bits_offset=math.log2(LEVELS) if self.dequantize == "uniform" else 0.0,
            train_loss=list(self.train_loss),
            val_steps=list(self.val_steps),
            val_nll=list(self.val_nll),
            final_train_nll=float(np.mean(tail)) if tail else float("nan"),
            final_val_nll=self.val_nll[-1] if self.val_nll else None,
            best_val_nll=None if best is None else best[0],
            best_val_step=None if best is None else best[1],
            wall_time_s=time.perf_counter() - t0,
            device=str(device),
            checkpoint=None if checkpoint is None else str(checkpoint),
        )


def _warn_config_change(ckpt: Checkpoint, config: dict[str, Any], *, stacklevel: int = 3) -> None:
    changed = {
        k: (ckpt.config.get(k), v) for k, v in config.items() if k in ckpt.config and ckpt.config.get(k) != v
    }
    if changed:
        desc = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changed.items())
        warnings.warn(
            f"checkpoint {str(ckpt.path)!r}: resuming with changed settings ({desc}); the run will "
            "not reproduce an uninterrupted one",
            UserWarning,
            stacklevel=stacklevel,
        )
