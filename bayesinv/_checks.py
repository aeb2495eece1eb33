"""Input validation shared by every public entry point.

Each check raises a ``TypeError`` or ``ValueError`` whose message names the argument and says
what was expected, so that a bad input never turns into a silent wrong answer or a traceback
from deep inside torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

Shape = tuple[int, ...]


def as_tensor(value: object, name: str, *, dtype: torch.dtype | None = None) -> Tensor:
    """Convert a tensor or numpy array to a floating tensor, or raise ``TypeError``.

    Integer and boolean inputs are promoted to the default float dtype; complex inputs are
    refused (complex data is stored as a trailing real axis of length 2 in bayesinv), and so
    are numpy arrays of a non-numeric dtype (object, strings) and tensors on the ``meta``
    device (which hold no data).
    """
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "biufc":
            raise TypeError(f"{name}: expected a numeric array, got a numpy array of dtype "
                            f"{value.dtype} (convert it with .astype(float))")
        value = torch.from_numpy(np.ascontiguousarray(value))
    if not isinstance(value, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor or numpy array, got {type(value).__name__}")
    if value.device.type == "meta":
        raise ValueError(f"{name}: the tensor is on the 'meta' device, which holds no data; "
                         "expected a tensor on the CPU or the problem's device")
    if value.is_complex():
        raise TypeError(
            f"{name}: complex tensors are not accepted; store complex data as a real trailing "
            "axis of length 2 (torch.view_as_real)"
        )
    if dtype is not None:
        value = value.to(dtype)
    elif not value.is_floating_point():
        value = value.to(torch.get_default_dtype())
    return value


def check_finite(value: Tensor, name: str) -> Tensor:
    """Raise ``ValueError`` if ``value`` holds NaN or inf (one host sync; use at boundaries only)."""
    if not bool(torch.isfinite(value).all()):
        n_bad = int((~torch.isfinite(value)).sum())
        raise ValueError(f"{name}: contains {n_bad} NaN/inf value(s); expected finite numbers")
    return value


def check_positive(value: float, name: str, *, allow_zero: bool = False) -> float:
    """Return ``value`` as a float if it is a finite positive number, else raise ``ValueError``."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name}: expected a positive number, got {value!r}") from None
    if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name}: expected a finite number {bound}, got {value!r}")
    return v


def check_real(value: object, name: str) -> float:
    """Return ``value`` as a float if it is a finite real number (not a bool), else raise."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name}: expected a real number, got {value!r}")
    if not math.isfinite(float(value)):
        raise ValueError(f"{name}: expected a finite number, got {value}")
    return float(value)


def check_int(value: object, name: str, *, minimum: int = 1) -> int:
    """Return ``value`` as an int if it is an integer >= ``minimum``, else raise."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}: expected an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value}")
    return int(value)


def check_choice(value: str, name: str, choices: Sequence[str]) -> str:
    """Raise ``ValueError`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name}: unknown value {value!r}; expected one of {sorted(choices)}")
    return value


def check_shape(value: Tensor, name: str, expected: Shape, *, batched: bool = True) -> Tensor:
    """Check that the trailing dimensions of ``value`` equal ``expected``.

    With ``batched=True`` exactly one leading batch dimension is required.
    """
    n = len(expected)
    ok = value.dim() == n + (1 if batched else 0) and tuple(value.shape[-n:]) == tuple(expected)
    if not ok:
        want = ("(B, " + ", ".join(map(str, expected)) + ")") if batched else str(tuple(expected))
        raise ValueError(f"{name}: expected shape {want}, got {tuple(value.shape)}")
    return value


def as_image_batch(value: object, name: str, image_shape: Shape | None = None) -> Tensor:
    """Normalise an image given as ``(H, W)``, ``(C, H, W)`` or ``(B, C, H, W)`` to 4-D.

    Parameters
    ----------
    value
        Tensor or numpy array.
    name
        Argument name used in error messages.
    image_shape
        Expected ``(C, H, W)``; when given, a 2-D input is read as ``(H, W)`` with ``C = 1`` and
        a 3-D input as ``(C, H, W)``, and the result must match.
    """
    x = as_tensor(value, name)
    if x.dim() == 2:
        x = x[None, None]
    elif x.dim() == 3:
        x = x[None]
    elif x.dim() != 4:
        raise ValueError(
            f"{name}: expected an image of shape (H, W), (C, H, W) or (B, C, H, W), "
            f"got {tuple(x.shape)}"
        )
    if image_shape is not None and tuple(x.shape[1:]) != tuple(image_shape):
        raise ValueError(
            f"{name}: expected images of shape (C, H, W) = {tuple(image_shape)}, "
            f"got {tuple(x.shape[1:])} (full shape {tuple(value.shape)})"  # type: ignore[attr-defined]
        )
    return x


def as_measurement_batch(value: object, name: str, out_shape: Shape) -> Tensor:
    """Normalise a measurement to ``(B, *out_shape)``: a single unbatched one gets ``B = 1``."""
    y = as_tensor(value, name)
    if tuple(y.shape) == tuple(out_shape):
        y = y[None]
    check_shape(y, name, out_shape)
    return y


def resolve_device(device: str | torch.device | None) -> torch.device:
    """Turn ``"auto"``/``None``/a name into a ``torch.device``; refuse CUDA when it is absent."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device: expected 'cpu', 'cuda', 'cuda:N' or 'auto', got {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: 'cuda' was requested but torch.cuda.is_available() is False")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device: {str(dev)!r} was requested but only {torch.cuda.device_count()} "
                         "CUDA device(s) are visible")
    return dev


def make_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded with ``seed`` (random seed when ``None``)."""
    gen = torch.Generator(device=device)
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(check_int(seed, "seed", minimum=0))
    return gen
