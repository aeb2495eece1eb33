"""DDP training (bayesinv.flows.distributed): 2 processes under torchrun equal 1 process.

The global batch is drawn on every rank from one seeded generator and sharded, and DDP averages
the shard gradients, so 2 ranks x 8 examples must give the loss curve and weights of plain
``train_flow`` with a batch of 16 up to float32 summation order (measured: 1.1e-7 relative over
20 Adam steps; asserted: 1e-5).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

dist = pytest.importorskip("torch.distributed")
if not (dist.is_available() and dist.is_gloo_available()):  # pragma: no cover
    pytest.skip("torch.distributed with the gloo backend is not available", allow_module_level=True)

from bayesinv.flows.distributed import LogProbModule, shard_bounds, train_flow_ddp  # noqa: E402
from bayesinv.flows.glow import Glow  # noqa: E402
from bayesinv.flows.io import load_flow  # noqa: E402
from bayesinv.flows.patch import PatchFlow  # noqa: E402
from bayesinv.flows.train import load_checkpoint, train_flow  # noqa: E402

TORCHRUN = Path(sys.executable).parent / "torchrun"
FLOW_KW = dict(patch_size=3, n_blocks=2, hidden=16, n_hidden_layers=2, seed=0)
TRAIN_KW = dict(batch_size=16, lr=1e-3, seed=0, device="cpu", progress=False)
RTOL = 1e-5


def _patches() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.rand(64, 9, generator=g) * 0.5 + torch.linspace(0.0, 0.5, 9)


def _images() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.rand(32, 1, 4, 4, generator=g)


def _torchrun(tmp_path: Path, *args: str, nproc: int = 2, flow: str = "patch") -> dict:
    if not TORCHRUN.exists():
        pytest.skip(f"torchrun not found next to {sys.executable}")
    data = tmp_path / f"{flow}.npy"
    if not data.exists():
        np.save(data, (_patches() if flow == "patch" else _images()).numpy())
    out = tmp_path / f"log_{len(list(tmp_path.glob('log_*')))}.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [str(TORCHRUN), "--standalone", f"--nproc_per_node={nproc}", "-m", "bayesinv.flows.distributed",
           "--data", str(data), "--flow", flow, "--n-blocks", "2", "--hidden", "16", "--lr", "1e-3",
           "--batch-size", "16", "--seed", "0", "--out", str(out), *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    if proc.returncode != 0 and "received by PID" in proc.stderr and "Traceback" not in proc.stderr:
        # a worker killed by a signal (seen once in ~25 runs on a loaded machine: SIGABRT, no Python
        # error), not a failure of the code under test: retry once, loudly
        warnings.warn(f"torchrun worker died by a signal; retrying once:\n{proc.stderr[-1500:]}", stacklevel=2)
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-4000:]
    log = json.loads(out.read_text())
    assert log["world_size"] == nproc
    return log


def _rel(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-12)))


# -------------------------------------------------------------------------------- in-process
def test_shard_bounds_partition_the_global_batch():
    rows = [shard_bounds(12, 3, r) for r in range(3)]
    assert rows == [(0, 4), (4, 8), (8, 12)]
    with pytest.raises(ValueError, match="batch_size.*divisible"):
        shard_bounds(10, 3, 0)
    with pytest.raises(ValueError, match="rank"):
        shard_bounds(12, 3, 3)


def test_single_process_ddp_equals_train_flow_bitwise():
    x = _patches()
    ref = train_flow(PatchFlow(**FLOW_KW), x, steps=15, **TRAIN_KW)
    flow = PatchFlow(**FLOW_KW)
    got = train_flow_ddp(flow, x, steps=15, **TRAIN_KW)
    assert got.train_loss == ref.train_loss
    assert got.train_loss[-1] < got.train_loss[0]  # it trains


def test_actnorm_is_initialised_on_the_global_batch():
    """Glow's data-dependent ActNorm init must use the global batch, as in one process."""
    g = torch.Generator().manual_seed(1)
    imgs = torch.rand(32, 1, 4, 4, generator=g)
    ref = train_flow(Glow((1, 4, 4), levels=1, steps=1, hidden=8), imgs, steps=3, batch_size=8,
                     lr=1e-3, seed=0, device="cpu", progress=False)
    got = train_flow_ddp(Glow((1, 4, 4), levels=1, steps=1, hidden=8), imgs, steps=3, batch_size=8,
                         lr=1e-3, seed=0, device="cpu", progress=False)
    assert got.train_loss == ref.train_loss


def test_checkpoint_is_interchangeable_with_train_flow(tmp_path):
    x = _patches()
    ckpt = tmp_path / "c.safetensors"
    ref = train_flow(PatchFlow(**FLOW_KW), x, steps=12, **TRAIN_KW)
    train_flow_ddp(PatchFlow(**FLOW_KW), x, steps=6, checkpoint=ckpt, checkpoint_every=3, **TRAIN_KW)
    assert load_checkpoint(ckpt).step == 6
    resumed = train_flow(PatchFlow(**FLOW_KW), x, steps=12, checkpoint=ckpt, **TRAIN_KW)
    assert resumed.start_step == 6 and resumed.train_loss == ref.train_loss


def test_logprob_module_forwards_to_log_prob():
    flow = PatchFlow(**FLOW_KW)
    x = _patches()[:5]
    torch.testing.assert_close(LogProbModule(flow)(x), flow.log_prob(x), rtol=0, atol=0)


def test_bad_inputs_name_the_argument():
    x = _patches()
    with pytest.raises(TypeError, match="model"):
        train_flow_ddp(torch.nn.Linear(2, 2), x, steps=1, batch_size=4)
    with pytest.raises(ValueError, match="steps"):
        train_flow_ddp(PatchFlow(**FLOW_KW), x, steps=0, batch_size=4)
    with pytest.raises(ValueError, match="data"):
        train_flow_ddp(PatchFlow(**FLOW_KW), x.clone().fill_(float("nan")), steps=1, batch_size=4)
    with pytest.raises(ValueError, match="device"):
        train_flow_ddp(PatchFlow(**FLOW_KW), x, steps=1, batch_size=4, device="tpu:0")


# ------------------------------------------------------------------------------------ torchrun
@pytest.mark.slow
def test_two_processes_equal_one_process_with_the_global_batch(tmp_path):
    ckpt = tmp_path / "ddp.safetensors"
    log = _torchrun(tmp_path, "--steps", "20", "--checkpoint", str(ckpt), "--checkpoint-every", "10",
                    "--save", str(tmp_path / "flow.safetensors"))
    ref_flow = PatchFlow(**FLOW_KW)
    ref = train_flow(ref_flow, _patches(), steps=20, **TRAIN_KW)
    rel = _rel(log["train_loss"], ref.train_loss)
    assert len(log["train_loss"]) == 20 and rel < RTOL, rel
    ddp_flow = load_flow(tmp_path / "flow.safetensors")
    for (name, a), b in zip(ddp_flow.state_dict().items(), ref_flow.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=RTOL, atol=1e-6, msg=name)
    assert load_checkpoint(ckpt).step == 20  # rank 0 wrote a valid (atomic) checkpoint


@pytest.mark.slow
def test_two_processes_resume_a_checkpoint_on_every_rank(tmp_path):
    x = _patches()
    ckpt = tmp_path / "c.safetensors"
    train_flow(PatchFlow(**FLOW_KW), x, steps=10, checkpoint=ckpt, **TRAIN_KW)
    ref = train_flow(PatchFlow(**FLOW_KW), x, steps=20, **TRAIN_KW)
    log = _torchrun(tmp_path, "--steps", "20", "--checkpoint", str(ckpt), "--checkpoint-every", "5")
    assert log["start_step"] == 10
    assert log["train_loss"][:10] == ref.train_loss[:10]  # history restored bit for bit
    assert _rel(log["train_loss"], ref.train_loss) < RTOL
    assert load_checkpoint(ckpt).step == 20


@pytest.mark.slow
def test_two_processes_glow_actnorm_init_on_the_global_batch(tmp_path):
    """ActNorm's data-dependent init must see the global batch, not one rank's shard.

    float64: right after ActNorm's init some gradients (its bias) are ~0, i.e. pure summation-order
    noise in float32, which Adam (scale invariant) turns into lr-sized steps of random sign; in
    float32 the 1- and 2-process curves then drift apart by ~3e-3 relative, in float64 they agree.
    """
    log = _torchrun(tmp_path, "--steps", "8", "--levels", "1", "--dtype", "float64", flow="glow")
    flow = Glow((1, 4, 4), levels=1, steps=2, hidden=16, seed=0).double()
    ref = train_flow(flow, _images().double(), steps=8, **TRAIN_KW)
    rel = _rel(log["train_loss"], ref.train_loss)
    assert rel < 1e-10, rel
