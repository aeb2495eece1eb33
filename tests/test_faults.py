"""Fault injection: kill -9 mid-run and resume, corrupted files, numerical blow-ups.

* ``kill -9`` a training / MALA process after it wrote a checkpoint (we poll the file, loading
  it while the writer keeps replacing it), resume in a fresh process, and compare with an
  uninterrupted run: the continuation is bit-for-bit identical and the checkpoint always loads
  (atomic writes).
* Truncated / bit-flipped / garbage flow weights, training checkpoints, MCMC checkpoints and
  netCDF posteriors raise a ``ValueError`` naming the file.
* NaN/inf during optimisation (MAP with an absurd learning rate, a tiny sigma; training with
  an absurd learning rate) and sampling (MALA with a huge fixed step, ULA) raise
  ``FloatingPointError`` naming the step and the likely cause.

MAP has no checkpoints, so it is not killed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from bayesinv.flows.io import load_flow, save_flow
from bayesinv.flows.patch import PatchFlow
from bayesinv.flows.train import load_checkpoint, train_flow
from bayesinv.infer.map import map_estimate
from bayesinv.infer.mcmc import sample_posterior
from bayesinv.infer.posterior import Posterior
from bayesinv.problem import InverseProblem
from bayesinv.testing import linear_gaussian_problem

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
FLOW_KW = dict(patch_size=3, n_blocks=2, hidden=16, n_hidden_layers=2, seed=0)
TRAIN_KW = dict(batch_size=16, lr=1e-3, seed=0, device="cpu", progress=False, checkpoint_every=5)
MCMC_KW = dict(kernel="mala", num_chains=2, num_samples=150, warmup_steps=50, init="zeros", seed=3,
               checkpoint_every=10, progress=False)

# The child scripts rebuild exactly what the parent builds (same seeds), so results can be compared.
TRAIN_SCRIPT = """
import json, sys, time, torch
from bayesinv.flows.patch import PatchFlow
from bayesinv.flows.train import train_flow
ckpt, steps, pause = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
g = torch.Generator().manual_seed(0)
x = torch.rand(64, 9, generator=g) * 0.5 + torch.linspace(0.0, 0.5, 9)
def sampler(n, gen):
    if pause:
        time.sleep(pause)  # slows the run that gets killed; draws nothing from any RNG
    return x[torch.randint(x.shape[0], (n,), generator=gen)]
r = train_flow(PatchFlow(**FLOW_KW), sampler, steps=steps, checkpoint=ckpt, **TRAIN_KW)
open(ckpt + ".json", "w").write(json.dumps(r.train_loss))
"""

MCMC_SCRIPT = """
import sys, time, numpy as np
from bayesinv.infer.mcmc import sample_posterior
from bayesinv.testing import linear_gaussian_problem
ckpt, out, pause = sys.argv[1], sys.argv[2], float(sys.argv[3])
case = linear_gaussian_problem((1, 3, 4), seed=0)
hook = (lambda *a: time.sleep(pause)) if pause else None
post = sample_posterior(case.problem, case.y, checkpoint=ckpt, hook_fn=hook, **MCMC_KW)
np.save(out, post.samples.numpy())
"""


def _script(body: str, **consts) -> str:
    """The child script with the parent's settings (plain literals) defined at its top."""
    return "".join(f"{k} = {v!r}\n" for k, v in consts.items()) + body


def _patches() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.rand(64, 9, generator=g) * 0.5 + torch.linspace(0.0, 0.5, 9)


def _sampler(x):
    def draw(n, gen):
        return x[torch.randint(x.shape[0], (n,), generator=gen)]
    return draw


def _start(code: str, *args: object) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _kill_after(proc: subprocess.Popen, ready, timeout: float = 120.0) -> None:
    """Poll ``ready()`` (which loads the checkpoint: it must never see a torn file), then SIGKILL."""
    t0 = time.monotonic()
    while not ready():
        if proc.poll() is not None:
            raise AssertionError(f"the child exited early ({proc.returncode}): {proc.stderr.read().decode()[-3000:]}")
        if time.monotonic() - t0 > timeout:
            proc.kill()
            raise AssertionError("no checkpoint appeared in time")
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL  # it really was killed mid-run


def _run(code: str, *args: object) -> None:
    proc = subprocess.run([sys.executable, "-c", code, *map(str, args)], env=ENV, capture_output=True,
                          text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.fixture
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # the children run with OMP_NUM_THREADS=1: same reductions
    yield
    torch.set_num_threads(n)


# ------------------------------------------------------------------------------ kill -9, resume
def _train_ckpt_step(path: Path) -> int:
    if not path.exists():
        return 0
    return load_checkpoint(path).step  # raises if a reader ever saw a torn file


def test_kill9_training_then_resume_is_identical(tmp_path, one_thread):
    code = _script(TRAIN_SCRIPT, FLOW_KW=FLOW_KW, TRAIN_KW=TRAIN_KW)
    ckpt = tmp_path / "train.safetensors"
    proc = _start(code, ckpt, 100_000, 0.01)
    _kill_after(proc, lambda: _train_ckpt_step(ckpt) >= 10)
    saved = load_checkpoint(ckpt)  # the file a SIGKILL left behind is a complete checkpoint
    assert saved.step % 5 == 0 and len(saved.train_loss) == saved.step
    total = saved.step + 12
    _run(code, ckpt, total, 0.0)
    resumed = json.loads(Path(str(ckpt) + ".json").read_text())

    ref_flow = PatchFlow(**FLOW_KW)
    ref = train_flow(ref_flow, _sampler(_patches()), steps=total, **TRAIN_KW)
    assert resumed == ref.train_loss  # bit-for-bit, across 3 processes
    final = load_checkpoint(ckpt)
    assert final.step == total
    for k, v in ref_flow.state_dict().items():
        assert torch.equal(final.model_state[k], v), k


@pytest.mark.slow
def test_repeated_kill9_training_still_identical(tmp_path, one_thread):
    code = _script(TRAIN_SCRIPT, FLOW_KW=FLOW_KW, TRAIN_KW=TRAIN_KW)
    ckpt = tmp_path / "train.safetensors"
    for _ in range(3):  # kill, restart (resuming), kill again...
        before = _train_ckpt_step(ckpt)
        proc = _start(code, ckpt, 100_000, 0.005)
        _kill_after(proc, lambda b=before: _train_ckpt_step(ckpt) >= b + 10)
    total = load_checkpoint(ckpt).step + 7
    _run(code, ckpt, total, 0.0)
    ref = train_flow(PatchFlow(**FLOW_KW), _sampler(_patches()), steps=total, **TRAIN_KW)
    assert json.loads(Path(str(ckpt) + ".json").read_text()) == ref.train_loss


def _chain_ready(path: Path) -> bool:
    if not path.exists():
        return False
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:  # raises on a torn file
        return json.loads(f.metadata()["json"])["iteration"] >= 20


@pytest.mark.slow
def test_kill9_mala_then_resume_is_identical(tmp_path, one_thread):
    code = _script(MCMC_SCRIPT, MCMC_KW=MCMC_KW)
    ckpt, out = tmp_path / "mcmc", tmp_path / "draws.npy"
    proc = _start(code, ckpt, out, 0.004)
    _kill_after(proc, lambda: _chain_ready(ckpt / "chain_0.safetensors"))
    assert not out.exists()
    _run(code, ckpt, out, 0.0)
    case = linear_gaussian_problem((1, 3, 4), seed=0)
    ref = sample_posterior(case.problem, case.y, **MCMC_KW)
    np.testing.assert_array_equal(np.load(out), ref.samples.numpy())


VI_KW = dict(mode="single", lr=0.02, num_particles=2, seed=4, checkpoint_every=5, progress=False)
VI_SCRIPT = """
import json, sys
from bayesinv.infer.variational import ConditionalAffineFlow, fit_variational
from bayesinv.testing import linear_gaussian_problem
ckpt, steps = sys.argv[1], int(sys.argv[2])
case = linear_gaussian_problem((1, 3, 4), seed=0)
guide = ConditionalAffineFlow(case.problem.prior.latent_shape, case.problem.measurement_shape)
post = fit_variational(case.problem, case.y, guide=guide, steps=steps, checkpoint=ckpt, **VI_KW)
open(ckpt + ".json", "w").write(json.dumps(post.loss_curve))
"""


@pytest.mark.slow
def test_kill9_variational_then_resume_is_identical(tmp_path, one_thread):
    from bayesinv.infer.variational import ConditionalAffineFlow, fit_variational

    code = _script(VI_SCRIPT, VI_KW=VI_KW)
    ckpt = tmp_path / "vi.safetensors"
    proc = _start(code, ckpt, 1_000_000)
    _kill_after(proc, lambda: _train_ckpt_step(ckpt) >= 10)
    total = load_checkpoint(ckpt).step + 10
    _run(code, ckpt, total)
    case = linear_gaussian_problem((1, 3, 4), seed=0)
    guide = ConditionalAffineFlow(case.problem.prior.latent_shape, case.problem.measurement_shape)
    ref = fit_variational(case.problem, case.y, guide=guide, steps=total, **VI_KW)
    assert json.loads(Path(str(ckpt) + ".json").read_text()) == ref.loss_curve


# ---------------------------------------------------------------------------------- bad files
def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _flip_last_bytes(path: Path, n: int = 8) -> None:
    data = bytearray(path.read_bytes())
    for i in range(1, n + 1):
        data[-i] ^= 0xFF
    path.write_bytes(bytes(data))


def _garbage(path: Path) -> None:
    path.write_bytes(b"this is not the file you are looking for" * 10)


CORRUPT = {"truncated": _truncate, "bitflip": _flip_last_bytes, "garbage": _garbage,
           "empty": lambda p: p.write_bytes(b"")}


@pytest.mark.parametrize("damage", sorted(CORRUPT))
def test_corrupted_flow_weights_name_the_file(tmp_path, damage):
    path = tmp_path / "flow.safetensors"
    save_flow(PatchFlow(**FLOW_KW), path)
    CORRUPT[damage](path)
    with pytest.raises(ValueError, match="flow.safetensors"):
        load_flow(path)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_corrupted_flow_config_names_the_file(tmp_path, damage):
    path = tmp_path / "flow.safetensors"
    cfg = save_flow(PatchFlow(**FLOW_KW), path)
    CORRUPT[damage](cfg)
    with pytest.raises(ValueError, match="flow.json"):
        load_flow(path)


@pytest.mark.parametrize("damage", sorted(CORRUPT))
def test_corrupted_training_checkpoint_names_the_file(tmp_path, damage):
    ckpt = tmp_path / "run.safetensors"
    train_flow(PatchFlow(**FLOW_KW), _patches(), steps=3, checkpoint=ckpt, **TRAIN_KW)
    CORRUPT[damage](ckpt)
    with pytest.raises(ValueError, match="run.safetensors"):
        load_checkpoint(ckpt)
    with pytest.raises(ValueError, match="run.safetensors"):  # and a resume refuses it
        train_flow(PatchFlow(**FLOW_KW), _patches(), steps=6, checkpoint=ckpt, **TRAIN_KW)


@pytest.mark.parametrize("damage", sorted(CORRUPT))
def test_corrupted_mcmc_checkpoint_names_the_file(tmp_path, damage):
    case = linear_gaussian_problem((1, 3, 4), seed=0)
    kw = {**MCMC_KW, "num_chains": 1, "num_samples": 10, "warmup_steps": 5}
    sample_posterior(case.problem, case.y, checkpoint=tmp_path / "m", **kw)
    CORRUPT[damage](tmp_path / "m" / "chain_0.safetensors")
    with pytest.raises(ValueError, match="chain_0.safetensors"):
        sample_posterior(case.problem, case.y, checkpoint=tmp_path / "m", **kw)


@pytest.fixture(scope="module")
def saved_posterior(tmp_path_factory):
    case = linear_gaussian_problem((1, 3, 4), seed=0)
    post = sample_posterior(case.problem, case.y, **{**MCMC_KW, "num_samples": 10, "warmup_steps": 5})
    path = tmp_path_factory.mktemp("nc") / "post.nc"
    post.save(path)
    return path


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_corrupted_netcdf_posterior_names_the_file(saved_posterior, tmp_path, damage):
    path = tmp_path / "post.nc"
    path.write_bytes(saved_posterior.read_bytes())
    assert Posterior.load(path).samples.shape == (2, 10, 1, 3, 4)  # intact copy loads
    CORRUPT[damage](path)
    with pytest.raises(ValueError, match="post.nc"):
        Posterior.load(path)


# ------------------------------------------------------------------------- numerical blow-ups
@pytest.fixture(scope="module")
def case():
    return linear_gaussian_problem((1, 3, 4), seed=0)


@pytest.mark.parametrize("kw", [dict(method="image", optimizer="adam"), dict(method="image", optimizer="lbfgs"),
                                dict(method="latent", optimizer="adam"), dict(method="latent", optimizer="lbfgs")])
def test_map_with_absurd_lr_names_the_step_and_cause(case, kw):
    with pytest.raises(FloatingPointError, match=r"at step \d+; likely cause: the learning rate"):
        map_estimate(case.problem, case.y, steps=20, lr=1e200, **kw)


@pytest.mark.parametrize("method", ["image", "latent"])
def test_map_with_tiny_sigma_names_the_step_and_sigma(case, method):
    tiny = InverseProblem(case.problem.operator, case.problem.prior, 1e-200)
    with pytest.raises(FloatingPointError, match=r"at step \d+.*sigma"):
        map_estimate(tiny, case.y, method=method, steps=5)


@pytest.mark.parametrize("adapt", [False, True])
def test_mala_with_huge_step_names_the_iteration_and_step_size(case, adapt):
    with pytest.raises(FloatingPointError, match=r"iteration \d+.*step_size.*step size is too large"):
        sample_posterior(case.problem, case.y, kernel="mala", num_chains=1, num_samples=20,
                         warmup_steps=10 if adapt else 0, init="zeros", step_size=1e300,
                         adapt_step_size=adapt, progress=False)


def test_mala_that_rejects_everything_warns_about_the_step_size(case):
    # step 1e6: every proposal lands far out in the Gaussian tails (acceptance ~ 0) but stays finite
    with pytest.warns(RuntimeWarning, match=r"chain 0 accepted .*step_size=1e\+06.*step size is too large"):
        post = sample_posterior(case.problem, case.y, kernel="mala", num_chains=1, num_samples=20,
                                warmup_steps=0, init="zeros", step_size=1e6, adapt_step_size=False,
                                progress=False)
    assert float(post.sample_stats["accept_prob"].mean()) < 0.01
    assert torch.equal(post.samples[0, 0], post.samples[0, -1])  # the chain never moved


def test_mala_with_a_sensible_step_does_not_warn(case, recwarn):
    sample_posterior(case.problem, case.y, kernel="mala", num_chains=1, num_samples=20, warmup_steps=20,
                     init="zeros", progress=False)
    assert not [w for w in recwarn if "accepted" in str(w.message)]


def test_ula_blow_up_names_the_iteration(case):
    with pytest.raises(FloatingPointError, match=r"iteration \d+.*step_size"):
        sample_posterior(case.problem, case.y, kernel="ula", step_size=10.0, num_chains=1,
                         num_samples=500, warmup_steps=0, init="zeros", progress=False)


def test_training_with_absurd_lr_names_the_step(tmp_path):
    ckpt = tmp_path / "c.safetensors"
    with pytest.raises(FloatingPointError, match=r"at step \d+.*learning rate too high.*lr=1e\+30"):
        train_flow(PatchFlow(**FLOW_KW), _patches(), steps=50, batch_size=16, lr=1e30, device="cpu",
                   progress=False, checkpoint=ckpt, checkpoint_every=1)
    load_checkpoint(ckpt)  # the last checkpoint before the blow-up is intact


def test_training_on_nan_batches_names_the_data():
    x = _patches()

    def bad(n, gen):
        xb = x[torch.randint(x.shape[0], (n,), generator=gen)].clone()
        xb[0, 0] = float("nan")
        return xb

    with pytest.raises(ValueError, match="data.*step 1.*NaN"):
        train_flow(PatchFlow(**FLOW_KW), bad, steps=3, batch_size=8, device="cpu", progress=False)
