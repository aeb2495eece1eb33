r"""Data-parallel (DDP) maximum-likelihood training of flows, launched by ``torchrun``.

:func:`train_flow_ddp` trains the same objective as :func:`bayesinv.flows.train.train_flow`,

.. math::

    \mathcal L(\theta) = -\frac1B \sum_{b=1}^{B} \log p_\theta(x_b),

with the global batch of :math:`B = W \cdot b` examples split over :math:`W` processes
(``torch.distributed``; backend ``gloo`` on CPU, ``nccl`` on CUDA) of :math:`b` examples each.
Every rank computes :math:`-\frac1b\sum_{b \in \text{shard}_r}\log p_\theta(x_b)`;
``DistributedDataParallel`` averages the gradients over ranks (Li et al. 2020, "PyTorch
Distributed: Experiences on Accelerating Data Parallel Training"), which gives exactly
:math:`\nabla\mathcal L` of the global batch:
:math:`\frac1W\sum_r \frac1b\sum_{\text{shard}_r} = \frac1B\sum_{b=1}^B`.

**Distributed sampler.** Every rank runs the *same* seeded CPU generator and draws the *whole*
global batch (indices, dequantisation noise, or a sampler's output) exactly as
:func:`~bayesinv.flows.train.train_flow` does with ``batch_size = B``, then keeps its
contiguous shard ``[r b, (r + 1) b)``. The generators stay in lock-step (no communication), the
draws do not depend on the number of processes, and one process with the global batch (plain
``train_flow``) gives the same gradients, losses and parameters up to floating-point summation
order. Data-dependent initialisation (Glow's ActNorm) is done on the full global batch by every
rank before the first step, as in the single-process run.

**Checkpoints** use the :func:`~bayesinv.flows.train.save_checkpoint` format (safetensors +
JSON, atomic temp-file/``fsync``/``os.replace``), written by rank 0 only, followed by a barrier;
on resume, all ranks wait at a barrier, rank 0 says whether the file exists, and every rank
loads it (model, optimizer, generator and RNG states are identical on all ranks). A checkpoint
written by a DDP run resumes with plain ``train_flow`` and vice versa.

Launch (2 processes on one machine)::

    torchrun --standalone --nproc_per_node=2 -m bayesinv.flows.distributed \
        --data patches.npy --flow patch --steps 1000 --batch-size 256 --checkpoint ckpt.safetensors
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from .._checks import check_int, resolve_device
from .layers import ActNorm
from .train import (
    DEQUANTIZE,
    Sampler,
    TrainResult,
    _as_data,
    _check_train_args,
    _check_unit_range,
    _checked_update,
    _model_rng,
    _prepare_val_data,
    _start_run,
    _trainable_params,
    dequantize_uniform,
    load_checkpoint,
)

__all__ = ["LogProbModule", "shard_bounds", "train_flow_ddp", "main"]


class LogProbModule(nn.Module):
    """``forward(x) = flow.log_prob(x)``: DDP synchronises gradients of ``forward`` only."""

    def __init__(self, flow: nn.Module) -> None:
        super().__init__()
        self.flow = flow

    def forward(self, x: Tensor) -> Tensor:
        return self.flow.log_prob(x)


def shard_bounds(global_batch: int, world_size: int, rank: int) -> tuple[int, int]:
    """Rows ``[start, stop)`` of the global batch that ``rank`` trains on (contiguous, equal)."""
    global_batch = check_int(global_batch, "batch_size")
    world_size = check_int(world_size, "world_size")
    rank = check_int(rank, "rank", minimum=0)
    if rank >= world_size:
        raise ValueError(f"rank: expected 0 <= rank < world_size = {world_size}, got {rank}")
    if global_batch % world_size:
        raise ValueError(
            f"batch_size: the global batch {global_batch} must be divisible by the number of "
            f"processes (world_size = {world_size})"
        )
    b = global_batch // world_size
    return rank * b, (rank + 1) * b


def _setup_process_group(dev_request: str | torch.device | None) -> tuple[bool, int, int, torch.device]:
    """Join (or create from torchrun's environment) the default process group.

    Returns ``(distributed, world_size, rank, device)``. Without a process group and without
    torchrun's ``WORLD_SIZE``, runs as a single process (world size 1, no DDP).
    """
    if dist.is_available() and dist.is_initialized():
        world, rank = dist.get_world_size(), dist.get_rank()
        backend = dist.get_backend()
        if backend == "nccl":
            dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", torch.cuda.current_device())))
        else:
            dev = resolve_device("cpu" if dev_request in (None, "auto") else dev_request)
        return True, world, rank, dev
    if "WORLD_SIZE" not in os.environ:
        return False, 1, 0, resolve_device(dev_request)
    if not dist.is_available():
        raise RuntimeError("torch.distributed is not available in this torch build")
    dev = resolve_device(dev_request)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
        backend = "nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend=backend)
    return True, dist.get_world_size(), dist.get_rank(), dev


def _uninitialized_actnorms(model: nn.Module) -> bool:
    return any(isinstance(m, ActNorm) and not bool(m.initialized) for m in model.modules())


def train_flow_ddp(
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
) -> TrainResult:
    r"""Train ``model`` by maximum likelihood on all processes of the default process group.

    Same arguments and result as :func:`bayesinv.flows.train.train_flow` (except
    ``patch_sampler``), with ``batch_size`` the **global** batch :math:`B` (divisible by the
    world size :math:`W`; each rank trains on :math:`B/W` examples). Call it on every rank
    (e.g. in a script run by ``torchrun``); the process group is created from torchrun's
    environment if needed (``gloo`` on CPU, ``nccl`` on CUDA, one GPU per rank at
    ``cuda:LOCAL_RANK``). Without torchrun and without a process group it runs as one process.

    The global batch is drawn identically on every rank from one generator seeded with
    ``seed`` (module docstring), so the losses and parameters equal those of ``train_flow``
    with the same ``batch_size`` and ``seed`` up to floating-point summation order.

    Returns
    -------
    TrainResult
        On every rank: the global-batch losses (mean over ranks of the shard losses).

    Raises
    ------
    FloatingPointError
        On every rank at once, when the global loss or gradient norm is NaN/inf, naming the step.
    ValueError, TypeError
        For bad arguments (naming the argument) or a bad checkpoint (naming the file).
    """
    steps, batch_size, lr, weight_decay, val_every, checkpoint_every, val_batch_size, seed, grad_clip = (
        _check_train_args(
            model, steps=steps, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
            dequantize=dequantize, val_every=val_every, checkpoint_every=checkpoint_every,
            val_batch_size=val_batch_size, seed=seed, grad_clip=grad_clip, resume=resume,
        )
    )
    params = _trainable_params(model)

    distributed, world, rank, dev = _setup_process_group(device)
    lo, hi = shard_bounds(batch_size, world, rank)
    dtype = params[0].dtype

    sampler: Sampler | None = None
    x_data: Tensor | None = None
    if callable(data) and not isinstance(data, (Tensor, np.ndarray)):
        sampler = data
    else:
        x_data = _as_data(data, "data").to(dtype=dtype)  # stays on the CPU; shards move to dev
        if dequantize == "uniform":
            _check_unit_range(x_data, "data")
    x_val = _prepare_val_data(val_data, dev, dtype, dequantize, x_data)

    run, optimizer, gen, cuda_dev, ckpt_path = _start_run(  # train_flow's config: checkpoints interchange
        model, params, dev, checkpoint=checkpoint, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
        dequantize=dequantize, seed=seed, grad_clip=grad_clip,
        data_kind="sampler" if sampler is not None else "tensor", x_val=x_val, val_every=val_every,
        val_batch_size=val_batch_size, checkpoint_every=checkpoint_every, caller="train_flow_ddp",
    )

    def draw_global() -> Tensor:
        """The global batch, drawn exactly as train_flow draws it (on the CPU generator)."""
        if sampler is not None:
            xb = sampler(batch_size, gen)
            if not isinstance(xb, Tensor) or xb.dim() < 2 or xb.shape[0] != batch_size:
                got = tuple(xb.shape) if isinstance(xb, Tensor) else type(xb).__name__
                raise ValueError(f"data: the sampler must return ({batch_size}, ...) batches, got {got}")
            xb = xb.to(dtype=dtype)
        else:
            idx = torch.randint(x_data.shape[0], (batch_size,), generator=gen)
            xb = x_data[idx]
        if dequantize == "uniform":
            xb = dequantize_uniform(xb, gen)
        return xb

    def barrier() -> None:
        if distributed:
            dist.barrier()

    def save(step: int) -> None:
        if rank == 0:
            run.save(ckpt_path, step, model=model, optimizer=optimizer, generator=gen, cuda_device=cuda_dev)
        barrier()  # no rank runs ahead of a checkpoint that is not on disk yet

    t0 = time.perf_counter()
    with _model_rng(seed, cuda_dev):
        exists = ckpt_path is not None and resume and ckpt_path.exists()
        if distributed:
            barrier()  # a checkpoint being written by a previous run is complete before we look
            flag = torch.tensor([1.0 if exists else 0.0], device=dev)
            dist.broadcast(flag, src=0)  # rank 0 decides: all ranks resume, or none
            exists = bool(flag.item())
        if exists:
            run.resume(load_checkpoint(ckpt_path), model, optimizer, gen, cuda_dev,
                       lr=lr, weight_decay=weight_decay, warn=rank == 0)

        wrapper = LogProbModule(model)
        if distributed:
            ddp_kw = {"device_ids": [cuda_dev.index]} if cuda_dev is not None else {}
            net: nn.Module = nn.parallel.DistributedDataParallel(wrapper, **ddp_kw)
        else:
            net = wrapper

        def one_step(step: int) -> float:
            xg = draw_global()
            run.note_dim(xg)
            if _uninitialized_actnorms(model):  # data-dependent init on the *global* batch
                with torch.no_grad():
                    model.log_prob(xg.to(dev))
            xb = xg[lo:hi].to(dev)
            return _ddp_step(net, model, optimizer, xb, step=step, grad_clip=grad_clip, lr=lr,
                             world=world, distributed=distributed)

        run.loop(steps, model, one_step, save=None if ckpt_path is None else save,
                 desc=f"train flow (rank {rank}/{world})", progress=progress if rank == 0 else False)

    if run.dim is None:
        run.dim = int(np.prod(draw_global().shape[1:]))
    return run.result(steps, t0=t0, device=dev, checkpoint=ckpt_path)


def _ddp_step(net: nn.Module, model: nn.Module, optimizer: torch.optim.Optimizer, shard: Tensor, *,
              step: int, grad_clip: float | None, lr: float, world: int, distributed: bool) -> float:
    r"""One Adam step on the global-batch loss; returns it (before the step).

    The shard loss :math:`-\frac1b\sum\log p` is back-propagated through DDP, which averages the
    gradients over ranks; the reported loss is the all-reduced mean of the shard losses (equal
    shards, so this is the global-batch mean). Loss and gradient norm are identical on all
    ranks, so a non-finite value stops every rank at the same step (no deadlock).
    """
    optimizer.zero_grad(set_to_none=True)
    logp = net(shard)
    if not isinstance(logp, Tensor) or logp.shape != (shard.shape[0],):
        got = tuple(logp.shape) if isinstance(logp, Tensor) else type(logp).__name__
        raise ValueError(f"model: log_prob must return one value per example, shape ({shard.shape[0]},); got {got}")
    loss = -logp.mean()
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    norm = (torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.detach()) for g in grads]))
            if grads else loss.new_zeros(()))
    global_loss = loss.detach().clone()
    if distributed:
        dist.all_reduce(global_loss, op=dist.ReduceOp.SUM)
        global_loss = global_loss / world
    loss_value, norm_value = torch.stack([global_loss, norm.to(loss.dtype)]).tolist()
    return _checked_update(optimizer, grads, loss_value, norm_value, step=step, grad_clip=grad_clip,
                           lr=lr, caller="train_flow_ddp")


# ------------------------------------------------------------------------------ torchrun entry
def _build_flow(kind: str, example_shape: Sequence[int], args: argparse.Namespace) -> nn.Module:
    if kind == "patch":
        from .patch import PatchFlow

        if len(example_shape) != 1:
            raise ValueError(f"--data: a patch flow needs flattened patches (N, D), got examples of shape {tuple(example_shape)}")
        d = int(example_shape[0])
        k = math.isqrt(d // args.channels)
        if args.channels * k * k != d:
            raise ValueError(f"--data: D = {d} is not channels * k * k with --channels {args.channels}")
        return PatchFlow(patch_size=k, channels=args.channels, n_blocks=args.n_blocks,
                         hidden=args.hidden, n_hidden_layers=args.n_hidden_layers, seed=args.model_seed)
    from .glow import Glow

    if len(example_shape) != 3:
        raise ValueError(f"--data: a Glow needs images (N, C, H, W), got examples of shape {tuple(example_shape)}")
    return Glow(tuple(int(s) for s in example_shape), levels=args.levels, steps=args.n_blocks,
                hidden=args.hidden, seed=args.model_seed)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bayesinv.flows.distributed`` (under ``torchrun``): train a flow on an ``.npy`` file."""
    p = argparse.ArgumentParser(prog="python -m bayesinv.flows.distributed", description=main.__doc__)
    p.add_argument("--data", required=True, help="examples as .npy: patches (N, D) or images (N, C, H, W)")
    p.add_argument("--flow", choices=("patch", "glow"), default="patch")
    p.add_argument("--channels", type=int, default=1)
    p.add_argument("--n-blocks", type=int, default=2)
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--n-hidden-layers", type=int, default=2)
    p.add_argument("--levels", type=int, default=1)
    p.add_argument("--model-seed", type=int, default=0)
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--batch-size", type=int, required=True, help="global batch (all ranks together)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dequantize", choices=DEQUANTIZE, default=None)
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--checkpoint-every", type=int, default=1000)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None, help="JSON training log (rank 0)")
    p.add_argument("--save", default=None, help="trained weights (safetensors + JSON, rank 0)")
    args = p.parse_args(argv)

    data = np.load(args.data, allow_pickle=False)
    flow = _build_flow(args.flow, data.shape[1:], args).to(getattr(torch, args.dtype))
    result = train_flow_ddp(
        flow, torch.from_numpy(np.ascontiguousarray(data)), steps=args.steps, batch_size=args.batch_size,
        lr=args.lr, seed=args.seed, dequantize=args.dequantize, checkpoint=args.checkpoint,
        checkpoint_every=args.checkpoint_every, device=args.device, progress=False,
    )
    distributed = dist.is_available() and dist.is_initialized()
    rank = dist.get_rank() if distributed else 0
    world = dist.get_world_size() if distributed else 1
    if rank == 0:
        if args.out is not None:
            log = json.loads(result.to_json())
            log["world_size"] = world
            Path(args.out).write_text(json.dumps(log))
        if args.save is not None:
            from .io import save_flow

            save_flow(flow, args.save)
    if distributed:
        dist.barrier()
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":  # pragma: no cover - exercised through torchrun in the tests
    sys.exit(main())
