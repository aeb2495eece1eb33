"""MLE training loop: learning, exact resume, atomic/validated checkpoints, NaN guards, units.

The models are small flows built here from Pyro's own transforms (affine coupling + fixed
permutations), so the loop is tested against real flows without depending on bayesinv's.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch
from pyro.distributions import Normal, TransformedDistribution
from pyro.distributions import transforms as T
from torch import nn

from bayesinv.flows import train as train_mod
from bayesinv.flows.train import (
    TrainResult,
    bits_per_dim,
    dequantize_uniform,
    dihedral_augment,
    load_checkpoint,
    train_flow,
)


class CouplingFlow(nn.Module):
    """x = f(z), z ~ N(0, I): ``n_layers`` × (Pyro affine coupling → reversal permutation)."""

    def __init__(self, dim: int, n_layers: int = 4, hidden: int = 32, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.couplings = nn.ModuleList(
            T.affine_coupling(dim, hidden_dims=[hidden, hidden]) for _ in range(n_layers)
        )
        for i in range(n_layers):  # reversal: the halves swap roles, so every coordinate is coupled
            self.register_buffer(f"perm{i}", torch.arange(dim - 1, -1, -1))
        self.register_buffer("loc", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(dim))

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        ts = []
        for i, c in enumerate(self.couplings):
            ts += [c, T.Permute(getattr(self, f"perm{i}"))]
        base = Normal(self.loc, self.scale).to_event(1)
        return TransformedDistribution(base, ts).log_prob(x)


class DiagGaussian(nn.Module):
    """Unbounded log-scale Gaussian: the textbook way a too-large learning rate blows up."""

    def __init__(self, dim: int):
        super().__init__()
        self.mu = nn.Parameter(torch.zeros(dim))
        self.log_sigma = nn.Parameter(torch.zeros(dim))

    def log_prob(self, x):
        z = (x - self.mu) * torch.exp(-self.log_sigma)
        return (-0.5 * z**2 - self.log_sigma - 0.5 * math.log(2 * math.pi)).sum(-1)


class UniformCube(nn.Module):
    """Density 1 on [0, 1]^D (log_prob = 0); a zero-weight parameter so it is trainable."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))

    def log_prob(self, x):
        return 0.0 * self.w * x.flatten(1).sum(-1)


def _gaussian_data(n: int, seed: int):
    """Correlated 4-D Gaussian samples and the exact log-density."""
    g = torch.Generator().manual_seed(seed)
    L = torch.tensor([[1.0, 0, 0, 0], [0.8, 0.6, 0, 0], [-0.5, 0.3, 0.4, 0], [0.2, -0.7, 0.1, 0.5]])
    mu = torch.tensor([0.5, -1.0, 0.0, 2.0])
    x = mu + torch.randn(n, 4, generator=g) @ L.T
    true = torch.distributions.MultivariateNormal(mu, scale_tril=L)
    return x, true


def _quantised(n: int, dim: int, seed: int) -> torch.Tensor:
    """8-bit data in [0, 1] (levels k/256) with some structure (a clipped correlated Gaussian)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 1, generator=g) + 0.3 * torch.randn(n, dim, generator=g)
    return torch.clamp(torch.round(128 + 40 * z), 0, 255) / 256


# ------------------------------------------------------------------------------- learning
def test_training_lowers_heldout_nll_to_the_true_entropy(tmp_path):
    """300 steps (250 at lr 5e-3, then resumed at lr 5e-4) close 99% of the gap to the truth."""
    x, true = _gaussian_data(4000, seed=1)
    x_val, _ = _gaussian_data(2000, seed=2)
    model = CouplingFlow(4)
    with torch.no_grad():
        nll0 = float(-model.log_prob(x_val).mean())
    ckpt = tmp_path / "c.safetensors"
    kw = dict(batch_size=256, val_data=x_val, val_every=100, checkpoint=ckpt, device="cpu", seed=0)
    first = train_flow(model, x, steps=250, lr=5e-3, **kw)
    with pytest.warns(UserWarning, match="lr: 0.005 -> 0.0005"):
        res = train_flow(CouplingFlow(4, seed=1), x, steps=300, lr=5e-4, **kw)
    true_nll = float(-true.log_prob(x_val).mean())  # same samples: no Monte Carlo gap
    assert res.val_steps == [100, 200, 250, 300]
    assert res.val_nll[:3] == first.val_nll
    assert res.final_val_nll < nll0 - 4.0
    # the held-out gap to the exact density is a KL estimate: small and (almost) >= 0
    gap = res.final_val_nll - true_nll
    assert -0.02 < gap < 0.07, (res.final_val_nll, true_nll, nll0)
    assert gap < first.final_val_nll - true_nll  # the low-lr phase helped (lr of the call wins)
    assert res.best_val_nll == min(res.val_nll)
    assert len(res.train_loss) == 300 and res.steps == 300 and res.start_step == 250
    assert res.dim == 4 and res.bits_offset == 0.0 and res.lr == 5e-4
    assert res.bits_per_dim == pytest.approx(res.final_val_nll / (4 * math.log(2)))
    log = json.loads(res.to_json())
    assert log["bits_per_dim"] == pytest.approx(res.bits_per_dim)
    assert log["val_nll"] == res.val_nll and log["nll_unit"] == "nats per example"


def test_sampler_callable_is_used_with_the_loop_generator_and_is_deterministic():
    _, true = _gaussian_data(1, seed=0)
    seen = []

    def sampler(batch_size, generator):
        assert isinstance(generator, torch.Generator)
        seen.append(batch_size)
        return true.loc + torch.randn(batch_size, 4, generator=generator) @ true.scale_tril.T

    x_val, _ = _gaussian_data(1000, seed=3)
    with torch.no_grad():
        nll0 = float(-CouplingFlow(4).log_prob(x_val).mean())
    runs = [train_flow(CouplingFlow(4), sampler, steps=120, batch_size=64, lr=5e-3, val_data=x_val,
                       val_every=60, device="cpu", seed=7) for _ in range(2)]
    assert seen == [64] * 240
    assert runs[0].train_loss == runs[1].train_loss  # the sampler drew from the seeded generator
    assert runs[0].val_nll == runs[1].val_nll
    assert runs[0].final_val_nll < nll0 - 1.0
    other = train_flow(CouplingFlow(4), sampler, steps=5, batch_size=64, lr=5e-3, device="cpu", seed=8)
    assert other.train_loss != runs[0].train_loss[:5]


def test_patch_sampler_draws_batches_from_the_images():
    images = _quantised(6, 64, seed=0).reshape(6, 1, 8, 8)
    calls = []

    def patches(data, batch_size, generator):
        calls.append(data.shape)
        i = torch.randint(data.shape[0], (batch_size,), generator=generator)
        r, c = torch.randint(5, (2, batch_size), generator=generator)
        return torch.stack([data[a, 0, y:y + 4, x:x + 4].reshape(16) for a, y, x in zip(i, r, c, strict=True)])

    res = train_flow(CouplingFlow(16, n_layers=2, hidden=16), images, steps=30, batch_size=32, lr=1e-3,
                     dequantize="uniform", patch_sampler=patches, device="cpu")
    assert calls == [(6, 1, 8, 8)] * 30
    assert res.dim == 16 and res.bits_offset == 8.0
    assert res.train_loss[-1] < res.train_loss[0]


# --------------------------------------------------------------------------------- resume
def test_resume_continues_bit_for_bit(tmp_path):
    x = _quantised(512, 6, seed=0)
    x_val = _quantised(256, 6, seed=1)
    kw = dict(batch_size=32, lr=2e-3, dequantize="uniform", val_data=x_val, val_every=30,
              checkpoint_every=50, device="cpu", seed=3)
    full_model = CouplingFlow(6, seed=0)
    full = train_flow(full_model, x, steps=120, **kw)

    ckpt = tmp_path / "run.safetensors"
    first = train_flow(CouplingFlow(6, seed=0), x, steps=60, checkpoint=ckpt, **kw)
    assert first.train_loss == full.train_loss[:60]
    assert load_checkpoint(ckpt).step == 60
    fresh = CouplingFlow(6, seed=99)  # different initial weights: everything must come from the file
    torch.manual_seed(12345)  # and the caller's global RNG state must not matter
    resumed = train_flow(fresh, x, steps=120, checkpoint=ckpt, **kw)
    assert resumed.start_step == 60
    assert resumed.train_loss == full.train_loss  # exact float equality, all 120 steps
    assert resumed.val_steps == full.val_steps == [30, 60, 90, 120]
    assert resumed.val_nll == full.val_nll
    for (k, a), (_, b) in zip(full_model.state_dict().items(), fresh.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    assert load_checkpoint(ckpt).step == 120
    # resume=False starts over and overwrites
    again = train_flow(CouplingFlow(6, seed=0), x, steps=60, checkpoint=ckpt, resume=False, **kw)
    assert again.train_loss == full.train_loss[:60] and load_checkpoint(ckpt).step == 60


class NoisyGaussian(DiagGaussian):
    """Draws from the *global* torch RNG in training mode (as dropout does)."""

    def log_prob(self, x):
        if self.training:
            x = x + 0.1 * torch.randn_like(x)
        return super().log_prob(x)


def test_resume_restores_the_global_rng_the_model_draws_from(tmp_path):
    x = torch.randn(256, 3, generator=torch.Generator().manual_seed(0))
    kw = dict(batch_size=16, lr=1e-2, device="cpu", seed=1)
    full = train_flow(NoisyGaussian(3), x, steps=40, **kw)
    ckpt = tmp_path / "c.safetensors"
    train_flow(NoisyGaussian(3), x, steps=15, checkpoint=ckpt, **kw)
    torch.rand(100)  # move the caller's global stream: must not matter
    resumed = train_flow(NoisyGaussian(3), x, steps=40, checkpoint=ckpt, **kw)
    assert resumed.train_loss == full.train_loss
    twice = train_flow(NoisyGaussian(3), x, steps=40, checkpoint=ckpt, **kw)  # finished: nothing to do
    assert twice.train_loss == full.train_loss and twice.start_step == 40 and twice.dim == 3


def test_training_leaves_the_callers_global_rng_alone():
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    train_flow(DiagGaussian(2), torch.randn(64, 2, generator=torch.Generator().manual_seed(0)),
               steps=5, batch_size=8, lr=1e-2, device="cpu")
    assert torch.equal(torch.rand(3), expected)


def test_changed_settings_on_resume_warn(tmp_path):
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    ckpt = tmp_path / "c.safetensors"
    train_flow(DiagGaussian(2), x, steps=5, batch_size=8, lr=1e-2, checkpoint=ckpt, device="cpu")
    with pytest.warns(UserWarning, match="batch_size"):
        train_flow(DiagGaussian(2), x, steps=10, batch_size=16, lr=1e-2, checkpoint=ckpt, device="cpu")


# ---------------------------------------------------------------------------- checkpoints
def test_failed_checkpoint_write_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    x = torch.randn(128, 2, generator=torch.Generator().manual_seed(0))
    ckpt = tmp_path / "c.safetensors"
    train_flow(DiagGaussian(2), x, steps=20, batch_size=16, lr=1e-2, checkpoint=ckpt, device="cpu")
    good = ckpt.read_bytes()

    def failing_fsync(fd):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(train_mod.os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="disk full"):
        train_flow(DiagGaussian(2), x, steps=40, batch_size=16, lr=1e-2, checkpoint=ckpt,
                   checkpoint_every=10, device="cpu")
    monkeypatch.undo()
    assert ckpt.read_bytes() == good
    assert load_checkpoint(ckpt).step == 20
    assert sorted(os.listdir(tmp_path)) == ["c.safetensors"]  # no temp files left behind


def test_corrupted_checkpoint_raises_naming_the_file(tmp_path):
    x = torch.randn(128, 2, generator=torch.Generator().manual_seed(0))
    ckpt = tmp_path / "good.safetensors"
    train_flow(DiagGaussian(2), x, steps=5, batch_size=16, lr=1e-2, checkpoint=ckpt, device="cpu")
    data = ckpt.read_bytes()

    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated.safetensors"):
        train_flow(DiagGaussian(2), x, steps=10, batch_size=16, checkpoint=truncated, device="cpu")
    tail_cut = tmp_path / "tailcut.safetensors"
    tail_cut.write_bytes(data[:-4])
    with pytest.raises(ValueError, match="tailcut.safetensors"):
        load_checkpoint(tail_cut)

    flipped = tmp_path / "flipped.safetensors"  # one bit flipped in the tensor data
    b = bytearray(data)
    b[-3] ^= 0x10
    flipped.write_bytes(bytes(b))
    with pytest.raises(ValueError, match="flipped.safetensors.*SHA-256"):
        load_checkpoint(flipped)

    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="garbage.safetensors"):
        load_checkpoint(garbage)

    with pytest.raises(ValueError, match="good.safetensors.*does not fit"):
        train_flow(DiagGaussian(3), torch.randn(16, 3), steps=10, batch_size=4, checkpoint=ckpt,
                   device="cpu")


def test_checkpoint_contents_and_no_pickle(tmp_path):
    x = torch.randn(128, 2, generator=torch.Generator().manual_seed(0))
    ckpt = tmp_path / "c.safetensors"
    model = DiagGaussian(2)
    train_flow(model, x, steps=7, batch_size=16, lr=1e-2, checkpoint=ckpt, checkpoint_every=3,
               device="cpu")
    c = load_checkpoint(ckpt)
    assert c.step == 7 and len(c.train_loss) == 7
    assert torch.equal(c.model_state["mu"], model.mu.detach())
    assert int(c.optimizer_state["state"][0]["step"]) == 7
    assert c.optimizer_state["param_groups"][0]["lr"] == 1e-2
    assert ckpt.read_bytes()[8:].lstrip()[:1] == b"{"  # safetensors JSON header, not a pickle


# ----------------------------------------------------------------------------- NaN guards
def test_huge_learning_rate_stops_with_floating_point_error():
    x = torch.randn(256, 3, generator=torch.Generator().manual_seed(0)) * 1e-3
    with pytest.raises(FloatingPointError, match=r"step \d+.*learning rate too high"):
        train_flow(DiagGaussian(3), x, steps=50, batch_size=32, lr=1e4, device="cpu")


def test_infinite_gradient_stops_before_the_parameters_change():
    class SqrtParam(DiagGaussian):  # log_prob finite at w = 0, d/dw sqrt(w) = inf there
        def __init__(self):
            super().__init__(2)
            self.w = nn.Parameter(torch.zeros(()))

        def log_prob(self, x):
            return super().log_prob(x) - torch.sqrt(self.w)

    model = SqrtParam()
    with pytest.raises(FloatingPointError, match="gradient norm became (inf|nan) at step 1"):
        train_flow(model, torch.randn(16, 2), steps=5, batch_size=4, device="cpu")
    assert model.w.item() == 0.0 and bool(torch.isfinite(model.mu).all())


def test_non_finite_data_is_refused_naming_data():
    x = torch.randn(32, 2)
    x[3, 1] = float("inf")
    with pytest.raises(ValueError, match="data: contains 1 NaN/inf"):
        train_flow(DiagGaussian(2), x, steps=5, batch_size=4, device="cpu")
    with pytest.raises(ValueError, match="val_data"):
        train_flow(DiagGaussian(2), torch.randn(32, 2), val_data=x, steps=5, batch_size=4, device="cpu")

    def bad_sampler(batch_size, generator):
        out = torch.randn(batch_size, 2, generator=generator)
        out[0, 0] = float("nan")
        return out

    with pytest.raises(ValueError, match="data: the batch of step 1"):
        train_flow(DiagGaussian(2), bad_sampler, steps=5, batch_size=4, device="cpu")


# ---------------------------------------------------------------------------------- units
def test_bits_per_dim_formula():
    # standard normal: differential entropy 0.5 ln(2 pi e) nats per dimension
    h = 0.5 * math.log(2 * math.pi * math.e)
    assert bits_per_dim(10 * h, 10) == pytest.approx(h / math.log(2))
    assert bits_per_dim(0.0, 5, levels=256) == 8.0
    assert bits_per_dim(-5 * math.log(2), 5, levels=256) == pytest.approx(7.0)
    with pytest.raises(ValueError, match="dim"):
        bits_per_dim(1.0, 0)


def test_uniform_model_on_dequantised_8bit_data_scores_exactly_8_bits_per_dim():
    """The discrete uniform distribution over 256 levels has 8 bits/dim: the +8 convention."""
    x = _quantised(64, 12, seed=0).reshape(64, 3, 2, 2)
    res = train_flow(UniformCube(), x, steps=3, batch_size=8, dequantize="uniform", val_data=x,
                     val_every=1, device="cpu")
    assert res.dim == 12
    assert res.final_val_nll == 0.0
    assert res.bits_per_dim == 8.0 and res.best_bits_per_dim == 8.0


def test_dequantisation_adds_noise_in_zero_to_one_256th():
    x = _quantised(4096, 8, seed=0)
    g = torch.Generator().manual_seed(0)
    d = dequantize_uniform(x, g) - x
    assert float(d.min()) >= 0.0 and float(d.max()) < 1 / 256
    assert float(d.mean()) == pytest.approx(1 / 512, rel=0.01)
    assert float(d.std()) == pytest.approx(1 / 256 / math.sqrt(12), rel=0.02)
    assert torch.equal(torch.floor(((x + d) * 256).double()), (x * 256).double())  # stays in its bin

    seen = []

    class Recorder(UniformCube):
        def log_prob(self, xb):
            if self.training:
                seen.append(xb.detach().clone())
            return super().log_prob(xb)

    train_flow(Recorder(), x, steps=4, batch_size=16, dequantize="uniform", device="cpu")
    batch = torch.cat(seen)
    levels = torch.floor(batch.double() * 256)
    noise = batch.double() - levels / 256
    assert float(noise.min()) >= 0 and float(noise.max()) < 1 / 256
    assert bool(torch.isin(levels, torch.unique(x.double() * 256)).all())
    with pytest.raises(ValueError, match="data: dequantize='uniform' expects"):
        train_flow(UniformCube(), x * 2, steps=1, batch_size=4, dequantize="uniform", device="cpu")


# ---------------------------------------------------------------------------- dihedral
def test_dihedral_augment_gives_the_eight_symmetries():
    img = torch.arange(2 * 1 * 3 * 3, dtype=torch.float32).reshape(2, 1, 3, 3)
    out = dihedral_augment(img)
    assert out.shape == (16, 1, 3, 3)
    assert torch.equal(out[:2], img)
    copies = out.reshape(8, 2, 1, 3, 3)
    flat = {tuple(c[0].flatten().tolist()) for c in copies}
    assert len(flat) == 8  # all distinct for a generic image
    # the set is closed under the group: contains the transpose and the vertical flip
    assert tuple(img[0].transpose(-1, -2).flatten().tolist()) in flat
    assert tuple(img[0].flip(-2).flatten().tolist()) in flat
    assert {tuple(c.flatten().tolist()) for c in dihedral_augment(copies[5][:1])} == flat
    assert dihedral_augment(torch.ones(4, 4)).shape == (8, 1, 4, 4)
    with pytest.raises(ValueError, match="images: dihedral copies need square"):
        dihedral_augment(torch.ones(1, 1, 3, 4))


# ------------------------------------------------------------------------------ bad inputs
@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        (dict(steps=0), ValueError, "steps"),
        (dict(steps=2.5), TypeError, "steps"),
        (dict(batch_size=0), ValueError, "batch_size"),
        (dict(lr=0.0), ValueError, "lr"),
        (dict(lr=-1e-3), ValueError, "lr"),
        (dict(weight_decay=-1.0), ValueError, "weight_decay"),
        (dict(dequantize="gaussian"), ValueError, "dequantize"),
        (dict(val_every=0), ValueError, "val_every"),
        (dict(checkpoint_every=0), ValueError, "checkpoint_every"),
        (dict(grad_clip=0.0), ValueError, "grad_clip"),
        (dict(seed=-1), ValueError, "seed"),
        (dict(device="tpu9"), ValueError, "device"),
        (dict(data="images.png"), TypeError, "data"),
        (dict(data=[[0.0, 1.0]]), TypeError, "data"),
        (dict(data=torch.randn(5)), ValueError, "data"),
        (dict(val_data=torch.randn(8, 3)), ValueError, "val_data"),
        (dict(model=nn.Linear(2, 2)), TypeError, "model"),
    ],
)
def test_bad_inputs_name_the_argument(kwargs, exc, match):
    args = dict(model=DiagGaussian(2), data=torch.randn(16, 2), steps=3, batch_size=4, device="cpu")
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        train_flow(args.pop("model"), args.pop("data"), **args)


def test_log_prob_with_wrong_shape_is_refused_naming_model():
    class Bad(DiagGaussian):
        def log_prob(self, x):
            return super().log_prob(x).sum()

    with pytest.raises(ValueError, match=r"model: log_prob must return one value per example"):
        train_flow(Bad(2), torch.randn(16, 2), steps=2, batch_size=4, device="cpu")


def test_train_result_json_is_strict(tmp_path):
    res = train_flow(DiagGaussian(2), torch.randn(32, 2), steps=4, batch_size=8, lr=1e-2, device="cpu")
    assert isinstance(res, TrainResult) and res.final_val_nll is None
    path = tmp_path / "log.json"
    text = res.to_json(path)
    log = json.loads(path.read_text())
    assert text == path.read_text()
    assert log["final_val_nll"] is None and log["steps"] == 4 and len(log["train_loss"]) == 4
    assert log["final_nll"] == pytest.approx(np.mean(res.train_loss))
