"""Progress bars for long loops (tqdm), quiet when not attached to a terminal."""

from __future__ import annotations

import sys

from tqdm.std import tqdm


def progress_bar(total: int, desc: str, enabled: bool | None = None) -> tqdm:
    """A tqdm bar; ``enabled=None`` shows it only when stderr is a terminal (not in CI logs)."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    return tqdm(total=total, desc=desc, disable=not enabled, leave=False, dynamic_ncols=True)


def check_loss_finite(loss: float, step: int, method: str, hint: str) -> None:
    """Stop with a message naming the step and the likely cause when the objective blows up."""
    if loss != loss or loss in (float("inf"), float("-inf")):
        raise FloatingPointError(
            f"{method}: the objective became {loss} at step {step}; likely cause: {hint}"
        )
