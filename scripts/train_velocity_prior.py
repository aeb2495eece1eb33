#!/usr/bin/env python
r"""Train the velocity-model Glow prior ``glow_velocity32`` (a few CPU minutes).

Usage::

    python scripts/train_velocity_prior.py                 # into bayesinv/data/weights/
    python scripts/train_velocity_prior.py --quick --out /tmp/w   # smoke test (seconds)

Model: :class:`~bayesinv.flows.glow.Glow` (Kingma & Dhariwal 2018), 3 levels × 2 steps,
hidden 32, clamp 2, on 32×32 velocity models scaled to :math:`[0, 1]` by
:func:`bayesinv.data.velocity.to_unit` (:math:`u = (v - 1.5)/3` for v in km/s). Fitted by
maximum likelihood (:func:`bayesinv.flows.train.train_flow`, Adam, lr 1e-3).

Data: :func:`bayesinv.data.velocity.velocity_models` (half layered, half faulted), training
set ``velocity_models(4000, seed=0)``, held-out validation set ``velocity_models(256,
seed=5000)``; seeds ``>= 10_000`` are reserved for the tomography example and benchmarks. The
models are piecewise constant, so (as for the phantom prior of ``scripts/train_priors.py``)
the flow is trained on :math:`\tilde u = u + \sigma\xi`, :math:`\sigma = 0.01`, fresh noise
each step (validation: fixed noise, seed 12345); NLLs are nats per example of that continuous
density (negative values are normal).

Outputs ``glow_velocity32.safetensors`` + ``.json`` (:func:`bayesinv.flows.io.save_flow`) and
``glow_velocity32.train.json`` (:meth:`TrainResult.to_json` plus the recipe below).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from bayesinv.data.velocity import to_unit, velocity_models
from bayesinv.flows.glow import Glow
from bayesinv.flows.io import save_flow
from bayesinv.flows.train import train_flow

NAME = "glow_velocity32"
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "bayesinv" / "data" / "weights"
NOISE_SIGMA = 0.01
VAL_NOISE_SEED = 12345
CONFIG = {"image_shape": (1, 32, 32), "levels": 3, "steps": 2, "hidden": 32, "clamp": 2.0, "seed": 0}


def recipe(quick: bool) -> dict:
    """Data and training settings (recorded in the training log)."""
    return {"kind": "velocity_models", "size": 32, "faulted_fraction": 0.5,
            "n_train": 64 if quick else 4000, "train_seed": 0,
            "n_val": 16 if quick else 256, "val_seed": 5000, "unit_scale": "u = (v - 1.5) / 3",
            "noise_sigma": NOISE_SIGMA, "val_noise_seed": VAL_NOISE_SEED,
            "steps": 4 if quick else 1500, "batch_size": 32, "lr": 1e-3, "grad_clip": 1e4,
            "val_every": 2 if quick else 250}


def sampler(images: Tensor) -> Callable[[int, torch.Generator], Tensor]:
    """Noisy training batches (indices and noise from the loop's generator)."""

    def sample(batch_size: int, generator: torch.Generator) -> Tensor:
        idx = torch.randint(images.shape[0], (batch_size,), generator=generator)
        x = images[idx]
        return x + NOISE_SIGMA * torch.randn(x.shape, generator=generator, dtype=x.dtype)

    return sample


def train(out: Path, quick: bool = False, progress: bool | None = None) -> dict:
    """Train and write the three files into ``out``; returns the training log (a dict)."""
    r = recipe(quick)
    torch.manual_seed(0)
    train_u = to_unit(velocity_models(r["n_train"], 32, seed=r["train_seed"]))
    val_u = to_unit(velocity_models(r["n_val"], 32, seed=r["val_seed"]))
    val_u = val_u + NOISE_SIGMA * torch.randn(val_u.shape,
                                              generator=torch.Generator().manual_seed(VAL_NOISE_SEED))
    flow = Glow(**CONFIG)
    with torch.no_grad():
        untrained = float(-flow.log_prob(val_u).mean())
    t0 = time.perf_counter()
    result = train_flow(flow, sampler(train_u), steps=r["steps"], batch_size=r["batch_size"],
                        lr=r["lr"], val_data=val_u, val_every=r["val_every"], seed=0,
                        device="cpu", progress=progress, grad_clip=r["grad_clip"])
    flow.eval()
    out.mkdir(parents=True, exist_ok=True)
    weights = out / f"{NAME}.safetensors"
    save_flow(flow, weights)
    log = json.loads(result.to_json())
    log.update({"name": NAME, "flow_class": "Glow", "flow_config": flow.config,
                "n_parameters": sum(p.numel() for p in flow.parameters()),
                "weights_bytes": weights.stat().st_size, "data": r,
                "untrained_val_nll": untrained, "total_wall_time_s": time.perf_counter() - t0,
                "torch_version": torch.__version__, "torch_threads": torch.get_num_threads(),
                "script": "scripts/train_velocity_prior.py"})
    (out / f"{NAME}.train.json").write_text(json.dumps(log, indent=1) + "\n")
    return log


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    p.add_argument("--quick", action="store_true", help="a few steps on a small set (smoke test)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    log = train(a.out, a.quick)
    print(f"{NAME}: val NLL {log['final_val_nll']:.1f} nats (untrained {log['untrained_val_nll']:.1f}), "
          f"best {log['best_val_nll']:.1f} at step {log['best_val_step']}, "
          f"{log['wall_time_s']:.0f} s -> {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
