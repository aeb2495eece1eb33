"""Shipped flow weights: integrity, held-out likelihood, sample quality, use as priors.

The held-out sets are rebuilt with the training script's own recipes (``scripts/train_priors.py``)
so the logged NLLs can be re-measured; thresholds were measured on the shipped weights and set
with margin (the measured values are in the comments).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyro
import pytest
import torch

from bayesinv.data.images import load_image
from bayesinv.data.pretrained import (
    WEIGHTS_DIR,
    available,
    load_flow_weights,
    load_prior,
    training_log,
    weight_files,
)
from bayesinv.flows.glow import Glow
from bayesinv.flows.io import load_flow
from bayesinv.flows.patch import PatchFlow
from bayesinv.priors.flow import FlowPrior
from bayesinv.priors.patches import random_patches

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "train_priors.py"
NAMES = ["glow_phantom32", "glow_natural32", "patchnr_ct", "patchnr_natural"]
PATCH_FLOWS = ["patchnr_ct", "patchnr_natural"]


def _script():
    """The training script as a module (its data recipes define the held-out sets)."""
    if "train_priors" in sys.modules:
        return sys.modules["train_priors"]
    spec = importlib.util.spec_from_file_location("train_priors", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["train_priors"] = mod  # (dataclasses look the module up)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def script():
    return _script()


@pytest.fixture(scope="module")
def glow() -> Glow:
    return load_flow_weights("glow_phantom32")


def _phantoms(seeds, size):
    return _script().phantoms(seeds, size)


# -------------------------------------------------------------------------------- integrity
#: every shipped model: NAMES (scripts/train_priors.py) and the eikonal velocity prior
#: (scripts/train_velocity_prior.py, tested in tests/test_eikonal_example.py)
ALL_NAMES = sorted([*NAMES, "glow_velocity32"])


def test_available_matches_the_shipped_files():
    names = available()
    assert sorted(names) == ALL_NAMES
    assert all(isinstance(d, str) and len(d) > 20 for d in names.values())
    shipped = sorted(p.name.removesuffix(".safetensors") for p in WEIGHTS_DIR.glob("*.safetensors"))
    assert shipped == ALL_NAMES
    for name in ALL_NAMES:
        assert all(p.is_file() for p in weight_files(name).values())
    total = sum(p.stat().st_size for p in WEIGHTS_DIR.iterdir() if p.is_file())
    assert total < 10 * 2**20  # keep the package small


@pytest.mark.parametrize("name", NAMES)
def test_shipped_flow_loads_and_its_checksum_verifies(name):
    files = weight_files(name)
    meta = json.loads(files["config"].read_text())
    data = files["weights"].read_bytes()
    assert hashlib.sha256(data).hexdigest() == meta["weights"]["sha256"]
    assert len(data) == meta["weights"]["size"]
    flow = load_flow_weights(name)
    assert not flow.training
    assert type(flow).__name__ == meta["class"] == training_log(name)["flow_class"]
    assert flow.config == meta["config"] == training_log(name)["flow_config"]
    assert all(torch.isfinite(p).all() for p in flow.parameters())
    # the weights are the ones the current script builds: same architecture and budget
    spec = _script().specs()[name]
    assert spec.build().config == flow.config
    log = training_log(name)
    assert log["steps"] == spec.steps and log["batch_size"] == spec.batch_size
    assert log["n_parameters"] == sum(p.numel() for p in flow.parameters())


@pytest.mark.parametrize("name", ["glow_phantom32", "patchnr_ct"])
def test_corrupted_copy_of_shipped_weights_is_rejected(name, tmp_path):
    files = weight_files(name)
    w, c = tmp_path / files["weights"].name, tmp_path / files["config"].name
    shutil.copy(files["weights"], w)
    shutil.copy(files["config"], c)
    load_flow(w, c)  # the intact copy loads
    raw = bytearray(w.read_bytes())
    raw[-5] ^= 0xFF
    w.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="checksum"):
        load_flow(w, c)


def test_unknown_names_raise_naming_the_argument():
    for fn in (load_flow_weights, load_prior, training_log, weight_files):
        with pytest.raises(ValueError, match="name.*'glow_celeba'"):
            fn("glow_celeba")
        with pytest.raises(TypeError, match="name"):
            fn(3)
    with pytest.raises(ValueError, match="name.*patch flow"):
        load_prior("patchnr_ct")


# -------------------------------------------------------------------------------- likelihood
# held-out NLL (nats/example) below the untrained architecture's by at least this much per dim
MIN_GAIN_PER_DIM = {"glow_phantom32": 1.0, "glow_natural32": 0.5, "patchnr_ct": 1.0, "patchnr_natural": 0.5}


@pytest.mark.parametrize("name", NAMES)
def test_held_out_nll_matches_the_log_and_beats_an_untrained_flow(name, script):
    spec = script.specs()[name]
    val = script.validation_data(spec)
    log = training_log(name)
    flow = load_flow_weights(name)
    nll = script.held_out_nll(flow, val)
    assert nll == pytest.approx(log["final_val_nll"], rel=1e-4, abs=1e-3)
    assert log["bits_per_dim"] == pytest.approx(nll / (log["dim"] * math.log(2)), rel=1e-3, abs=1e-4)
    torch.manual_seed(0)
    untrained = script.held_out_nll(spec.build(), val)
    assert untrained == pytest.approx(log["untrained_val_nll"], rel=1e-4, abs=1e-3)
    dim = val[0].numel()
    assert (untrained - nll) / dim > MIN_GAIN_PER_DIM[name], (nll, untrained)


# --------------------------------------------------------------------------------- samples
def _grid(images: np.ndarray, cols: int = 4) -> np.ndarray:
    n, h, w = images.shape
    rows = math.ceil(n / cols)
    out = np.ones((rows * (h + 2) + 2, cols * (w + 2) + 2))
    for k, im in enumerate(images):
        r, c = divmod(k, cols)
        out[2 + r * (h + 2): 2 + r * (h + 2) + h, 2 + c * (w + 2): 2 + c * (w + 2) + w] = im
    return out


def test_glow_samples_look_like_phantoms(glow, tmp_path):
    import matplotlib.pyplot as plt

    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        samples = glow.sample(64, generator=gen)[:, 0].numpy()
    assert np.isfinite(samples).all()
    path = tmp_path / "glow_phantom32_samples.png"
    plt.imsave(path, np.clip(_grid(samples[:16]), 0, 1), cmap="gray", vmin=0, vmax=1)
    assert path.stat().st_size > 1000

    ref = _phantoms(range(64), 32)[:, 0].numpy()
    # global statistics close to the training phantoms'
    assert abs(samples.mean() - ref.mean()) < 0.05
    assert 0.6 < samples.std() / ref.std() < 1.4
    assert np.mean((samples > -0.1) & (samples < 1.1)) > 0.98
    # outside the inscribed circle the phantoms are exactly 0: the samples' mean image too
    c = (np.arange(32) + 0.5) / 16 - 1
    outside = np.hypot(*np.meshgrid(c, c)) > 1.0
    assert abs(samples.mean(0)[outside].mean()) < 0.02
    assert np.abs(samples.mean(0)[outside]).max() < 0.05
    assert samples[:, outside].std() < 0.05
    # inside the body the samples carry structure: per-image std comparable to the phantoms'
    inside = ~outside
    assert 0.5 < samples[:, inside].std(1).mean() / ref[:, inside].std(1).mean() < 1.5


def test_glow_prefers_phantoms_over_corrupted_images(glow):
    x = _phantoms(range(10_000, 10_008), 32)
    gen = torch.Generator().manual_seed(3)
    noisy = x + 0.1 * torch.randn(x.shape, generator=gen)
    with torch.no_grad():
        lp_clean, lp_noisy = glow.log_prob(x + 0.01 * torch.randn(x.shape, generator=gen)), glow.log_prob(noisy)
    assert (lp_clean > lp_noisy).all()


# ------------------------------------------------------------------------------ patch flows
def _ct_patches(n: int, seed: int = 0) -> torch.Tensor:
    images = _phantoms(range(10_000, 10_016), 64)  # held-out test phantoms
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(images.shape[0], (n,), generator=gen)
    return random_patches(images[idx], 6, 1, generator=gen).reshape(n, 36)


def _natural_patches(name: str, n: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return random_patches(load_image(name, 256)[None], 6, n, generator=gen)[0]


@pytest.mark.parametrize("name", PATCH_FLOWS)
def test_patch_energy_prefers_clean_over_noisy_patches(name):
    flow: PatchFlow = load_flow_weights(name)
    clean = _ct_patches(2000) if name == "patchnr_ct" else _natural_patches("camera", 2000)
    gen = torch.Generator().manual_seed(1)
    noisy = clean + 0.1 * torch.randn(clean.shape, generator=gen)
    with torch.no_grad():
        e_clean, e_noisy = flow.energy(clean), flow.energy(noisy)
    assert torch.isfinite(e_clean).all() and torch.isfinite(e_noisy).all()
    assert e_clean.mean() < e_noisy.mean() - 30
    assert (e_clean < e_noisy).float().mean() > 0.95


def test_patch_flows_prefer_their_own_domain():
    ct = load_flow_weights("patchnr_ct")
    nat = load_flow_weights("patchnr_natural")
    ct_p, nat_p = _ct_patches(2000), _natural_patches("camera", 2000)
    with torch.no_grad():
        assert ct.energy(ct_p).mean() < ct.energy(nat_p).mean() - 20
        # the natural-image flow on held-out natural patches vs i.i.d. uniform "patches"
        gen = torch.Generator().manual_seed(2)
        iid = torch.rand(2000, 36, generator=gen)
        assert nat.energy(nat_p).mean() < nat.energy(iid).mean() - 50


def test_patch_energy_is_differentiable_in_the_image():
    flow = load_flow_weights("patchnr_ct")
    x = _phantoms(range(10_000, 10_001), 64).requires_grad_(True)
    gen = torch.Generator().manual_seed(0)
    e = flow.energy(random_patches(x, 6, 500, generator=gen)).mean()
    (g,) = torch.autograd.grad(e, x)
    assert torch.isfinite(g).all() and g.abs().sum() > 0


# --------------------------------------------------------------------------- inverse problems
@pytest.mark.parametrize("op", ["radon", "blur"])
def test_shipped_glow_prior_inside_an_inverse_problem(op):
    from bayesinv.operators.blur import Blur
    from bayesinv.operators.tomography import Radon
    from bayesinv.problem import InverseProblem

    prior = load_prior("glow_phantom32")
    assert isinstance(prior, FlowPrior) and prior.image_shape == (1, 32, 32)
    A = Radon((1, 32, 32), n_angles=20) if op == "radon" else Blur((1, 32, 32), kernel="gaussian", width=1.5)
    problem = InverseProblem(A, prior, noise=0.02)
    x_true = _phantoms(range(10_000, 10_002), 32)
    y = problem.simulate(x_true, seed=0)
    trace = pyro.poutine.trace(problem.model).get_trace(y)
    assert {"z", "x", "y"} <= set(trace.nodes)
    z = trace.nodes["z"]["value"]
    assert z.shape == (2, 1024)
    torch.testing.assert_close(trace.nodes["x"]["value"], prior.generate(z))
    assert trace.nodes["y"]["is_observed"]
    assert torch.isfinite(trace.log_prob_sum())
    # the latent potential is finite and differentiable, and lower at the encoded truth
    with torch.no_grad():
        z_true, _ = prior.encode(x_true)
    z0 = z.detach().clone().requires_grad_(True)
    u = problem.potential(z0, y, space="latent")
    (g,) = torch.autograd.grad(u.sum(), z0)
    assert torch.isfinite(u).all() and torch.isfinite(g).all()
    with torch.no_grad():
        assert (problem.potential(z_true, y, space="latent") < u).all()


# --------------------------------------------------------------------------------- the script
@pytest.mark.slow
def test_training_script_quick_run_writes_loadable_files(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name in NAMES:
        flow = load_flow(tmp_path / f"{name}.safetensors")
        assert type(flow).__name__ == json.loads((tmp_path / f"{name}.json").read_text())["class"]
        log = json.loads((tmp_path / f"{name}.train.json").read_text())
        assert log["name"] == name and log["steps"] == 4 and math.isfinite(log["final_val_nll"])
        # 4 steps beat the untrained flow, except glow_natural32's: its untrained NLL comes with
        # ActNorm initialised on the held-out photograph itself, which 4 steps on other
        # photographs do not match (the shipped weights beat it by 0.87 nats/dim, tested above)
        if name != "glow_natural32":
            assert log["final_val_nll"] < log["untrained_val_nll"]
        assert log["wall_time_s"] > 0 and log["data"]["noise_sigma"] == 0.01
    assert not list(tmp_path.glob("glow_phantom32_large*"))  # "all" means the shipped models
    bad = subprocess.run([sys.executable, str(SCRIPT), "--only", "nope", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert bad.returncode != 0 and "--only" in bad.stderr


def test_experimental_models_are_not_shipped_and_never_written_into_the_package(script, capsys):
    experimental = script.experimental_specs()
    assert set(experimental).isdisjoint(script.specs()) and set(experimental).isdisjoint(available())
    large, shipped = experimental["glow_phantom32_large"], script.specs()["glow_phantom32"]
    assert large.data == shipped.data and large.batch_size == shipped.batch_size
    n_large = sum(p.numel() for p in large.build().parameters())
    n_shipped = sum(p.numel() for p in shipped.build().parameters())
    assert n_large == 594_528 and n_large > 7 * n_shipped
    with pytest.raises(SystemExit):
        script.main(["--only", "glow_phantom32_large"])  # default --out is the package folder
    assert "--out" in capsys.readouterr().err
    assert not (WEIGHTS_DIR / "glow_phantom32_large.safetensors").exists()


def test_natural_crop_recipe_trains_on_held_in_photographs_only(script):
    """``glow_natural32``'s recipe: its training pool has the 8
    dihedral copies of seeded crops of every training photograph at every scale, in [0, 1];
    its validation crops come from a photograph outside the training set."""
    from bayesinv.data import NATURAL_TRAIN_NAMES

    spec = script.specs(quick=True)["glow_natural32"]
    r = spec.data
    assert r["val_image"] not in r["train_images"] and set(r["train_images"]) <= set(NATURAL_TRAIN_NAMES)
    pool = script.natural_crops(r)
    n = len(r["train_images"]) * len(r["scales"]) * r["crops_per_image"]
    assert pool.shape == (8 * n, 1, 32, 32)
    assert float(pool.min()) >= 0.0 and float(pool.max()) <= 1.0
    assert torch.equal(pool[n:2 * n], torch.rot90(pool[:n], 1, dims=(-2, -1)))
    assert torch.equal(pool, script.natural_crops(r))
    val = script.validation_data(spec)
    assert val.shape == (r["n_val"], 1, 32, 32)
    full = script.specs()["glow_natural32"].data
    assert full["train_images"] == list(NATURAL_TRAIN_NAMES) and full["val_image"] == "rocket"
