r"""Independent problems in parallel processes, reproducibly: :func:`map_problems`.

Solving many independent inverse problems (one measurement each, a benchmark over images, a
simulation-based calibration study) is embarrassingly parallel. :func:`map_problems` calls
``fn(problem, seed)`` for every problem, in forked worker processes (one torch thread each) or
serially, and returns the results in input order.

**Seeds.** Task :math:`i` gets its own seed stream from NumPy's ``SeedSequence(seed).spawn(n)``
(O'Neill 2014, PCG; the spawned sequences are statistically independent): the integer
``seed_i = spawn[i].generate_state(1)[0]`` is passed to ``fn``, and the global torch, NumPy and
Python RNGs are seeded with it before the call. A task's result therefore depends only on its
problem and ``seed_i``, never on the number of processes or on which worker ran it, so the
parallel run equals the serial run (bitwise, with single-threaded reductions), and the
caller's global RNG state is left as it was.

**No pickle.** Workers are forked (they inherit ``fn`` and the problems), and results come back
as files: tensors as safetensors, everything else as JSON. ``fn`` must return a tensor, a
JSON-serialisable value, or a (possibly nested) dict/list of those.
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import random
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from ._checks import check_int

__all__ = ["map_problems", "task_seeds"]

_ERRORS = {"ValueError": ValueError, "TypeError": TypeError, "FloatingPointError": FloatingPointError}


def task_seeds(seed: int, n: int) -> list[int]:
    """``n`` independent 32-bit seeds: ``SeedSequence(seed).spawn(n)[i].generate_state(1)[0]``."""
    seed = check_int(seed, "seed", minimum=0)
    n = check_int(n, "n", minimum=0)
    return [int(s.generate_state(1, dtype=np.uint32)[0]) for s in np.random.SeedSequence(seed).spawn(n)]


def _seed_globals(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def _rng_state() -> tuple[Tensor, Any, Any]:
    return torch.get_rng_state(), np.random.get_state(), random.getstate()


def _set_rng_state(state: tuple[Tensor, Any, Any]) -> None:
    torch.set_rng_state(state[0])
    np.random.set_state(state[1])
    random.setstate(state[2])


# -- results as files (tensors: safetensors; the rest: JSON) -------------------------------------------
def _encode(value: Any, tensors: dict[str, Tensor], where: str) -> Any:
    if isinstance(value, Tensor):
        name = f"t{len(tensors)}"
        tensors[name] = value.detach().cpu().contiguous()
        return {"__tensor__": name}
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise TypeError(f"fn: result {where} has non-string dict keys")
        return {"__dict__": {k: _encode(v, tensors, f"{where}[{k!r}]") for k, v in value.items()}}
    if isinstance(value, (list, tuple)):
        return {"__list__": [_encode(v, tensors, f"{where}[{i}]") for i, v in enumerate(value)],
                "tuple": isinstance(value, tuple)}
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return {"__float__": repr(value)} if not math.isfinite(value) else value
    raise TypeError(f"fn: result {where} of type {type(value).__name__} cannot be returned from a worker "
                    "(return tensors, numbers, strings, or dicts/lists of them)")


def _decode(value: Any, tensors: dict[str, Tensor]) -> Any:
    if isinstance(value, dict):
        if "__tensor__" in value:
            return tensors[value["__tensor__"]]
        if "__dict__" in value:
            return {k: _decode(v, tensors) for k, v in value["__dict__"].items()}
        if "__list__" in value:
            items = [_decode(v, tensors) for v in value["__list__"]]
            return tuple(items) if value["tuple"] else items
        if "__float__" in value:
            return float(value["__float__"])
    return value


def _write_result(folder: Path, i: int, result: Any) -> None:
    tensors: dict[str, Tensor] = {}
    tree = _encode(result, tensors, "")
    save_file(tensors, str(folder / f"result_{i}.safetensors"))
    (folder / f"result_{i}.json").write_text(json.dumps(tree))


def _read_result(folder: Path, i: int) -> Any:
    tensors = {k: v.clone() for k, v in load_file(str(folder / f"result_{i}.safetensors")).items()}
    return _decode(json.loads((folder / f"result_{i}.json").read_text()), tensors)


def _worker(fn: Callable[[Any, int], Any], problem: Any, i: int, seed: int, folder: str) -> None:
    torch.set_num_threads(1)
    try:
        _seed_globals(seed)
        _write_result(Path(folder), i, fn(problem, seed))
    except BaseException as e:  # reported to the parent, which re-raises
        Path(folder, f"error_{i}.json").write_text(json.dumps({"type": type(e).__name__, "message": str(e)}))
    finally:
        os._exit(0)


def map_problems(fn: Callable[[Any, int], Any], problems: Sequence[Any], *, processes: int | None = None,
                 seed: int = 0) -> list[Any]:
    r"""``[fn(problems[i], seed_i) for i in range(n)]``, in parallel processes, reproducibly.

    Parameters
    ----------
    fn
        ``fn(problem, seed) -> result``; ``seed`` is the task's own seed (module docstring), and
        the global torch/NumPy/Python RNGs are seeded with it before the call. The result must
        be a tensor, a JSON value, or dicts/lists of those (they travel as safetensors + JSON).
    problems
        The independent tasks (anything ``fn`` accepts: ``InverseProblem``\ s, ``(problem, y)``
        pairs, ...).
    processes
        Worker processes running at once (``None``: ``os.cpu_count()``); ``1`` runs serially in
        this process. Workers are forked, so problems must be on the CPU; without ``fork``
        (Windows, macOS spawn-only builds) the run is serial.
    seed
        Root of the per-task seed streams (:func:`task_seeds`).

    Returns
    -------
    list
        The results in the order of ``problems``; identical for any ``processes``.

    Raises
    ------
    ValueError, TypeError, FloatingPointError
        Re-raised from a failing task, prefixed with ``task i:``; ``RuntimeError`` if a worker
        died (e.g. killed), naming the task and its exit code.
    """
    if not callable(fn):
        raise TypeError(f"fn: expected a callable fn(problem, seed), got {type(fn).__name__}")
    if isinstance(problems, (str, bytes)) or not isinstance(problems, Sequence):
        raise TypeError(f"problems: expected a sequence (list/tuple) of problems, got {type(problems).__name__}")
    n = len(problems)
    processes = (os.cpu_count() or 1) if processes is None else check_int(processes, "processes")
    seeds = task_seeds(seed, n)
    if n == 0:
        return []
    if processes == 1 or n == 1 or "fork" not in mp.get_all_start_methods():
        return _serial(fn, problems, seeds)
    return _forked(fn, problems, seeds, min(processes, n))


def _serial(fn: Callable[[Any, int], Any], problems: Sequence[Any], seeds: list[int]) -> list[Any]:
    state = _rng_state()
    results = []
    try:
        for i, (problem, s) in enumerate(zip(problems, seeds, strict=True)):
            _seed_globals(s)
            try:
                tensors: dict[str, Tensor] = {}
                tree = _encode(fn(problem, s), tensors, "")  # same conversions as a worker's result
                results.append(_decode(json.loads(json.dumps(tree)), {k: v.clone() for k, v in tensors.items()}))
            except Exception as e:
                if type(e) in _ERRORS.values():  # the same message as a forked run gives
                    raise type(e)(f"task {i}: {e}") from e
                raise
    finally:
        _set_rng_state(state)
    return results


def _forked(fn: Callable[[Any, int], Any], problems: Sequence[Any], seeds: list[int], width: int) -> list[Any]:
    ctx = mp.get_context("fork")
    with tempfile.TemporaryDirectory(prefix="bayesinv-map-") as tmp:
        folder = Path(tmp)
        running: list[tuple[int, Any]] = []
        exit_codes: dict[int, int | None] = {}
        pending = list(range(len(problems)))
        while pending or running:
            while pending and len(running) < width:
                i = pending.pop(0)
                p = ctx.Process(target=_worker, args=(fn, problems[i], i, seeds[i], tmp), daemon=True)
                p.start()
                running.append((i, p))
            i, p = running.pop(0)  # join in start order: at most `width` alive at any time
            p.join()
            exit_codes[i] = p.exitcode
        results = []
        for i in range(len(problems)):
            err = folder / f"error_{i}.json"
            if err.exists():
                info = json.loads(err.read_text())
                raise _ERRORS.get(info["type"], RuntimeError)(f"task {i}: {info['message']}")
            if not (folder / f"result_{i}.json").exists():
                raise RuntimeError(f"task {i}: the worker process died (exit code {exit_codes[i]})")
            results.append(_read_result(folder, i))
    return results
