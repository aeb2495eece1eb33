#!/usr/bin/env python
r"""Train the flow priors shipped in ``bayesinv/data/weights/`` (one command, a few CPU minutes).

Usage::

    python scripts/train_priors.py                      # all four, into bayesinv/data/weights/
    python scripts/train_priors.py --only glow_phantom32
    python scripts/train_priors.py --quick --out /tmp/w # a handful of steps each (smoke test)
    python scripts/train_priors.py --only glow_phantom32_large --out /tmp/w   # not shipped

Every model is fitted by maximum likelihood (:func:`bayesinv.flows.train.train_flow`, Adam;
Dinh et al. 2017, Kingma & Dhariwal 2018) and written as ``NAME.safetensors`` + ``NAME.json``
(:func:`bayesinv.flows.io.save_flow`, with SHA-256) + ``NAME.train.json`` (the
:class:`~bayesinv.flows.train.TrainResult` log, plus the settings and data recipe below).

Models
------
``patchnr_natural``
    :class:`~bayesinv.flows.patch.PatchFlow` on 6×6 patches (patchNR, Altekrüger et al. 2023),
    5 GLOW blocks, subnets 2×256 (reference: 2×512; halved for CPU). **Training image**
    ``astronaut`` at 256×256 (grayscale) and its 8 dihedral copies; **held out**: ``camera``
    (validation NLL here, and reserved for super-resolution tests/benchmarks).
``patchnr_ct``
    Same flow with subnets 2×128 on 6×6 patches of 64×64 ellipse phantoms, **training seeds**
    ``0..199`` (one phantom per seed, ``ellipse_phantoms(1, 64, seed=s)``), validation seeds
    ``5000..5031``; seeds ``>= 10_000`` are reserved for test/benchmark phantoms.
``glow_phantom32``
    :class:`~bayesinv.flows.glow.Glow` (3 levels × 3 steps, hidden 48, clamp 2) on 32×32
    ellipse phantoms, training seeds ``0..3999``, validation seeds ``5000..5255``.
``glow_natural32``
    :class:`~bayesinv.flows.glow.Glow` (3 levels × 6 steps, hidden 128, clamp 2; 595k
    parameters) on 32×32 grayscale crops of natural photographs: 400 seeded crops of each of
    the 12 :data:`~bayesinv.data.images.NATURAL_TRAIN_NAMES` at 0.25, 0.35 and 0.5 of native
    resolution, with their 8 dihedral copies (115 200 crops); **validation** 256 crops of
    ``rocket``; ``camera`` and ``astronaut`` are held out for tests and benchmarks
    (``benchmarks/bench_latent_map.py --domain natural``). 4000 steps of 32 crops, lr 1e-3:
    792 s on 2 CPU threads; held-out NLL -2874 nats (-4.05 bits/dim).

Experimental (not shipped; ``--only NAME --out DIR``, never into the package)
------------------------------------------------------------------------------
``glow_phantom32_large``
    The same data and recipe as ``glow_phantom32`` with a 7.6× larger Glow (3 levels × 6 steps,
    hidden 128; 595k parameters) and 5000 steps: does the latent-MAP comparison of
    ``benchmarks/bench_latent_map.py --prior-weights`` depend on the generator's size? Measured:
    1786 s for 5000 steps (0.36 s per step on 2 shared threads); held-out NLL -2860 nats
    (-4.03 bits/dim) against -2658 for ``glow_phantom32``.

Budgets (Adam, seed 0, one thread): patch flows 3000 steps of 256 random patches, lr 5e-4;
Glow 3000 steps of 32 images, lr 1e-3 (``glow_natural32``: 4000 steps, see above). On an idle core that is about 5, 2.5 and 6 minutes
(0.1 s, 0.05 s and 0.12 s per step); on a shared machine it takes longer.

Noise ("Gaussian dequantisation"). The phantoms are piecewise constant and the natural image
has saturated flat regions, so the clean data lie on a set of measure zero and an MLE flow
would sharpen its density without bound. Every model is therefore trained on
:math:`\tilde x = x + \sigma\xi`, :math:`\xi\sim\mathcal N(0, I)`, :math:`\sigma = 0.01`,
fresh noise each step; it models the smooth density :math:`p * \mathcal N(0, \sigma^2 I)`,
which keeps the latent-space MAP/MCMC/VI posteriors well conditioned. Validation data get
the same noise once, from a fixed seed, so held-out NLLs are comparable between runs. NLLs are
nats per example of that continuous density (bits/dim without the 8-bit offset; negative
values are normal for densities of data in [0, 1] with small noise).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from bayesinv.data.images import NATURAL_TRAIN_NAMES, ellipse_phantoms, load_image
from bayesinv.flows.glow import Glow
from bayesinv.flows.io import save_flow
from bayesinv.flows.patch import PatchFlow
from bayesinv.flows.train import dihedral_augment, train_flow
from bayesinv.priors.patches import random_patches

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "bayesinv" / "data" / "weights"
NOISE_SIGMA = 0.01  # Gaussian dequantisation noise of training and validation data
PATCH = 6
VAL_SEED_START = 5000  # validation phantom seeds; >= 10_000 is reserved for benchmarks
VAL_NOISE_SEED = 12345  # seed of the fixed noise added to validation data


@dataclass(frozen=True)
class Spec:
    """One shipped model: architecture, data recipe and training budget."""

    name: str
    build: Callable[[], nn.Module]
    data: dict  # recipe, recorded in the log
    steps: int
    batch_size: int
    lr: float
    val_every: int
    grad_clip: float | None = None


# ------------------------------------------------------------------------------- data recipes
def add_noise(x: Tensor, generator: torch.Generator, sigma: float = NOISE_SIGMA) -> Tensor:
    """:math:`x + \\sigma\\xi` with :math:`\\xi \\sim \\mathcal N(0, I)` from ``generator``."""
    return x + sigma * torch.randn(x.shape, generator=generator, dtype=x.dtype)


def phantoms(seeds: range, size: int) -> Tensor:
    """One ellipse phantom per seed, ``(len(seeds), 1, size, size)``."""
    return torch.cat([ellipse_phantoms(1, size, seed=s) for s in seeds])


def natural_images(recipe: dict) -> tuple[Tensor, Tensor]:
    """Training images (the image and its 8 dihedral copies) and the held-out image."""
    train = dihedral_augment(load_image(recipe["train_image"], recipe["size"])[None])
    held_out = load_image(recipe["held_out_image"], recipe["size"])[None]
    return train, held_out


def patch_sampler(images: Tensor) -> Callable[[int, torch.Generator], Tensor]:
    """Sampler of noisy random 6×6 patches at uniform positions.

    When ``batch_size`` is a multiple of the number of images, every image gives the same
    number of patches (stratified); otherwise each patch comes from an image drawn uniformly
    with replacement.
    """
    n_img = images.shape[0]

    def sample(batch_size: int, generator: torch.Generator) -> Tensor:
        if batch_size % n_img == 0:
            p = random_patches(images, PATCH, batch_size // n_img, generator=generator)
        else:
            idx = torch.randint(n_img, (batch_size,), generator=generator)
            p = random_patches(images[idx], PATCH, 1, generator=generator)
        return add_noise(p.reshape(batch_size, -1), generator)

    return sample


def image_sampler(images: Tensor) -> Callable[[int, torch.Generator], Tensor]:
    """Sampler of noisy training images (indices uniform with replacement)."""

    def sample(batch_size: int, generator: torch.Generator) -> Tensor:
        idx = torch.randint(images.shape[0], (batch_size,), generator=generator)
        return add_noise(images[idx], generator)

    return sample


def held_out_patches(images: Tensor, n: int) -> Tensor:
    """``n`` fixed noisy random patches of ``images`` (seed :data:`VAL_NOISE_SEED`)."""
    gen = torch.Generator().manual_seed(VAL_NOISE_SEED)
    per = math.ceil(n / images.shape[0])
    p = random_patches(images, PATCH, per, generator=gen).reshape(-1, PATCH * PATCH)[:n]
    return add_noise(p, gen)


#: Scales (fraction of native resolution) of the natural-crop training images: a 32×32 crop at
#: 0.25 spans 128 native pixels, the extent of ``benchmarks.quality.natural_images`` crops.
NATURAL_CROP_SCALES = (0.25, 0.35, 0.5)


def natural_crops(recipe: dict, seed: int = 0) -> Tensor:
    """A fixed pool of seeded crops of every training image at every scale, with its 8
    dihedral copies: ``(8 · n_images · n_scales · per_image, 1, size, size)``."""
    from bayesinv.data.images import image_crops

    pool = [image_crops(name, recipe["crops_per_image"], recipe["size"], scale=scale,
                        seed=seed + 97 * i + j)
            for i, name in enumerate(recipe["train_images"])
            for j, scale in enumerate(recipe["scales"])]
    return dihedral_augment(torch.cat(pool))


def training_sampler(spec: Spec) -> Callable[[int, torch.Generator], Tensor]:
    """The sampler of noisy training batches of ``spec`` (randomness from the loop's generator)."""
    r = spec.data
    if r["kind"] == "natural_patches":
        return patch_sampler(natural_images(r)[0])
    if r["kind"] == "phantom_patches":
        return patch_sampler(phantoms(range(r["n_train"]), r["size"]))
    if r["kind"] == "phantom_images":
        return image_sampler(phantoms(range(r["n_train"]), r["size"]))
    if r["kind"] == "natural_crops":
        return image_sampler(natural_crops(r))
    raise ValueError(f"data: unknown recipe kind {r['kind']!r}")


def validation_data(spec: Spec) -> Tensor:
    """The fixed noisy held-out examples of ``spec`` (its logged ``val_nll`` is on these)."""
    r = spec.data
    if r["kind"] == "natural_patches":
        return held_out_patches(natural_images(r)[1], r["n_val"])
    if r["kind"] == "phantom_patches":
        val = phantoms(range(VAL_SEED_START, VAL_SEED_START + r["n_val_images"]), r["size"])
        return held_out_patches(val, r["n_val"])
    if r["kind"] == "phantom_images":
        val = phantoms(range(VAL_SEED_START, VAL_SEED_START + r["n_val"]), r["size"])
        return add_noise(val, torch.Generator().manual_seed(VAL_NOISE_SEED))
    if r["kind"] == "natural_crops":
        from bayesinv.data.images import image_crops

        val = image_crops(r["val_image"], r["n_val"], r["size"], scale=r["scales"][0],
                          seed=VAL_NOISE_SEED)
        return add_noise(val, torch.Generator().manual_seed(VAL_NOISE_SEED))
    raise ValueError(f"data: unknown recipe kind {r['kind']!r}")


# ------------------------------------------------------------------------------------- specs
def specs(quick: bool = False) -> dict[str, Spec]:
    """The shipped models; ``quick`` shrinks data and steps to a smoke test."""

    def steps(n: int) -> int:
        return 4 if quick else n

    return {
        "patchnr_natural": Spec(
            name="patchnr_natural",
            build=lambda: PatchFlow(patch_size=PATCH, channels=1, n_blocks=5, hidden=256,
                                    n_hidden_layers=2, clamp=2.0, seed=0),
            data={"kind": "natural_patches", "train_image": "astronaut", "held_out_image": "camera",
                  "size": 256, "augment": "dihedral (8 copies)", "n_val": 256 if quick else 8192,
                  "noise_sigma": NOISE_SIGMA, "val_noise_seed": VAL_NOISE_SEED},
            steps=steps(3000), batch_size=256, lr=5e-4, val_every=500, grad_clip=1e3),
        "patchnr_ct": Spec(
            name="patchnr_ct",
            build=lambda: PatchFlow(patch_size=PATCH, channels=1, n_blocks=5, hidden=128,
                                    n_hidden_layers=2, clamp=2.0, seed=0),
            data={"kind": "phantom_patches", "size": 64, "n_train": 8 if quick else 200,
                  "train_seeds": "0..n_train-1", "n_val_images": 32,
                  "val_seeds": f"{VAL_SEED_START}..{VAL_SEED_START + 31}",
                  "n_val": 256 if quick else 8192, "noise_sigma": NOISE_SIGMA,
                  "val_noise_seed": VAL_NOISE_SEED},
            steps=steps(3000), batch_size=256, lr=5e-4, val_every=500, grad_clip=1e3),
        "glow_phantom32": Spec(
            name="glow_phantom32",
            build=lambda: Glow((1, 32, 32), levels=3, steps=3, hidden=48, clamp=2.0, seed=0),
            data={"kind": "phantom_images", "size": 32, "n_train": 64 if quick else 4000,
                  "train_seeds": "0..n_train-1", "n_val": 16 if quick else 256,
                  "val_seeds": f"{VAL_SEED_START}..{VAL_SEED_START}+n_val-1",
                  "noise_sigma": NOISE_SIGMA, "val_noise_seed": VAL_NOISE_SEED},
            steps=steps(3000), batch_size=32, lr=1e-3, val_every=500, grad_clip=1e4),
        "glow_natural32": Spec(
            name="glow_natural32",
            build=lambda: Glow((1, 32, 32), levels=3, steps=6, hidden=128, clamp=2.0, seed=0),
            data={"kind": "natural_crops", "size": 32,
                  "train_images": list(NATURAL_TRAIN_NAMES[:3] if quick else NATURAL_TRAIN_NAMES),
                  "scales": list(NATURAL_CROP_SCALES), "crops_per_image": 8 if quick else 400,
                  "augment": "dihedral (8 copies)", "val_image": "rocket",
                  "n_val": 16 if quick else 256, "noise_sigma": NOISE_SIGMA,
                  "val_noise_seed": VAL_NOISE_SEED},
            steps=steps(4000), batch_size=32, lr=1e-3, val_every=500, grad_clip=1e4),
    }


def experimental_specs(quick: bool = False) -> dict[str, Spec]:
    """Models trained for experiments only: never shipped, so ``--out`` is required for them."""
    glow = specs(quick)["glow_phantom32"]
    return {
        "glow_phantom32_large": Spec(
            name="glow_phantom32_large",
            build=lambda: Glow((1, 32, 32), levels=3, steps=6, hidden=128, clamp=2.0, seed=0),
            data=glow.data, steps=4 if quick else 5000, batch_size=glow.batch_size, lr=glow.lr,
            val_every=glow.val_every, grad_clip=glow.grad_clip),
    }


@torch.no_grad()
def held_out_nll(model: nn.Module, val: Tensor, batch_size: int = 256) -> float:
    """Mean NLL (nats/example) of ``val`` under ``model`` in eval mode."""
    model.eval()
    total = sum(float(-model.log_prob(val[i:i + batch_size]).double().sum())
                for i in range(0, val.shape[0], batch_size))
    return total / val.shape[0]


def train_one(spec: Spec, out: Path, *, progress: bool | None = None) -> dict:
    """Train ``spec``, write its three files into ``out``; return the log dictionary."""
    torch.manual_seed(0)
    sampler, val = training_sampler(spec), validation_data(spec)
    untrained = held_out_nll(spec.build(), val)  # ActNorm initialises on the first val chunk
    model = spec.build()
    n_params = sum(p.numel() for p in model.parameters())
    t0 = time.perf_counter()
    result = train_flow(model, sampler, steps=spec.steps, batch_size=spec.batch_size, lr=spec.lr,
                        val_data=val, val_every=spec.val_every, seed=0, device="cpu",
                        progress=progress, grad_clip=spec.grad_clip)
    wall = time.perf_counter() - t0
    model.eval()
    weights = out / f"{spec.name}.safetensors"
    cfg = save_flow(model, weights)
    for f in (weights, cfg):  # save_flow writes via mkstemp (0600); package data must be readable
        os.chmod(f, 0o644)
    log = json.loads(result.to_json())
    log.update(
        name=spec.name,
        flow_class=type(model).__name__,
        flow_config=model.config,
        n_parameters=n_params,
        weights_bytes=weights.stat().st_size,
        data=spec.data,
        untrained_val_nll=untrained,
        untrained_bits_per_dim=result.bpd(untrained),
        total_wall_time_s=wall,
        torch_version=torch.__version__,
        torch_threads=torch.get_num_threads(),
        script="scripts/train_priors.py",
    )
    (out / f"{spec.name}.train.json").write_text(json.dumps(log, indent=1, allow_nan=False) + "\n")
    return log


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", metavar="NAME",
                        help="train only this model (repeatable); default: all shipped models")
    parser.add_argument("--quick", action="store_true", help="a handful of steps each (smoke test)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    parser.add_argument("--progress", action="store_true", help="show progress bars")
    args = parser.parse_args(argv)
    shipped, experimental = specs(args.quick), experimental_specs(args.quick)
    all_specs = {**shipped, **experimental}
    names = args.only or list(shipped)
    unknown = [n for n in names if n not in all_specs]
    if unknown:
        parser.error(f"--only: unknown model(s) {unknown}; choose from {sorted(all_specs)}")
    into_package = args.out.resolve() == DEFAULT_OUT.resolve()
    if into_package and any(n in experimental for n in names):
        parser.error(f"--out: experimental models {sorted(set(names) & set(experimental))} are not "
                     f"shipped; give an output folder other than {DEFAULT_OUT}")
    args.out.mkdir(parents=True, exist_ok=True)
    for name in names:
        log = train_one(all_specs[name], args.out, progress=args.progress or None)
        print(f"{name}: {log['n_parameters']} params, {log['steps']} steps in {log['wall_time_s']:.0f} s; "
              f"held-out NLL {log['final_val_nll']:.4g} (best {log['best_val_nll']:.4g} at "
              f"{log['best_val_step']}; untrained {log['untrained_val_nll']:.4g}), "
              f"{log['bits_per_dim']:.4f} bits/dim", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
