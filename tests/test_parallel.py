"""Independent problems across processes (bayesinv.parallel.map_problems) equal the serial run.

(``sample_posterior(chain_method="parallel")`` equal to sequential is tested in test_mcmc.py.)
"""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest
import torch

from bayesinv.infer.map import map_estimate
from bayesinv.infer.mcmc import sample_posterior
from bayesinv.parallel import map_problems, task_seeds
from bayesinv.testing import linear_gaussian_problem

pytestmark = pytest.mark.skipif("fork" not in __import__("multiprocessing").get_all_start_methods(),
                                reason="needs the fork start method")


@pytest.fixture(scope="module")
def cases():
    return [linear_gaussian_problem((1, 3, 4), seed=s) for s in range(3)]


def solve(case, seed):
    """MAP + a short MALA chain seeded by the task seed, plus a draw from the global RNG."""
    mode = map_estimate(case.problem, case.y, method="image", steps=30, seed=0).mean
    post = sample_posterior(case.problem, case.y, kernel="mala", num_chains=1, num_samples=30,
                            warmup_steps=20, init="zeros", seed=seed % 2**31, progress=False)
    return {"map": mode, "draws": post.samples[0], "noise": torch.randn(3), "seed": seed,
            "accept": float(post.sample_stats["accept_prob"].mean()), "tag": ("ok", 1)}


@pytest.fixture
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_parallel_equals_serial_bitwise(cases, one_thread):
    state = torch.get_rng_state()
    serial = map_problems(solve, cases, processes=1, seed=7)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's RNG is left alone
    par = map_problems(solve, cases, processes=2, seed=7)
    assert len(par) == len(serial) == 3
    for a, b in zip(par, serial, strict=True):
        assert set(a) == set(b)
        for k in ("map", "draws", "noise"):
            assert torch.equal(a[k], b[k]), k
        assert a["seed"] == b["seed"] and a["accept"] == b["accept"] and a["tag"] == b["tag"] == ("ok", 1)


def test_each_task_has_its_own_seed_stream(cases, one_thread):
    seeds = task_seeds(7, 3)
    ss = np.random.SeedSequence(7).spawn(3)
    assert seeds == [int(s.generate_state(1, dtype=np.uint32)[0]) for s in ss]
    assert len(set(seeds)) == 3
    res = map_problems(lambda case, seed: {"seed": seed, "z": torch.randn(4)}, cases, processes=2, seed=7)
    assert [r["seed"] for r in res] == seeds
    assert not torch.equal(res[0]["z"], res[1]["z"])
    for r in res:  # the global RNG was seeded with the task seed before fn ran
        torch.manual_seed(r["seed"])
        assert torch.equal(r["z"], torch.randn(4))
    # a task's result does not depend on the other tasks or the number of processes
    alone = map_problems(lambda case, seed: torch.randn(4), [cases[0]], seed=7)
    assert torch.equal(alone[0], res[0]["z"])


def test_results_round_trip_non_finite_floats_and_nesting(cases):
    out = map_problems(lambda c, s: [float("inf"), {"a": [torch.ones(2)], "n": None}], cases[:2], processes=2)
    assert out[0][0] == float("inf") and out[0][1]["n"] is None and torch.equal(out[1][1]["a"][0], torch.ones(2))


def test_errors_name_the_task(cases):
    def bad(case, seed):
        if case is cases[1]:
            raise ValueError("sigma: broken")
        return 1.0

    for processes in (1, 2):
        with pytest.raises(ValueError, match=r"task 1: sigma: broken"):
            map_problems(bad, cases, processes=processes)


def test_a_dead_worker_is_reported(cases):
    def die(case, seed):
        if case is cases[2]:
            os.kill(os.getpid(), signal.SIGKILL)
        return 0

    with pytest.raises(RuntimeError, match=r"task 2: the worker process died \(exit code -9\)"):
        map_problems(die, cases, processes=2)


def test_bad_inputs_name_the_argument(cases):
    with pytest.raises(TypeError, match="fn"):
        map_problems(3, cases)
    with pytest.raises(TypeError, match="problems"):
        map_problems(solve, iter(cases))
    with pytest.raises(ValueError, match="processes"):
        map_problems(solve, cases, processes=0)
    with pytest.raises(ValueError, match="seed"):
        map_problems(solve, cases, seed=-1)
    with pytest.raises(TypeError, match=r"fn: result .*object"):
        map_problems(lambda c, s: object(), cases[:1])
    assert map_problems(solve, []) == []
